"""Helpers for the test suite: the real-format samples in ../shared/samples."""

from __future__ import annotations

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = pathlib.Path(os.environ.get("AVJAX_SAMPLES", REPO.parent / "shared" / "samples"))


def require_samples(sub: str = "") -> pathlib.Path:
  """Path of ../shared/samples[/sub]; skips the test when absent, fails it when CI=true."""
  import pytest

  path = SAMPLES / sub if sub else SAMPLES
  if not path.is_dir():
    msg = f"real-format samples not found at {path} (expected ../shared/samples beside the repo)"
    if os.environ.get("CI") == "true":
      pytest.fail(msg + "; CI=true requires them")
    pytest.skip(msg)
  return path
