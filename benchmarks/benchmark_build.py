r"""Build throughput of the real-data builders on generated RAVDESS-like MP4s.

  python scripts/benchmark_build.py --num_clips=24 --workers=1,2 --config=w8_l1_ov

Generates `--num_clips` 1280x720 H.264 (High, 29.97 fps) + AAC 48 kHz MP4s of
about 3.5 s named like RAVDESS speech clips (one actor after another, so every
fold gets clips), once, into `--clips_dir` (reused when present). Then, for each
worker count, it times

* decode: the builder's worker task on every clip in a process pool, results
  dropped (decoding, frame-rate conversion, resizing, audio resampling,
  windowing and the video's zlib encoding);
* build: the whole `ravdess` builder into a fresh data_dir (decode as above,
  plus TFDS's serialisation, shuffling and array_record writing in the main
  process),

and prints clips/s and clips/s per worker. The numbers depend on the machine:
report its core count with them.
"""

from __future__ import annotations

import concurrent.futures
import fractions
import json
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import harness
from tests import dummy_media  # the tests' clip writer

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the command line's flags on absl's FLAGS (the entry point calls it: the
  benchmarks' flags would collide if importing a module defined them)."""
  flags.DEFINE_integer("num_clips", 24,
                       "Clips to generate and build (>= 10 so that every fold has one).")
  flags.DEFINE_float("seconds", 3.5, "Clip length (RAVDESS: 3.8 +- 0.3 s).")
  flags.DEFINE_list("workers", ["1", "2"], "Worker counts to time.")
  flags.DEFINE_string("config", "w8_l1_ov", "ravdess builder config.")
  flags.DEFINE_string("clips_dir", os.path.join(tempfile.gettempdir(), "avjax_bench_ravdess"),
                      "Where the generated MP4s are kept (reused).")
  flags.DEFINE_bool("skip_build", False, "Time decoding only.")
  flags.DEFINE_string("json_out", "", "Also write the numbers to this JSON file.")

WIDTH, HEIGHT = 1280, 720
FPS = fractions.Fraction(30000, 1001)
GRAIN = 16  # grey levels of per-frame noise


def _frames(n: int, seed: int):
  """A textured background panning slowly, a bright 'face' ellipse moving and sensor
  noise: real work for H.264."""
  rng = np.random.default_rng(seed)
  texture = rng.integers(0, 60, size=(HEIGHT + 64, WIDTH + 64, 1), dtype=np.uint8)
  gy, gx = np.mgrid[0:HEIGHT, 0:WIDTH]
  base = np.stack([gx * 100 // WIDTH, gy * 120 // HEIGHT, 80 + 0 * gx], -1).astype(np.uint8)
  grain = rng.integers(0, GRAIN, size=(7, HEIGHT, WIDTH, 1), dtype=np.uint8)
  for i in range(n):
    dy, dx = (i // 3) % 64, (i // 2) % 64
    img = base + texture[dy:dy + HEIGHT, dx:dx + WIDTH]
    cy, cx = HEIGHT // 2 + int(30 * np.sin(i / 9)), WIDTH // 2 + int(50 * np.cos(i / 13))
    mask = ((gy - cy) / 220.0) ** 2 + ((gx - cx) / 160.0) ** 2 < 1
    img[mask] = (np.array([200, 160, 130]) + (i % 20)).astype(np.uint8)
    img += grain[i % len(grain)]   # sensor noise: brings the bit rate near the real files' (~17 Mb/s)
    yield np.ascontiguousarray(img)


def write_clip(path: pathlib.Path, seconds: float, seed: int) -> None:
  """H.264 High (crf 18) + AAC mono 48 kHz: a gliding tone under the moving frames."""
  t = np.arange(int(seconds * 48000)) / 48000
  x = (0.3 * np.sin(2 * np.pi * (180 + 40 * np.sin(3 * t)) * t)).astype(np.float32)
  dummy_media.write_av(path, container_format="mp4", video_codec="libx264", audio_codec="aac",
                       fps=FPS, size=(WIDTH, HEIGHT), frames=_frames(int(round(seconds * FPS)), seed),
                       audio=x, audio_rate=48000,
                       video_options={"crf": "18", "preset": "veryfast", "profile": "high"})


def make_clips(folder: pathlib.Path, num_clips: int, seconds: float) -> list[pathlib.Path]:
  paths = []
  for k in range(num_clips):
    actor = k % 24 + 1
    emotion = (k // 24) % 8 + 1
    repetition = (k // 192) % 2 + 1
    name = f"01-01-{emotion:02d}-01-01-{repetition:02d}-{actor:02d}.mp4"
    path = folder / f"Actor_{actor:02d}" / name
    if not path.exists():
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_suffix(".tmp.mp4")
      write_clip(tmp, seconds, seed=k)
      tmp.rename(path)
    paths.append(path)
  return paths


def time_decode(paths, spec, workers: int) -> float:
  from avjax.data import clip_records
  from avjax.data import media
  jobs = [clip_records.ClipJob(key=p.stem, src=str(p), spec=spec, options=media.DecodeOptions(), fields={},
                        compress_video=True) for p in paths]
  start = time.perf_counter()
  if workers == 1:
    for job in jobs:
      clip_records.run_job(job)
  else:
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")) as pool:
      list(pool.map(clip_records.run_job, jobs, chunksize=1))
  return time.perf_counter() - start


def time_build(folder, config: str, workers: int) -> tuple[float, int]:
  import tensorflow_datasets as tfds
  from avjax.tfds_builders.ravdess import ravdess_dataset_builder as ravdess
  data_dir = tempfile.mkdtemp(prefix="avjax_bench_data_")
  try:
    builder = ravdess.Builder(config=config, data_dir=data_dir, num_workers=workers)
    start = time.perf_counter()
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=folder))
    seconds = time.perf_counter() - start
    size = sum(f.stat().st_size for f in pathlib.Path(builder.data_dir).glob("*array_record*"))
    return seconds, size
  finally:
    shutil.rmtree(data_dir, ignore_errors=True)


def main(argv):
  del argv
  from avjax.data import windows
  if FLAGS.num_clips < 10:
    raise app.UsageError("--num_clips must be >= 10 (every fold needs a clip)")
  folder = pathlib.Path(FLAGS.clips_dir)
  t = time.perf_counter()
  paths = make_clips(folder, FLAGS.num_clips, FLAGS.seconds)
  mb = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
  print(f"{len(paths)} clips of {FLAGS.seconds} s, 1280x720 H.264 + AAC, {mb:.1f} MB each, in {folder} "
        f"(ready in {time.perf_counter() - t:.1f} s)")
  spec = windows.parse_name(FLAGS.config)
  rows = []
  for w in map(int, FLAGS.workers):
    row = {"workers": w, "cores": os.cpu_count(), "config": FLAGS.config, "clips": len(paths)}
    s = time_decode(paths, spec, w)
    row.update(decode_s=s, decode_clips_per_s=len(paths) / s, decode_clips_per_s_per_worker=len(paths) / s / w)
    if not FLAGS.skip_build:
      s, size = time_build(folder, FLAGS.config, w)
      row.update(build_s=s, build_clips_per_s=len(paths) / s, build_clips_per_s_per_worker=len(paths) / s / w,
                 bytes_per_clip=size / len(paths))
    rows.append(row)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
  print(f"\n{os.cpu_count()} cores, {FLAGS.config}:\n")
  cells = [[r["workers"], f"{r['decode_clips_per_s']:.2f}", f"{r['decode_clips_per_s_per_worker']:.2f}"]
           + ([f"{r['build_clips_per_s']:.2f}", f"{r['build_clips_per_s_per_worker']:.2f}"]
              if "build_s" in r else ["-", "-"]) for r in rows]
  print(harness.md_table(["workers", "decode clips/s", "per worker", "build clips/s", "per worker"],
                         cells))
  if FLAGS.json_out:
    harness.write_json(FLAGS.json_out, rows)

