"""In-graph audio augmentation: speed change, pitch shift and additive noise.

The one implementation of the audio augmentation, used by the host and the
device-resident training paths alike: the train step receives the raw audio
and the batch's draws (speed factor, semitones, noise [T, S]) and calls
`augment_audio` inside its jitted graph. Pure `jax.numpy` (imports NumPy, JAX
and `math` only), so it runs on any backend without soxr. The batch's draws are made
here too, on the host (`draw_augmentation`: a pure function of the seed and the step),
for the host pipeline, the device-resident path and the cached feature views.

Legend: B batch, T windows, S audio samples per window, R flattened rows
(B * T, or any leading axes), N STFT frames, K = STFT_SIZE / 2 + 1 STFT bins,
L stretched length (S * q), N_out a static bound on the stretched frames;
for `augment_in_graph` also D clips held in the device arrays, F frames per
window, H = W stored frame size and X the (square) video crop size.

Method, in the order `augment_audio` applies it (one draw for the whole batch):

* speed, factor s: each window played s times faster, so tempo AND pitch scale
  by s (Kaldi-style speed perturbation): y[j] = x(j s) by linear interpolation
  between the two neighbouring samples, zero where j s passes the last sample
  (the first S samples kept; zero-padded at the end when s > 1). The former
  host path resampled with soxr's band-limited filter: same tempo and pitch
  change, slightly less high-frequency fidelity here (linear interpolation
  attenuates and aliases the top of the band);
* pitch, k semitones: every frequency multiplied by q = 2**(k/12), the timing
  kept (librosa's `pitch_shift` method): a phase-vocoder time stretch (Hann
  STFT_SIZE / hop STFT_HOP, librosa's phase accumulation) of each window to
  L = round(S q) samples, then linear-interpolation resampling back to S
  samples (y[j] = stretched(j q)) instead of soxr. The traced k only changes
  values, never shapes: the stretch runs over a static number of frames
  N_out = ceil(N q_max) + 1 with q_max = 2**(max_semitones/12), those past the
  stretched length masked out, so |k| <= max_semitones must hold;
* noise: the batch's [T, S] array added to every clip (exactly), except, with
  `window_valid` given, on the zero padding past a clip's end (`signal_mask`).

Identity shortcuts: speed 1 and 0 semitones skip their step through
`lax.cond` (exact identity, and no pitch-shift cost when the draw is 0); with
max_semitones == 0 the pitch step is not even traced. Audio is not clipped.

`augment_in_graph` is the device-resident path's whole batch step: gather the
batch's clips from arrays held on the device, crop and flip the video
(`lax.dynamic_slice` at the drawn offsets, then a mirror: bit-identical to a
host-side crop), then `augment_audio`.

Parity with the earlier host implementation (soxr for speed and after the same phase
vocoder), kept as a NumPy reference in tests/test_augment.py: a few percent relative RMS
on speech-like and broadband audio, the difference being the linear-interpolation
resampler alone (its gain falls as f**2 where soxr's is flat). The measured figures are
in docs/design.md ("Audio augmentation").
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

STFT_SIZE = 1024        # phase-vocoder window (46 ms at 22050 Hz)
STFT_HOP = 256          # and hop


@functools.lru_cache(maxsize=4)
def hann(size: int) -> np.ndarray:
  """Periodic Hann window [size] float32: 0.5 - 0.5 cos(2 pi n / size)."""
  w = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)).astype(np.float32)
  w.flags.writeable = False            # cached: shared by every caller
  return w


def stft(x: jax.Array) -> jax.Array:
  """[R, S] -> [R, N, K] complex64, N = S // STFT_HOP + 1: periodic Hann frames
  of STFT_SIZE every STFT_HOP samples, centred (the signal zero-padded by half a
  window on both sides), unnormalised rfft.

  Explicit framing, not `jax.scipy.signal.stft`: that one scales by
  1 / sum(window) and, with its default `padded=True`, adds a frame at the end
  (88 instead of 87 frames for S = 22050); the frames here are the former host
  path's exactly (built from STFT_SIZE / STFT_HOP shifted hop-blocks: copies,
  no gather)."""
  size, hop = STFT_SIZE, STFT_HOP
  parts = size // hop
  assert parts * hop == size, "STFT_SIZE must be a multiple of STFT_HOP"
  xp = jnp.pad(x, ((0, 0), (size // 2, size // 2)))                      # [R, S + size]
  n = (xp.shape[-1] - size) // hop + 1
  blocks = xp[:, :(n + parts - 1) * hop].reshape(x.shape[0], n + parts - 1, hop)
  frames = jnp.concatenate([blocks[:, p:p + n] for p in range(parts)], axis=-1)  # [R, N, size]
  return jnp.fft.rfft(frames * jnp.asarray(hann(size)), axis=-1).astype(jnp.complex64)


def change_speed(audio: jax.Array, factor: jax.Array) -> jax.Array:
  """[..., S] played `factor` times faster (tempo and pitch x factor):
  y[j] = x(j factor) by linear interpolation, zero where j factor passes the
  last sample. `factor` may be traced; factor 1 is the identity up to rounding
  (`augment_audio` skips it exactly)."""
  s = audio.shape[-1]
  pos = jnp.arange(s, dtype=jnp.float32) * jnp.asarray(factor, jnp.float32)   # [S]
  i0 = jnp.floor(pos).astype(jnp.int32)
  frac = pos - i0.astype(jnp.float32)
  x0 = jnp.take(audio, jnp.clip(i0, 0, s - 1), axis=-1)
  x1 = jnp.take(audio, jnp.clip(i0 + 1, 0, s - 1), axis=-1)
  y = x0 + frac * (x1 - x0)
  return jnp.where(pos <= s - 1, y, 0.0).astype(audio.dtype)


def _resample_linear(x: jax.Array, length: jax.Array, step: jax.Array, s: int) -> jax.Array:
  """[R, L'] with `length` valid samples -> [R, s]: y[j] = x(j step) by linear
  interpolation, 0 past sample length - 1 (samples from `length` on count as 0)."""
  pos = jnp.arange(s, dtype=jnp.float32) * step
  i0 = jnp.floor(pos).astype(jnp.int32)
  frac = pos - i0.astype(jnp.float32)
  last = x.shape[-1] - 1
  x0 = jnp.take(x, jnp.clip(i0, 0, last), axis=-1)
  x1 = jnp.take(x, jnp.clip(i0 + 1, 0, last), axis=-1)
  x1 = jnp.where(i0 + 1 < length, x1, 0.0)
  return jnp.where(pos <= length - 1, x0 + frac * (x1 - x0), 0.0)


def shift_pitch(audio: jax.Array, semitones: jax.Array, max_semitones: float) -> jax.Array:
  """[..., S]: every frequency times q = 2**(semitones/12), timing kept.

  Phase-vocoder time stretch of each row by 1/q (to L = round(S q) samples,
  frequencies unchanged), then linear-interpolation resampling of the stretch
  back to S samples (y[j] = stretched(j q)), which multiplies the frequencies
  by q. `semitones` may be traced; |semitones| <= max_semitones (static)
  bounds the number of stretched frames (see the module docstring). Returns
  `audio`'s dtype."""
  size, hop = STFT_SIZE, STFT_HOP
  shape = audio.shape
  s = shape[-1]
  x = audio.reshape(-1, s).astype(jnp.float32)                             # [R, S]
  q = jnp.exp2(jnp.asarray(semitones, jnp.float32) / 12.0)
  q_max = 2.0 ** (abs(float(max_semitones)) / 12.0)
  rate = 1.0 / q                                                           # stretch rate

  # Analysis: magnitudes and unit phasors, two zero frames appended (librosa).
  spec = stft(x)                                                           # [R, N, K]
  n, k = spec.shape[1:]
  spec = jnp.concatenate([spec, jnp.zeros_like(spec[:, :2])], axis=1)     # [R, N + 2, K]
  mag_in = jnp.abs(spec)
  # e^{i phase} of each bin (1, i.e. phase 0 as np.angle gives, where the bin is 0).
  unit = jnp.where(mag_in > 0, spec / jnp.where(mag_in > 0, mag_in, 1.0), 1.0 + 0.0j)
  # Output frame t sits at input position t * rate (np.arange(0, N, rate)):
  # a static N_out frames, those at positions >= N masked.
  n_out = int(math.ceil(n * q_max)) + 1
  steps = jnp.arange(n_out, dtype=jnp.float32) * rate                      # [N_out]
  frame_ok = steps < n
  i = jnp.clip(jnp.floor(steps).astype(jnp.int32), 0, n - 1)
  a = jnp.where(frame_ok, steps - i.astype(jnp.float32), 0.0)[None, :, None]
  mag = ((1 - a) * mag_in[:, i] + a * mag_in[:, i + 1]) * frame_ok[None, :, None]  # [R, N_out, K]
  # Phase: phase_t = phase_0 + t * advance + sum_{u<t} dphi_u, with advance the
  # expected phase advance of bin k per hop and dphi_u = phase(i_u + 1) - phase(i_u)
  # - advance the measured deviation from it (librosa wraps it to [-pi, pi]; e^{i dphi}
  # does not change). Computed on phasors, without angles: e^{i phase_t} = e^{i phase_0}
  # e^{i t advance} prod_{u<t} e^{i dphi_u}, with e^{i dphi_u} = unit(i_u + 1)
  # conj(unit(i_u)) e^{-i advance}: no atan2, cos or sin on [R, N_out, K], which were
  # most of this function's time (docs/benchmark_history.md).
  bins = np.arange(k)
  advance = 2 * np.pi * hop * bins / size
  turn = jnp.asarray(np.exp(-1j * advance).astype(np.complex64))           # [K]
  step_phasor = unit[:, i + 1] * jnp.conj(unit[:, i]) * turn               # [R, N_out, K]
  drift = jax.lax.associative_scan(jnp.multiply, step_phasor[:, :-1], axis=1)
  drift = jnp.concatenate([jnp.ones_like(step_phasor[:, :1]), drift], axis=1)
  # e^{i t advance}, exactly: t * advance mod 2 pi = (t * k * hop mod size) * 2 pi / size.
  steady = jnp.asarray(np.exp(1j * (((np.arange(n_out)[:, None] * bins[None] * hop) % size)
                                    * (2 * np.pi / size))).astype(np.complex64))  # [N_out, K]
  out = mag * (unit[:, :1] * steady[None] * drift)

  # Synthesis: windowed overlap-add over the valid frames, normalised by the
  # summed squared window.
  win = hann(size)
  frames = jnp.fft.irfft(out.astype(jnp.complex64), n=size, axis=-1).astype(jnp.float32)
  frames = frames * jnp.asarray(win)                                       # [R, N_out, size]
  parts = size // hop
  r = x.shape[0]
  acc = jnp.zeros((r, n_out + parts - 1, hop), jnp.float32)
  norm = jnp.zeros((n_out + parts - 1, hop), jnp.float32)
  w2 = win ** 2
  for p in range(parts):
    acc = acc.at[:, p:p + n_out].add(frames[:, :, p * hop:(p + 1) * hop])
    norm = norm.at[p:p + n_out].add(frame_ok[:, None] * jnp.asarray(w2[p * hop:(p + 1) * hop])[None])
  y = acc.reshape(r, -1) / jnp.maximum(norm.reshape(-1), 1e-6)
  y = y[:, size // 2:]                                                     # [R, >= S q_max]
  length = jnp.round(s * q)                                                # L, stretched length
  # Resampling rate * q -> rate (soxr in the former host path).
  return _resample_linear(y, length, q, s).reshape(shape).astype(audio.dtype)


def signal_mask(window_valid: jax.Array, samples: int, speed: jax.Array) -> jax.Array:
  """[B, T] fractions of each window inside its clip -> [B, T, S] float32, 1 on the
  samples that hold the clip's signal after a speed change by `speed`: the clip
  fills a window's first V = round(window_valid S) samples (zero padding after
  them), and sample j reads position j speed, so j holds signal iff j speed < V.
  (A pitch shift keeps the timing.)"""
  v = jnp.round(jnp.asarray(window_valid, jnp.float32) * samples)[..., None]   # [B, T, 1]
  pos = jnp.arange(samples, dtype=jnp.float32) * jnp.asarray(speed, jnp.float32)
  return (pos < v).astype(jnp.float32)


def augment_audio(audio: jax.Array, speed: jax.Array, semitones: jax.Array,
                  noise: jax.Array | None, *, max_semitones: float,
                  window_valid: jax.Array | None = None) -> jax.Array:
  """[B, T, S] -> [B, T, S] float32: `change_speed` by `speed`, `shift_pitch`
  by `semitones`, then `noise` [T, S] added to every clip (None or zeros: no
  noise). One draw for the whole batch (scalars, may be traced).

  `window_valid` [B, T] (optional; given when `loss.mask_padded_windows`): the
  noise is only added where the window holds the clip's signal (`signal_mask`),
  not to the zero padding past the clip's end. None adds it everywhere.

  speed == 1 and semitones == 0 skip their step (`lax.cond`: exact identity);
  max_semitones == 0 (static) leaves the pitch step out of the graph.
  |semitones| <= max_semitones must hold."""
  audio = jnp.asarray(audio, jnp.float32)
  speed = jnp.asarray(speed, jnp.float32)
  audio = jax.lax.cond(speed == 1.0, lambda a: a, lambda a: change_speed(a, speed), audio)
  if max_semitones:
    semitones = jnp.asarray(semitones, jnp.float32)
    audio = jax.lax.cond(semitones == 0.0, lambda a: a,
                         lambda a: shift_pitch(a, semitones, max_semitones), audio)
  if noise is not None:
    noise = jnp.asarray(noise, jnp.float32)[None]                          # [1, T, S]
    if window_valid is not None:
      noise = noise * signal_mask(window_valid, audio.shape[-1], speed)
    audio = audio + noise
  return audio


def augment_in_graph(arrays: dict[str, jax.Array], inputs: dict[str, jax.Array], *,
                     crop_size: int, max_semitones: float,
                     mask_padded_windows: bool = True) -> dict[str, jax.Array]:
  """Gathers batch `inputs['index']` [B] from the device arrays (video
  [D, T, F, H, W, 3] uint8 if present, audio [D, T, S], label [D],
  window_valid [D, T]) and augments it with the batch's draws ('crop' [2]
  int32, 'flip' bool, 'speed', 'semitones', 'noise' [T, S]; 'mask' [B] passed
  through when present). Returns a train-step batch: video [B, T, F, X, X, 3]
  uint8, audio [B, T, S] float32 (`augment_audio`; no noise on the padding
  with `mask_padded_windows`), label, window_valid, and mask when given."""
  idx = inputs["index"]                                                    # [B]
  batch = {"label": arrays["label"][idx], "window_valid": arrays["window_valid"][idx]}
  if "mask" in inputs:
    batch["mask"] = inputs["mask"]
  if "video" in arrays:
    v = arrays["video"][idx]                                               # [B, T, F, H, W, 3]
    y, x = inputs["crop"][0], inputs["crop"][1]
    zero = jnp.zeros((), jnp.int32)
    v = jax.lax.dynamic_slice(v, (zero, zero, zero, y, x, zero),
                              v.shape[:3] + (crop_size, crop_size, 3))     # [B, T, F, X, X, 3]
    batch["video"] = jax.lax.cond(inputs["flip"], lambda u: u[..., ::-1, :], lambda u: u, v)
  batch["audio"] = augment_audio(
      arrays["audio"][idx], inputs["speed"], inputs["semitones"], inputs["noise"],
      max_semitones=max_semitones,
      window_valid=batch["window_valid"] if mask_padded_windows else None)
  return batch


def gather_features(arrays: dict[str, jax.Array], inputs: dict[str, jax.Array],
                    features: Sequence[str]) -> dict[str, jax.Array]:
  """The train-step batch of a cached trunk, in-graph: the clips `inputs['index']` [B]
  of view `inputs['view']` [] of each cached modality ([N, V, T, ...] -> [B, T, ...]),
  their label and window_valid, and 'mask' when given (the host path's
  `feature_cache.FeatureReader.read`, on the device; `avjax.device_data`)."""
  idx = inputs["index"]
  batch = {"label": arrays["label"][idx], "window_valid": arrays["window_valid"][idx]}
  if "mask" in inputs:
    batch["mask"] = inputs["mask"]
  for modality in features:
    batch[modality] = arrays[modality][idx, inputs["view"]]
  return batch


# --------------------------------------------------------------------------- draws (host)
# One batch's draws are made on the host from (seed, step) (NumPy only) and applied
# in-graph: the host pipeline crops and flips the video itself and ships the audio draws
# (`augmentation_inputs`); the device-resident path ships all of them (`step_inputs`).


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """One batch's augmentation (applied to every clip and window)."""
  crop_y: int
  crop_x: int
  flip: bool
  speed: float                     # tempo and pitch factor (1: none)
  semitones: float                 # pitch shift (0: none)
  noise: np.ndarray | None         # [T, S] added to every clip, or None


def draw_augmentation(seed: int, step: int, *, frame_size: int | None, crop_size: int,
                      input_config, num_windows: int, samples_per_window: int) -> Augmentation:
  """The augmentation of batch `step`: a pure function of (seed, step, config).

  The flip, speed, pitch and noise are drawn whether or not they are enabled, so
  enabling one does not change the others. The crop draws only when the frames are
  larger than the crop, so an audio-only run (no frames) or a crop of the whole frame
  gets other audio draws than an audio-visual run of the same seed."""
  rng = np.random.default_rng([int(seed), int(step), 2])
  margin = (frame_size - crop_size) if frame_size else 0
  crop_y, crop_x = (int(v) for v in rng.integers(0, margin + 1, size=2))
  flip_u, speed_u, pitch_u = rng.random(3)
  noise = rng.standard_normal((num_windows, samples_per_window), dtype=np.float32)
  std = float(input_config.audio_noise_std)
  return Augmentation(
      crop_y=crop_y, crop_x=crop_x,
      flip=bool(input_config.random_flip) and bool(flip_u < 0.5),
      speed=1.0 + float(input_config.speed_range) * (2.0 * float(speed_u) - 1.0),
      semitones=float(input_config.pitch_shift_semitones) * (2.0 * float(pitch_u) - 1.0),
      noise=noise * np.float32(std) if std > 0 else None)


def augmentation_inputs(aug: Augmentation, num_windows: int, samples_per_window: int
                        ) -> dict[str, np.ndarray]:
  """The audio draws of a batch as the train step takes them (`batch['aug']`):
  speed [] float32, semitones [] float32, noise [T, S] float32 (zeros when off).
  The step applies them in-graph (`augment_audio`)."""
  noise = aug.noise if aug.noise is not None else np.zeros(
      (num_windows, samples_per_window), np.float32)
  return {"speed": np.asarray(aug.speed, np.float32),
          "semitones": np.asarray(aug.semitones, np.float32),
          "noise": np.asarray(noise, np.float32)}


def step_inputs(index: np.ndarray, aug: Augmentation, num_windows: int,
                samples_per_window: int) -> dict[str, np.ndarray]:
  """One step's inputs of the device-resident path (`augment_in_graph`): 'index' [b]
  int32 (the clips of this host's slice of the batch), 'crop' [2] int32, 'flip' bool,
  and the audio draws of `augmentation_inputs`."""
  return {"index": np.asarray(index, np.int32),
          "crop": np.asarray([aug.crop_y, aug.crop_x], np.int32),
          "flip": np.asarray(aug.flip, bool),
          **augmentation_inputs(aug, num_windows, samples_per_window)}
