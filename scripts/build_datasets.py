r"""Builds one config of an avjax TFDS dataset (ravdess, crema_d_av or synthetic_av).

  python scripts/build_datasets.py ravdess/w8_l1_ov --manual_dir=/data/ravdess \
      --data_dir=~/tensorflow_datasets --num_workers=16
  python scripts/build_datasets.py crema_d_av --manual_dir=/data/CREMA-D   # default config
  python scripts/build_datasets.py synthetic_av/w4_l1_ov --data_dir=/tmp/tfds

NAME is a folder of `avjax/tfds_builders/`; CONFIG a windowing (`w{T}_l{L}_{ov|no}[_fit]`,
see the builder's README), its default when omitted. `--manual_dir` holds the
official files (default `<data_dir>/downloads/manual`); a missing or wrongly
laid-out one fails at once. Clips that cannot be used are listed at the end and
recorded in the dataset's metadata (`info.metadata['skipped']`). A manual_dir
without the files of some fold's actors is refused; `--allow_missing_folds` builds
the folds present only (not the paper's protocol; e.g. a first try on two actor
zips), recorded in `info.metadata['missing_folds']`. To build every
config, call the script once per config (each decodes the clips again).

One build of a config runs at a time (a lock beside it); the `incomplete.*` folder
of a killed build is removed, with a notice, by the next build of the same config.
A full or read-only disk ends with one `error:` line naming the folder (status 1).

Where TensorFlow is installed, the stock CLI works too:
  tfds build avjax/tfds_builders/ravdess --config=w8_l1_ov --manual_dir=/data/ravdess
(with the repository on PYTHONPATH).
"""

from __future__ import annotations

import importlib
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

FLAGS = flags.FLAGS
flags.DEFINE_string("manual_dir", None, "Folder with the official files (real datasets).")
flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
flags.DEFINE_integer("num_workers", None, "Decoding processes (default: os.cpu_count()).")
flags.DEFINE_bool("overwrite", False, "Rebuild even when the config is already prepared.")
flags.DEFINE_float("fps", None, "Video frame rate (default 25). Changes the data: use its own data_dir.")
flags.DEFINE_integer("frame_size", None, "Frame size (default 112). Changes the data: use its own data_dir.")
flags.DEFINE_bool("allow_missing_folds", False, "Build only the folds whose actors' files are "
                  "present (e.g. a few actor zips); NOT the paper's 10-fold protocol. Training then "
                  "needs config.dataset.allow_missing_folds=True.")
flags.DEFINE_bool("center_crop", False, "Crop the centre square before resizing (default: the whole "
                  "frame, as the paper). Changes the data: use its own data_dir.")


def parse_target(target: str) -> tuple[str, str | None]:
  """'ravdess/w8_l1_ov' -> ('ravdess', 'w8_l1_ov'); 'ravdess' -> ('ravdess', None)."""
  name, _, config = target.partition("/")
  if not name or "/" in config:
    raise app.UsageError(f"expected NAME[/CONFIG], e.g. ravdess/w8_l1_ov, got {target!r}")
  return name, config or None


def load_builder_class(name: str):
  from avjax import tfds_builders
  module = f"avjax.tfds_builders.{name}.{name}_dataset_builder"
  try:
    return importlib.import_module(module).Builder
  except ModuleNotFoundError as e:
    folders = sorted(d for d in os.listdir(os.path.dirname(tfds_builders.__file__))
                     if not d.startswith(("_", ".")))
    raise app.UsageError(f"no builder {module}.Builder ({e}); datasets: {folders}") from None


def main(argv):
  if len(argv) != 2:
    raise app.UsageError("usage: build_datasets.py NAME[/CONFIG] [--manual_dir=...] [--data_dir=...]")
  import tensorflow_datasets as tfds
  from avjax.data import builder_lib
  from avjax.data import media

  name, config = parse_target(argv[1])
  cls = load_builder_class(name)
  names = [c.name for c in cls.BUILDER_CONFIGS]
  config = config or cls.DEFAULT_CONFIG_NAME
  if config not in names:
    raise app.UsageError(f"{name} has no config {config!r}; configs: {', '.join(names)}")
  kwargs = {}
  if issubclass(cls, builder_lib.AVBuilder):
    options = {}
    if FLAGS.fps is not None:
      options["fps"] = FLAGS.fps
    if FLAGS.frame_size is not None:
      options["frame_size"] = FLAGS.frame_size
    if FLAGS.center_crop:
      options["center_crop"] = True
    kwargs = dict(num_workers=FLAGS.num_workers, decode_options=media.DecodeOptions(**options),
                  allow_missing_folds=FLAGS.allow_missing_folds)
  elif FLAGS.fps or FLAGS.frame_size or FLAGS.center_crop or FLAGS.allow_missing_folds:
    raise app.UsageError(f"{name} does not take --fps / --frame_size / --center_crop / "
                         "--allow_missing_folds")
  data_dir = os.path.expanduser(FLAGS.data_dir) if FLAGS.data_dir else None
  builder = cls(config=config, data_dir=data_dir, **kwargs)
  mode = (tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS if FLAGS.overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  manual_dir = os.path.expanduser(FLAGS.manual_dir) if FLAGS.manual_dir else None
  if builder.is_prepared() and not FLAGS.overwrite:
    print(f"{name}/{config} is already prepared in {builder.data_dir} (--overwrite rebuilds it).")
    return
  start = time.time()
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, download_mode=mode)
  if not builder_lib.prepare(builder, download_config, overwrite=FLAGS.overwrite):
    print(f"{name}/{config} was prepared meanwhile in {builder.data_dir}.")
    return
  splits = builder.info.splits
  total = sum(splits[s].num_examples for s in splits.keys())
  print(f"{name}/{config}: {total} clips in {time.time() - start:.1f} s -> {builder.data_dir}")


if __name__ == "__main__":
  from avjax import cli   # one error: line; 1 for a failure (a full disk), 2 for bad input
  cli.run(main)
