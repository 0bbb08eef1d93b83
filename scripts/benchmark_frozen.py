"""The command line of benchmarks/benchmark_frozen.py, whose docstring describes it."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks import benchmark_frozen  # noqa: E402

# absl's --help prints the main module's docstring and key flags: the benchmark's.
__doc__ = benchmark_frozen.__doc__

if __name__ == "__main__":
  benchmark_frozen.define_flags()
  flags.adopt_module_key_flags(benchmark_frozen)
  app.run(benchmark_frozen.main)
