r"""Per-fold metrics, the fold directories read back, and their aggregation into the
results.json document (written with results.md by `avjax.report`).

Legend: T windows (gates), Q query clips of a fold (its held-out clips), C classes,
D embedding size.

Input (written by `avjax.evaluate` into every `<workdir>/fold_{k}/`):
  predictions.npz   labels [Q] int32, actor [Q] int32, clip_id [Q] str, and per
                    modality M in AO / VO / AV present: pred_M [T, Q] int32 (KNN
                    prediction at each gate), emb_M [Q, D] float32 (last gate).
  fold_info.json    dataset, config, variant, modalities, fold, class_names,
                    num_windows, k, num_train_clips, exclude_used, avjax_version,
                    checkpoint_step and selected_by ('last' or 'validation_fold:N';
                    absent in folds written by earlier versions), mask_padded_windows,
                    trunk, cached_views and trunk_lr_scale (absent before them:
                    'finetune', 0, 1.0),
                    negatives (the miner's `loss.negatives`; absent before it: 'hardest'),
                    center_audio_head and center_video_head (`model.center_*_head`;
                    absent: False), distance, batch_all_epochs, margin and
                    mse_weight (`config.loss`; absent before them: 'squared', 0,
                    1.0 and not recorded), optimizer, learning_rate and weight_decay
                    (`config.optim`; absent before them: 'adam', not recorded).

Output of `build_results(load_folds(workdir))`: the `results.json` document (schema in
docs/results_schema.md).

Conventions (stated in both outputs):
* accuracy and UAR are fractions in [0, 1] in results.json, percent in results.md;
* accuracy of a fold = correct / Q over exactly that fold's held-out clips;
* UAR = mean recall over the classes present among the fold's true labels
  (scikit-learn's `balanced_accuracy_score`);
* mean ± std over folds, std the *sample* standard deviation (ddof = 1, as
  `pandas.Series.std` / `torch.std` default); null (shown as "–") with one fold;
* the paper's numbers are compared with our accuracy at the *last* gate (see
  `avjax.paper.PAPER_NOTE`).
"""

from __future__ import annotations

import glob
import math
import os
import zipfile
from typing import Any, Iterable, Mapping

import numpy as np
import sklearn.metrics as skm
from absl import logging

from avjax import compat
from avjax import errors
from avjax import paper
from avjax import workdir as workdir_lib

SCHEMA_VERSION = 1
MODALITIES = ("AO", "VO", "AV")
_ROW_KEY = ("dataset", "config", "variant")

# --------------------------------------------------------------------------------------
# Metrics (scikit-learn).

def _check_pred_labels(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  pred, labels = np.asarray(pred), np.asarray(labels)
  if pred.shape != labels.shape or pred.ndim != 1:
    raise ValueError(f"pred {pred.shape} and labels {labels.shape} must be equal 1-D shapes [Q]")
  for name, a in (("pred", pred), ("labels", labels)):
    if a.size and (a.min() < 0 or a.max() >= num_classes):
      raise ValueError(f"{name} has values outside [0, {num_classes}): min {a.min()}, max {a.max()}")
  return pred.astype(np.int64), labels.astype(np.int64)


def confusion_matrix(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Counts [C, C] int64: rows the true class, columns the predicted class."""
  pred, labels = _check_pred_labels(pred, labels, num_classes)
  if not labels.size:  # scikit-learn refuses empty inputs
    return np.zeros((num_classes, num_classes), np.int64)
  return skm.confusion_matrix(labels, pred, labels=range(num_classes)).astype(np.int64)


def per_class_recall(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Recall of each class [C] float64; NaN for classes absent from `labels`."""
  pred, labels = _check_pred_labels(pred, labels, num_classes)
  if not labels.size:  # scikit-learn refuses empty inputs
    return np.full(num_classes, np.nan)
  return skm.recall_score(labels, pred, labels=range(num_classes), average=None,
                          zero_division=np.nan).astype(np.float64)


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
  pred, labels = np.asarray(pred), np.asarray(labels)
  if pred.shape != labels.shape or labels.size == 0:
    raise ValueError(f"accuracy needs equal non-empty shapes, got {pred.shape} and {labels.shape}")
  return float(np.mean(pred == labels))


def uar(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
  """Unweighted average recall: mean recall over the classes present in `labels`.

  Equals `sklearn.metrics.balanced_accuracy_score(labels, pred)`, without its
  warning about predicted classes absent from `labels`.
  """
  return float(np.nanmean(per_class_recall(pred, labels, num_classes)))


def fold_rows(predictions: Mapping[str, np.ndarray], info: Mapping[str, Any]) -> list[dict[str, Any]]:
  """One row per (modality, gate) of one fold: accuracy and UAR over its Q query clips.

  Row: {dataset, config, variant, fold, gate (1-based), modality, accuracy, uar, n}.
  """
  labels = np.asarray(predictions["labels"])
  num_classes = len(info["class_names"])
  rows = []
  for m in MODALITIES:
    key = f"pred_{m}"
    if key not in predictions:
      continue
    pred = np.asarray(predictions[key])  # [T, Q]
    if pred.ndim != 2 or pred.shape[1] != labels.shape[0]:
      raise ValueError(f"fold {info.get('fold')}: {key} has shape {pred.shape}, expected [T, {labels.shape[0]}]")
    for t in range(pred.shape[0]):
      _check_pred_labels(pred[t], labels, num_classes)
      rows.append({
          "dataset": info["dataset"], "config": info["config"], "variant": info["variant"],
          "fold": int(info["fold"]), "gate": t + 1, "modality": m,
          "accuracy": accuracy(pred[t], labels), "uar": uar(pred[t], labels, num_classes),
          "n": int(labels.shape[0]),
      })
  if not rows:
    raise ValueError(f"fold {info.get('fold')}: no pred_AO / pred_VO / pred_AV array")
  return rows


def _mean_std(values: list[float]) -> tuple[float, float | None]:
  a = np.asarray(values, np.float64)
  return float(a.mean()), (float(a.std(ddof=1)) if a.size > 1 else None)


def ci95_half_width(std: float | None, n: int) -> float | None:
  """Half-width of the 95 % confidence interval of a mean over `n` folds, Student's t
  with n - 1 degrees of freedom: t(0.975, n - 1) x std / sqrt(n) (10 folds: 2.262 x
  std / sqrt(10)). None with one fold."""
  if std is None or n < 2:
    return None
  from scipy import stats
  return float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def aggregate(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Mean and sample std (ddof=1; None with one fold) over folds per (gate, modality).

  Rows are grouped by (dataset, config, variant, modality, gate). Returns
  {dataset, config, variant, gate, modality, num_folds, folds, accuracy_mean,
  accuracy_std, accuracy_ci95, uar_mean, uar_std, uar_ci95, n} with n the total number
  of queries and *_ci95 the half-width of the 95 % interval of the mean
  (`ci95_half_width`).
  """
  groups: dict[tuple, list[Mapping[str, Any]]] = {}
  for r in rows:
    key = tuple(r[k] for k in _ROW_KEY) + (r["modality"], int(r["gate"]))
    groups.setdefault(key, []).append(r)
  out = []
  for key, members in groups.items():
    folds = [int(r["fold"]) for r in members]
    if len(set(folds)) != len(folds):
      raise ValueError(f"{key}: fold repeated among {sorted(folds)}")
    acc_mean, acc_std = _mean_std([r["accuracy"] for r in members])
    uar_mean, uar_std = _mean_std([r["uar"] for r in members])
    out.append({
        "dataset": key[0], "config": key[1], "variant": key[2], "gate": key[4], "modality": key[3],
        "num_folds": len(folds), "folds": sorted(folds),
        "accuracy_mean": acc_mean, "accuracy_std": acc_std,
        "accuracy_ci95": ci95_half_width(acc_std, len(folds)),
        "uar_mean": uar_mean, "uar_std": uar_std, "uar_ci95": ci95_half_width(uar_std, len(folds)),
        "n": int(sum(r["n"] for r in members)),
    })
  order = {m: i for i, m in enumerate(MODALITIES)}
  out.sort(key=lambda r: (r["dataset"], r["config"], r["variant"], order[r["modality"]], r["gate"]))
  return out


# --------------------------------------------------------------------------------------
# Reading fold directories.

_INFO_FIELDS = ("dataset", "config", "variant", "modalities", "fold", "class_names", "num_windows", "k")
# Fields every fold of one results table must share.
_SHARED_FIELDS = ("dataset", "config", "variant", "modalities", "class_names", "num_windows", "k",
                  "exclude_used", "negatives", "center_audio_head",
                  "center_video_head", "distance", "batch_all_epochs", "margin", "mse_weight",
                  "optimizer", "learning_rate", "weight_decay")
def evaluate_command(fold_dir: str) -> str:
  """The command that writes `fold_dir`'s evaluation files again from its checkpoint."""
  fold_dir = os.path.abspath(fold_dir)
  return (f"python -m avjax.evaluate --workdir={os.path.dirname(fold_dir)} "
          f"--folds={workdir_lib.fold_of_dir(fold_dir)}")


def read_npz(path: str, repair: str) -> dict[str, np.ndarray]:
  """Every array of the .npz `path` (no pickle); errors.CorruptFileError naming `path`
  and `repair` when it does not read back (truncated, empty, not a zip)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  except (ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
    reason = "empty" if os.path.isfile(path) and not os.path.getsize(path) else \
        f"{type(e).__name__}: {e}"
    raise errors.CorruptFileError(path, reason, repair) from e
  except OSError as e:
    if errors.storage_errno(e) is not None or isinstance(e, FileNotFoundError):
      raise
    raise errors.CorruptFileError(path, f"{type(e).__name__}: {e}", repair) from e


def check_fold_outputs(fold_dir: str) -> None:
  """Raises errors.CorruptFileError when an evaluation file of `fold_dir` does not read
  back: predictions.npz, fold_info.json (`load_fold`), reference_bank.npz (if present)."""
  load_fold(fold_dir)
  bank = os.path.join(fold_dir, workdir_lib.REFERENCE_BANK)
  if os.path.isfile(bank):
    arrays = read_npz(bank, f"rewrite it with {evaluate_command(fold_dir)}")
    missing = [k for k in ("meta", "labels", "step") if k not in arrays]
    if missing:
      raise errors.CorruptFileError(bank, f"no {missing} arrays",
                                    f"rewrite it with {evaluate_command(fold_dir)}")


def load_fold(fold_dir: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads and checks `fold_dir/predictions.npz` and `fold_info.json` (no pickle); a file
  that does not read back raises errors.CorruptFileError with the command that
  rewrites it."""
  info_path = os.path.join(fold_dir, workdir_lib.FOLD_INFO)
  npz_path = os.path.join(fold_dir, workdir_lib.PREDICTIONS)
  repair = f"rewrite it with {evaluate_command(fold_dir)}"
  info = workdir_lib.read_json(info_path, repair)
  if not isinstance(info, dict):
    raise errors.CorruptFileError(info_path, "not a JSON object", repair)
  missing = [k for k in _INFO_FIELDS if k not in info]
  if missing:
    raise ValueError(f"{info_path}: missing fields {missing}")
  for key, value in compat.FOLD_INFO_BEFORE.items():
    info.setdefault(key, value)
  preds = read_npz(npz_path, repair)
  for key in ("labels", "clip_id"):
    if key not in preds:
      raise ValueError(f"{npz_path}: no '{key}' array (has {sorted(preds)})")
  q = preds["labels"].shape[0]
  if preds["labels"].ndim != 1 or preds["clip_id"].shape != (q,):
    raise ValueError(f"{npz_path}: labels {preds['labels'].shape} and clip_id "
                     f"{preds['clip_id'].shape} must both be [Q]")
  present = [m for m in MODALITIES if f"pred_{m}" in preds]
  if not present:
    raise ValueError(f"{npz_path}: no pred_AO / pred_VO / pred_AV array (has {sorted(preds)})")
  t = int(info["num_windows"])
  for m in present:
    shape = preds[f"pred_{m}"].shape
    if shape != (t, q):
      raise ValueError(f"{npz_path}: pred_{m} has shape {shape}, expected [T={t}, Q={q}] "
                       f"(num_windows from {info_path})")
    emb = preds.get(f"emb_{m}")
    if emb is not None and (emb.ndim != 2 or emb.shape[0] != q):
      raise ValueError(f"{npz_path}: emb_{m} has shape {emb.shape}, expected [Q={q}, D]")
  return preds, info


def fold_dirs(workdir: str) -> list[str]:
  """`workdir/fold_{k}` directories with a finished evaluation, sorted by k."""
  found = []
  for path in glob.glob(os.path.join(glob.escape(workdir), "fold_*")):   # `[` in a name
    fold = workdir_lib.fold_of_dir(path)
    if fold is None or not os.path.isdir(path):
      continue
    if not workdir_lib.fold_is_done(path):
      logging.info("%s: no finished evaluation (fold_info.json + predictions.npz), skipped", path)
      continue
    found.append((fold, path))
  return [p for _, p in sorted(found)]


def load_folds(workdir: str) -> list[tuple[dict[str, np.ndarray], dict[str, Any]]]:
  """All finished folds of `workdir`, checked to belong to one run. Raises if none."""
  dirs = fold_dirs(workdir)
  if not dirs:
    raise FileNotFoundError(f"{workdir}: no fold_k/ directory with fold_info.json and predictions.npz")
  folds = []
  for d in dirs:
    preds, info = load_fold(d)
    dir_fold = workdir_lib.fold_of_dir(d)
    if int(info["fold"]) != dir_fold:
      raise ValueError(f"{d}/fold_info.json says fold {info['fold']}, the directory says {dir_fold}")
    if folds:
      first_dir, first = dirs[0], folds[0][1]
      for k in _SHARED_FIELDS:
        if info.get(k) != first.get(k):
          raise ValueError(f"{d}/fold_info.json: {k} = {info.get(k)!r} but {first_dir} has "
                           f"{first.get(k)!r}; one workdir must hold one configuration")
    folds.append((preds, info))
  return folds


# --------------------------------------------------------------------------------------
# The results.json document.


def summary_row(summary: list[Mapping[str, Any]], modality: str, gate: int | None = None) -> Mapping[str, Any] | None:
  """The summary row of `modality` at `gate` (default: the last gate), or None."""
  rows = [r for r in summary if r["modality"] == modality]
  if not rows:
    return None
  gate = max(r["gate"] for r in rows) if gate is None else gate
  return next((r for r in rows if r["gate"] == gate), None)


def _common(infos: list[Mapping[str, Any]], key: str, before: Any) -> Any:
  """The folds' `key` (`before` where a fold did not record it); None when they differ."""
  values = [info.get(key, before) for info in infos]
  return values[0] if all(v == values[0] for v in values) else None


def build_results(folds: list[tuple[dict[str, np.ndarray], dict[str, Any]]]) -> dict[str, Any]:
  """The results.json document (docs/results_schema.md) from loaded folds."""
  first = folds[0][1]
  num_classes = len(first["class_names"])
  rows, fold_meta = [], []
  confusion: dict[str, np.ndarray] = {}
  for preds, info in folds:
    rows.extend(fold_rows(preds, info))
    labels = preds["labels"]
    fold_meta.append({
        "fold": int(info["fold"]), "n": int(labels.shape[0]),
        "num_train_clips": info.get("num_train_clips"),
        "class_counts": np.bincount(labels, minlength=num_classes).astype(int).tolist(),
        "avjax_version": info.get("avjax_version"),
        "checkpoint_step": info.get("checkpoint_step"), "selected_by": info.get("selected_by"),
        "allow_missing_folds": bool(info.get("allow_missing_folds", False)),
        "trunk": info.get("trunk", "finetune"), "cached_views": int(info.get("cached_views", 0)),
        "speaker_centering": bool(info.get("speaker_centering", False)),
        "speaker_scaling": bool(info.get("speaker_scaling", False)),
        "audio_head_layer": str(info.get("audio_head_layer", "conv7")),
        "audio_head_stats": str(info.get("audio_head_stats", "mean")),
        "trunk_lr_scale": float(info.get("trunk_lr_scale", 1.0)),
        "config_hash": info.get("config_hash"),
    })
    for m in MODALITIES:
      if f"pred_{m}" in preds:
        cm = confusion_matrix(preds[f"pred_{m}"][-1], labels, num_classes)
        confusion[m] = confusion.get(m, 0) + cm
  summary = aggregate(rows)
  refs = paper.paper_references(first["dataset"], first["config"], first["variant"], first["modalities"])
  for ref in refs:
    ours = summary_row(summary, ref["modality"])
    ref["ours_accuracy_mean"] = None if ours is None else ours["accuracy_mean"]
    ref["ours_accuracy_std"] = None if ours is None else ours["accuracy_std"]
    ref["ours_gate"] = None if ours is None else ours["gate"]
  from avjax import __version__
  return {
      "schema_version": SCHEMA_VERSION,
      "dataset": first["dataset"], "config": first["config"], "variant": first["variant"],
      "modalities": first["modalities"], "class_names": list(first["class_names"]),
      "num_windows": int(first["num_windows"]), "k": int(first["k"]),
      "exclude_used": first.get("exclude_used"),
      **{key: _common([info for _, info in folds], key, value)
         for key, value in compat.FOLD_INFO_BEFORE.items()},
      "conventions": {
          "metrics": "accuracy and uar are fractions in [0, 1]; paper numbers are percent",
          "accuracy": "correct / n over exactly the fold's held-out clips",
          "uar": "mean recall over the classes present among the fold's true labels",
          "std": "sample standard deviation over folds (ddof=1); null with one fold",
          "ci95": "half-width of the 95 % confidence interval of the mean over folds, "
                  "Student's t with folds - 1 degrees of freedom; null with one fold",
          "gate": "1-based; gate t sees windows 1..t",
          "confusion_last_gate": "counts summed over folds, rows true class, columns predicted",
          "paper": paper.PAPER_NOTE,
      },
      "folds": fold_meta,
      "rows": rows,
      "summary": summary,
      "confusion_last_gate": {m: cm.tolist() for m, cm in confusion.items()},
      "paper": refs,
      "generated_by": f"avjax {__version__}",
  }


def load_results(path: str) -> dict[str, Any]:
  """Reads a results.json, checking its schema version."""
  workdir = os.path.dirname(os.path.abspath(path))
  doc = workdir_lib.read_json(path, f"remove it: python -m avjax.evaluate --workdir={workdir} "
                                    "writes it again")
  version = doc.get("schema_version")
  if version != SCHEMA_VERSION:
    raise ValueError(f"{path}: schema_version {version!r}, this avjax reads {SCHEMA_VERSION}")
  return doc


