"""Metric writers: log lines, TensorBoard events (tensorboardX) and metrics.jsonl.

clu's `metric_writers` package imports TensorFlow, which avjax does not need, so
these follow the same interface (`write_scalars(step, scalars)`,
`write_hparams(hparams)`, `flush()`, `close()`) without it. `metrics.jsonl` has
one JSON object per write: {"step": ..., "time": ..., "<name>": value}.
Non-zero processes only log.
"""

from __future__ import annotations

import errno
import json
import os
import time
from typing import Any, Mapping

import numpy as np
from absl import logging

from avjax import errors
from avjax import workdir as workdir_lib


def _jsonable(tree: Any) -> Any:
  if isinstance(tree, Mapping):
    return {str(k): _jsonable(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_jsonable(v) for v in tree]
  if isinstance(tree, (str, int, float, bool)) or tree is None:
    return tree
  return str(tree)


class LoggingWriter:

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    text = ", ".join(f"{k}={float(np.asarray(v)):.5g}" for k, v in sorted(scalars.items()))
    logging.info("[%d] %s", step, text)

  def write_hparams(self, hparams):
    logging.info("Hyper-parameters: %s", json.dumps(_jsonable(hparams), sort_keys=True))

  def flush(self):
    pass

  def close(self):
    pass


class TensorboardXWriter:
  """TensorBoard event files under `logdir`. tensorboardX writes them in a thread; when
  that thread dies (a full disk) the next call raises errors.StorageError instead of
  waiting forever on its queue."""

  def __init__(self, logdir: str):
    import tensorboardX  # local: only the writing process needs it
    self._logdir = logdir
    try:
      self._writer = tensorboardX.SummaryWriter(logdir)
    except OSError as e:
      raise (errors.as_storage_error(e, logdir, "create") or e) from e
    self._failed = False

  def _check(self):
    worker = getattr(getattr(getattr(self._writer, "file_writer", None), "event_writer", None),
                     "_worker", None)
    if self._failed or (worker is not None and not worker.is_alive()):
      self._failed = True
      raise errors.StorageError(self._logdir, errors.background_errno() or errno.EIO)

  def write_scalars(self, step, scalars):
    self._check()
    for key, value in scalars.items():
      self._writer.add_scalar(key, float(np.asarray(value)), global_step=int(step))

  def write_hparams(self, hparams):
    self._check()
    self._writer.add_text("hparams", json.dumps(_jsonable(hparams), indent=1, sort_keys=True))

  def flush(self):
    self._check()
    self._writer.flush()

  def close(self):
    if not self._failed:   # a dead writer thread would never take the closing event
      self._writer.close()


class JsonlWriter:
  """Appends one JSON object per write_scalars call to `path`."""

  def __init__(self, path: str):
    self._path = path
    try:
      os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
      self._file = open(path, "a", encoding="utf-8")
    except OSError as e:
      raise (errors.as_storage_error(e, path) or e) from e

  def write_scalars(self, step, scalars):
    row = {"step": int(step), "time": round(time.time(), 3)}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    try:
      self._file.write(json.dumps(row) + "\n")
      self._file.flush()
    except OSError as e:
      raise (errors.as_storage_error(e, self._path) or e) from e

  def write_hparams(self, hparams):
    pass

  def flush(self):
    self._file.flush()

  def close(self):
    try:
      self._file.close()
    except OSError:   # the failed write was reported already
      pass


class MultiWriter:

  def __init__(self, writers):
    self._writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self._writers:
      w.write_scalars(step, scalars)

  def write_hparams(self, hparams):
    for w in self._writers:
      w.write_hparams(hparams)

  def flush(self):
    for w in self._writers:
      w.flush()

  def close(self):
    for w in self._writers:
      w.close()


def create_writer(workdir: str, just_logging: bool = False) -> MultiWriter:
  if just_logging:
    return MultiWriter([LoggingWriter()])
  return MultiWriter([
      LoggingWriter(),
      TensorboardXWriter(os.path.join(workdir, "tensorboard")),
      JsonlWriter(os.path.join(workdir, workdir_lib.METRICS)),
  ])
