"""`crema_d_av`: CREMA-D audio-visual clips (FLV video + WAV audio), windowed (see README.md)."""
