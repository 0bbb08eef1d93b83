"""The command line of benchmarks/device_check.py, whose docstring describes it."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from benchmarks import device_check  # noqa: E402

if __name__ == "__main__":
  sys.exit(device_check.main())
