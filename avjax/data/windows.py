"""Window ("gate") arithmetic shared by the builders, the configs and inference.

A clip is cut into `T` windows of `L` seconds. Two modes:

* ``fixed`` (default): window k starts at ``k * (L - overlap)`` seconds. Where the
  span ``L + (T - 1) * (L - overlap)`` passes the clip's end, the last frame is
  repeated and the audio zero-padded; ``window_valid`` records the fraction of
  each window that lies inside the clip.
* ``fit``: the T windows are spread evenly from the clip's start to its end,
  hop = (duration - L) / (T - 1), so nothing is padded when the clip lasts at
  least L seconds. With T = 1 the window is centred in the clip.
* ``apex`` (T = 1 only): the L seconds of the clip with the most audio energy
  (`apex_start`), one reading of the paper's "global information (apex moments)";
  the centred window when the clip has no audio.

`cut_windows` is the one cutter of a clip's frames and samples into windows
(`clip_records.cut_windows` for decoded clips, `synthetic` for generated ones).

Builder-config names encode a windowing: ``w{T}_l{L}_{ov|no}[_fit|_apex]``, e.g.
``w8_l1_ov`` is 8 windows of 1 s with 0.5 s overlap, fixed hop; ``w1_l3_no_fit`` the
centred 3 s; ``w1_l1_no_apex`` the loudest second. The overlap token counts only with
the fixed hop: ``w2_l1_ov_fit`` and ``w2_l1_no_fit`` cut the same windows.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

OVERLAP_SECONDS = 0.5
_NAME_RE = re.compile(r"^w(?P<t>\d+)_l(?P<l>\d+(?:p\d+)?)_(?P<ov>ov|no)(?P<mode>_fit|_apex)?$")
# The apex window's start is searched on this grid (seconds).
APEX_STEP_SECONDS = 0.01


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """How a clip is cut into windows."""
  num_windows: int          # T
  length: float             # L, seconds
  overlap: float            # seconds shared by consecutive windows (fixed mode)
  mode: str = "fixed"       # "fixed", "fit" or "apex"

  def __post_init__(self):
    if self.num_windows < 1:
      raise ValueError(f"num_windows must be >= 1, got {self.num_windows}")
    if self.length <= 0:
      raise ValueError(f"window length must be > 0 s, got {self.length}")
    if not 0 <= self.overlap < self.length:
      raise ValueError(f"overlap must be in [0, length), got {self.overlap} for length {self.length}")
    if self.mode not in ("fixed", "fit", "apex"):
      raise ValueError(f"window mode must be 'fixed', 'fit' or 'apex', got {self.mode!r}")
    if self.mode == "apex" and self.num_windows != 1:
      raise ValueError(f"the 'apex' window mode takes one window, got {self.num_windows}")

  @property
  def hop(self) -> float:
    """Seconds between window starts in fixed mode."""
    return self.length - self.overlap

  @property
  def span(self) -> float:
    """Seconds covered by all windows in fixed mode."""
    return self.length + (self.num_windows - 1) * self.hop

  @property
  def name(self) -> str:
    length = f"{self.length:g}".replace(".", "p")
    ov = "ov" if self.overlap > 0 else "no"
    return f"w{self.num_windows}_l{length}_{ov}" + ("" if self.mode == "fixed" else f"_{self.mode}")

  def starts(self, duration: float) -> np.ndarray:
    """Start time in seconds of each window for a clip of `duration` seconds. [T].
    An `apex` window's start depends on the audio (`apex_start`); without it, this is
    the centred window's."""
    t = self.num_windows
    if self.mode == "fixed" or t == 1:
      if self.mode in ("fit", "apex") and t == 1:
        return np.array([max(0.0, (duration - self.length) / 2)])
      return np.arange(t, dtype=np.float64) * self.hop
    hop = max(0.0, (duration - self.length) / (t - 1))
    return np.arange(t, dtype=np.float64) * hop

  def valid_fraction(self, duration: float) -> np.ndarray:
    """Fraction of each window that lies inside [0, duration]. [T] float32."""
    starts = self.starts(duration)
    inside = np.clip(duration - starts, 0.0, self.length) / self.length
    return inside.astype(np.float32)


# Tolerance of `first_frame` on s * fps: 0.3 s * 25 fps is 7.4999999... in floating
# point and 0.28 * 25 is 6.9999999...; both must be read as the exact products.
FRAME_TOLERANCE = 1e-6


def first_frame(starts: np.ndarray, fps: float) -> np.ndarray:
  """[T] starts (s) -> [T] int64: the frame whose interval [n / fps, (n + 1) / fps)
  contains each start, floor(s * fps + FRAME_TOLERANCE). At 25 fps the starts 0.5 /
  1.5 / 2.5 s give frames 12 / 37 / 62 (the start lies 20 ms into each), 0.3 s
  frame 7 and 0.28 s frame 7."""
  return np.floor(np.asarray(starts, np.float64) * fps + FRAME_TOLERANCE).astype(np.int64)


def apex_start(audio: np.ndarray, rate: int, length: float, duration: float) -> float:
  """Start (s) of the `length` seconds of `audio` [M] with the largest energy (sum of
  squared samples), searched every APEX_STEP_SECONDS from 0 to duration - length;
  ties go to the earliest. 0 when the clip is shorter than `length`."""
  span = duration - length
  if span <= 0:
    return 0.0
  n = int(round(length * rate))
  x = np.asarray(audio, np.float64)
  csum = np.concatenate([[0.0], np.cumsum(x * x)])
  starts = np.arange(0.0, span + 1e-9, APEX_STEP_SECONDS)
  first = np.minimum(np.round(starts * rate).astype(np.int64), len(x))
  last = np.minimum(first + n, len(x))
  return float(starts[int(np.argmax(csum[last] - csum[first]))])


def window_starts(spec: WindowSpec, duration: float, audio: np.ndarray | None = None,
                  rate: int | None = None) -> np.ndarray:
  """[T] start (s) of each window: `spec.starts`, or for an `apex` window with audio,
  `apex_start`."""
  if spec.mode == "apex" and audio is not None:
    if rate is None:
      raise ValueError("window_starts: audio given without rate")
    return np.array([apex_start(audio, rate, spec.length, duration)])
  return spec.starts(duration)


def cut_windows(spec: WindowSpec, duration: float, *,
                video: np.ndarray | None = None, fps: float | None = None,
                audio: np.ndarray | None = None, rate: int | None = None) -> dict[str, np.ndarray]:
  """Cuts a clip of `duration` seconds into `spec`'s T windows of L seconds.

  Window k starts at s_k = window_starts(spec, duration, audio, rate)[k]. Its video frame j is frame
  f_k + j of `video` [N, H, W, 3] (frame n shown over [n / fps, (n + 1) / fps);
  the last frame when past the end), f_k the frame that contains s_k
  (`first_frame`), so that every window's video starts within one frame
  interval before its audio, the same way at every window (the decoded data
  sets and the synthetic one alike). Its audio sample i is sample
  round(s_k * rate) + i of `audio` [M] (zero past the end). F = round(L * fps),
  S = round(L * rate).

  Returns 'video' [T, F, H, W, 3] (when `video` is given), 'audio' [T, S]
  float32 (when `audio` is given) and 'window_valid' [T] (`spec.valid_fraction`).
  """
  starts = window_starts(spec, duration, audio, rate)                     # [T]
  out: dict[str, np.ndarray] = {}
  if video is not None:
    if fps is None:
      raise ValueError("cut_windows: video given without fps")
    num_f = int(round(spec.length * fps))
    first = first_frame(starts, fps)                                      # [T]
    idx = np.minimum(first[:, None] + np.arange(num_f)[None], len(video) - 1)  # [T, F]
    out["video"] = video[idx]                                             # [T, F, H, W, 3]
  if audio is not None:
    if rate is None:
      raise ValueError("cut_windows: audio given without rate")
    num_s = int(round(spec.length * rate))
    first = np.round(starts * rate).astype(np.int64)                      # [T]
    idx = first[:, None] + np.arange(num_s)[None]                         # [T, S]
    inside = idx < len(audio)
    out["audio"] = np.where(inside, audio[np.minimum(idx, len(audio) - 1)], 0.0).astype(np.float32)
  out["window_valid"] = spec.valid_fraction(duration)
  return out


def parse_name(name: str) -> WindowSpec:
  """Parses ``w8_l1_ov``-style names (see module docstring)."""
  m = _NAME_RE.match(name)
  if not m:
    raise ValueError(
        f"Bad windowing name {name!r}: expected w{{T}}_l{{L}}_{{ov|no}}[_fit|_apex], e.g. 'w8_l1_ov'.")
  length = float(m["l"].replace("p", "."))
  return WindowSpec(
      num_windows=int(m["t"]), length=length,
      overlap=OVERLAP_SECONDS if m["ov"] == "ov" else 0.0,
      mode=m["mode"][1:] if m["mode"] else "fixed")


def middle_window_start(duration: float, length: float) -> float:
  """Start of the single window centred in the clip (the `global` variant)."""
  return max(0.0, (duration - length) / 2)
