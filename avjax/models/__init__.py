"""Networks of the paper: I3D (video), SoundNet-8 (audio) and the gating model."""
