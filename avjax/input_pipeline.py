"""Input pipeline: TFDS array_record data sources read with grain, class-balanced
training batches, batch-consistent augmentation draws, ordered evaluation batches.

Legend: B batch (global), b host slice of it (B / hosts),
T windows, F frames per window, H = W stored frame size, X = `input.crop_size`
(the crop's side), S audio samples per window.

Batches are dicts of NumPy arrays (no strings):

  video         [b, T, F, X, X, 3] uint8   absent when the data set has no video
                                           or the model uses audio only
  audio         [b, T, S] float32          raw (training: augmented by the step)
  label         [b] int32
  window_valid  [b, T] float32
  actor         [b] int32
  aug           {speed [], semitones [], noise [T, S]} float32   training only
  mask, index   [B] bool, [B] int32        evaluation only (index -1 on padding)

Training (`create_train_iterator`): a batch holds exactly
`config.input.clips_per_class` clips of every class, drawn from the training
folds; `steps_per_epoch = floor(N_train / B)`. Each epoch every class's clips are
dealt from fresh random permutations (seed, epoch) until the class has its
`steps_per_epoch * clips_per_class` draws: a class with at least that many clips
uses each at most once (the rest are not drawn that epoch; the next epoch's
permutation is drawn afresh), a smaller class is
sampled with replacement as evenly as possible (each clip ceil or floor of
need / count times) and never twice in one batch while it has at least
`clips_per_class` clips. The clips of a batch are then shuffled.

Multi-host: every host computes the same global batch of indices and reads only
its slice, clips [i * B / P, (i + 1) * B / P) for host i of P (grain
`ShardOptions(jax.process_index(), jax.process_count())` semantics): the
global batch stays class-balanced, and the stream does not depend on P.

Augmentation, drawn once per batch from (seed, step) (`augment.draw_augmentation`) and
applied to every clip and window of the batch (so a resumed or resharded run
sees the same augmentation):

* video, here on the host: one crop offset (X x X out of H x H) and, when
  `input.random_flip`, one horizontal-flip decision (probability 1/2);
* audio, in the jitted step (`avjax.augment.augment_audio`, the one
  implementation, shared with the device-resident path): speed factor
  s ~ U[1 - r, 1 + r] (`input.speed_range` r; tempo and pitch scale by s), pitch
  shift k ~ U[-p, p] semitones (`input.pitch_shift_semitones` p; phase-vocoder
  stretch then resampling back, timing kept), and one Gaussian noise array [T, S]
  of std `input.audio_noise_std`, the same realisation for every clip. The host
  ships the raw audio and these draws (`batch['aug']`).

Evaluation uses the centre crop and no audio augmentation, every clip of the
folds once in the data source's order (folds in the order given), the last
batch padded with copies of its first clip and `mask` False.

Iterator state (`TrainIterator.get_state()`) is a small JSON dict
{step, seed, num_clips, batch_size}; the batch at step k is a pure function of
(data, seed, k), so `set_state` reproduces exactly the batches the
uninterrupted iterator would have produced, on any number of hosts.

With `config.input.cache_on_device` the same sampler and augmentation draws
(`TrainBatches`, public for it) drive `avjax.device_data`, which keeps the
training folds in accelerator memory and gathers and crops in-graph.

Reading: a grain `MapDataset` over step numbers, each element one host batch.
`input.prefetch` batches are prepared ahead in as many threads (NumPy and zlib
release the GIL); `input.num_workers` > 0 uses grain worker processes
instead (`mp_prefetch`; grain reads absl flags, so run under `avjax.main` or
parse flags first). Clip labels, actors and ids come from a first pass over
the folds that skips video and audio decoding, cached per process.
"""

from __future__ import annotations

import functools
import math
import threading
import weakref
from typing import Iterator, Sequence

import grain.python as grain
import jax
import numpy as np
import tensorflow_datasets as tfds

from avjax import augment
from avjax import run_spec
from avjax.data import feature_cache
from avjax.data import sampler
from avjax.data import tfds_access

_EPOCH_CACHE = 4           # epochs of batch tables kept per iterator
_NO_END = 2 ** 62          # "infinite" step range of the training dataset


# --------------------------------------------------------------------------- builders


# --------------------------------------------------------------------------- metadata


# --------------------------------------------------------------------------- sampler


# --------------------------------------------------------------------------- augmentation


# --------------------------------------------------------------------------- reading


class Reader:
  """Reads and stacks records of `folds` (picklable: the data source opens lazily)."""
  is_features = False

  def __init__(self, builder, folds: Sequence[int], read_video: bool):
    self.builder = builder                 # TFDS builders pickle as their constructor args
    self.split = tfds_access._split(folds)
    self.read_video = read_video
    self._source = None
    self._lock = threading.Lock()

  def __getstate__(self):
    return dict(builder=self.builder, split=self.split, read_video=self.read_video)

  def __setstate__(self, state):
    self.__dict__.update(state, _source=None, _lock=threading.Lock())

  @property
  def source(self):
    with self._lock:
      if self._source is None:
        decoders = None
        if not self.read_video and tfds_access._has_video(self.builder):
          decoders = {"video": tfds.decode.SkipDecoding()}
        self._source = self.builder.as_data_source(self.split, decoders=decoders)
      return self._source

  def read(self, indices: Sequence[int], crop: tuple[int, int, int, bool] | None) -> dict:
    """Stacked batch of `indices`; video cropped with crop = (y, x, size, flip),
    or whole frames [b, T, F, H, W, 3] when crop is None."""
    records = self.source.__getitems__([int(i) for i in indices])
    batch = {
        "audio": np.stack([r["audio"] for r in records]).astype(np.float32),          # [b, T, S]
        "label": np.asarray([r["label"] for r in records], np.int32),                 # [b]
        "window_valid": np.stack([r["window_valid"] for r in records]).astype(np.float32),  # [b, T]
        "actor": np.asarray([r["actor"] for r in records], np.int32),                 # [b]
    }
    if self.read_video and crop is None:
      batch["video"] = np.stack([np.asarray(r["video"], np.uint8) for r in records])
    elif self.read_video:
      y, x, size, flip = crop
      batch["video"] = np.stack([sampler.crop_flip(r["video"], y, x, size, flip)             # [b, T, F, X, X, 3]
                                 for r in records])
    return batch


def make_reader(config, builder, folds: Sequence[int], read_video: bool):
  """The reader of `folds`: the media (`Reader`) or, when `config.model.trunk` caches
  the encoders' lower layers, the feature store (`feature_cache.FeatureReader`; the
  store is extracted beforehand by `avjax.feature_store.ensure`, which training and
  `avjax.evaluate` call first). Both have `read(indices, crop)`."""
  if not run_spec.of(config).cached:
    return Reader(builder, folds, read_video)
  reader = feature_cache.FeatureReader(feature_cache.store_paths(config, builder), folds,
                                       center_actors=bool(config.input.speaker_centering),
                                       scale_actors=bool(config.input.speaker_scaling))
  expected = tfds_access._metadata(builder, folds)["label"]
  if not np.array_equal(reader.labels, expected):
    raise feature_cache.FeatureStoreError(
        f"the feature stores {list(reader.stores.values())} hold other labels than "
        f"{config.dataset.name}/{run_spec.of(config).builder_config} for folds {list(folds)}; "
        "delete them to extract again")
  return reader


def check_crop(config, frame_size: int | None) -> None:
  if frame_size is not None and config.input.crop_size > frame_size:
    raise ValueError(f"config.input.crop_size = {config.input.crop_size} is larger than the "
                     f"stored frames ({frame_size}x{frame_size}) of {config.dataset.name}/"
                     f"{config.dataset.config}")


class TrainBatches:
  """step -> host batch; a pure function of (data, seed, step)."""

  def __init__(self, reader: Reader, labels: np.ndarray, *, clips_per_class: int,
               num_classes: int, seed: int, shard_index: int, shard_count: int,
               crop_size: int, frame_size: int | None, input_config: dict,
               num_windows: int, samples_per_window: int, audio_rate: float):
    self.reader = reader
    self.labels = labels
    self.clips_per_class = clips_per_class
    self.num_classes = num_classes
    self.seed = seed
    self.shard_index, self.shard_count = shard_index, shard_count
    self.crop_size, self.frame_size = crop_size, frame_size
    self.input_config = _Attrs(input_config)
    self.num_windows, self.samples_per_window = num_windows, samples_per_window
    self.audio_rate = audio_rate
    self.batch_size = clips_per_class * num_classes
    self.steps_per_epoch = len(labels) // self.batch_size
    sampler.host_slice(np.zeros(self.batch_size), shard_index, shard_count)    # checks divisibility

  @functools.lru_cache(maxsize=_EPOCH_CACHE)
  def epoch_table(self, epoch: int) -> np.ndarray:
    return sampler.class_balanced_epoch(self.labels, self.clips_per_class, self.num_classes,
                                self.seed, epoch)

  def iterator_state(self, step: int) -> dict[str, int]:
    """The JSON state of an iterator at `step` (saved with each checkpoint)."""
    return {"step": int(step), "seed": int(self.seed), "num_clips": int(len(self.labels)),
            "batch_size": int(self.batch_size)}

  def step_of(self, state: dict) -> int:
    """The step of a saved iterator state; ValueError when it belongs to another pipeline."""
    expected = {"seed": self.seed, "num_clips": len(self.labels), "batch_size": self.batch_size}
    for key, value in expected.items():
      if int(state[key]) != int(value):
        raise ValueError(
            f"data iterator state has {key}={int(state[key])}, this pipeline {key}={value}: the "
            "checkpoint was written with another seed, dataset or batch size")
    return int(state["step"])

  def global_indices(self, step: int) -> np.ndarray:
    epoch, i = divmod(int(step), self.steps_per_epoch)
    return self.epoch_table(epoch)[i]

  def __call__(self, step: int) -> dict:
    indices = sampler.host_slice(self.global_indices(step), self.shard_index, self.shard_count)
    if self.reader.is_features:   # cached features: augmented (if at all) at extraction
      return self.reader.read(indices, view=self.reader.draw_view(self.seed, step))
    aug = augment.draw_augmentation(self.seed, step, frame_size=self.frame_size, crop_size=self.crop_size,
                            input_config=self.input_config, num_windows=self.num_windows,
                            samples_per_window=self.samples_per_window)
    batch = self.reader.read(indices, (aug.crop_y, aug.crop_x, self.crop_size, aug.flip))
    # Raw audio: the step augments it in-graph with these draws (one implementation
    # for this path and the device-resident one).
    batch["aug"] = augment.augmentation_inputs(aug, self.num_windows, self.samples_per_window)
    return batch


class _Attrs(dict):
  """A plain (picklable) dict with attribute access, for the input config."""
  __getattr__ = dict.__getitem__


def _close(box: list) -> None:
  """Closes and drops the grain iterator in `box` (while the interpreter is still whole)."""
  while box:
    close = getattr(box.pop(), "close", None)
    if close is not None:
      close()


class TrainIterator:
  """Infinite iterator of host batches with a JSON state (see module docstring)."""

  def __init__(self, batches: TrainBatches, *, num_workers: int = 0, prefetch: int = 2):
    self.batches = batches          # step -> host batch (shared with avjax.device_data)
    self._num_workers = int(num_workers)
    self._prefetch = int(prefetch)
    self._step = 0
    self._box: list = []

  @property
  def step(self) -> int:
    return self._step

  @property
  def steps_per_epoch(self) -> int:
    return self.batches.steps_per_epoch

  def _start(self) -> None:
    ds = grain.MapDataset.range(self._step, _NO_END).map(self.batches)
    if self._num_workers > 0:
      ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
      ds = ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=self._num_workers, per_worker_buffer_size=max(1, self._prefetch)))
    else:
      threads = max(1, self._prefetch)
      ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                prefetch_buffer_size=max(1, self._prefetch)))
    # Stops prefetch threads / worker processes when this object goes or at
    # exit (grain's own cleanup during interpreter teardown prints errors).
    self._box = [iter(ds)]
    self._finalizer = weakref.finalize(self, _close, self._box)

  def close(self) -> None:
    """Stops the prefetch threads or worker processes (the iterator restarts on next())."""
    if self._box:
      self._finalizer()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if not self._box:
      self._start()
    batch = next(self._box[0])
    if self._num_workers > 0:  # plain arrays, releasing grain's shared-memory buffers now
      batch = jax.tree.map(np.array, batch)   # `aug` is a dict of arrays itself
    self._step += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return self.batches.iterator_state(self._step)

  def set_state(self, state: dict) -> None:
    step = self.batches.step_of(state)
    self.close()  # restarts (with prefetch) at the new step on the next call
    self._step = step

  def global_indices(self, step: int) -> np.ndarray:
    """Indices (into the training folds' data source) of the global batch at `step`."""
    return self.batches.global_indices(step)


def create_train_iterator(config, train_folds: Sequence[int], seed: int, *,
                          shard_options: grain.ShardOptions | None = None) -> TrainIterator:
  """Class-balanced, augmented training batches of this host (see module docstring).

  `shard_options` defaults to `ShardOptions(jax.process_index(), jax.process_count())`.
  """
  builder = tfds_access.get_builder(config)
  if shard_options is None:
    shard_options = grain.ShardOptions(jax.process_index(), jax.process_count())
  info = tfds_access.dataset_info(config)
  read_video = tfds_access.reads_video(config, builder)
  frame_size = info.get("frame_size") if read_video else None
  check_crop(config, frame_size)
  meta = tfds_access._metadata(builder, train_folds)
  batches = TrainBatches(
      make_reader(config, builder, train_folds, read_video), meta["label"],
      clips_per_class=int(config.input.clips_per_class), num_classes=tfds_access.num_classes(config),
      seed=int(seed), shard_index=int(shard_options.shard_index),
      shard_count=int(shard_options.shard_count), crop_size=int(config.input.crop_size),
      frame_size=frame_size,
      input_config={k: config.input[k] for k in (
          "random_flip", "speed_range", "pitch_shift_semitones", "audio_noise_std")},
      num_windows=info["num_windows"], samples_per_window=info["samples_per_window"],
      audio_rate=info["audio_rate"])
  return TrainIterator(batches, num_workers=config.input.num_workers,
                       prefetch=config.input.prefetch)


# --------------------------------------------------------------------------- evaluation


def eval_batches(config, folds: Sequence[int]) -> Iterator[dict]:
  """Every clip of `folds` once, in order, in batches of
  `config.input.eval_batch_size`: centre crop, no audio augmentation; the last
  batch padded with copies of its first clip ('mask' False, 'index' -1).

  The batches are global: every host reads the whole batch (the caller keeps
  its slice, as `evaluate.embed` does); 'index' is the position in the order of
  `clip_ids(config, folds)`."""
  builder = tfds_access.get_builder(config)
  info = tfds_access.dataset_info(config)
  read_video = tfds_access.reads_video(config, builder)
  frame_size = info.get("frame_size") if read_video else None
  check_crop(config, frame_size)
  n = tfds_access.num_clips(builder, folds)
  size = int(config.input.eval_batch_size)
  if size < 1:
    raise ValueError(f"config.input.eval_batch_size must be >= 1, got {size}")
  reader = make_reader(config, builder, folds, read_video)
  crop = None
  if read_video:
    c = int(config.input.crop_size)
    off = (frame_size - c) // 2
    crop = (off, off, c, False)

  def read(i: int) -> dict:
    index = np.arange(i * size, min((i + 1) * size, n))
    batch = reader.read(index, crop)
    pad = size - len(index)
    if pad:
      batch = {k: np.concatenate([v, np.repeat(v[:1], pad, axis=0)]) for k, v in batch.items()}
    batch["mask"] = np.arange(size) < len(index)
    batch["index"] = np.concatenate([index, -np.ones(pad, np.int64)]).astype(np.int32)
    return batch

  num_batches = math.ceil(n / size)
  prefetch = max(1, int(config.input.prefetch))
  ds = grain.MapDataset.range(num_batches).map(read).to_iter_dataset(
      grain.ReadOptions(num_threads=prefetch, prefetch_buffer_size=prefetch))
  return _closing(iter(ds))


def _closing(it) -> Iterator[dict]:
  """Yields from a grain iterator and stops its prefetch threads when dropped."""
  try:
    yield from it
  finally:
    _close([it])
