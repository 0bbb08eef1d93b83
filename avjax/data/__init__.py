"""Media decoding, windowing, folds and synthetic data."""
