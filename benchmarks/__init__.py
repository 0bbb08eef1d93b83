"""avjax's benchmarks and the prepared GPU check, run through scripts/benchmark*.py and
scripts/device_check.py; `harness` holds what they share. Not installed: a checkout's."""
