"""results.json and results.md: our numbers beside the paper's, written from the finished
folds of a workdir (the document itself is built by `avjax.results`)."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

from avjax import compat
from avjax import errors
from avjax import paper
from avjax import results
from avjax import workdir as workdir_lib


def _pct(x: float | None, digits: int = 1) -> str:
  return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def _pm(mean: float, std: float | None) -> str:
  return f"{_pct(mean)} ± {_pct(std)}" if std is not None else f"{_pct(mean)}"


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
            + _trunk_lr_text(folds) + _audio_head_text(folds))
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
  return text + _trunk_lr_text(folds) + _audio_head_text(folds) + _speaker_text(folds)


def _audio_head_text(folds: list[Mapping[str, Any]]) -> str:
  """'' unless SoundNet's head pooled another layer or statistic than the paper's (conv7's
  mean over time: `model.audio_head_layer`, `model.audio_head_stats`)."""
  heads = sorted({(str(f.get("audio_head_layer", "conv7")), str(f.get("audio_head_stats", "mean")))
                  for f in folds})
  if heads == [("conv7", "mean")]:
    return ""
  said = ", ".join(f"{layer}'s {'mean and std' if stats == 'mean_std' else 'mean'} over time"
                   for layer, stats in heads)
  return (f"; SoundNet's head on {said} (model.audio_head_layer, model.audio_head_stats; "
          "the paper's is conv7's mean)")


def _speaker_text(folds: list[Mapping[str, Any]]) -> str:
  """'' unless some fold centred its features per actor (`input.speaker_centering`)."""
  centred = [bool(f.get("speaker_centering", False)) for f in folds]
  if not any(centred):
    return ""
  which = "every fold" if all(centred) else f"{sum(centred)} of {len(centred)} folds"
  scaled = [bool(f.get("speaker_scaling", False)) for f in folds]
  scaling = ""
  if any(scaled):
    scaling = (", then divided by that actor's standard deviation (input.speaker_scaling, "
               + ("every fold" if all(scaled) else f"{sum(scaled)} of {len(scaled)} folds") + ")")
  return ("; **features centred per actor** (input.speaker_centering, " + which + "): each "
          "clip's cached features minus its actor's mean over all of that actor's clips, the "
          "test actors' unlabelled clips included" + scaling + "; NOT the paper's protocol")


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
  distance = doc.get("distance", compat.FOLD_INFO_BEFORE["distance"])
  text = ("squared Euclidean distances" if distance == "squared" else
          f"{distance} distances (loss.distance, not the paper's squared ones)")
  text += f", margin {doc.get('margin', compat.FOLD_INFO_BEFORE['margin']):g}"
  weight = doc.get("mse_weight")
  if doc.get("variant") == "gating":
    text += ("; audio-video MSE weight not recorded" if weight is None else
             f"; audio-video MSE weight {weight:g}" + ("" if weight == 1.0 else " (not the paper's 1)"))
  return text


def describe_optimizer(doc: Mapping[str, Any]) -> str:
  """The optimiser of a results document, in words."""
  name = doc.get("optimizer", compat.FOLD_INFO_BEFORE["optimizer"])
  lr, wd = doc.get("learning_rate"), doc.get("weight_decay")
  text = ("AdamW (decoupled weight decay, torch.optim.AdamW)" if name == "adamw" else
          "Adam with the weight decay added to the gradient (torch.optim.Adam, `paper_literal`)")
  if lr is None or wd is None:
    return text + "; learning rate and weight decay not recorded"
  return text + f", learning rate {lr:g}, weight decay {wd:g}"


def format_markdown(doc: Mapping[str, Any]) -> str:
  """results.md text from a results.json document."""
  ds = paper.canonical_dataset(doc["dataset"])
  folds = [f["fold"] for f in doc["folds"]]
  n_total = sum(f["n"] for f in doc["folds"])
  mining = {True: "MWTSM", False: "batch-hard (MWTSM off)"}.get(doc.get("exclude_used"), "unknown")
  if doc.get("negatives", compat.FOLD_INFO_BEFORE["negatives"]) == "semihard":
    mining += ", semi-hard triplets only (loss.negatives='semihard', not the paper's hardest)"
  warm = doc.get("batch_all_epochs", compat.FOLD_INFO_BEFORE["batch_all_epochs"])
  if warm:
    mining = (f"batch-all triplets for the first {warm} epoch{'s' * (warm != 1)} "
              f"(the warm-up: loss.batch_all_fraction; not the paper's), then {mining}")
  lines = [
      f"# Results: {paper.DATASET_TITLES.get(ds, ds)}, `{doc['config']}`, variant `{doc['variant']}`",
      "",
      f"- windowing: {paper.describe_windowing(doc['config'])}; gates: {doc['num_windows']}",
      f"- modalities: {doc['modalities']}; KNN k = {doc['k']}; triplet mining: {mining}",
      f"- folds evaluated: {len(folds)} of {paper.PAPER_NUM_FOLDS} ({', '.join(map(str, folds))}); "
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
  if len(folds) < paper.PAPER_NUM_FOLDS:
    lines.append(f"- **partial**: the paper averages 10 folds; these numbers average {len(folds)}.")
  hashes = sorted({f["config_hash"] for f in doc["folds"] if f.get("config_hash")})
  if len(hashes) > 1:
    lines.append(f"- **folds trained with {len(hashes)} configurations** (config_hash "
                 f"{', '.join(hashes)}; `--config_mismatch=ok`): compare the folds' "
                 "`fold_k/config.json` before reading these numbers as one protocol.")
  refs_by_modality: dict[str, list[Mapping[str, Any]]] = {}
  for ref in doc["paper"]:
    refs_by_modality.setdefault(ref["modality"], []).append(ref)
  summary = doc["summary"]
  for m in results.MODALITIES:
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
    lines += ["", paper.PAPER_NOTE]
  else:
    lines += ["", "No number in the paper's Tables I and II corresponds to this configuration."]
  # Per-fold last-gate accuracy: the raw material of the means above.
  present = [m for m in results.MODALITIES if any(r["modality"] == m for r in summary)]
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
  """The 95 % interval in percent, within the 0-100 an accuracy can take (with few folds
  t's interval reaches past them: 2 folds, t = 12.7)."""
  if half is None:
    return "–"
  return f"[{max(0.0, 100 * (mean - half)):.1f}, {min(100.0, 100 * (mean + half)):.1f}]"


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
  doc = results.build_results(results.load_folds(workdir))
  json_path = os.path.join(workdir, workdir_lib.RESULTS_JSON)
  md_path = os.path.join(workdir, workdir_lib.RESULTS_MD)
  workdir_lib.write_text(json_path, json.dumps(_jsonable(doc), indent=1, allow_nan=False) + "\n")
  workdir_lib.write_text(md_path, format_markdown(doc))
  return json_path, md_path


def load_or_rebuild_results(workdir: str) -> dict[str, Any]:
  """`workdir/results.json`; one that does not read back is written again from the fold
  files first (it is derived from them), saying so in one line."""
  path = os.path.join(workdir, workdir_lib.RESULTS_JSON)
  try:
    return results.load_results(path)
  except errors.CorruptFileError as e:
    print(f"{path} cannot be read ({e.reason}): writing it again from the fold files",
          flush=True)
  write_results(workdir)
  return results.load_results(path)
