"""The layout of a workdir, in one place: every file name, the fold directories,
the recorded config, the done markers and atomic writes.

  <workdir>/config.json               the run's complete config (`save_config`)
  <workdir>/results.json, results.md  aggregated over the finished folds
  <workdir>/figures/                  the paper's figures (PNG)
  <workdir>/fold_<k>/checkpoints/     orbax CheckpointManager (state + data iterator)
  <workdir>/fold_<k>/metrics.jsonl    training metrics, plus TensorBoard events
  <workdir>/fold_<k>/predictions.npz  per-gate KNN predictions (docs/results_schema.md)
  <workdir>/fold_<k>/reference_bank.npz   training embeddings for avjax.predict
  <workdir>/fold_<k>/fold_info.json   written last: its presence marks the fold done

Every file is written to `<name>.tmp` and renamed, so an interrupted run never
leaves a file that looks complete.
"""

from __future__ import annotations

import json
import os
import re

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


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes `config`, completed from the base config, as `workdir/config.json`."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG)
  write_text(path, config_lib.complete(config).to_json_best_effort(indent=2, sort_keys=True))
  return path


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
