"""The TFDS builders a config reads: the builder (prepared once, by process 0 on a
cluster), its folds and clip counts, the folds of a run, and the clips' labels, actors
and ids (a first pass that skips decoding, cached per process)."""

from __future__ import annotations

import importlib
import os
import threading
from typing import Any, Sequence

import jax
import numpy as np
import tensorflow_datasets as tfds

from avjax import run_spec
from avjax.data import builder_lib
from avjax.data import folds as folds_lib
from avjax.data import registry


def _builder_class(name: str):
  module = f"avjax.tfds_builders.{name}.{name}_dataset_builder"
  try:
    return importlib.import_module(module).Builder
  except ModuleNotFoundError as e:
    raise ValueError(f"config.dataset.name: no TFDS builder {module}.Builder ({e})") from e


_BUILDERS: dict[tuple[str, str, str], tfds.core.DatasetBuilder] = {}


_BUILD_LOCK = threading.Lock()


def get_builder(config) -> tfds.core.DatasetBuilder:
  """The prepared TFDS builder of `config.dataset`, built first when allowed.

  With several hosts, process 0 builds and the others wait (data_dir must then
  be shared, or built beforehand on every host).
  """
  ds = config.dataset
  name = run_spec.of(config).builder_config   # the windowing, `audio_`-prefixed for audio-only records
  key = (ds.name, name, ds.data_dir or os.environ.get("TFDS_DATA_DIR", ""))
  with _BUILD_LOCK:
    if key in _BUILDERS:
      return _BUILDERS[key]
    cls = _builder_class(ds.name)
    kwargs = {}
    if issubclass(cls, builder_lib.AVBuilder):
      kwargs["allow_missing_folds"] = bool(ds.allow_missing_folds)
    try:
      builder = cls(config=name, data_dir=ds.data_dir or None, **kwargs)
    except ValueError as e:
      raise ValueError(f"config.dataset.config: {name!r} is not a builder config of "
                       f"{ds.name!r}: {e}") from e
    if not builder.is_prepared():
      if not ds.build:
        raise FileNotFoundError(
            f"Dataset {ds.name}/{name} is not prepared in {builder.data_dir}. Build it with\n"
            f"  python scripts/build_datasets.py {ds.name}/{name} "
            f"--data_dir={ds.data_dir or '<data_dir>'}"
            + (f" --manual_dir={ds.manual_dir}" if ds.manual_dir else "")
            + "\nor set config.dataset.build=True.")
      download_config = tfds.download.DownloadConfig(manual_dir=ds.manual_dir or None)
      if jax.process_count() == 1:
        builder_lib.prepare(builder, download_config)
      else:
        from jax.experimental import multihost_utils
        if jax.process_index() == 0:
          builder_lib.prepare(builder, download_config)
        multihost_utils.sync_global_devices(f"avjax_build_{ds.name}_{name}")
        builder = cls(config=name, data_dir=ds.data_dir or None, **kwargs)
        if not builder.is_prepared():
          raise FileNotFoundError(
              f"process {jax.process_index()}: {ds.name}/{name} built by process 0 is not "
              f"visible in {builder.data_dir}; use a data_dir shared by all hosts or build it on "
              "each host with scripts/build_datasets.py")
    _check_folds(builder, bool(ds.allow_missing_folds))
    _BUILDERS[key] = builder
    return builder


def num_classes(config) -> int:
  """Number of classes of the data set (checked against config.dataset.class_names)."""
  n = get_builder(config).info.features["label"].num_classes
  if len(config.dataset.class_names) != n:
    raise ValueError(f"config.dataset.class_names has {len(config.dataset.class_names)} names, "
                     f"the dataset {config.dataset.name} has {n} classes")
  return n


def _split(folds: Sequence[int]) -> str:
  folds = [int(f) for f in folds]
  if not folds:
    raise ValueError("no folds given")
  if len(set(folds)) != len(folds):
    raise ValueError(f"folds {folds} repeat a fold")
  return "+".join(f"fold{f}" for f in folds)


def _has_video(builder) -> bool:
  return "video" in builder.info.features


def reads_video(config, builder) -> bool:
  """Video is read unless the data set has none or the model uses audio only."""
  return _has_video(builder) and config.model.modalities != "audio"


def dataset_info(config) -> dict[str, Any]:
  """Shapes and sizes of the data set: num_windows T, frames_per_window F,
  frame_size H, crop_size, samples_per_window S, fps, audio_rate, has_video,
  class_names, num_clips_per_fold {fold: n}, num_clips."""
  builder = get_builder(config)
  feats = builder.info.features
  spec = run_spec.of(config).window
  t, s = feats["audio"].shape
  meta = dict(builder.info.metadata or {})
  out = dict(num_windows=int(t), samples_per_window=int(s),
             audio_rate=float(meta.get("audio_rate", s / spec.length)),
             has_video=_has_video(builder), class_names=tuple(feats["label"].names),
             crop_size=int(config.input.crop_size), window=spec.name)
  if out["has_video"]:
    _, f, h, w, _ = feats["video"].shape
    out.update(frames_per_window=int(f), frame_size=int(h),
               fps=float(meta.get("fps", f / spec.length)))
  counts = {int(k[4:]): int(v.num_examples) for k, v in builder.info.splits.items()
            if k.startswith("fold")}
  out["num_clips_per_fold"] = dict(sorted(counts.items()))
  out["num_clips"] = sum(counts.values())
  return out


def num_clips(builder, folds: Sequence[int]) -> int:
  splits = builder.info.splits
  missing = [f for f in folds if f"fold{f}" not in splits]
  if missing:
    raise ValueError(f"{builder.name}/{builder.builder_config.name} has no split(s) "
                     f"{['fold%d' % f for f in missing]}")
  return sum(splits[f"fold{f}"].num_examples for f in folds)


def _check_folds(builder, allow_missing: bool) -> None:
  """A prepared dataset without some fold splits is only used with the opt-in."""
  present = {int(k[4:]) for k in builder.info.splits.keys() if k.startswith("fold")}
  missing = sorted(set(range(folds_lib.NUM_FOLDS)) - present)
  if missing and not allow_missing:
    raise ValueError(
        f"{builder.name}/{builder.builder_config.name} in {builder.data_dir} has no fold(s) "
        f"{missing} (it was built with allow_missing_folds from the actors present). Set "
        "config.dataset.allow_missing_folds=True to use the folds it has (not the paper's "
        "protocol), or rebuild it from all the actors' files.")


def split_folds(config, test_fold: int) -> tuple[list[int], int | None]:
  """(training folds, validation fold or None) for `test_fold`
  (`registry.training_folds` / `validation_fold`, among the folds with clips).
  A test fold without clips (a dataset built with allow_missing_folds) is an error."""
  info = dataset_info(config)
  nonempty = {f for f, n in info["num_clips_per_fold"].items() if n > 0}
  if test_fold not in nonempty:
    raise ValueError(
        f"test fold {test_fold} has no clips in {config.dataset.name}/"
        f"{run_spec.of(config).builder_config} (built from the actors present, "
        f"allow_missing_folds); the folds with clips are {sorted(nonempty)}: set config.folds "
        "to some of them")
  return (registry.training_folds(config, test_fold, nonempty),
          registry.validation_fold(config, test_fold, nonempty))


def total_steps(config, train_folds: Sequence[int]) -> int:
  """A fold's training steps: num_epochs x steps_per_epoch, at most train.max_steps."""
  total = config.train.num_epochs * steps_per_epoch(config, train_folds)
  return min(total, config.train.max_steps) if config.train.max_steps else total


def steps_per_epoch(config, train_folds: Sequence[int]) -> int:
  """floor(N_train / B) with B = clips_per_class x num_classes."""
  batch = config.input.clips_per_class * num_classes(config)
  n = num_clips(get_builder(config), train_folds)
  if n < batch:
    raise ValueError(f"training folds {list(train_folds)} hold {n} clips, fewer than one "
                     f"batch of {batch} (config.input.clips_per_class x classes)")
  return n // batch


_FOLD_METADATA: dict[tuple[str, int], dict[str, np.ndarray]] = {}


def _fold_metadata(builder, fold: int) -> dict[str, np.ndarray]:
  """label, actor [N] int32 and clip_id [N] str of one fold, in its stored order.

  Reads the records without decoding video or audio; cached per process.
  """
  key = (str(builder.data_dir), int(fold))
  n = builder.info.splits[f"fold{fold}"].num_examples
  if key in _FOLD_METADATA and len(_FOLD_METADATA[key]["label"]) == n:
    return _FOLD_METADATA[key]
  skip = {"audio": tfds.decode.SkipDecoding()}
  if _has_video(builder):
    skip["video"] = tfds.decode.SkipDecoding()
  source = builder.as_data_source(f"fold{fold}", decoders=skip)
  records = source.__getitems__(list(range(len(source))))
  ids = [r["clip_id"].decode() if isinstance(r["clip_id"], bytes) else str(r["clip_id"])
         for r in records]
  meta = dict(label=np.asarray([r["label"] for r in records], np.int32),
              actor=np.asarray([r["actor"] for r in records], np.int32),
              clip_id=np.asarray(ids, dtype=str))
  _FOLD_METADATA[key] = meta
  return meta


def _metadata(builder, folds: Sequence[int]) -> dict[str, np.ndarray]:
  """Fold metadata concatenated in the order of the data source `fold_a+fold_b+...`."""
  num_clips(builder, folds)
  parts = [_fold_metadata(builder, int(f)) for f in folds]
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def clip_ids(config, folds: Sequence[int]) -> list[str]:
  """Clip ids of `folds` in evaluation order (the order of `eval_batches`)."""
  _split(folds)
  return _metadata(get_builder(config), folds)["clip_id"].tolist()
