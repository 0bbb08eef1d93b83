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
leaves a file that looks complete; a write the file system refuses (a full disk, a
read-only mount) removes its `.tmp` and raises `errors.StorageError` naming the file,
and a `.tmp` left by a killed process is removed by the next process that takes the
fold's lock (`fold_lock.clean_temp`). A recorded file that does not read back raises
`errors.CorruptFileError`, naming it and the command that repairs it.
"""

from __future__ import annotations

import json
import os
import re
import secrets

import ml_collections
import numpy as np

from avjax import __version__
from avjax import config_lib
from avjax import errors
from avjax import protocol

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


def move_aside(path: str, folder: str) -> str:
  """Moves `path` into `folder` (created), under a name not taken yet; returns it."""
  os.makedirs(folder, exist_ok=True)
  base = os.path.join(folder, os.path.basename(os.path.normpath(path)))
  target, n = base, 1
  while os.path.exists(target):
    target, n = f"{base}.{n}", n + 1
  os.replace(path, target)
  return target


def write_atomic(path: str, write) -> None:
  """write(tmp) then os.replace(tmp, path); a refused write removes the temporary file
  and raises errors.StorageError naming `path`. The temporary name is the writer's own
  (`<path>.<pid>.<random>.tmp`): processes sharing a workdir may write one file at once."""
  tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
  try:
    write(tmp)
    os.replace(tmp, path)
  except OSError as e:
    errors.remove_quietly(tmp)
    raise (errors.as_storage_error(e, path) or e) from e


def write_text(path: str, text: str) -> None:
  """Writes `text` atomically (a temporary file, then os.replace)."""
  def write(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  write_atomic(path, write)


def write_json(path: str, obj, **kwargs) -> None:
  write_text(path, json.dumps(obj, **kwargs))


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  """np.savez atomically (no pickle: object arrays are refused when read back)."""
  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  write_atomic(path, write)


def read_json(path: str, repair: str):
  """json.load of a file avjax wrote; errors.CorruptFileError (naming `path` and
  `repair`, the command that mends it) when it does not parse."""
  try:
    with open(path, "rb") as f:
      return json.loads(f.read())
  except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError, an empty file
    reason = "empty" if not os.path.getsize(path) else f"not valid JSON: {e}"
    raise errors.CorruptFileError(path, reason, repair) from e


def save_config(config: ml_collections.ConfigDict, workdir: str, name: str = CONFIG) -> str:
  """Writes `config`, completed from the base config, as `workdir/<name>`, with the
  avjax version that wrote it (`avjax_version`)."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise (errors.as_storage_error(e, workdir, "create") or e) from e
  path = os.path.join(workdir, name)
  doc = json.loads(config_lib.complete(config).to_json_best_effort())
  doc[config_lib.VERSION_FIELD] = __version__     # what wrote it: read back by complete()
  write_json(path, doc, indent=2, sort_keys=True)
  return path


class ConfigMismatchError(errors.UsageError):
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
  differs (`protocol.RUN_ONLY_FIELDS` may). With `allow_change` the new config
  replaces the recorded one, which is kept as `config.<its hash>.json` beside it.
  `write=False` only checks (the processes other than 0 of a multi-host run)."""
  path = path or os.path.join(workdir, CONFIG)
  if os.path.isfile(path):
    recorded = config_lib.complete(read_json(path, config_repair(path)), recorded=True)
    diff = protocol.config_diff(recorded, config)
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
    old = os.path.join(os.path.dirname(path), f"config.{protocol.config_hash(recorded)}.json")
    os.replace(path, old)
  if not write:
    return path
  return save_config(config, os.path.dirname(path), name=os.path.basename(path))


def load_fold_config(workdir: str, fold: int) -> ml_collections.ConfigDict:
  """The config fold `fold` was trained with (`fold_k/config.json`), else the workdir's."""
  path = os.path.join(fold_dir(workdir, fold), CONFIG)
  if os.path.isfile(path):
    return config_lib.complete(read_json(path, config_repair(path)), recorded=True)
  return load_config(workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The recorded config of `workdir`, completed from the base config (a config.json
  written by an older avjax lacks the fields added since; they get their defaults,
  or for those that changed behaviour the value that run had,
  `compat.RECORDED_BEFORE`)."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} an avjax workdir (written by avjax.main)?")
  return config_lib.complete(read_json(path, config_repair(path)), recorded=True)


def config_repair(path: str) -> str:
  """What mends a recorded config.json that does not read back (it is a record, not
  derived from anything: nothing rebuilds it)."""
  here = os.path.dirname(os.path.abspath(path))
  fold = fold_of_dir(here)
  if fold is None:
    return ("remove it and rerun python -m avjax.main with the run's --config and "
            f"--workdir={here}: it records the config again (each fold is still checked "
            "against its own fold_k/config.json)")
  workdir = os.path.dirname(here)
  return (f"if fold {fold} was trained with the workdir's config, copy "
          f"{os.path.join(workdir, CONFIG)} over it; otherwise remove {here} and rerun "
          f"python -m avjax.main to train fold {fold} again")
