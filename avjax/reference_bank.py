"""A fold's reference bank read back for inference (`load_bank`) and the fold whose
bank a workdir's inference uses (`choose_fold`). `avjax.evaluate` writes the bank.

Legend: N reference clips, T windows (gates), G gate-embedding size.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from typing import Any

import numpy as np

from avjax import choices
from avjax import errors
from avjax import workdir as workdir_lib
from avjax.data import folds as folds_lib


@dataclasses.dataclass
class Bank:
  """A fold's reference bank: training gate embeddings, labels and preprocessing."""
  path: str
  meta: dict[str, Any]
  gates: dict[str, np.ndarray]     # 'audio_gate' / 'video_gate' [N, T, G] float32
  labels: np.ndarray               # [N] int32

  @property
  def step(self) -> int:
    return int(self.meta["step"])

  @property
  def class_names(self) -> list[str]:
    return list(self.meta["class_names"])

  def modality_refs(self, modality: str) -> np.ndarray:
    """[N, T, G*] references of AO, VO or AV."""
    return np.concatenate([self.gates[k] for k in choices.MODALITY_KEYS[modality]], axis=-1)


def _rewrite_bank(path: str) -> str:
  """The command that writes the reference bank `path` again."""
  fold_dir = os.path.dirname(os.path.abspath(path))
  return (f"python -m avjax.evaluate --workdir={os.path.dirname(fold_dir)} "
          f"--folds={workdir_lib.fold_of_dir(fold_dir)}")


def load_bank(path: str) -> Bank:
  """Reads `reference_bank.npz` (no pickle) and checks its arrays against its metadata."""
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise errors.UsageError(f"{path}: cannot read the reference bank ({type(e).__name__}: {e}); "
                     f"rewrite it with {_rewrite_bank(path)}") from None
  try:
    meta = json.loads(str(arrays["meta"]))
  except (KeyError, json.JSONDecodeError) as e:
    raise errors.UsageError(f"{path}: no readable 'meta' entry ({e}); rewrite it with "
                     f"{_rewrite_bank(path)}") from None
  gates = {k: arrays[k] for k in ("audio_gate", "video_gate") if k in arrays}
  labels = arrays.get("labels")
  if labels is None or not gates or "step" not in arrays or not isinstance(meta, dict) or \
      not all(k in meta for k in ("window", "step", "class_names", "k")):
    raise errors.UsageError(f"{path}: a reference bank needs 'labels', 'step', 'audio_gate' or "
                     "'video_gate' and a 'meta' with window, step, class_names and k; rewrite "
                     f"it with {_rewrite_bank(path)}")
  for key, value in gates.items():
    if value.ndim != 3 or len(value) != len(labels) or value.shape[1] != meta["window"]["num_windows"]:
      raise errors.UsageError(f"{path}: {key} has shape {value.shape}, expected "
                       f"[{len(labels)}, {meta['window']['num_windows']}, G]")
  if int(arrays["step"]) != int(meta["step"]):
    raise errors.UsageError(f"{path}: 'step' {int(arrays['step'])} differs from meta step {meta['step']}")
  return Bank(path=path, meta=meta, gates=gates, labels=labels.astype(np.int32))


def choose_fold(workdir: str, config, fold: int | None) -> int:
  """`fold`, or else the first of config.folds whose fold directory holds a bank."""
  bank = workdir_lib.REFERENCE_BANK
  if fold is not None:
    path = os.path.join(workdir_lib.fold_dir(workdir, fold), bank)
    if not os.path.isfile(path):
      have = [f for f in range(folds_lib.NUM_FOLDS)
              if os.path.isfile(os.path.join(workdir_lib.fold_dir(workdir, f), bank))]
      raise errors.UsageError(f"--fold={fold}: {path} not found; the folds with a reference bank are "
                       f"{have} (evaluate fold {fold} with python -m avjax.evaluate "
                       f"--workdir={workdir} --folds={fold})")
    return fold
  for f in config.folds:
    if os.path.isfile(os.path.join(workdir_lib.fold_dir(workdir, f), bank)):
      return int(f)
  raise errors.UsageError(
      f"{workdir}: no fold of config.folds {list(config.folds)} has a {bank} "
      f"(written when a fold is evaluated; run python -m avjax.evaluate --workdir={workdir})")
