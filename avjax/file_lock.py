"""An exclusive advisory lock on a file (`fcntl.flock`): one process at a time builds a
dataset config (`data.builder_lib.prepare`) or extracts into a feature store
(`feature_store.ensure`); the others wait, then find the work done."""

from __future__ import annotations

import contextlib
import fcntl
import os

from avjax import errors


@contextlib.contextmanager
def exclusive(path: str):
  """Holds an exclusive lock on `path` (created, with its folder) for the `with` block.
  A file system that refuses to create it raises errors.StorageError naming it."""
  try:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    f = open(path, "w")
  except OSError as e:
    raise (errors.as_storage_error(e, path) or e) from e
  with f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)
