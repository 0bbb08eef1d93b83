r"""The paper's figures from a cross-validation workdir, as PNG files.

Legend: T windows (gates), Q query clips of a fold, C classes, D embedding size.

Read from `<workdir>/fold_k/{predictions.npz, fold_info.json}` (see avjax/results.py):

* Fig. 3 `fig3_tsne.png`: t-SNE of the last-gate embeddings (emb_M [Q, D]) of the
  held-out clips of ONE fold (default: the lowest fold run), coloured by class, one
  panel per modality AO / VO / AV. One fold, because each fold has its own model and
  so its own embedding space: pooling the folds' queries would mix spaces.
* Fig. 4 `fig4_accuracy_per_gate.png`: accuracy per gate for AO, VO, AV, mean over
  folds with ± sample std (ddof = 1) as error bars; the paper's last-gate numbers
  (Tables I / II) as stars where one exists.
* Fig. 5 `fig5_positive_negative.png`: accuracy per gate over the clips of positive
  against negative emotions (a clip counts as right when its exact class is
  predicted), mean ± std over folds, for one modality (AV by default). Groups
  default to RAVDESS's (calm, happy / sad, angry, fearful, Sec. V-E); datasets
  lacking those class names are skipped with a log line unless groups are given.
  Training passes the config's (`eval.positive_classes`, `eval.negative_classes`):
  CREMA-D's, `POSITIVE_NEGATIVE_CREMA_D`, are not in the paper, which plots RAVDESS
  only; the legend names each group's classes.
* Fig. 6 `fig6_confusion.png`: confusion matrices at the last gate, counts summed
  over folds then row-normalised (rows true class), one panel per modality.

Matplotlib is used through `matplotlib.figure.Figure` (Agg canvas): no pyplot, no
global backend state.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging
from matplotlib.figure import Figure

from avjax import errors
from avjax import paper
from avjax import results
from avjax import workdir as workdir_lib

POSITIVE_NEGATIVE_RAVDESS = {"positive": ("calm", "happy"), "negative": ("sad", "angry", "fearful")}
# The analogous grouping for CREMA-D's class names (not in the paper: pass it explicitly).
POSITIVE_NEGATIVE_CREMA_D = {"positive": ("happy",), "negative": ("sad", "anger", "fear")}

FILENAMES = {
    "tsne": "fig3_tsne.png",
    "accuracy": "fig4_accuracy_per_gate.png",
    "positive_negative": "fig5_positive_negative.png",
    "confusion": "fig6_confusion.png",
}
_COLORS = {"AO": "tab:orange", "VO": "tab:blue", "AV": "tab:green"}
_DPI = 120

Folds = Sequence[tuple[Mapping[str, np.ndarray], Mapping[str, Any]]]


def _save(fig: Figure, path: str) -> str:
  """Writes `fig` as the PNG `path`, atomically (errors.StorageError when refused)."""
  folder = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(folder, exist_ok=True)
  except OSError as e:
    raise (errors.as_storage_error(e, folder, "create") or e) from e
  workdir_lib.write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI,
                                                         bbox_inches="tight"))
  return path


def _title(info: Mapping[str, Any]) -> str:
  ds = paper.canonical_dataset(info["dataset"])
  return f"{paper.DATASET_TITLES.get(ds, ds)}, {info['config']}, {info['variant']}"


def _present(preds: Mapping[str, np.ndarray], prefix: str) -> list[str]:
  return [m for m in results.MODALITIES if f"{prefix}_{m}" in preds]


def _gate_ticks(info: Mapping[str, Any], num_gates: int) -> tuple[list[int], list[str], str]:
  """x ticks: gate numbers, with the window's end time when windows have a fixed hop."""
  from avjax.data import windows
  gates = list(range(1, num_gates + 1))
  try:
    spec = windows.parse_name(info["config"])
  except ValueError:
    spec = None
  if spec is None or spec.mode != "fixed" or spec.num_windows != num_gates:
    return gates, [str(g) for g in gates], "gate"
  ends = spec.starts(0.0) + spec.length
  return gates, [f"{g}\n{e:g} s" for g, e in zip(gates, ends)], "gate (end of its window)"


def tsne_figure(folds: Folds, path: str, fold: int | None = None, perplexity: float | None = None,
                random_state: int = 0, max_iter: int = 1000) -> str | None:
  """Fig. 3: t-SNE of one fold's last-gate query embeddings. None if no emb_* arrays."""
  from sklearn.manifold import TSNE
  by_fold = {int(info["fold"]): (preds, info) for preds, info in folds}
  fold = min(by_fold) if fold is None else fold
  if fold not in by_fold:
    raise ValueError(f"t-SNE fold {fold} not among the evaluated folds {sorted(by_fold)}")
  preds, info = by_fold[fold]
  modalities = _present(preds, "emb")
  if not modalities:
    logging.warning("Fig. 3 skipped: fold %d has no emb_* arrays", fold)
    return None
  labels = np.asarray(preds["labels"])
  names = list(info["class_names"])
  n = len(labels)
  if n < 3:
    logging.warning("Fig. 3 skipped: fold %d has %d clips, too few for t-SNE", fold, n)
    return None
  perp = perplexity if perplexity is not None else min(30.0, max(1.0, (n - 1) / 3))
  cmap = _class_colors(len(names))
  fig = Figure(figsize=(4.6 * len(modalities), 5.0), layout="constrained")
  axes = fig.subplots(1, len(modalities), squeeze=False)[0]
  for ax, m in zip(axes, modalities):
    emb = np.asarray(preds[f"emb_{m}"], np.float64)  # [Q, D]
    xy = TSNE(n_components=2, perplexity=perp, init="pca", random_state=random_state,
              max_iter=max_iter).fit_transform(emb)
    for c, name in enumerate(names):
      sel = labels == c
      if sel.any():
        ax.scatter(xy[sel, 0], xy[sel, 1], s=14, color=cmap[c], label=name, alpha=0.85,
                   edgecolors="none")
    ax.set_title(f"{m} (D = {emb.shape[1]})")
    ax.set_xticks([])
    ax.set_yticks([])
  handles, labels_txt = axes[0].get_legend_handles_labels()
  fig.legend(handles, labels_txt, loc="outside lower center", ncol=min(len(names), 8),
             frameon=False, markerscale=1.5)
  fig.suptitle(f"Fig. 3: t-SNE of last-gate embeddings, held-out clips of fold {fold} "
               f"(n = {n}, perplexity {perp:.3g})\n{_title(info)}")
  return _save(fig, path)


def _class_colors(num: int) -> list:
  from matplotlib import colormaps
  cmap = colormaps["tab10" if num <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(num)]


def accuracy_per_gate_figure(doc: Mapping[str, Any], path: str) -> str:
  """Fig. 4: accuracy per gate, mean ± sample std over folds, per modality."""
  summary = doc["summary"]
  fig = Figure(figsize=(8.0, 4.6), layout="constrained")
  ax = fig.subplots()
  num_gates = 0
  for m in results.MODALITIES:
    rows = sorted((r for r in summary if r["modality"] == m), key=lambda r: r["gate"])
    if not rows:
      continue
    gates = np.array([r["gate"] for r in rows])
    mean = 100 * np.array([r["accuracy_mean"] for r in rows])
    std = np.array([np.nan if r["accuracy_std"] is None else 100 * r["accuracy_std"] for r in rows])
    ax.errorbar(gates, mean, yerr=None if np.isnan(std).all() else std, marker="o", capsize=3,
                color=_COLORS[m], label=m)
    num_gates = max(num_gates, len(gates))
  # The paper's numbers, beside the last gate (Table I and II give the same AV number).
  paper: dict[tuple[str, float], list[str]] = {}
  for ref in doc.get("paper", []):
    paper.setdefault((ref["modality"], ref["accuracy"]), []).append(ref["table"])
  for (m, acc), tables in paper.items():
    ax.plot([num_gates + 0.2], [acc], marker="*", markersize=13, linestyle="none",
            color=_COLORS[m], markeredgecolor="black",
            label=f"paper {m} {acc:.1f} (Table {'/'.join(tables)})")
  chance = 100 / len(doc["class_names"])
  ax.axhline(chance, color="gray", linestyle=":", linewidth=1, label=f"chance ({chance:.1f}%)")
  ticks, tick_labels, xlabel = _gate_ticks(doc, num_gates)
  ax.set_xticks(ticks, tick_labels)
  ax.set_xlim(0.5, num_gates + 0.5)
  ax.set_xlabel(xlabel)
  ax.set_ylabel("accuracy % (KNN)")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  fig.legend(fontsize=8, loc="outside right center")
  nf = len(doc["folds"])
  ax.set_title(f"Fig. 4: accuracy per gate, mean ± std over {nf} fold{'s' * (nf != 1)}\n"
               f"{_title(doc)}", fontsize=10)
  return _save(fig, path)


def group_accuracy(pred: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
  """Accuracy per gate [T] over the clips whose true class is in `classes` (NaN if none).

  pred [T, Q], labels [Q]; a clip is right when its exact class is predicted.
  """
  sel = np.isin(labels, np.asarray(classes))
  if not sel.any():
    return np.full(pred.shape[0], np.nan)
  return np.mean(pred[:, sel] == labels[sel][None], axis=1)


def positive_negative_figure(folds: Folds, path: str,
                             groups: Mapping[str, Sequence[str]] | None = None,
                             modality: str = "AV") -> str | None:
  """Fig. 5: positive against negative emotions' accuracy per gate; None when skipped."""
  info = folds[0][1]
  names = list(info["class_names"])
  explicit = groups is not None
  groups = dict(groups or POSITIVE_NEGATIVE_RAVDESS)
  missing = sorted({c for g in groups.values() for c in g} - set(names))
  if missing and explicit:
    raise ValueError(f"Fig. 5 groups name classes {missing} that {info['dataset']} lacks; "
                     f"its classes are {names}")
  if missing:
    logging.info("Fig. 5 skipped: classes %s not among %s (%s); pass groups= for this dataset",
                 missing, names, info["dataset"])
    return None
  preds0 = folds[0][0]
  if f"pred_{modality}" not in preds0:
    present = _present(preds0, "pred")
    logging.info("Fig. 5: no %s predictions, using %s", modality, present[-1])
    modality = present[-1]
  fig = Figure(figsize=(6.4, 5.0), layout="constrained")
  ax = fig.subplots()
  num_gates = 0
  for (group, classes), color in zip(groups.items(), ("tab:red", "tab:purple", "tab:gray")):
    idx = [names.index(c) for c in classes]
    per_fold = np.stack([group_accuracy(np.asarray(p[f"pred_{modality}"]), np.asarray(p["labels"]), idx)
                         for p, _ in folds])  # [folds, T]
    counts = [int(np.isin(p["labels"], idx).sum()) for p, _ in folds]
    valid = ~np.isnan(per_fold[:, 0])
    mean = 100 * per_fold[valid].mean(axis=0)
    std = 100 * per_fold[valid].std(axis=0, ddof=1) if valid.sum() > 1 else None
    gates = np.arange(1, per_fold.shape[1] + 1)
    num_gates = max(num_gates, len(gates))
    ax.errorbar(gates, mean, yerr=std, marker="o", capsize=3, color=color,
                label=f"{group}: {', '.join(classes)} ({sum(counts)} clips)")
  ticks, tick_labels, xlabel = _gate_ticks(info, num_gates)
  ax.set_xticks(ticks, tick_labels)
  ax.set_xlim(0.5, num_gates + 0.5)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(f"accuracy % over the group's clips ({modality})")
  ax.set_ylim(0, 100)
  ax.grid(alpha=0.3)
  fig.legend(fontsize=8, loc="outside lower center", ncol=1)
  nf = len(folds)
  ax.set_title(f"Fig. 5: positive vs negative emotions per gate, {modality}, mean ± std over "
               f"{nf} fold{'s' * (nf != 1)}\n{_title(info)}", fontsize=10)
  return _save(fig, path)


def confusion_figure(doc: Mapping[str, Any], path: str) -> str:
  """Fig. 6: row-normalised last-gate confusion matrices (folds pooled), one per modality."""
  names = list(doc["class_names"])
  cms = doc["confusion_last_gate"]
  modalities = [m for m in results.MODALITIES if m in cms]
  c = len(names)
  size = max(3.0, 0.4 * c + 1.2)
  fig = Figure(figsize=(size * len(modalities) + 1.0, size + 0.8), layout="constrained")
  axes = fig.subplots(1, len(modalities), squeeze=False)[0]
  image = None
  for i_ax, (ax, m) in enumerate(zip(axes, modalities)):
    cm = np.asarray(cms[m], np.float64)  # [C, C] counts, rows true
    support = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    image = ax.imshow(100 * norm, cmap="Blues", vmin=0, vmax=100)
    for i in range(c):
      for j in range(c):
        if support[i, 0] > 0:
          ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=7,
                  color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(c), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(c), names if i_ax == 0 else [], fontsize=8)
    ax.set_xlabel("predicted")
    if i_ax == 0:
      ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)
    ax.set_title(f"{m}: accuracy {100 * acc:.1f}% (n = {int(cm.sum())})", fontsize=9)
  fig.colorbar(image, ax=list(axes), shrink=0.8, label="% of the true class")
  fig.suptitle(f"Fig. 6: confusion matrices at the last gate, {len(doc['folds'])} fold(s) pooled, "
               f"row-normalised\n{_title(doc)}", fontsize=10)
  return _save(fig, path)


def make_all(workdir: str, out_dir: str | None = None,
             groups: Mapping[str, Sequence[str]] | None = None, tsne_fold: int | None = None,
             fig5_modality: str = "AV") -> list[str]:
  """Writes Figs. 3-6 for `workdir` into `out_dir` (default `workdir/figures`).

  Returns the paths written (Figs. 3 and 5 are left out when skipped; see module doc).
  """
  out_dir = out_dir or os.path.join(workdir, workdir_lib.FIGURES)
  folds = results.load_folds(workdir)
  doc = results.build_results(folds)
  paths = [
      tsne_figure(folds, os.path.join(out_dir, FILENAMES["tsne"]), fold=tsne_fold),
      accuracy_per_gate_figure(doc, os.path.join(out_dir, FILENAMES["accuracy"])),
      positive_negative_figure(folds, os.path.join(out_dir, FILENAMES["positive_negative"]),
                               groups=groups, modality=fig5_modality),
      confusion_figure(doc, os.path.join(out_dir, FILENAMES["confusion"])),
  ]
  return [p for p in paths if p is not None]
