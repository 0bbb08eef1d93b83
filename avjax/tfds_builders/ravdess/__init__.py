"""`ravdess`: RAVDESS audio-visual speech clips, windowed (see README.md)."""
