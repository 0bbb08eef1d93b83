"""Test setup for the whole tree (tests/ and tfds_builders/*/..._test.py).

Four fake CPU devices, so sharding tests run anywhere; must be set before JAX
initialises its backends.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
