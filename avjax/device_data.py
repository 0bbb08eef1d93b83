"""Device-resident training data (`config.input.cache_on_device`): the training
folds in accelerator memory, gathered, cropped and augmented in-graph.

Legend: N clips of the training folds, B batch (global), b host slice, T
windows, F frames per window, H = W stored frame size, C crop size, S audio
samples per window, K STFT bins, L stretched length.

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
(`input_pipeline.draw_augmentation(seed, step)`; replicated): crop offsets [2],
flip, speed factor, pitch shift in semitones and the noise [T, S]. The sampler
(class-balanced epoch tables, `global_indices(step)`) and the iterator state
(JSON {step, seed, num_clips, batch_size}) are the host pipeline's, so
checkpoints and resumption behave identically with either path.

In-graph augmentation, same order as the host path (speed, pitch, noise):

* crop and flip: `lax.dynamic_slice` at the drawn offsets, then a mirror:
  bit-identical to the host path;
* noise: the drawn [T, S] array added to every clip: bit-identical;
* speed: linear-interpolation resampling, y[j] = x(j s), zero where j s passes
  the last sample (the host path resamples with soxr's band-limited filter:
  same tempo and pitch change, slightly less high-frequency fidelity here);
* pitch: the host's phase vocoder (Hann 1024 / hop 256, the same phase
  accumulation) with a traced rate over a fixed number of frames (those past
  the stretched length masked), then linear-interpolation resampling back to
  S samples instead of soxr. k = 0 semitones is skipped (exact identity).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from avjax import input_pipeline as ip

_READ_CHUNK = 64            # clips read from the records at a time


# --------------------------------------------------------------------------- dataset


@dataclasses.dataclass
class DeviceDataset:
  """The training folds on the device (replicated); see the module docstring."""
  arrays: dict[str, jax.Array]
  crop_size: int
  audio_rate: float
  max_semitones: float

  @property
  def num_clips(self) -> int:
    return int(self.arrays["label"].shape[0])

  def nbytes(self) -> int:
    """Bytes per device."""
    return int(sum(a.nbytes for a in self.arrays.values()))


def read_all(config, folds: Sequence[int]) -> dict[str, np.ndarray]:
  """Every record of `folds` in the data source's order, whole frames (host arrays)."""
  builder = ip.get_builder(config)
  reader = ip._Reader(builder, folds, ip._read_video(config, builder))
  n = ip._num_clips(builder, folds)
  out: dict[str, np.ndarray] = {}
  for lo in range(0, n, _READ_CHUNK):
    part = reader.read(range(lo, min(lo + _READ_CHUNK, n)), None)
    part.pop("actor")
    for key, value in part.items():
      if key not in out:
        out[key] = np.empty((n,) + value.shape[1:], value.dtype)
      out[key][lo:lo + len(value)] = value
  return out


def load(config, folds: Sequence[int], mesh: Mesh) -> DeviceDataset:
  """Reads the records of `folds` and replicates them on every device of `mesh`."""
  info = ip.dataset_info(config)
  host = read_all(config, folds)
  if "video" in host:
    ip._check_crop(config, host["video"].shape[-2])
  replicated = NamedSharding(mesh, P())
  arrays = {k: jax.make_array_from_callback(v.shape, replicated, lambda idx, v=v: v[idx])
            for k, v in host.items()}
  return DeviceDataset(arrays=arrays, crop_size=int(config.input.crop_size),
                       audio_rate=float(info["audio_rate"]),
                       max_semitones=float(config.input.pitch_shift_semitones))


# --------------------------------------------------------------------------- iterator


class DeviceTrainIterator:
  """Per-step inputs of the device-resident path; the host `TrainIterator`'s
  sampler, augmentation draws and JSON state.

  next() -> {'index': [b] int32 (this host's slice of the global batch),
             'crop': [2] int32, 'flip': bool, 'speed': float32,
             'semitones': float32, 'noise': [T, S] float32 (zeros when off)}.
  """

  def __init__(self, batches: "ip._TrainBatches", dataset: DeviceDataset | None):
    self._batches = batches
    self.dataset = dataset
    self._step = 0

  @property
  def step(self) -> int:
    return self._step

  @property
  def steps_per_epoch(self) -> int:
    return self._batches.steps_per_epoch

  def global_indices(self, step: int) -> np.ndarray:
    return self._batches.global_indices(step)

  def inputs(self, step: int) -> dict[str, np.ndarray]:
    b = self._batches
    index = ip.host_slice(b.global_indices(step), b.shard_index, b.shard_count)
    aug = ip.draw_augmentation(b.seed, step, frame_size=b.frame_size, crop_size=b.crop_size,
                               input_config=b.input_config, num_windows=b.num_windows,
                               samples_per_window=b.samples_per_window)
    noise = aug.noise if aug.noise is not None else np.zeros(
        (b.num_windows, b.samples_per_window), np.float32)
    return {"index": np.asarray(index, np.int32),
            "crop": np.asarray([aug.crop_y, aug.crop_x], np.int32),
            "flip": np.asarray(aug.flip, bool),
            "speed": np.asarray(aug.speed, np.float32),
            "semitones": np.asarray(aug.semitones, np.float32),
            "noise": np.asarray(noise, np.float32)}

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
           "audio": np.zeros((n,) + tuple(arrays["audio"].shape[1:]), np.float32),
           "window_valid": np.ones((n,) + tuple(arrays["window_valid"].shape[1:]), np.float32)}
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
    dataset = load(config, train_folds, mesh)
  return DeviceTrainIterator(host_iter._batches, dataset)


def to_global_step_input(inputs: dict, *, data_sharding: NamedSharding,
                         replicated: NamedSharding) -> dict[str, jax.Array]:
  """Host step inputs -> global arrays: 'index' (padded with masked copies to a
  multiple of the local devices, 'mask' added then) sharded on `data`, the
  augmentation parameters replicated."""
  index = np.asarray(inputs["index"], np.int32)
  pad = -len(index) % jax.local_device_count()
  out = {}
  if pad:
    mask = np.concatenate([np.ones(len(index), bool), np.zeros(pad, bool)])
    index = np.concatenate([index, np.repeat(index[:1], pad)])
    out["mask"] = jax.make_array_from_process_local_data(data_sharding, mask)
  out["index"] = jax.make_array_from_process_local_data(data_sharding, index)
  for key in ("crop", "flip", "speed", "semitones", "noise"):
    value = np.asarray(inputs[key])
    out[key] = jax.make_array_from_callback(value.shape, replicated, lambda idx, v=value: v[idx])
  return out


# --------------------------------------------------------------------------- in-graph augmentation


def change_speed(audio: jax.Array, factor: jax.Array) -> jax.Array:
  """[..., S] played `factor` times faster: y[j] = x(j factor) by linear
  interpolation, zero where j factor passes the last sample."""
  s = audio.shape[-1]
  pos = jnp.arange(s, dtype=jnp.float32) * jnp.asarray(factor, jnp.float32)   # [S]
  i0 = jnp.floor(pos).astype(jnp.int32)
  frac = pos - i0.astype(jnp.float32)
  x0 = jnp.take(audio, jnp.clip(i0, 0, s - 1), axis=-1)
  x1 = jnp.take(audio, jnp.clip(i0 + 1, 0, s - 1), axis=-1)
  y = x0 + frac * (x1 - x0)
  return jnp.where(pos <= s - 1, y, 0.0).astype(audio.dtype)


def _resample_linear(x: jax.Array, length: jax.Array, step: jax.Array, s: int) -> jax.Array:
  """[C, L] with `length` valid samples -> [C, s]: y[j] = x(j step), 0 past length - 1."""
  pos = jnp.arange(s, dtype=jnp.float32) * step
  i0 = jnp.floor(pos).astype(jnp.int32)
  frac = pos - i0.astype(jnp.float32)
  last = x.shape[-1] - 1
  x0 = jnp.take(x, jnp.clip(i0, 0, last), axis=-1)
  x1 = jnp.take(x, jnp.clip(i0 + 1, 0, last), axis=-1)
  x1 = jnp.where(i0 + 1 < length, x1, 0.0)
  return jnp.where(pos <= length - 1, x0 + frac * (x1 - x0), 0.0)


def _stft(x: jax.Array) -> jax.Array:
  """[C, S] -> [C, N, K] complex64, as `input_pipeline._stft`."""
  size, hop = ip._STFT_SIZE, ip._STFT_HOP
  xp = jnp.pad(x, ((0, 0), (size // 2, size // 2)))
  n = (xp.shape[-1] - size) // hop + 1
  idx = np.arange(n)[:, None] * hop + np.arange(size)[None]               # [N, size]
  frames = xp[:, idx] * jnp.asarray(ip._hann(size))
  return jnp.fft.rfft(frames, axis=-1).astype(jnp.complex64)


def shift_pitch(audio: jax.Array, semitones: jax.Array, max_semitones: float) -> jax.Array:
  """[..., S]: every frequency times q = 2**(semitones/12), timing kept (see
  the module docstring); |semitones| <= max_semitones (static) bounds the shapes."""
  size, hop = ip._STFT_SIZE, ip._STFT_HOP
  shape = audio.shape
  s = shape[-1]
  x = audio.reshape(-1, s).astype(jnp.float32)                             # [C, S]
  q = jnp.exp2(jnp.asarray(semitones, jnp.float32) / 12.0)
  q_max = 2.0 ** (abs(float(max_semitones)) / 12.0)
  rate = 1.0 / q                                                           # stretch rate

  spec = _stft(x)                                                          # [C, N, K]
  n, k = spec.shape[1:]
  spec = jnp.concatenate([spec, jnp.zeros_like(spec[:, :2])], axis=1)
  mag_in, phase_in = jnp.abs(spec), jnp.angle(spec)
  n_out = int(math.ceil(n * q_max)) + 1                                    # static bound
  steps = jnp.arange(n_out, dtype=jnp.float32) * rate                      # output frame positions
  frame_ok = steps < n                                                     # np.arange(0, n, rate)
  i = jnp.clip(jnp.floor(steps).astype(jnp.int32), 0, n - 1)
  a = jnp.where(frame_ok, steps - i.astype(jnp.float32), 0.0)[None, :, None]
  mag = ((1 - a) * mag_in[:, i] + a * mag_in[:, i + 1]) * frame_ok[None, :, None]
  bins = np.arange(k)
  adv32 = jnp.asarray(np.mod(2 * np.pi * hop * bins / size, 2 * np.pi).astype(np.float32))
  dphi = phase_in[:, i + 1] - phase_in[:, i] - adv32
  two_pi = np.float32(2 * np.pi)
  dphi = dphi - two_pi * jnp.round(dphi / two_pi)
  # t * advance mod 2 pi, exactly: (t * k * hop mod size) * 2 pi / size.
  steady = jnp.asarray(((np.arange(n_out)[:, None] * bins[None] * hop) % size)
                       .astype(np.float32) * np.float32(2 * np.pi / size))
  drift = jnp.concatenate([jnp.zeros_like(dphi[:, :1]), jnp.cumsum(dphi[:, :-1], axis=1)], axis=1)
  phase = phase_in[:, :1] + steady[None] + drift
  out = (mag * jnp.cos(phase)) + 1j * (mag * jnp.sin(phase))

  # Inverse STFT (windowed overlap-add over the valid frames).
  win = jnp.asarray(ip._hann(size))
  frames = jnp.fft.irfft(out.astype(jnp.complex64), n=size, axis=-1).astype(jnp.float32) * win
  parts = size // hop
  c = x.shape[0]
  acc = jnp.zeros((c, n_out + parts - 1, hop), jnp.float32)
  norm = jnp.zeros((n_out + parts - 1, hop), jnp.float32)
  w2 = ip._hann(size) ** 2
  for p in range(parts):
    acc = acc.at[:, p:p + n_out].add(frames[:, :, p * hop:(p + 1) * hop])
    norm = norm.at[p:p + n_out].add(frame_ok[:, None] * jnp.asarray(w2[p * hop:(p + 1) * hop])[None])
  y = acc.reshape(c, -1) / jnp.maximum(norm.reshape(-1), 1e-6)
  y = y[:, size // 2:]                                                     # [C, >= S q_max]
  length = jnp.round(s * q)                                                # stretched length
  # soxr(rate * q -> rate) in the host path; linear interpolation here.
  return _resample_linear(y, length, q, s).reshape(shape).astype(audio.dtype)


def augment_in_graph(arrays: dict[str, jax.Array], inputs: dict[str, jax.Array], *,
                     crop_size: int, max_semitones: float) -> dict[str, jax.Array]:
  """Gathers batch `inputs['index']` [B] from the device arrays and augments it
  like the host path. Returns a train-step batch (video [B, T, F, C, C, 3] uint8,
  audio [B, T, S] float32, label, window_valid, and mask when padded)."""
  idx = inputs["index"]                                                    # [B]
  batch = {"label": arrays["label"][idx], "window_valid": arrays["window_valid"][idx]}
  if "mask" in inputs:
    batch["mask"] = inputs["mask"]
  if "video" in arrays:
    v = arrays["video"][idx]                                               # [B, T, F, H, W, 3]
    y, x = inputs["crop"][0], inputs["crop"][1]
    zero = jnp.zeros((), jnp.int32)
    v = jax.lax.dynamic_slice(v, (zero, zero, zero, y, x, zero),
                              v.shape[:3] + (crop_size, crop_size, 3))     # [B, T, F, C, C, 3]
    batch["video"] = jax.lax.cond(inputs["flip"], lambda u: u[..., ::-1, :], lambda u: u, v)
  audio = arrays["audio"][idx]                                             # [B, T, S]
  audio = jax.lax.cond(inputs["speed"] == 1.0, lambda a: a,
                       lambda a: change_speed(a, inputs["speed"]), audio)
  if max_semitones:
    audio = jax.lax.cond(inputs["semitones"] == 0.0, lambda a: a,
                         lambda a: shift_pitch(a, inputs["semitones"], max_semitones), audio)
  batch["audio"] = audio + inputs["noise"][None]
  return batch


def make_device_train_step(config, mesh: Mesh, dataset: DeviceDataset) -> Callable:
  """(state, step inputs) -> (state, metrics): gathers and augments in-graph,
  then `train.train_step`. The dataset arrays are arguments of the jitted
  function (not constants), bound here."""
  from avjax import train  # local: train imports this module
  repl = NamedSharding(mesh, P())
  data = NamedSharding(mesh, P("data"))

  def step(state, arrays, inputs):
    batch = augment_in_graph(arrays, inputs, crop_size=dataset.crop_size,
                             max_semitones=dataset.max_semitones)
    batch = {k: jax.lax.with_sharding_constraint(v, data) for k, v in batch.items()}
    return train.train_step(state, batch, config=config)

  input_shardings = {"index": data, "mask": data, "crop": repl, "flip": repl, "speed": repl,
                     "semitones": repl, "noise": repl}

  @functools.lru_cache(maxsize=2)
  def jitted(has_mask: bool):
    shard = {k: v for k, v in input_shardings.items() if has_mask or k != "mask"}
    return jax.jit(step, donate_argnums=(0,), in_shardings=(repl, repl, shard),
                   out_shardings=(repl, repl))

  def run(state, inputs):
    return jitted("mask" in inputs)(state, dataset.arrays, inputs)

  return run
