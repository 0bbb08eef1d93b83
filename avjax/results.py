r"""Per-fold metrics, aggregation over folds, results.json / results.md, the paper's numbers.

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

Output of `write_results(workdir)`: `results.json` (schema in
docs/results_schema.md) and `results.md`, our numbers beside the paper's.

Conventions (stated in both outputs):
* accuracy and UAR are fractions in [0, 1] in results.json, percent in results.md;
* accuracy of a fold = correct / Q over exactly that fold's held-out clips;
* UAR = mean recall over the classes present among the fold's true labels
  (scikit-learn's `balanced_accuracy_score`);
* mean ± std over folds, std the *sample* standard deviation (ddof = 1, as
  `pandas.Series.std` / `torch.std` default); null (shown as "–") with one fold;
* the paper's numbers are compared with our accuracy at the *last* gate (see
  `PAPER_NOTE`).
"""

from __future__ import annotations

import glob
import json
import math
import os
import zipfile
from typing import Any, Iterable, Mapping

import numpy as np
import sklearn.metrics as skm
from absl import logging

from avjax import config_lib
from avjax import errors
from avjax import workdir as workdir_lib

SCHEMA_VERSION = 1
MODALITIES = ("AO", "VO", "AV")
_ROW_KEY = ("dataset", "config", "variant")

# --------------------------------------------------------------------------------------
# The paper's numbers (Ghaleb, Popa, Asteriadis, ACII 2019), accuracy in percent,
# averaged over 10 subject-independent folds. Keys use our builder names
# ('ravdess', 'crema_d_av') and windowing names (avjax/data/windows.py).
#
# Table I ("Tests for Various Configurations"): #windows / length (s) / overlap (0.5 s or
# none) -> accuracy of the gating model. Its best rows equal Table II's AV-Gating
# (RAVDESS 8/1/yes 67.7, CREMA-D 6/1/yes 74.0), so the column is the AV embedding.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "ravdess": {"w2_l1_ov": 64.1, "w2_l2_ov": 64.7, "w4_l1_ov": 66.2, "w6_l1_ov": 67.5,
                "w8_l1_ov": 67.7, "w2_l1_no": 62.3, "w4_l1_no": 65.3},
    "crema_d_av": {"w2_l1_ov": 73.7, "w4_l1_ov": 73.5, "w6_l1_ov": 74.0},
}
# Table II ("The recognition accuracy of unimodal and multimodal embeddings, with and
# without the temporal and multimodal DML"), columns CREMA-D / RAVDESS. Each row:
# (our name, the paper's row label, config argument of the run, modality column).
# The gating rows come from one run: the dataset's default windowing (its best
# Table I row, 8x1 s for RAVDESS, 6x1 s for CREMA-D). Human-perception and [32] rows
# of the paper are not ours to reproduce and are left out.
TABLE2_ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("AO-Global", "AO-Global", "audio_global", "AO"),
    ("A-LSTM", "A-LSTM", "audio_lstm", "AO"),
    ("AO-Gating", "AO-Gating Paradigm", "gating", "AO"),
    ("VO-Global", "VO-Global", "video_global", "VO"),
    ("VO-LSTM", "VO-LSTM", "video_lstm", "VO"),
    ("VO-Gating", "VO-Gating Paradigm", "gating", "VO"),
    ("AV-Global", "AV-Global", "global", "AV"),
    ("A-LSTM+V-LSTM", "Concatenation of A-LSTM and V-LSTM", "lstm", "AV"),
    ("AV-Gating", "AV-Gating Paradigm", "gating", "AV"),
)
PAPER_TABLE2: dict[str, dict[str, float]] = {
    "crema_d_av": {"AO-Global": 56.4, "A-LSTM": 50.2, "AO-Gating": 57.0, "VO-Global": 63.1,
                   "VO-LSTM": 66.8, "VO-Gating": 65.0, "AV-Global": 69.0,
                   "A-LSTM+V-LSTM": 72.9, "AV-Gating": 74.0},
    "ravdess": {"AO-Global": 50.1, "A-LSTM": 40.1, "AO-Gating": 45.3, "VO-Global": 60.2,
                "VO-LSTM": 60.5, "VO-Gating": 60.1, "AV-Global": 65.7,
                "A-LSTM+V-LSTM": 65.8, "AV-Gating": 67.7},
}
PAPER_NOTE = (
    "The paper reports accuracy (%) averaged over its 10 subject-independent folds (Sec. V-A) "
    "and does not say at which gate Tables I and II are measured. We read them as the last "
    "gate (the whole clip): the gating paradigm accumulates the windows, Sec. V-D says the "
    "rates over gates are 'gradually ascending', and the confusion matrices (Fig. 6) are "
    "taken 'in the last segment'. We take Table I's column to be the AV embedding: its best "
    "rows equal Table II's AV-Gating (67.7 RAVDESS, 74.0 CREMA-D). So every 'Paper' number here sits "
    "beside our last-gate accuracy of the named modality. The paper gives no std and no UAR. "
    "Its window placement (fixed 0.5 s hop or spread over the clip, docs/design.md) is unknown: "
    "the same paper number is shown for both window modes of a row.")

PAPER_NUM_FOLDS = 10  # Sec. V-A: "The reported results are the average of these 10-folds."

_DATASET_ALIASES = {"crema_d": "crema_d_av", "cremad": "crema_d_av"}
_DATASET_TITLES = {"ravdess": "RAVDESS", "crema_d_av": "CREMA-D", "synthetic_av": "synthetic"}


def canonical_dataset(name: str) -> str:
  """'crema_d' -> 'crema_d_av'; other names unchanged."""
  return _DATASET_ALIASES.get(name, name)


def _base_windowing(config: str) -> str:
  return config[:-len("_fit")] if config.endswith("_fit") else config


def describe_windowing(config: str) -> str:
  """'w8_l1_ov' -> '8 windows x 1 s, 0.5 s overlap (fixed hop)'."""
  from avjax.data import windows
  try:
    spec = windows.parse_name(config)
  except ValueError:
    return config
  ov = f"{spec.overlap:g} s overlap" if spec.overlap > 0 else "no overlap"
  mode = {"fixed": "fixed hop", "fit": "fit to clip", "apex": "the loudest part of the clip"}[spec.mode]
  plural = "s" if spec.num_windows != 1 else ""
  return f"{spec.num_windows} window{plural} x {spec.length:g} s, {ov} ({mode})"


def paper_references(dataset: str, config: str, variant: str, modalities: str) -> list[dict[str, Any]]:
  """The paper's numbers that a run of (dataset, windowing, variant, modalities) reproduces.

  Returns [{'table': 'I'|'II', 'row': str, 'paper_label': str, 'modality': 'AO'|'VO'|'AV',
  'accuracy': percent}], compared with our last-gate accuracy of that modality.
  """
  ds = canonical_dataset(dataset)
  base = _base_windowing(config)
  default = config_lib.DATASETS[ds]["table1"][0] if ds in config_lib.DATASETS else None
  refs = []
  if variant == "gating" and base in PAPER_TABLE1.get(ds, {}):
    refs.append({"table": "I", "row": base, "paper_label": f"{_DATASET_TITLES.get(ds, ds)} "
                 f"{describe_windowing(base).split(' (')[0]}", "modality": "AV",
                 "accuracy": PAPER_TABLE1[ds][base]})
  run_arg = {"gating": "gating", "lstm": "lstm", "global": "global"}.get(variant)
  if run_arg is None or ds not in PAPER_TABLE2:
    return refs
  if modalities in ("audio", "video"):
    run_arg = f"{modalities}_{variant}"
  # The gating and LSTM rows of Table II use the default windowing; `global` has one window.
  if variant != "global" and base != default:
    return refs
  for name, label, arg, modality in TABLE2_ROWS:
    if arg == run_arg:
      refs.append({"table": "II", "row": name, "paper_label": label, "modality": modality,
                   "accuracy": PAPER_TABLE2[ds][name]})
  return refs


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
# Shared fields added after the first release: what a fold_info.json without one was run with
# (None: not recorded; older folds did not say their MSE weight).
_LATER_DEFAULTS = {"negatives": "hardest", "center_audio_head": False, "center_video_head": False,
                   "distance": "squared", "batch_all_epochs": 0, "margin": 1.0,
                   "mse_weight": None, "optimizer": "adam", "learning_rate": None,
                   "weight_decay": None}


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
  for key, value in _LATER_DEFAULTS.items():
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
  for path in glob.glob(os.path.join(workdir, "fold_*")):
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
# results.json and results.md.

def _pct(x: float | None, digits: int = 1) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _pm(mean: float, std: float | None) -> str:
  return f"{_pct(mean)} ± {_pct(std)}" if std is not None else f"{_pct(mean)}"


def summary_row(summary: list[Mapping[str, Any]], modality: str, gate: int | None = None) -> Mapping[str, Any] | None:
  """The summary row of `modality` at `gate` (default: the last gate), or None."""
  rows = [r for r in summary if r["modality"] == modality]
  if not rows:
    return None
  gate = max(r["gate"] for r in rows) if gate is None else gate
  return next((r for r in rows if r["gate"] == gate), None)


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
        "trunk_lr_scale": float(info.get("trunk_lr_scale", 1.0)),
    })
    for m in MODALITIES:
      if f"pred_{m}" in preds:
        cm = confusion_matrix(preds[f"pred_{m}"][-1], labels, num_classes)
        confusion[m] = confusion.get(m, 0) + cm
  summary = aggregate(rows)
  refs = paper_references(first["dataset"], first["config"], first["variant"], first["modalities"])
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
      **{key: first.get(key, value) for key, value in _LATER_DEFAULTS.items()},
      "conventions": {
          "metrics": "accuracy and uar are fractions in [0, 1]; paper numbers are percent",
          "accuracy": "correct / n over exactly the fold's held-out clips",
          "uar": "mean recall over the classes present among the fold's true labels",
          "std": "sample standard deviation over folds (ddof=1); null with one fold",
          "ci95": "half-width of the 95 % confidence interval of the mean over folds, "
                  "Student's t with folds - 1 degrees of freedom; null with one fold",
          "gate": "1-based; gate t sees windows 1..t",
          "confusion_last_gate": "counts summed over folds, rows true class, columns predicted",
          "paper": PAPER_NOTE,
      },
      "folds": fold_meta,
      "rows": rows,
      "summary": summary,
      "confusion_last_gate": {m: cm.tolist() for m, cm in confusion.items()},
      "paper": refs,
      "generated_by": f"avjax {__version__}",
  }


def describe_checkpoints(folds: list[Mapping[str, Any]]) -> str:
  """Which checkpoint each fold's numbers come from, in one line of results.md."""
  parts = []
  for f in folds:
    how, step = f.get("selected_by"), f.get("checkpoint_step")
    if how is None:
      parts.append(f"fold {f['fold']}: not recorded (written by an earlier version)")
    elif how == "last":
      parts.append(f"fold {f['fold']}: last (step {step})")
    else:
      parts.append(f"fold {f['fold']}: best by {how.replace('_', ' ').replace(':', ' ')} "
                   f"(step {step})")
  if all(f.get("selected_by") == "last" for f in folds):
    steps = sorted({f.get("checkpoint_step") for f in folds})
    return ("the last checkpoint of each fold, no model selection (step "
            + ", ".join(map(str, steps)) + ")")
  return "; ".join(parts)


def trunk_label(trunk: str) -> str:
  """How a table names results of `model.trunk` (empty for the paper's recipe)."""
  if trunk == "finetune":
    return ""
  return "frozen trunks" if trunk == "frozen" else f"trunks fixed below {trunk.split(':', 1)[1]}"


def describe_trunk(folds: list[Mapping[str, Any]]) -> str:
  """The `model.trunk` of the folds, in one line of results.md."""
  trunks = sorted({f.get("trunk", "finetune") for f in folds})
  if trunks == ["finetune"]:
    return ("finetune (the paper's recipe: the pretrained encoders fine-tuned end to end)"
            + _trunk_lr_text(folds))
  views = sorted({f.get("cached_views", 0) for f in folds})
  text = ", ".join(trunks)
  if trunks == ["frozen"]:
    text = ("**frozen trunks** (model.trunk='frozen'): the pretrained encoders did not learn, "
            "only the heads and LSTMs did, on cached encoder features; NOT the paper's recipe")
  elif all(t.startswith("finetune_from:") for t in trunks):
    text = (f"**{text}**: the encoders' layers up to that endpoint were fixed and cached, "
            "those above it fine-tuned; NOT the paper's recipe")
  else:
    text = f"**mixed**: {text}"
  text += f"; cached augmented views: {', '.join(map(str, views))}"
  return text + _trunk_lr_text(folds)


def _trunk_lr_text(folds: list[Mapping[str, Any]]) -> str:
  """'' when every fold trained its trunk layers at the full rate (or froze them)."""
  scales = sorted({float(f.get("trunk_lr_scale", 1.0)) for f in folds
                   if f.get("trunk", "finetune") != "frozen"})
  if scales in ([], [1.0]):
    return ""
  return (f"; trunk layers trained at {', '.join(f'{x:g}' for x in scales)} x the learning "
          "rate (optim.trunk_lr_scale)")


def describe_loss(doc: Mapping[str, Any]) -> str:
  """The triplet distance, margin and MSE weight of a results document, in words."""
  distance = doc.get("distance", _LATER_DEFAULTS["distance"])
  text = ("squared Euclidean distances" if distance == "squared" else
          f"{distance} distances (loss.distance, not the paper's squared ones)")
  text += f", margin {doc.get('margin', _LATER_DEFAULTS['margin']):g}"
  weight = doc.get("mse_weight")
  if doc.get("variant") == "gating":
    text += ("; audio-video MSE weight not recorded" if weight is None else
             f"; audio-video MSE weight {weight:g}" + ("" if weight == 1.0 else " (not the paper's 1)"))
  return text


def describe_optimizer(doc: Mapping[str, Any]) -> str:
  """The optimiser of a results document, in words."""
  name = doc.get("optimizer", _LATER_DEFAULTS["optimizer"])
  lr, wd = doc.get("learning_rate"), doc.get("weight_decay")
  text = ("AdamW (decoupled weight decay, torch.optim.AdamW)" if name == "adamw" else
          "Adam with the weight decay added to the gradient (torch.optim.Adam, `paper_literal`)")
  if lr is None or wd is None:
    return text + "; learning rate and weight decay not recorded"
  return text + f", learning rate {lr:g}, weight decay {wd:g}"


def format_markdown(doc: Mapping[str, Any]) -> str:
  """results.md text from a results.json document."""
  ds = canonical_dataset(doc["dataset"])
  folds = [f["fold"] for f in doc["folds"]]
  n_total = sum(f["n"] for f in doc["folds"])
  mining = {True: "MWTSM", False: "batch-hard (MWTSM off)"}.get(doc.get("exclude_used"), "unknown")
  if doc.get("negatives", _LATER_DEFAULTS["negatives"]) == "semihard":
    mining += ", semi-hard triplets only (loss.negatives='semihard', not the paper's hardest)"
  warm = doc.get("batch_all_epochs", _LATER_DEFAULTS["batch_all_epochs"])
  if warm:
    mining = (f"batch-all triplets for the first {warm} epoch{'s' * (warm != 1)} "
              f"(the warm-up: loss.batch_all_fraction or batch_all_epochs; not the paper's), then {mining}")
  lines = [
      f"# Results: {_DATASET_TITLES.get(ds, ds)}, `{doc['config']}`, variant `{doc['variant']}`",
      "",
      f"- windowing: {describe_windowing(doc['config'])}; gates: {doc['num_windows']}",
      f"- modalities: {doc['modalities']}; KNN k = {doc['k']}; triplet mining: {mining}",
      f"- folds evaluated: {len(folds)} of {PAPER_NUM_FOLDS} ({', '.join(map(str, folds))}); "
      f"{n_total} held-out clips in all",
      f"- loss: {describe_loss(doc)}",
      f"- optimiser: {describe_optimizer(doc)}",
      f"- checkpoints: {describe_checkpoints(doc['folds'])}",
      f"- trunk: {describe_trunk(doc['folds'])}",
      *([f"- {m} head: its input centred (`model.center_{m}_head`), **not the paper's head**"
         for m in ("audio", "video") if doc.get(f"center_{m}_head")]),
      *(["- **not the paper's protocol**: the dataset was built from the folds whose actors' "
         "files were present (`allow_missing_folds`); training used those folds only"]
        if any(f.get("allow_missing_folds") for f in doc["folds"]) else []),
      "- accuracy and UAR in %, mean ± sample std (ddof = 1) over folds, then the 95 % "
      "confidence interval of the mean (Student's t over the folds); each fold's accuracy is "
      "over exactly its held-out clips; UAR = mean recall over the classes present in the fold.",
  ]
  if len(folds) < PAPER_NUM_FOLDS:
    lines.append(f"- **partial**: the paper averages 10 folds; these numbers average {len(folds)}.")
  refs_by_modality: dict[str, list[Mapping[str, Any]]] = {}
  for ref in doc["paper"]:
    refs_by_modality.setdefault(ref["modality"], []).append(ref)
  summary = doc["summary"]
  for m in MODALITIES:
    rows = [r for r in summary if r["modality"] == m]
    if not rows:
      continue
    last = max(r["gate"] for r in rows)
    refs = refs_by_modality.get(m, [])
    lines += ["", f"## {m}", ""]
    header = "| Gate | Accuracy % | 95 % CI | UAR % | Folds |"
    sep = "|---:|---:|---:|---:|---:|"
    if refs:
      header += " Paper accuracy % (last gate) |"
      sep += "---|"
    lines += [header, sep]
    for r in rows:
      cells = [f"{r['gate']}{' (last)' if r['gate'] == last else ''}",
               _pm(r["accuracy_mean"], r["accuracy_std"]),
               _interval(r["accuracy_mean"], r.get("accuracy_ci95")),
               _pm(r["uar_mean"], r["uar_std"]), str(r["num_folds"])]
      if refs:
        cells.append("; ".join(f"{ref['accuracy']:.1f} (Table {ref['table']}, {ref['paper_label']})"
                               for ref in refs) if r["gate"] == last else "")
      lines.append("| " + " | ".join(cells) + " |")
  if doc["paper"]:
    lines += ["", "## Next to the paper (last gate)", "",
              "| Table | Paper row | Modality | Ours % | Paper % | Ours − paper |",
              "|---|---|---|---:|---:|---:|"]
    for ref in doc["paper"]:
      ours = ref.get("ours_accuracy_mean")
      diff = "–" if ours is None else f"{100 * ours - ref['accuracy']:+.1f}"
      lines.append(f"| {ref['table']} | {ref['paper_label']} | {ref['modality']} | "
                   f"{_pm(ours, ref.get('ours_accuracy_std')) if ours is not None else '–'} | "
                   f"{ref['accuracy']:.1f} | {diff} |")
    lines += ["", PAPER_NOTE]
  else:
    lines += ["", "No number in the paper's Tables I and II corresponds to this configuration."]
  # Per-fold last-gate accuracy: the raw material of the means above.
  present = [m for m in MODALITIES if any(r["modality"] == m for r in summary)]
  by_fold: dict[int, dict[str, float]] = {}
  last_gate = {m: max(r["gate"] for r in summary if r["modality"] == m) for m in present}
  for r in doc["rows"]:
    if r["gate"] == last_gate[r["modality"]]:
      by_fold.setdefault(r["fold"], {})[r["modality"]] = r["accuracy"]
  lines += ["", "## Per fold (last gate accuracy %)", "",
            "| Fold | Clips | " + " | ".join(present) + " |",
            "|---:|---:|" + "---:|" * len(present)]
  for f in doc["folds"]:
    accs = by_fold.get(f["fold"], {})
    lines.append(f"| {f['fold']} | {f['n']} | " + " | ".join(_pct(accs.get(m)) for m in present) + " |")
  lines += _recall_table(doc, present)
  lines.append("")
  return "\n".join(lines)


def _interval(mean: float, half: float | None) -> str:
  return "–" if half is None else f"[{100 * (mean - half):.1f}, {100 * (mean + half):.1f}]"


def _recall_table(doc: Mapping[str, Any], present: list[str]) -> list[str]:
  """Per-class recall at the last gate over every held-out clip (from the confusion
  matrices summed over folds, Fig. 6's counts)."""
  confusion = {m: np.asarray(doc["confusion_last_gate"][m], np.int64) for m in present
               if m in doc.get("confusion_last_gate", {})}
  if not confusion:
    return []
  lines = ["", "## Per-class recall, last gate (% of each class's held-out clips, all folds)", "",
           "| Class | Clips | " + " | ".join(confusion) + " |",
           "|---|---:|" + "---:|" * len(confusion)]
  counts = next(iter(confusion.values())).sum(axis=1)
  for c, name in enumerate(doc["class_names"]):
    cells = [_pct(cm[c, c] / counts[c] if counts[c] else None) for cm in confusion.values()]
    lines.append(f"| {name} | {int(counts[c])} | " + " | ".join(cells) + " |")
  return lines


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  if isinstance(x, float) and math.isnan(x):
    return None
  return x


def write_results(workdir: str) -> tuple[str, str]:
  """Aggregates every finished `workdir/fold_k/` into results.json and results.md.

  Returns (results_json_path, results_md_path).
  """
  doc = build_results(load_folds(workdir))
  json_path = os.path.join(workdir, workdir_lib.RESULTS_JSON)
  md_path = os.path.join(workdir, workdir_lib.RESULTS_MD)
  workdir_lib.write_text(json_path, json.dumps(_jsonable(doc), indent=1, allow_nan=False) + "\n")
  workdir_lib.write_text(md_path, format_markdown(doc))
  return json_path, md_path


def load_results(path: str) -> dict[str, Any]:
  """Reads a results.json, checking its schema version."""
  workdir = os.path.dirname(os.path.abspath(path))
  doc = workdir_lib.read_json(path, f"remove it: python -m avjax.evaluate --workdir={workdir} "
                                    "writes it again")
  version = doc.get("schema_version")
  if version != SCHEMA_VERSION:
    raise ValueError(f"{path}: schema_version {version!r}, this avjax reads {SCHEMA_VERSION}")
  return doc


def load_or_rebuild_results(workdir: str) -> dict[str, Any]:
  """`workdir/results.json`; one that does not read back is written again from the fold
  files first (it is derived from them), saying so in one line."""
  path = os.path.join(workdir, workdir_lib.RESULTS_JSON)
  try:
    return load_results(path)
  except errors.CorruptFileError as e:
    print(f"{path} cannot be read ({e.reason}): writing it again from the fold files",
          flush=True)
  write_results(workdir)
  return load_results(path)
