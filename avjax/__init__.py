"""avjax: JAX/Flax reimplementation of Ghaleb et al., ACII 2019 (audio-visual, time-aware emotion recognition)."""

__version__ = "0.2.0"
