"""What the training loop checks in the metrics it logs: a non-finite loss or gradient
stops the fold, naming it and the last good checkpoint (`check_finite`); gate
embeddings that collapse to one point are warned about once per modality
(`watch_collapse`, with `initial_distances` from metrics.jsonl for a resumed fold)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import logging

from avjax import workdir as workdir_lib

# The collapse warning: a modality's mean pairwise gate-embedding distance below this
# fraction of its value at the first log line of the fold.
COLLAPSE_FRACTION = 0.01


class NonFiniteLossError(FloatingPointError):
  pass


def check_finite(summary: dict, test_fold: int, step: int, fold_dir: str, last_good: dict) -> None:
  """Raises when any step averaged into `summary` had a non-finite loss or gradient."""
  if summary["nonfinite"] > 0 or not np.isfinite(summary["loss"]):
    if last_good["step"]:
      kept = (f"The last good checkpoint (step {last_good['step']}) is kept in "
              f"{workdir_lib.checkpoint_dir(fold_dir)}")
    else:
      kept = "No checkpoint was written before it (a rerun starts the fold from scratch)"
    raise NonFiniteLossError(
        f"Fold {test_fold}: the training loss or its gradients became non-finite by step {step} "
        f"(mean loss {summary['loss']}, gradient norm {summary['grad_norm']}); stopping. "
        f"{kept}; try a lower config.optim.learning_rate.")


def initial_distances(fold_dir: str) -> dict[str, float]:
  """The `distance_<m>` (and `param_norm`) metrics of the fold's first log line in
  metrics.jsonl (a resumed fold compares with the start of its training, not of the
  resumed part)."""
  path = os.path.join(fold_dir, workdir_lib.METRICS)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue
      found = {k: float(v) for k, v in record.items() if k.startswith("distance_")}
      if found:
        if "param_norm" in record:
          found["param_norm"] = float(record["param_norm"])
        return found
  return {}


def watch_collapse(summary: dict, initial: dict, warned: set, test_fold: int, step: int) -> None:
  """Adds `collapsed` (1.0 when a modality's gate embeddings collapsed) to `summary` and
  warns, once per modality, when one's mean distance falls below COLLAPSE_FRACTION of its
  initial value. The warning says how the trainable weights' norm (`param_norm`) moved:
  weights decayed towards 0 point at the weight decay (added to the gradient under Adam)
  outweighing a weak loss gradient, weights that kept their norm at saturated units."""
  collapsed = 0.0
  if "param_norm" in summary:
    initial.setdefault("param_norm", summary["param_norm"])
  norm0 = initial.get("param_norm")
  for key, value in summary.items():
    if not key.startswith("distance_"):
      continue
    first = initial.setdefault(key, value)
    if first > 0 and value < COLLAPSE_FRACTION * first:
      collapsed = 1.0
      modality = key[len("distance_"):]
      if modality not in warned:
        warned.add(modality)
        message = (f"fold {test_fold} step {step}: the {modality} gate embeddings have "
                   f"COLLAPSED: their mean pairwise distance is {value:.3g}, "
                   f"{value / first:.2%} of its initial {first:.3g} (every clip near one point; "
                   f"the triplet loss sits at the margin).")
        norm = summary.get("param_norm")
        if norm is not None and norm0:
          message += (f" The trainable weights' norm is {norm:.3g}, {norm / norm0:.1%} of its "
                      f"initial {norm0:.3g}" + (
                          ": the weights are decaying with them (the weight decay, added to "
                          "the gradient under Adam, outweighs the loss)." if norm < 0.5 * norm0
                          else "."))
        message += " See docs/experiments.md, 'Why A-LSTM collapses'."
        logging.warning(message)
        if jax.process_index() == 0:
          print("WARNING: " + message, flush=True)
  summary["collapsed"] = collapsed
