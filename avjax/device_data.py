"""Device-resident training data (`config.input.cache_on_device`): the training
folds in accelerator memory, gathered, cropped and augmented in-graph.

`input.cache_on_device`: True, False, or 'auto' (the default: on for a cached
trunk whose features take at most AUTO_FEATURE_BYTES, off for media). With a cached
trunk (`model.trunk` 'frozen' or 'finetune_from:...') the arrays are the feature
store's, every view: {modality: [N, V, T, ...] float32, label [N], window_valid
[N, T]}; each step the host sends the batch's indices and its view
(`FeatureReader.draw_view`, as the host path draws it) and the step gathers them
(`augment.gather_features`): no batch crosses from the host, which on a CPU
leaves both cores to the step (the frozen A-LSTM step: BENCHMARKS.md). What follows
describes media.

Legend: N clips of the training folds, B batch (global), b host slice, T
windows, F frames per window, H = W stored frame size, S audio samples per
window.

`load(config, folds, mesh)` reads every record of `folds` once into arrays
replicated on each device of the mesh:

  video         [N, T, F, H, W, 3] uint8     (absent without video or for audio-only models)
  audio         [N, T, S] float32
  label         [N] int32
  window_valid  [N, T] float32

RAVDESS (1440 clips, 8 x 1 s windows at 25 fps, 112 x 112) takes about 11 GB
of video plus 1 GB of audio per device, the training folds (9/10 of it) about
11 GB: it fits one H100 next to the model. CREMA-D (7442 clips) does not fit at
112 x 112 on most devices; use the host pipeline there.

Each step the host sends only the global batch's indices [B] (sharded on
`data`, padded with masked copies to a multiple of the device count) and the
batch's augmentation parameters, drawn exactly as the host pipeline draws them
(`augment.draw_augmentation(seed, step)`, `augment.step_inputs`,
`parallel.to_global_step_input`; replicated): crop offsets [2],
flip, speed factor, pitch shift in semitones and the noise [T, S]. The sampler
(class-balanced epoch tables, `global_indices(step)`) and the iterator state
(JSON {step, seed, num_clips, batch_size}) are the host pipeline's, so
checkpoints and resumption behave identically with either path.

In-graph (`augment.augment_in_graph`, run by `steps.make_device_train_step`):
the batch is gathered by index, cropped with `lax.dynamic_slice` at the drawn
offsets and mirrored (bit-identical to the host path's crop), and its audio goes
through `augment.augment_audio`, the same in-graph augmentation the host path's
step applies.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain.python as grain
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from avjax import augment
from avjax import input_pipeline as ip
from avjax import run_spec
from avjax.data import sampler
from avjax.data import tfds_access

_READ_CHUNK = 64            # clips read from the records at a time
# `input.cache_on_device='auto'` keeps a cached trunk's features on the device up
# to this size (RAVDESS AV frozen: 94 MB; CREMA-D: 366 MB).
AUTO_FEATURE_BYTES = 2 * 2**30


# --------------------------------------------------------------------------- dataset


@dataclasses.dataclass
class DeviceDataset:
  """The training folds on the device (replicated); see the module docstring.
  `features`: the modalities whose arrays are cached encoder features [N, V, T, ...]
  (a cached trunk), empty for media."""
  arrays: dict[str, jax.Array]
  crop_size: int
  audio_rate: float
  max_semitones: float
  features: tuple[str, ...] = ()

  @property
  def num_clips(self) -> int:
    return int(self.arrays["label"].shape[0])

  def nbytes(self) -> int:
    """Bytes per device."""
    return int(sum(a.nbytes for a in self.arrays.values()))


def read_all(config, folds: Sequence[int]) -> dict[str, np.ndarray]:
  """Every record of `folds` in the data source's order, whole frames (host arrays)."""
  builder = tfds_access.get_builder(config)
  reader = ip.Reader(builder, folds, tfds_access.reads_video(config, builder))
  n = tfds_access.num_clips(builder, folds)
  out: dict[str, np.ndarray] = {}
  for lo in range(0, n, _READ_CHUNK):
    part = reader.read(range(lo, min(lo + _READ_CHUNK, n)), None)
    part.pop("actor")
    for key, value in part.items():
      if key not in out:
        out[key] = np.empty((n,) + value.shape[1:], value.dtype)
      out[key][lo:lo + len(value)] = value
  return out


def feature_reader(config, folds: Sequence[int]):
  """The feature store's reader of `folds` (a cached trunk; extracted beforehand)."""
  builder = tfds_access.get_builder(config)
  return ip.make_reader(config, builder, folds, tfds_access.reads_video(config, builder))


def use_device(config, folds: Sequence[int]) -> bool:
  """Whether training keeps `folds` on the device: `config.input.cache_on_device`, or
  when it is 'auto', a cached trunk whose features take at most AUTO_FEATURE_BYTES
  (media stay on the host unless asked)."""
  choice = config.input.cache_on_device
  if choice != "auto":
    return bool(choice)
  if not run_spec.of(config).cached:
    return False
  return feature_reader(config, folds).nbytes() <= AUTO_FEATURE_BYTES


def load(config, folds: Sequence[int], mesh: Mesh, reader=None) -> DeviceDataset:
  """Reads the records of `folds` (or, with a cached trunk, their cached features, every
  view, through `reader` when given: the host pipeline's `FeatureReader` of `folds`) and
  replicates them on every device of `mesh`."""
  info = tfds_access.dataset_info(config)
  features: tuple[str, ...] = ()
  if run_spec.of(config).cached:
    reader = reader if reader is not None else feature_reader(config, folds)
    host = reader.read_all()
    features = tuple(reader.stores)
  else:
    host = read_all(config, folds)
  if "video" in host and not features:
    ip.check_crop(config, host["video"].shape[-2])
  replicated = NamedSharding(mesh, P())
  arrays = {k: jax.make_array_from_callback(v.shape, replicated, lambda idx, v=v: v[idx])
            for k, v in host.items()}
  return DeviceDataset(arrays=arrays, crop_size=int(config.input.crop_size),
                       audio_rate=float(info["audio_rate"]),
                       max_semitones=float(config.input.pitch_shift_semitones),
                       features=features)


# --------------------------------------------------------------------------- iterator


class DeviceTrainIterator:
  """Per-step inputs of the device-resident path; the host `TrainIterator`'s
  sampler, augmentation draws and JSON state.

  next() -> {'index': [b] int32 (this host's slice of the global batch),
             'crop': [2] int32, 'flip': bool, 'speed': float32,
             'semitones': float32, 'noise': [T, S] float32 (zeros when off)}.
  """

  def __init__(self, batches: "ip.TrainBatches", dataset: DeviceDataset | None):
    self._batches = batches
    self.dataset = dataset
    self._step = 0

  @property
  def step(self) -> int:
    return self._step

  @property
  def steps_per_epoch(self) -> int:
    return self._batches.steps_per_epoch

  @property
  def labels(self) -> np.ndarray:
    """The training clips' labels, in the order of the indices the iterator draws."""
    return self._batches.labels

  def global_indices(self, step: int) -> np.ndarray:
    return self._batches.global_indices(step)

  def inputs(self, step: int) -> dict[str, np.ndarray]:
    b = self._batches
    index = sampler.host_slice(b.global_indices(step), b.shard_index, b.shard_count)
    if self.dataset is not None and self.dataset.features:   # augmented (if at all) at extraction
      return {"index": np.asarray(index, np.int32),
              "view": np.asarray(b.reader.draw_view(b.seed, step), np.int32)}
    aug = augment.draw_augmentation(b.seed, step, frame_size=b.frame_size,
                                    crop_size=b.crop_size, input_config=b.input_config,
                                    num_windows=b.num_windows,
                                    samples_per_window=b.samples_per_window)
    return augment.step_inputs(index, aug, b.num_windows, b.samples_per_window)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    out = self.inputs(self._step)
    self._step += 1
    return out

  def get_state(self) -> dict[str, int]:
    return self._batches.iterator_state(self._step)

  def set_state(self, state: dict) -> None:
    self._step = self._batches.step_of(state)

  def sample_batch(self) -> dict[str, np.ndarray]:
    """A zero host batch of one step's shapes (for model initialisation)."""
    arrays = self.dataset.arrays
    n = len(self.inputs(0)["index"])
    out = {"label": np.zeros((n,), np.int32),
           "window_valid": np.ones((n,) + tuple(arrays["window_valid"].shape[1:]), np.float32)}
    if self.dataset.features:     # [N, V, T, ...] -> [n, T, ...]
      out.update({m: np.zeros((n,) + tuple(arrays[m].shape[2:]), np.float32)
                  for m in self.dataset.features})
      return out
    out["audio"] = np.zeros((n,) + tuple(arrays["audio"].shape[1:]), np.float32)
    if "video" in arrays:
      t, f = arrays["video"].shape[1:3]
      c = self.dataset.crop_size
      out["video"] = np.zeros((n, t, f, c, c, 3), np.uint8)
    return out

  def close(self) -> None:
    pass


def create_device_iterator(config, train_folds: Sequence[int], seed: int, mesh: Mesh, *,
                           shard_options: grain.ShardOptions | None = None,
                           dataset: DeviceDataset | None = None) -> DeviceTrainIterator:
  """The device path's iterator; loads the dataset onto `mesh` unless given."""
  host_iter = ip.create_train_iterator(config, train_folds, seed, shard_options=shard_options)
  if dataset is None:
    reader = host_iter.batches.reader
    dataset = load(config, train_folds, mesh, reader=reader if reader.is_features else None)
  return DeviceTrainIterator(host_iter.batches, dataset)
