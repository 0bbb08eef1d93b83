"""The layout of a workdir, in one place: every file name, the fold directories,
the recorded config, the done markers and atomic writes.

  <workdir>/config.json               the run's complete config (`record_config`)
  <workdir>/fold_<k>/config.json      the config fold k was trained with
  <workdir>/results.json, results.md  aggregated over the finished folds
  <workdir>/figures/                  the paper's figures (PNG)
  <workdir>/fold_<k>/checkpoints/     orbax CheckpointManager (state + data iterator)
  <workdir>/fold_<k>/metrics.jsonl    training metrics, plus TensorBoard events
  <workdir>/fold_<k>/predictions.npz  per-gate KNN predictions (docs/results_schema.md)
  <workdir>/fold_<k>/reference_bank.npz   training embeddings for avjax.predict
  <workdir>/fold_<k>/fold_info.json   written last: its presence marks the fold done
  <workdir>/fold_<k>/checkpoints.bad/ checkpoint steps that failed to restore
  <workdir>/fold_<k>/lock.json        held while a process trains and evaluates the fold

Every file is written to `<name>.tmp` and renamed, so an interrupted run never
leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time

import ml_collections
import numpy as np

from avjax import config_lib

CONFIG = "config.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FIGURES = "figures"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions.npz"
REFERENCE_BANK = "reference_bank.npz"
FOLD_INFO = "fold_info.json"
BAD_CHECKPOINTS = "checkpoints.bad"
LOCK = "lock.json"   # steps that failed to restore, moved out of orbax's way
_FOLD_DIR = re.compile(r"fold_(\d+)")


def fold_dir(workdir: str, fold: int) -> str:
  return os.path.join(workdir, f"fold_{int(fold)}")


def fold_of_dir(path: str) -> int | None:
  """k of a `fold_k` directory name, or None."""
  m = _FOLD_DIR.fullmatch(os.path.basename(os.path.normpath(path)))
  return int(m.group(1)) if m else None


def checkpoint_dir(fold_dir_: str) -> str:
  return os.path.abspath(os.path.join(fold_dir_, CHECKPOINTS))


def fold_is_done(fold_dir_: str) -> bool:
  """A fold is done when its evaluation (predictions + fold_info.json) is on disk."""
  return (os.path.isfile(os.path.join(fold_dir_, FOLD_INFO))
          and os.path.isfile(os.path.join(fold_dir_, PREDICTIONS)))


class FoldLocked(RuntimeError):
  """Another live process holds the fold's lock."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by another user
    return True
  return True


class FoldLock:
  """`fold_dir/lock.json` ({host, pid, start}), created atomically (O_EXCL), so that two
  processes sharing a workdir never train one fold together. A lock left by a dead
  process of this host is taken over (with a notice); one of a live process, or of
  another host (whose processes cannot be checked from here), raises FoldLocked.
  Use as a context manager; the lock is removed on exit."""

  def __init__(self, fold_dir_: str):
    self.path = os.path.join(fold_dir_, LOCK)
    self.held = False

  def _create(self) -> bool:
    try:
      fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      json.dump({"host": socket.gethostname(), "pid": os.getpid(),
                 "start": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
    return True

  def holder(self) -> dict:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def acquire(self) -> "FoldLock":
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    for _ in range(3):
      if self._create():
        self.held = True
        return self
      info = self.holder()
      host, pid = info.get("host"), info.get("pid")
      if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        print(f"notice: {self.path} was left by process {pid} of this host, which is no "
              f"longer running (started {info.get('start')}); taking the fold over", flush=True)
        try:
          os.remove(self.path)
        except FileNotFoundError:
          pass
        continue
      raise FoldLocked(f"{os.path.dirname(self.path)} is held by process {pid} on host {host} "
                       f"since {info.get('start')} ({self.path})")
    raise FoldLocked(f"could not take {self.path}: other processes keep taking it")

  def release(self) -> None:
    if self.held:
      self.held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def move_aside(path: str, folder: str) -> str:
  """Moves `path` into `folder` (created), under a name not taken yet; returns it."""
  os.makedirs(folder, exist_ok=True)
  base = os.path.join(folder, os.path.basename(os.path.normpath(path)))
  target, n = base, 1
  while os.path.exists(target):
    target, n = f"{base}.{n}", n + 1
  os.replace(path, target)
  return target


def write_text(path: str, text: str) -> None:
  """Writes `text` atomically (a temporary file, then os.replace)."""
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_json(path: str, obj, **kwargs) -> None:
  write_text(path, json.dumps(obj, **kwargs))


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  """np.savez atomically (no pickle: object arrays are refused when read back)."""
  with open(path + ".tmp", "wb") as f:
    np.savez(f, **arrays)
  os.replace(path + ".tmp", path)


def save_config(config: ml_collections.ConfigDict, workdir: str, name: str = CONFIG) -> str:
  """Writes `config`, completed from the base config, as `workdir/<name>`."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  write_text(path, config_lib.complete(config).to_json_best_effort(indent=2, sort_keys=True))
  return path


class ConfigMismatchError(ValueError):
  """A run's config differs from the one its workdir (or fold) was trained with."""


def _describe_diff(diff) -> str:
  def show(v):
    return "(absent)" if not isinstance(v, (str, int, float, bool, list, type(None))) else repr(v)
  return "\n".join(f"  {field}: recorded {show(old)}, now {show(new)}" for field, old, new in diff)


def record_config(config: ml_collections.ConfigDict, workdir: str, allow_change: bool = False,
                  path: str | None = None, write: bool = True) -> str:
  """Records `config` as `path` (default `workdir/config.json`) on a first run; on a
  later run checks it against the recorded one and raises ConfigMismatchError,
  before writing anything, when a field that changes the model, data or protocol
  differs (`config_lib.RUN_ONLY_FIELDS` may). With `allow_change` the new config
  replaces the recorded one, which is kept as `config.<its hash>.json` beside it.
  `write=False` only checks (the processes other than 0 of a multi-host run)."""
  path = path or os.path.join(workdir, CONFIG)
  if os.path.isfile(path):
    with open(path) as f:
      recorded = config_lib.complete(json.load(f), recorded=True)
    diff = config_lib.config_diff(recorded, config)
    if not diff:
      return path
    if not allow_change:
      raise ConfigMismatchError(
          f"{path} was recorded with another configuration; these fields differ:\n"
          f"{_describe_diff(diff)}\nResults in this workdir were produced with the recorded "
          "values. Use another --workdir, rerun with the recorded values, or pass "
          "--config_mismatch=ok to train the remaining folds with the new values (each fold "
          "records the config it was trained with).")
    if not write:
      return path
    old = os.path.join(os.path.dirname(path), f"config.{config_lib.config_hash(recorded)}.json")
    os.replace(path, old)
  if not write:
    return path
  return save_config(config, os.path.dirname(path), name=os.path.basename(path))


def load_fold_config(workdir: str, fold: int) -> ml_collections.ConfigDict:
  """The config fold `fold` was trained with (`fold_k/config.json`), else the workdir's."""
  path = os.path.join(fold_dir(workdir, fold), CONFIG)
  if os.path.isfile(path):
    with open(path) as f:
      return config_lib.complete(json.load(f), recorded=True)
  return load_config(workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The recorded config of `workdir`, completed from the base config (a config.json
  written by an older avjax lacks the fields added since; they get their defaults,
  or for those that changed behaviour the value that run had,
  `config_lib.RECORDED_BEFORE`)."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} an avjax workdir (written by avjax.main)?")
  with open(path) as f:
    return config_lib.complete(json.load(f), recorded=True)
