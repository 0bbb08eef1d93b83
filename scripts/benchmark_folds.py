"""The command line of benchmarks/benchmark_folds.py, whose docstring describes it."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import benchmark_folds  # noqa: E402

if __name__ == "__main__":
  benchmark_folds.main()
