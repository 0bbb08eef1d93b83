"""A small learnable audio-visual data set, generated in NumPy (`synthetic_av`).

Legend: T windows, F frames per window, H = W frame size, S audio samples per
window, N frames or samples of a whole clip.

Every clip belongs to one of `NUM_CLASSES` classes and one of `NUM_ACTORS`
actors (odd ids male, even ids female, as RAVDESS). What carries the class:

* audio: a tone at the class frequency `CLASS_FREQS_HZ[c]` (with a weaker
  second harmonic), scaled by the actor's pitch factor (at most
  `ACTOR_PITCH_SEMITONES` semitones away);
* video: a bright blob whose motion and size are class-specific and survive a
  horizontal flip: 0 rises, 1 falls, 2 swings left and right, 3 stays in the
  centre and pulses in size; its width is `BLOB_SIZE[c]` times the base width
  (a static appearance cue beside the motion, as a face's expression has both).

The strength of both cues GROWS over the clip, from `CUE_START` to `CUE_END`
of its full amplitude (linearly in time), so later windows ("gates") carry more
information than early ones, the paper's temporal argument.

Per-actor nuisance, independent of the class: background colour (each channel
in `BACKGROUND_RANGE`), a distractor blob of the actor's colour moving in a
random direction (`DISTRACTOR_WEIGHT` of the colour difference), a hum at an
actor-specific frequency, white noise of an actor-specific level, and the
pitch factor. Per-clip randomness: duration (`DURATION_S` +- `DURATION_JITTER_S`),
phases, blob start offsets.

Everything is a pure function of (seed, actor, label, repetition): the same
seed gives byte-identical clips on every machine. Windows are cut with
`windows.WindowSpec` as for the real data sets (`cut_windows`): from the frame
that contains each window's start, `F = round(L * fps)` frames, the last frame
repeated past the clip's end; audio zero-padded past the end.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from avjax.data import features
from avjax.data import folds as folds_lib
from avjax.data import windows

NUM_CLASSES = 4
NUM_ACTORS = 20
CLIPS_PER_ACTOR_CLASS = 4
FPS = 8
FRAME_SIZE = 40
AUDIO_RATE = features.AUDIO_RATE
DURATION_S = 2.5
DURATION_JITTER_S = 0.3          # durations uniform in [2.2, 2.8] s
CLASS_FREQS_HZ = (220.0, 330.0, 495.0, 742.5)   # ratio 1.5 between neighbours
ACTOR_PITCH_SEMITONES = 1.0      # actor pitch factor in 2**([-1, 1] / 12)
CUE_START, CUE_END = 0.1, 1.0    # class-cue strength at the clip's start and end
MOTION_NAMES = ("rises", "falls", "swings", "pulses")
BLOB_SIZE = (0.8, 1.0, 1.25, 1.55)   # class blob width, factor on the base width
# Video nuisance (1.3.0). Wider backgrounds (30-140) and a stronger distractor (0.35)
# kept the demo's small random I3D from learning the video cue within its 56 steps
# (docs/experiments.md, the demo).
BACKGROUND_RANGE = (60.0, 100.0)     # per-channel background level, 0-255
DISTRACTOR_WEIGHT = 0.15             # distractor blob: this fraction of colour - background


def actor_gender(actor: int) -> str:
  return "male" if actor % 2 == 1 else "female"


def actor_genders(num_actors: int = NUM_ACTORS) -> dict[int, str]:
  return {a: actor_gender(a) for a in range(1, num_actors + 1)}


def actor_folds(num_actors: int = NUM_ACTORS) -> dict[int, int]:
  return folds_lib.assign_folds(actor_genders(num_actors))


@dataclasses.dataclass(frozen=True)
class Actor:
  """Nuisance parameters of one actor (independent of the class)."""
  background: np.ndarray     # [3] float, 0-255
  blob_colour: np.ndarray    # [3] float, colour of the distractor blob
  pitch: float               # factor on the class frequencies
  hum_hz: float              # frequency of the actor's hum
  noise_std: float           # white-noise level of the audio
  pixel_noise: float         # per-pixel noise std (0-255 scale)


def actor_params(actor: int, seed: int = 0) -> Actor:
  rng = np.random.default_rng([seed, actor, 7919])
  return Actor(
      background=rng.uniform(*BACKGROUND_RANGE, size=3),
      blob_colour=rng.uniform(60, 220, size=3),
      pitch=float(2 ** (rng.uniform(-ACTOR_PITCH_SEMITONES, ACTOR_PITCH_SEMITONES) / 12)),
      hum_hz=float(rng.uniform(120, 1000)),
      noise_std=float(rng.uniform(0.01, 0.04)),
      pixel_noise=float(rng.uniform(4, 12)))


def clip_id(actor: int, label: int, rep: int) -> str:
  return f"synth-a{actor:02d}-c{label}-r{rep:02d}"


def cue_strength(progress: np.ndarray) -> np.ndarray:
  """Class-cue amplitude factor at `progress` = time / duration in [0, 1]."""
  return CUE_START + (CUE_END - CUE_START) * np.clip(progress, 0.0, 1.0)


def _gaussian_blob(size: int, cy: np.ndarray, cx: np.ndarray, sigma: np.ndarray) -> np.ndarray:
  """[N, size, size] blobs with peak 1 at (cy, cx), each [N]."""
  grid = np.arange(size, dtype=np.float32)
  dy = (grid[None, :] - cy[:, None]) ** 2                            # [N, H]
  dx = (grid[None, :] - cx[:, None]) ** 2                            # [N, W]
  s2 = (2 * sigma ** 2)[:, None, None]
  return np.exp(-(dy[:, :, None] + dx[:, None, :]) / s2)           # [N, H, W]


def render_video(label: int, actor: Actor, duration: float, rng: np.random.Generator, *,
                 fps: int = FPS, frame_size: int = FRAME_SIZE) -> np.ndarray:
  """The clip's frames, [N, H, W, 3] uint8, frame i at time i / fps."""
  n = max(1, int(np.ceil(duration * fps - 1e-9)))
  t = np.arange(n, dtype=np.float32) / fps                          # [N]
  p = t / duration
  c = frame_size / 2 - 0.5
  amp = frame_size * 0.2                                             # motion amplitude, pixels
  jitter = rng.uniform(-2, 2, size=2)
  phase = rng.uniform(0, 2 * np.pi)
  sigma = np.full(n, frame_size * 0.08 * BLOB_SIZE[label], np.float32)
  cy = np.full(n, c + jitter[0], np.float32)
  cx = np.full(n, c + jitter[1], np.float32)
  if label == 0:      # rises
    cy = cy + amp * (0.5 - p) * 2
  elif label == 1:    # falls
    cy = cy - amp * (0.5 - p) * 2
  elif label == 2:    # swings left and right
    cx = cx + amp * np.sin(2 * np.pi * 1.5 * t + phase)
  else:               # pulses in place
    sigma = sigma * (1.0 + 0.8 * np.sin(2 * np.pi * 1.5 * t + phase))
  blob = _gaussian_blob(frame_size, cy, cx, sigma)                   # [N, H, W]
  strength = cue_strength(p)[:, None, None, None]                   # [N, 1, 1, 1]
  frames = actor.background[None, None, None, :] + 150.0 * strength * blob[..., None]

  # Distractor: the actor's colour, constant strength, random straight path.
  angle = rng.uniform(0, 2 * np.pi)
  start = rng.uniform(c - amp, c + amp, size=2)
  speed = rng.uniform(2, 5)                                          # pixels per second
  dy = start[0] + speed * t * np.sin(angle)
  dx = start[1] + speed * t * np.cos(angle)
  distractor = _gaussian_blob(frame_size, dy, dx, np.full(n, frame_size * 0.1, np.float32))
  frames = frames + DISTRACTOR_WEIGHT * distractor[..., None] * (actor.blob_colour - actor.background)
  frames = frames + rng.normal(0, actor.pixel_noise, size=frames.shape)
  return np.clip(np.rint(frames), 0, 255).astype(np.uint8)          # [N, H, W, 3]


def render_audio(label: int, actor: Actor, duration: float, rng: np.random.Generator, *,
                 rate: int = AUDIO_RATE) -> np.ndarray:
  """The clip's waveform, [N] float32 in [-1, 1]."""
  n = int(round(duration * rate))
  t = np.arange(n, dtype=np.float64) / rate
  f = CLASS_FREQS_HZ[label] * actor.pitch
  phase = rng.uniform(0, 2 * np.pi, size=3)
  tone = np.sin(2 * np.pi * f * t + phase[0]) + 0.4 * np.sin(2 * np.pi * 2 * f * t + phase[1])
  audio = 0.35 * cue_strength(t / duration) * tone
  audio += 0.1 * np.sin(2 * np.pi * actor.hum_hz * t + phase[2])
  audio += rng.normal(0, actor.noise_std, size=n)
  return np.clip(audio, -1.0, 1.0).astype(np.float32)


def cut_windows(frames: np.ndarray | None, fps: float, audio: np.ndarray, rate: int,
                spec: windows.WindowSpec, duration: float) -> dict[str, np.ndarray]:
  """Cuts a clip into `spec`'s windows.

  frames [N, H, W, 3] (or None), audio [N_a]. Returns 'video' [T, F, H, W, 3]
  (when frames are given), 'audio' [T, S] zero-padded past the clip's end and
  'window_valid' [T] (`spec.valid_fraction`).
  """
  return windows.cut_windows(spec, duration, video=frames, fps=fps, audio=audio, rate=rate)


def generate_clip(label: int, actor: int, rep: int, spec: windows.WindowSpec, *, seed: int = 0,
                  fps: int = FPS, frame_size: int = FRAME_SIZE,
                  audio_rate: int = AUDIO_RATE, num_actors: int = NUM_ACTORS) -> dict:
  """One record of `synthetic_av` (the layout of `features.features_dict`).

  Pure: the result depends only on the arguments.
  """
  if not 0 <= label < NUM_CLASSES:
    raise ValueError(f"label must be in 0..{NUM_CLASSES - 1}, got {label}")
  if not 1 <= actor <= num_actors:
    raise ValueError(f"actor must be in 1..{num_actors}, got {actor}")
  params = actor_params(actor, seed)
  rng = np.random.default_rng([seed, actor, label, rep])
  duration = float(np.float32(DURATION_S + rng.uniform(-DURATION_JITTER_S, DURATION_JITTER_S)))
  frames = render_video(label, params, duration, rng, fps=fps, frame_size=frame_size)
  audio = render_audio(label, params, duration, rng, rate=audio_rate)
  record = cut_windows(frames, fps, audio, audio_rate, spec, duration)
  record.update(
      label=label, actor=np.int32(actor), fold=np.int32(actor_folds(num_actors)[actor]),
      gender=actor_gender(actor), intensity=np.int32(1 + (rep // 2) % 2),
      statement=np.int32(1 + rep % 2), clip_id=clip_id(actor, label, rep),
      duration=np.float32(duration))
  return record


def all_clips(clips_per_actor_class: int = CLIPS_PER_ACTOR_CLASS,
              num_actors: int = NUM_ACTORS) -> list[tuple[int, int, int]]:
  """(actor, label, rep) of every clip, in a fixed order."""
  return [(a, c, r) for a in range(1, num_actors + 1) for c in range(NUM_CLASSES)
          for r in range(clips_per_actor_class)]
