r"""How many clips of a speaker a speaker-normalised model needs at inference.

A model trained with `input.speaker_centering` (the `cpu` token) centres every clip by
its speaker's mean feature, in training over each actor's 60 RAVDESS clips. At
inference `python -m avjax.predict --same_speaker` takes the mean over the files it is
given. This script measures what that costs: for each test fold of a workdir, each
test actor's clips are shuffled and cut into groups of K, each group is predicted as
one `--same_speaker` call (`Predictor.predict_speaker`), and the verdicts (AO, the last
valid gate, as predict gives them) are scored against the labels that evaluation
recorded (`fold_k/predictions.npz`). K = all of the actor's clips is the evaluation's
setting; the table also gives the evaluation's own last-gate accuracy.

  python scripts/speaker_clips.py --workdir=runs/aoglobal_cpu --manual_dir=DIR \
      --clips=2,5,10,20,60 --draws=3

`--manual_dir` holds the test clips as `<clip_id>.wav` files (RAVDESS: `Actor_XX/`
folders, searched recursively). Prints a Markdown table (accuracy % per K, mean ± std
over folds) and writes `<workdir>/speaker_clips.json`.
"""

from __future__ import annotations

import glob
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from avjax import cli  # noqa: E402

cli.define_workdir("A workdir trained with input.speaker_centering.")
flags.DEFINE_string("manual_dir", None, "Folder with the test actors' Actor_XX/*.wav files.")
flags.DEFINE_list("clips", ["2", "5", "10", "20", "60"], "Group sizes K (clips per call).")
flags.DEFINE_integer("draws", 3, "Random cuts into groups per K (K = all: one).")
flags.DEFINE_list("folds", [], "Test folds (default: every fold of the run with a model).")
flags.mark_flags_as_required(["manual_dir"])
FLAGS = flags.FLAGS


def groups(items: list, size: int, rng: np.random.Generator) -> list[list]:
  """`items` shuffled and cut into groups of `size`; a remainder joins the last group."""
  order = [items[i] for i in rng.permutation(len(items))]
  cut = [order[i:i + size] for i in range(0, len(order) - size + 1, size)]
  if len(order) % size and cut:
    cut[-1] += order[len(cut) * size:]
  return cut or [order]


def test_clips(saved: dict[str, np.ndarray], wavs: dict[str, str], fold: int
               ) -> dict[int, list[tuple[str, int]]]:
  """{actor: [(wav path, label)]} of a fold's test clips, from its predictions.npz."""
  out: dict[int, list[tuple[str, int]]] = {}
  for clip_id, label, actor in zip(saved["clip_id"], saved["labels"], saved["actor"]):
    clip_id = clip_id.decode() if isinstance(clip_id, bytes) else str(clip_id)
    if clip_id not in wavs:
      raise FileNotFoundError(f"{FLAGS.manual_dir}: no {clip_id}.wav (a test clip of fold {fold})")
    out.setdefault(int(actor), []).append((wavs[clip_id], int(label)))
  return out


def fold_accuracy(predictor, clips: dict[int, list[tuple[str, int]]], size: int,
                  draws: int) -> float:
  correct = total = 0
  for draw in range(draws):
    rng = np.random.default_rng(draw)
    for actor in sorted(clips):
      for group in groups(clips[actor], min(size, len(clips[actor])), rng):
        labels = dict(group)
        for path, result, reason in predictor.predict_speaker([p for p, _ in group]):
          if result is None:
            raise RuntimeError(f"{path}: {reason}")
          names = result["class_names"]
          correct += names.index(result["prediction"]["AO"]["emotion"]) == labels[path]
          total += 1
  return correct / total


def main(argv):
  del argv
  from avjax import predictor as predictor_lib
  from avjax import workdir as workdir_lib
  work = os.path.abspath(FLAGS.workdir)
  wavs = {os.path.splitext(os.path.basename(p))[0]: p
          for p in glob.glob(os.path.join(glob.escape(FLAGS.manual_dir), "**", "*.wav"), recursive=True)}
  banked = [f for f in workdir_lib.load_config(work).folds if os.path.isfile(
      os.path.join(workdir_lib.fold_dir(work, f), workdir_lib.REFERENCE_BANK))]
  folds = list(cli.parse_folds(FLAGS.folds)) if FLAGS.folds else banked
  missing = [f for f in folds if f not in banked]
  if missing or not folds:
    raise SystemExit(f"error: {work}: no fold_k/reference_bank.npz for test fold(s) "
                     f"{missing or 'any'}: evaluation writes them when config.eval.reference_bank "
                     "is True (avjax.main's default)")
  sizes = [int(k) for k in FLAGS.clips]
  table: dict[str, dict[int, float]] = {str(k): {} for k in sizes}
  table["evaluation"] = {}
  for fold in folds:
    path = os.path.join(workdir_lib.fold_dir(work, fold), workdir_lib.PREDICTIONS)
    with np.load(path, allow_pickle=False) as d:
      saved = {k: d[k] for k in ("clip_id", "labels", "actor", "pred_AO")}
    table["evaluation"][fold] = float(np.mean(saved["pred_AO"][-1] == saved["labels"]))
    clips = test_clips(saved, wavs, fold)
    predictor = predictor_lib.Predictor(work, fold=fold, same_speaker=True)
    for size in sizes:
      draws = 1 if all(size >= len(c) for c in clips.values()) else FLAGS.draws
      table[str(size)][fold] = fold_accuracy(predictor, clips, size, draws)
      print(f"fold {fold} K={size}: {100 * table[str(size)][fold]:.1f} %", flush=True)
  doc = {"workdir": work, "folds": folds, "draws": FLAGS.draws,
         "accuracy": {k: {str(f): v for f, v in row.items()} for k, row in table.items()}}
  with open(os.path.join(work, "speaker_clips.json"), "w") as f:
    json.dump(doc, f, indent=1)
  print("\n| clips per call (K) | AO accuracy % | per fold |\n|---|---:|---|")
  for key, row in table.items():
    acc = 100 * np.array([row[f] for f in folds])
    std = acc.std(ddof=1) if len(acc) > 1 else float("nan")
    name = "evaluation (last gate, all clips)" if key == "evaluation" else key
    print(f"| {name} | {acc.mean():.1f} ± {std:.1f} | {', '.join(f'{a:.1f}' for a in acc)} |")


if __name__ == "__main__":
  cli.run(main)
