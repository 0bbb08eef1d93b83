r"""Inference on new videos: per-gate emotion predictions of a trained model.

Legend: T windows (gates), F frames per window, H = W stored frame size, X crop
size, S audio samples per window, N reference clips, G gate-embedding size,
C classes.

  python -m avjax.predict --workdir=runs/ravdess clip.mp4 other.flv [--json]
      [--fold=K] [--checkpoint=latest|best] [--face_crop] [--same_speaker]

For each file: decode it with PyAV (any container and codecs FFmpeg reads, any
frame rate, size, sample rate and channel count), preprocess it exactly as the
model's data set was built (video resampled to the data set's fps and resized
to its stored H x H frames, whole frame or centre square as the builder did;
audio downmixed to mono and resampled to its rate with soxr; the clip cut into
the model's T windows with `clip_records.cut_windows`), take the evaluation centre
crop (X x X), run the model, and at every gate classify the gate embeddings of
AO (h^a_t), VO (h^v_t) and AV ([h^a_t, h^v_t]) with KNN (k from the config)
among the training embeddings of `fold_k/reference_bank.npz`, written by
`avjax.evaluate` (see docs/results_schema.md). Scores are the fractions of the
k neighbours voting for each class; the prediction is their first maximum
(`avjax.knn`, as in evaluation).

A model trained with `input.speaker_centering` (the `cpu` token's) centres every
clip's features by its speaker's mean: give it several clips of one speaker with
`--same_speaker`, and each is classified after subtracting the mean features of all
of them that could be read.

Details, JSON keys and exit codes: docs/predict.md.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from absl import flags

from avjax import cli
from avjax import errors
from avjax import predictor as predictor_lib

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# --------------------------------------------------------------------------- output


def format_table(result: dict[str, Any]) -> str:
  """A readable table: one row per gate and modality, the class scores as columns."""
  names = result["class_names"]
  width = max(6, *(len(n) for n in names))
  model = result["model"]
  streams = " and ".join(s for s, h in (("audio", result["has_audio"]),
                                         ("video", result["has_video"])) if h)
  lines = [f"{result['file']}: {result['duration']:.2f} s, {streams}; "
           f"{result['num_valid_gates']} of {len(result['gates'])} gates valid; "
           f"model fold {model['fold']} step {model['step']} ({model['checkpoint']}), "
           f"k = {model['k']}"]
  lines += [f"  note: {n}" for n in result["notes"]]
  pred_w = max(10, width)
  header = (f"  {'gate':>4} {'start':>6} {'valid':>5}  {'mod':<3} {'prediction':<{pred_w}}"
            + "".join(f" {n:>{width}}" for n in names))
  lines.append(header)
  for row in result["gates"]:
    first = True
    for m in result["modalities"]:
      lead = (f"  {row['gate']:>4} {row['start']:>5.2f}s {row['valid_fraction']:>5.2f}" if first
              else " " * 19)
      first = False
      if row[m] is None:
        lines.append(f"{lead}  {m:<3} {'invalid (window starts after the clip ends)'}")
        continue
      scores = "".join(f" {row[m]['scores'][n]:>{width}.2f}" for n in names)
      lines.append(f"{lead}  {m:<3} {row[m]['emotion']:<{pred_w}}{scores}")
  if result["prediction"]:
    final = ", ".join(f"{m} {p['emotion']}" for m, p in result["prediction"].items())
    gate = next(iter(result["prediction"].values()))["gate"]
    lines.append(f"  prediction (gate {gate}, the last valid one): {final}")
  return "\n".join(lines)


def _error_line(path: str, reason: str) -> str:
  return f"avjax.predict: {path}: {reason}"


# --------------------------------------------------------------------------- command line


DESCRIPTION = ("Per-gate emotion predictions (AO, VO, AV) of a trained avjax model on video "
               "files. Exit status: 0 all files ok, 1 some failed, 2 usage error.")
USAGE = "python -m avjax.predict --workdir=DIR [--json] [--fold=K] [--checkpoint=latest|best] " \
        "[--face_crop] [--same_speaker] VIDEO [VIDEO ...]"


def flag_values() -> flags.FlagValues:
  """The command line's absl flags, on their own FlagValues (the entry points' convention,
  without touching the process's global FLAGS: `main` runs any number of times)."""
  fv = flags.FlagValues()
  cli.define_workdir("A workdir written by avjax.main.", flag_values=fv)
  flags.DEFINE_bool("json", False, "One JSON object per line per file.", flag_values=fv)
  flags.DEFINE_integer("fold", None, "Whose model and bank (default: the first of "
                       "config.folds with a bank).", flag_values=fv)
  flags.DEFINE_enum("checkpoint", None, ["latest", "best"],
                    "Which checkpoint (its step must equal the bank's). Default: the one "
                    "training reported, 'best' for a run with a validation fold, else 'latest'.",
                    flag_values=fv)
  flags.DEFINE_bool("same_speaker", False, "The files are clips of one speaker, centred "
                    "together by their mean features (needed by, and only by, a model "
                    "trained with input.speaker_centering, e.g. the `cpu` token's).",
                    flag_values=fv)
  flags.DEFINE_bool("face_crop", False, "Crop the largest face before resizing (needs "
                    "opencv-python-headless<5).", flag_values=fv)
  fv.set_gnu_getopt(True)          # flags before or after the files
  return fv


def _parse(argv: Sequence[str]) -> tuple[flags.FlagValues, list[str]]:
  """(flags, the VIDEO files) of `argv` (without the program name); flags.Error when bad."""
  argv = ["--face_crop" if a == "--face-crop" else a for a in argv]   # the documented alias
  fv = flag_values()
  videos = fv(["avjax.predict", *argv])[1:]
  return fv, videos


def _predict_one(predictor, path: str) -> tuple[str, dict | None, str | None]:
  """(path, result, None), or (path, None, why it failed)."""
  return (path, *predictor_lib.attempt(path, predictor.predict))


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (see docs/predict.md)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv):
    print(f"usage: {USAGE}\n\n{DESCRIPTION}\n\n{flag_values().main_module_help()}")
    return EXIT_OK
  try:
    args, videos = _parse(argv)
  except flags.Error as e:
    print(f"avjax.predict: error: {e}\nusage: {USAGE}", file=sys.stderr)
    return EXIT_USAGE
  if not videos:
    print("avjax.predict: error: no VIDEO files given", file=sys.stderr)
    return EXIT_USAGE
  try:
    predictor = predictor_lib.Predictor(args.workdir, fold=args.fold, checkpoint=args.checkpoint,
                                        face_crop=args.face_crop,
                                        same_speaker=args.same_speaker)
  except errors.UsageError as e:
    print(f"avjax.predict: error: {e}", file=sys.stderr)
    return EXIT_USAGE
  failed = 0
  outcomes = (predictor.predict_speaker(videos) if args.same_speaker
              else (_predict_one(predictor, path) for path in videos))
  for path, result, reason in outcomes:
    if result is not None:
      print(json.dumps(result) if args.json else format_table(result) + "\n", flush=True)
      continue
    failed += 1
    print(_error_line(path, reason), file=sys.stderr, flush=True)
    if args.json:
      print(json.dumps({"file": path, "ok": False, "error": reason}), flush=True)
  return EXIT_FAILED if failed else EXIT_OK


if __name__ == "__main__":
  try:
    sys.exit(main())
  except KeyboardInterrupt:   # nothing is written: the files printed so far are done
    print("avjax.predict: interrupted", file=sys.stderr)
    sys.exit(130)
