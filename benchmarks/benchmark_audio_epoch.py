r"""Times one RAVDESS audio-only training epoch (Table II's A-LSTM) on this machine.

  python scripts/benchmark_audio_epoch.py --workdir=/tmp/ao_epoch [--steps=0] [--variant=lstm]

1. Writes 1440 WAVs with RAVDESS's official names and layout (`Actor_XX/03-01-EE-II-SS-RR-AA.wav`,
   24 actors x 60 recordings, 48 kHz 16-bit, 3.8 s, every 288th one stereo), since the real
   archive cannot be shipped: the cost depends only on the shapes.
2. Builds `ravdess/audio_w8_l1_ov` from them (timed; skipped when already built).
3. Trains `configs/ravdess.py:audio_<variant>` (full-width pretrained SoundNet-8, B = 40,
   8 windows of 1 s at 22050 Hz, the real input pipeline with augmentation) on fold 0's
   training folds for one epoch (or `--steps`), with no evaluation, and reports the
   steady time per step (after the first, compiling step) and the epoch time for 1440 clips
   (36 steps of 40), the paper's epoch over the whole set.

Prints one JSON line at the end, also written to `<workdir>/audio_epoch.json`.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import numpy as np
from absl import flags

from benchmarks import harness

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command line's flags on absl's FLAGS (the entry point calls it: the
  benchmarks' flags would collide if importing a module defined them)."""
  flags.DEFINE_string("workdir", None, "Scratch directory (WAVs, dataset, training run).")
  flags.DEFINE_integer("steps", 0, "Train steps to time (0: one epoch of the training folds).")
  flags.DEFINE_enum("variant", "lstm", ["lstm", "global"], "audio_lstm or audio_global.")
  flags.DEFINE_integer("num_workers", None, "Build worker processes (default: os.cpu_count()).")
  flags.mark_flag_as_required("workdir")

RATE = 48000
SECONDS = 3.8


def ravdess_recordings():
  """(emotion, intensity, statement, repetition) of the 60 speech recordings per actor."""
  for emotion in range(1, 9):
    for intensity in (1, 2) if emotion != 1 else (1,):
      for statement in (1, 2):
        for repetition in (1, 2):
          yield emotion, intensity, statement, repetition


def write_wavs(root: pathlib.Path) -> int:
  import soundfile
  rng = np.random.default_rng(0)
  t = np.arange(int(SECONDS * RATE)) / RATE
  n = 0
  for actor in range(1, 25):
    folder = root / f"Actor_{actor:02d}"
    folder.mkdir(parents=True, exist_ok=True)
    for emotion, intensity, statement, repetition in ravdess_recordings():
      path = folder / f"03-01-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}.wav"
      n += 1
      if path.exists():
        continue
      x = 0.2 * np.sin(2 * np.pi * (120 + 30 * emotion + 5 * actor) * t) + 0.02 * rng.normal(size=t.shape)
      if n % 288 == 0:
        x = np.stack([x, 0.5 * x], axis=1)
      soundfile.write(path, x.astype(np.float32), RATE, subtype="PCM_16")
  return n


def main(argv):
  del argv
  import jax
  from avjax import train
  from avjax.data import tfds_access
  from configs import ravdess

  work = pathlib.Path(FLAGS.workdir).expanduser().resolve()
  wav_dir, data_dir, run_dir = work / "wavs", work / "tfds", work / f"run_{FLAGS.variant}"
  start = time.time()
  n = write_wavs(wav_dir)
  print(f"{n} WAVs in {wav_dir} ({time.time() - start:.1f} s)", flush=True)

  config = ravdess.get_config(f"audio_{FLAGS.variant}")
  config.dataset.data_dir = str(data_dir)
  config.dataset.manual_dir = str(wav_dir)
  config.folds = (0,)
  config.train.eval_every_epochs = 0
  config.train.log_every_steps = 4
  config.train.checkpoint_every_steps = 10_000
  config.eval.figures = False

  cls = tfds_access._builder_class(config.dataset.name)
  from avjax import run_spec
  from avjax.data import registry
  name = run_spec.of(config).builder_config
  builder = cls(config=name, data_dir=str(data_dir), num_workers=FLAGS.num_workers)
  build_s = None
  if not builder.is_prepared():
    import tensorflow_datasets as tfds
    start = time.time()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(wav_dir)))
    build_s = time.time() - start
    print(f"built {config.dataset.name}/{name} in {build_s:.1f} s", flush=True)

  train_folds = registry.training_folds(config, 0)
  steps_per_epoch = tfds_access.steps_per_epoch(config, train_folds)
  steps = FLAGS.steps or steps_per_epoch
  config.train.max_steps = steps
  config.train.num_epochs = max(1, -(-steps // steps_per_epoch))
  if run_dir.exists():
    import shutil
    shutil.rmtree(run_dir)
  start = time.time()
  train.train_fold(config, str(run_dir), test_fold=0)
  total_s = time.time() - start
  logs = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
  # Steady step time from the log lines' timestamps after the first (compiling) interval.
  times = [(l["step"], l["time"]) for l in logs if "loss" in l]
  steady = ((times[-1][1] - times[0][1]) / (times[-1][0] - times[0][0])
            if len(times) >= 2 else float("nan"))
  batch = config.input.clips_per_class * len(config.dataset.class_names)
  report = {
      "what": f"RAVDESS audio-only epoch, configs/ravdess.py:audio_{FLAGS.variant}",
      "date": harness.utc_now(),
      "machine": f"{harness.processor()}, {os.cpu_count()} cores",
      "devices": [d.device_kind for d in jax.devices()],
      "load_average": os.getloadavg(),
      "command": " ".join(["python"] + sys.argv),
      "build_seconds_1440_clips": build_s,
      "train_clips": int(steps_per_epoch * batch), "batch": batch, "steps": steps,
      "train_seconds_total": round(total_s, 1),
      "steady_seconds_per_step": round(steady, 3),
      "epoch_seconds_1440_clips": round(steady * 1440 / batch, 1),
  }
  harness.write_json(work / "audio_epoch.json", report)
  print(json.dumps(report), flush=True)

