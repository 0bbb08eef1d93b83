r"""Times a whole frozen-trunk cross-validation on RAVDESS-shaped audio: build, extract, train, evaluate.

  python scripts/benchmark_frozen.py --workdir=/tmp/bench_frozen
  python scripts/benchmark_frozen.py --workdir=/tmp/bench_frozen --variant=audio_global --epochs=10
  python scripts/benchmark_frozen.py --workdir=/tmp/bench_frozen --video_extraction

The clips: the real speech WAVs of a development set (`--samples`: twelve actors, folds
4-9, 720 clips), each actor's files copied under the actor numbers of its gender in
turn (twice each for twelve actors), so that 24 actors and 1440 clips fill the ten
folds as in the real dataset. The copies make the held-out folds hold the training clips' audio: the
accuracy of this run means nothing, only its time does (the real shape: 8 windows
of 1 s at 22.05 kHz per clip, the real durations).

Runs `configs/ravdess.py:<variant>` with `model.trunk='frozen'` (pretrained
SoundNet-8, `audio_w8_l1_ov` records) in this process and times each part:
the dataset build, the feature extraction (clips/s), the training (steps/s, from
metrics.jsonl) and the whole. Writes `<workdir>/benchmark_frozen.json` and prints
a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

from absl import flags

from benchmarks import harness

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command line's flags on absl's FLAGS (the entry point calls it: the
  benchmarks' flags would collide if importing a module defined them)."""
  flags.DEFINE_string("workdir", None, "Scratch directory (data, features, runs).")
  flags.DEFINE_string("samples", str(harness.ROOT.parent / "shared" / "samples" / "ravdess_dev"),
                      "The ravdess_dev folder (FLAC + to_wav.py).")
  flags.DEFINE_string("variant", "audio_lstm",
                      "configs/ravdess.py variant: audio_lstm or audio_global.")
  flags.DEFINE_integer("epochs", 100, "Epochs per fold.")
  flags.DEFINE_string("folds", "0,1,2,3,4,5,6,7,8,9", "Test folds.")
  flags.DEFINE_multi_string("override", [], "Extra config overrides, field=value (e.g. "
                            "loss.margin=0.2); parsed as Python literals where possible.")
  flags.DEFINE_bool("video_extraction", False, "Only time the I3D feature extraction (pretrained "
                    "Kinetics weights, frozen trunk) of RAVDESS-shaped clips (8 windows x 25 frames "
                    "x 96^2) on this machine, with XLA's FLOP count; no dataset needed.")
  flags.DEFINE_integer("clips", 4, "Clips per timed call of --video_extraction.")
  flags.mark_flag_as_required("workdir")


def video_extraction(work: str) -> dict:
  """Seconds per clip of the frozen I3D extraction at the RAVDESS shape, and its FLOPs."""
  import functools

  import jax
  import numpy as np

  from avjax import config_lib
  from avjax import fixed_trunk
  from configs import ravdess
  config = config_lib.complete(ravdess.get_config("w8_l1_ov"))
  config.model.trunk = "frozen"
  info = {"frames_per_window": 25, "samples_per_window": 22050}
  window = fixed_trunk._window(config, "video", info)
  variables = fixed_trunk.trunk_variables(config, "video", window)
  enc = fixed_trunk.encoder(config, "video")
  fn = jax.jit(functools.partial(fixed_trunk._features, enc, "pooled"))
  n = FLAGS.clips * 8                                         # windows
  x = np.random.default_rng(0).integers(0, 256, (n,) + window.shape[1:], dtype=np.uint8)
  compiled, compile_s = harness.timed(lambda: fn.lower(variables, x).compile())
  flops = float(harness.cost_analysis(compiled).get("flops", float("nan")))
  times = harness.time_calls(lambda: compiled(variables, x), 3)
  per_clip = min(times) / FLAGS.clips
  return {"date": time.strftime("%Y-%m-%d"), "machine": harness.processor(),
          "cpu_count": os.cpu_count(), "backend": jax.default_backend(), "clips_per_call": FLAGS.clips,
          "compile_s": round(compile_s, 1), "s_per_clip": round(per_clip, 3),
          "clips_per_s": round(1 / per_clip, 2), "gflop_per_clip": round(flops / FLAGS.clips / 1e9, 1),
          "gflop_per_s": round(flops / min(times) / 1e9, 1),
          "ravdess_1440_clips_min": round(1440 * per_clip / 60, 1),
          "crema_d_7442_clips_6_windows_min": round(7442 * per_clip * 6 / 8 / 60, 1)}


def replicated_manual_dir(samples: str, dest: str) -> int:
  """24 actors from those of `samples`: the actor numbers of each gender (odd male, even
  female) taken by its real actors in turn. Returns the number of WAVs."""
  real = os.path.join(dest, "real")
  if not os.path.isdir(real):
    subprocess.run([sys.executable, os.path.join(samples, "to_wav.py"), real], check=True)
  actors = sorted(int(d[6:]) for d in os.listdir(real) if d.startswith("Actor_"))
  out = os.path.join(dest, "manual")
  if os.path.isdir(out):
    return len(glob.glob(os.path.join(out, "Actor_*", "*.wav")))
  for parity in (0, 1):
    mine = [a for a in actors if a % 2 == parity]
    targets = [a for a in range(1, 25) if a % 2 == parity]
    for i, target in enumerate(targets):
      source = mine[i % len(mine)]
      folder = os.path.join(out, f"Actor_{target:02d}")
      os.makedirs(folder, exist_ok=True)
      for wav in glob.glob(os.path.join(real, f"Actor_{source:02d}", "*.wav")):
        name = os.path.basename(wav).rsplit("-", 1)[0] + f"-{target:02d}.wav"
        shutil.copyfile(wav, os.path.join(folder, name))
  return len(glob.glob(os.path.join(out, "Actor_*", "*.wav")))


def _literal(text: str):
  import ast
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main(argv):
  del argv
  import jax

  from avjax import config_lib
  from avjax import feature_store
  from avjax import train
  from avjax.data import tfds_access
  from configs import ravdess

  work = os.path.abspath(FLAGS.workdir)
  os.makedirs(work, exist_ok=True)
  if FLAGS.video_extraction:
    doc = video_extraction(work)
    harness.write_json(os.path.join(work, "benchmark_video_extraction.json"), doc)
    print(json.dumps(doc, indent=1))
    return
  n_wavs = replicated_manual_dir(FLAGS.samples, work)
  config = ravdess.get_config(FLAGS.variant)
  config.model.trunk = "frozen"
  config.dataset.data_dir = os.path.join(work, "tfds")
  config.dataset.manual_dir = os.path.join(work, "manual")
  config.train.num_epochs = FLAGS.epochs
  config.folds = tuple(int(f) for f in FLAGS.folds.split(","))
  config.eval.figures = False
  for item in FLAGS.override:
    field, value = item.split("=", 1)
    group, name = field.removeprefix("config.").split(".")
    config[group][name] = _literal(value)
  config_lib.validate(config)
  run_dir = os.path.join(work, "run_" + FLAGS.variant)
  shutil.rmtree(run_dir, ignore_errors=True)

  times = {}
  t0 = time.time()
  builder = tfds_access.get_builder(config)
  times["build_s"] = time.time() - t0
  info = tfds_access.dataset_info(config)
  t1 = time.time()
  feature_store.ensure(config)
  times["extract_s"] = time.time() - t1
  t2 = time.time()
  train.train_and_evaluate(config, run_dir)
  times["train_evaluate_s"] = time.time() - t2
  times["total_s"] = time.time() - t0

  rates, steps = [], 0
  for path in sorted(glob.glob(os.path.join(run_dir, "fold_*", "metrics.jsonl"))):
    lines = [json.loads(l) for l in open(path)]
    train_lines = [l for l in lines if "steps_per_sec" in l]
    if train_lines:
      rates.append(train_lines[-1]["steps_per_sec"])
      steps += int(train_lines[-1]["step"])
  results = json.load(open(os.path.join(run_dir, "results.json")))
  last = [r for r in results["summary"] if r["modality"] == "AO"][-1]
  doc = {
      "date": time.strftime("%Y-%m-%d"), "machine": harness.processor(),
      "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
      "variant": FLAGS.variant, "epochs": FLAGS.epochs, "folds": list(config.folds),
      "clips": info["num_clips"], "wavs": n_wavs, "builder_config": builder.builder_config.name,
      **{k: round(v, 1) for k, v in times.items()},
      "extract_clips_per_s": round(info["num_clips"] / max(times["extract_s"], 1e-9), 1),
      "train_steps": steps,
      "train_steps_per_s": round(sum(rates) / max(len(rates), 1), 1),
      "accuracy_AO_last_gate_meaningless": round(last["accuracy_mean"], 4),
      "overrides": list(FLAGS.override),
  }
  harness.write_json(os.path.join(work, f"benchmark_frozen_{FLAGS.variant}.json"), doc)
  print(json.dumps(doc, indent=1))
  print(f"\n| part | time |\n|---|---:|\n| build ({doc['clips']} clips) | {doc['build_s']} s |\n"
        f"| extract | {doc['extract_s']} s ({doc['extract_clips_per_s']} clips/s) |\n"
        f"| train + evaluate ({len(config.folds)} folds, {steps} steps, "
        f"{doc['train_steps_per_s']} steps/s) | {doc['train_evaluate_s']} s |\n"
        f"| total | {doc['total_s']} s |")

