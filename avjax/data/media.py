"""Decoding clips into windowed records: PyAV for video, soundfile for WAVs, soxr.

Legend: N frames of a whole clip, T windows, F frames per window, H = W frame
size, S audio samples per window, M audio samples of a whole clip, Ch audio
channels.

Video is decoded with PyAV, resampled to a fixed frame rate and resized by the decoder's
scaler (`VideoFrame.reformat`, or a `crop,scale` filter graph when a centre
square is cropped first): no Python pixel loops, and only the source frames
that are shown get converted. Output frame n shows the last source frame
starting at or before n / fps + 1 ms (the tolerance absorbs FLV's
millisecond timestamps). Audio comes from the container or a separate
WAV, is downmixed to mono (channel mean), and resampled with soxr to 22050 Hz
(SoundNet's rate), float32 in [-1, 1].

Each stream is cut by its own clock: video time 0 is the first frame's
timestamp, audio time 0 the first audio sample. FLV audio decodes about 40 ms
longer than the container says (docs/design.md, "Preprocessing"), so audio is never
stretched or trimmed to the video's length; windows past a stream's end are
padded (last frame repeated, audio zeros). The clip's `duration` is the video
stream's span (first frame to the end of the last one).

`decode` is the one decoder of containers: both streams, or video alone
(`with_audio=False`, optionally cropped to a `box`: avjax.predict), or audio
alone (`with_video=False`). Windows are cut by `windows.cut_windows` (through
`clip_records.cut_windows`).

Audio-only records (`decode_audio`, `clip_records.make_record(..., with_video=False)`) read
a WAV alone (RAVDESS's modality-03 files, CREMA-D's AudioWAV) and are cut by
the same `cut_windows`, so their audio windows equal those of the
audio-visual records when the two sources hold the same audio.

Every problem with a file raises `MediaError(path, reason)`; the builders
record the reason and skip the clip.

  rec = clip_records.make_record("01-01-03-01-02-01-05.mp4", windows.parse_name("w8_l1_ov"))
  rec["video"]  # [T, F, H, W, 3] uint8
  rec["audio"]  # [T, S] float32
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import zipfile
import zlib
from typing import Any, NamedTuple, Union

import av
import numpy as np
import soundfile
import soxr


# SoundNet's rate; equal to avjax.data.features.AUDIO_RATE (not imported here
# so that decoding workers do not import tensorflow_datasets).
AUDIO_RATE = 22050
DEFAULT_FPS = 25.0
DEFAULT_FRAME_SIZE = 112
_TIME_EPS = 1e-3  # seconds; timestamps in FLV are whole milliseconds


class MediaError(Exception):
  """A clip that cannot be used: `path` is the file, `reason` says why."""

  def __init__(self, path: Any, reason: str):
    super().__init__(str(path), reason)
    self.path = str(path)
    self.reason = reason

  def __str__(self) -> str:
    return f"{self.path}: {self.reason}"


class ZipMember(NamedTuple):
  """A file inside a zip archive, read into memory when decoded."""
  archive: str
  name: str

  def __str__(self) -> str:
    return f"{self.archive}::{self.name}"

  def read(self) -> bytes:
    with zipfile.ZipFile(self.archive) as z:
      return z.read(self.name)


Source = Union[str, os.PathLike, ZipMember]


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
  """How clips are decoded; recorded in each dataset's metadata."""
  fps: float = DEFAULT_FPS               # output video frame rate
  frame_size: int = DEFAULT_FRAME_SIZE   # output frames are frame_size x frame_size
  center_crop: bool = False              # crop the centre square before resizing (default: whole frame)
  audio_rate: int = AUDIO_RATE           # output audio rate (Hz)
  interpolation: str = "AREA"            # swscale filter for resizing (AREA averages when shrinking)
  decoder_threads: int = 1               # FFmpeg decoding threads per clip (0: FFmpeg's choice)
  # A clip whose audio and video lengths differ by more than this many seconds
  # is rejected (e.g. CREMA-D's 1064_IEO_DIS_MD: a minute of video, 4 s of
  # audio). None disables the check.
  max_av_mismatch: float | None = 1.0

  def __post_init__(self):
    if not self.fps > 0:
      raise ValueError(f"fps must be > 0, got {self.fps}")
    if self.frame_size < 1:
      raise ValueError(f"frame_size must be >= 1, got {self.frame_size}")
    if self.audio_rate < 1:
      raise ValueError(f"audio_rate must be >= 1, got {self.audio_rate}")

  def frames_per_window(self, length: float) -> int:
    return int(round(length * self.fps))

  def samples_per_window(self, length: float) -> int:
    return int(round(length * self.audio_rate))


@dataclasses.dataclass
class Clip:
  """A decoded clip before windowing."""
  video: np.ndarray | None   # [N, H, W, 3] uint8, frame n at n / fps (None: audio alone)
  audio: np.ndarray | None   # [M] float32, sample m at m / audio_rate (None: video alone)
  duration: float            # seconds (video span; audio length when there is no video)
  video_duration: float | None
  audio_duration: float | None


# ----------------------------------------------------------------------------- opening

# FFmpeg demuxers of still images (and image sequences): such a file is not a clip.
_IMAGE_DEMUXERS = ("image2", "image2pipe", "apng", "gif", "webp")


def _open(src: Source) -> av.container.InputContainer:
  try:
    if isinstance(src, ZipMember):
      container = av.open(io.BytesIO(src.read()), mode="r")
    else:
      container = av.open(os.fspath(src), mode="r")
    names = set(container.format.name.split(","))
    if names & set(_IMAGE_DEMUXERS) or any(n.endswith("_pipe") for n in names):
      container.close()
      raise MediaError(src, f"not a video: a still image ({container.format.name} format)")
    return container
  except FileNotFoundError:
    raise MediaError(src, "file not found") from None
  except KeyError as e:  # a name missing from the zip
    raise MediaError(src, f"not in the archive ({e})") from None
  except (zipfile.BadZipFile, zlib.error, OSError, UnicodeError, av.FFmpegError) as e:
    raise MediaError(src, f"cannot open: {e}") from None


def _stream_time(frame, stream) -> float | None:
  if frame.pts is None:
    return None
  return float(frame.pts * (frame.time_base or stream.time_base))


# ----------------------------------------------------------------------------- video

class _Resizer:
  """Source frame -> [H, W, 3] uint8 at the output size, done by FFmpeg.

  The whole frame is scaled, or first cropped to its centre square
  (`center_crop`) or to a fixed `box` (x, y, w, h in source pixels).
  """

  def __init__(self, size: int, center_crop: bool, interpolation: str,
               box: tuple[int, int, int, int] | None = None):
    self.size, self.center_crop, self.interpolation, self.box = size, center_crop, interpolation, box
    self._graph = None

  def __call__(self, frame: av.VideoFrame, stream) -> np.ndarray:
    if not self.center_crop and self.box is None:
      out = frame.reformat(width=self.size, height=self.size, format="rgb24",
                           interpolation=self.interpolation)
      return out.to_ndarray()
    if self._graph is None:
      if self.box is not None:
        x, y, w, h = self.box
        crop_args = f"w={w}:h={h}:x={x}:y={y}:exact=1"
      else:
        crop_args = "w=min(iw\\,ih):h=min(iw\\,ih)"
      g = av.filter.Graph()
      src = g.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                         time_base=stream.time_base)
      crop = g.add("crop", crop_args)
      scale = g.add("scale", f"{self.size}:{self.size}:flags={self.interpolation.lower()}")
      fmt = g.add("format", "rgb24")
      sink = g.add("buffersink")
      src.link_to(crop)
      crop.link_to(scale)
      scale.link_to(fmt)
      fmt.link_to(sink)
      g.configure()
      self._graph = g
    self._graph.push(frame)
    return self._graph.pull().to_ndarray()


class _FpsSampler:
  """Fixed-rate resampling by timestamps: output n shows the last source frame
  whose time (relative to the first frame) is <= n / fps + _TIME_EPS. Source
  frames that no output shows are never converted."""

  def __init__(self, fps: float, convert, nominal_period: float):
    self.fps, self.convert, self.nominal_period = fps, convert, nominal_period
    self.frames: list[np.ndarray] = []   # output frames, [H, W, 3] each
    self.first: float | None = None
    self.last_time: float | None = None
    self.count = 0                       # source frames seen
    self._pending = None                 # last source frame, not yet assigned past its time
    self._pending_time = 0.0
    self._total = 0                      # output frames in all, known at finish()

  def _emit_until(self, t_next: float | None):
    """Assigns the pending frame to every output time before `t_next` (None: all left)."""
    if self._pending is None:
      return
    image = None
    while True:
      n = len(self.frames)
      t_n = n / self.fps
      if t_next is not None and t_n + _TIME_EPS >= t_next:
        break
      if t_next is None and n >= self._total:
        break
      if image is None:
        image = self.convert(self._pending)
      self.frames.append(image)

  def add(self, frame, time: float | None):
    if time is None:  # no timestamp: one nominal frame period after the previous frame
      time = self.last_time + self.nominal_period if self.last_time is not None else 0.0
    if self.first is None:
      self.first = time
    rel = time - self.first
    if self.last_time is not None and rel < self.last_time - self.first:
      rel = self.last_time - self.first  # out-of-order timestamp: keep time monotonic
    self._emit_until(rel)
    self._pending, self._pending_time = frame, rel
    self.last_time = rel + self.first
    self.count += 1

  def finish(self, period: float) -> float:
    """Emits the last frame up to the end; returns the video duration."""
    duration = (self._pending_time + period) if self._pending is not None else 0.0
    self._total = max(int(math.ceil(duration * self.fps - 1e-6)), len(self.frames))
    self._emit_until(None)
    self._pending = None
    return duration


def _frame_period(stream, times: list[float]) -> float:
  rate = stream.average_rate or stream.guessed_rate
  if rate:
    return float(1 / rate)
  diffs = np.diff(times)
  diffs = diffs[diffs > 0]
  return float(np.median(diffs)) if len(diffs) else 0.0


def _to_float_mono(frame: av.AudioFrame, resampler: av.AudioResampler) -> np.ndarray:
  chunks = [f.to_ndarray() for f in resampler.resample(frame)]  # [Ch, n] float32 (fltp)
  if not chunks:
    return np.zeros(0, np.float32)
  return np.concatenate(chunks, axis=1).mean(axis=0, dtype=np.float32)


def video_streams(container: av.container.InputContainer) -> list:
  """The container's moving-picture streams. A cover image (the attached picture of an
  MP3 or M4A, for instance) is a video stream to FFmpeg, but not a video."""
  return [s for s in container.streams.video
          if not s.disposition & av.stream.Disposition.attached_pic]


def decode(src: Source, *, audio_path: str | os.PathLike | None = None,
           options: DecodeOptions = DecodeOptions(), with_video: bool = True,
           with_audio: bool = True, box: tuple[int, int, int, int] | None = None) -> Clip:
  """Decodes a clip: video at options.fps and frame size, mono audio at options.audio_rate.

  The one decoder of containers. `with_video=False`: audio alone (`video` and
  `video_duration` None; the clip's duration is the audio's). `with_audio=False`:
  video alone (`audio` and `audio_duration` None; no audio stream needed).
  With `audio_path` the audio comes from that WAV (CREMA-D's AudioWAV) and the
  container's own audio is ignored; otherwise from the container's first audio
  stream. `box` (x, y, w, h in source pixels) is cropped before resizing
  instead of `options.center_crop` (avjax.predict's --face_crop). Raises
  MediaError for files that cannot be opened or decoded, lack a wanted stream,
  have no audio (when wanted), no video frames (when wanted), or zero duration.
  """
  if not (with_video or with_audio):
    raise ValueError("decode: with_video and with_audio are both False")
  if audio_path is not None and not with_audio:
    raise ValueError("decode: audio_path given with with_audio=False")
  if box is not None and not with_video:
    raise ValueError("decode: box given with with_video=False")
  container = _open(src)
  try:
    vstream = None
    if with_video:
      videos = video_streams(container)
      if not videos:
        raise MediaError(src, "no video stream" + (" (only a still cover image)"
                                                   if container.streams.video else ""))
      vstream = videos[0]
      vstream.thread_type = "AUTO" if options.decoder_threads != 1 else "SLICE"
      vstream.codec_context.thread_count = options.decoder_threads
    astream = None
    if with_audio and audio_path is None:
      if not container.streams.audio:
        raise MediaError(src, "no audio stream")
      astream = container.streams.audio[0]
    if container.duration is not None and container.duration == 0:
      raise MediaError(src, "zero duration (the container says 0 s)")

    resizer = _Resizer(options.frame_size, options.center_crop, options.interpolation, box)
    rate = (vstream.average_rate or vstream.guessed_rate) if vstream is not None else None
    sampler = _FpsSampler(options.fps, lambda f: resizer(f, vstream),
                          nominal_period=float(1 / rate) if rate else 1 / options.fps)
    resampler = av.AudioResampler(format="fltp")
    audio_chunks: list[np.ndarray] = []
    native_rate = None
    video_times: list[float] = []
    streams = [s for s in (vstream, astream) if s is not None]
    try:
      for packet in container.demux(*streams):
        for frame in packet.decode():
          if packet.stream is vstream:
            t = _stream_time(frame, vstream)
            if t is not None:
              video_times.append(t)
            sampler.add(frame, t)
          else:
            native_rate = frame.sample_rate
            audio_chunks.append(_to_float_mono(frame, resampler))
    except av.FFmpegError as e:
      raise MediaError(src, f"cannot decode: {e}") from None
  finally:
    container.close()

  video = video_duration = None
  if with_video:
    if sampler.count == 0:
      raise MediaError(src, "no video frames")
    video_duration = sampler.finish(_frame_period(vstream, video_times))
    if sampler.count > 1 and video_times and max(video_times) - min(video_times) <= 0:
      raise MediaError(src, f"zero duration (all {sampler.count} frames have the same timestamp)")
    video = np.stack(sampler.frames)  # [N, H, W, 3]

  audio = audio_duration = None
  if with_audio:
    if audio_path is not None:
      audio, native_rate = read_wav(audio_path)
    else:
      if not audio_chunks or native_rate is None:
        raise MediaError(src, "no audio (the audio stream has no decodable frames)")
      audio = np.concatenate(audio_chunks)
    if audio.size == 0:
      raise MediaError(audio_path or src, "no audio samples")
    _check_samples(audio_path or src, audio)
    audio_duration = float(audio.size / native_rate)
    _check_duration(audio_path or src, audio_duration)
    audio = resample(audio, native_rate, options.audio_rate)

  duration = video_duration if with_video else audio_duration
  _check_duration(src, duration)
  if (with_video and with_audio and options.max_av_mismatch is not None
      and abs(video_duration - audio_duration) > options.max_av_mismatch):
    raise MediaError(src, f"video lasts {video_duration:.2f} s but audio {audio_duration:.2f} s "
                          f"(differ by more than {options.max_av_mismatch:g} s)")
  return Clip(video=video, audio=audio, duration=float(duration),
              video_duration=video_duration, audio_duration=audio_duration)


# ----------------------------------------------------------------------------- audio

def read_wav(path: Source) -> tuple[np.ndarray, int]:
  """Reads a WAV (any extra RIFF chunks skipped) as mono float32 [M] and its rate.

  `path` is a file or a `ZipMember`. Channels are averaged (RAVDESS has a few
  stereo WAVs); 16-bit samples map to [-1, 1) exactly, full scale (-32768)
  included, with no normalisation or clipping.
  """
  try:
    if isinstance(path, ZipMember):
      data, rate = soundfile.read(io.BytesIO(path.read()), dtype="float32", always_2d=True)
    else:   # opened here: libsndfile cannot encode every file name Python can open
      with open(os.fspath(path), "rb") as f:
        data, rate = soundfile.read(f, dtype="float32", always_2d=True)  # [M, Ch]
  except FileNotFoundError:
    raise MediaError(path, "file not found") from None
  except KeyError as e:  # a name missing from the zip
    raise MediaError(path, f"not in the archive ({e})") from None
  except (soundfile.LibsndfileError, RuntimeError, OSError, zipfile.BadZipFile, zlib.error,
          UnicodeError) as e:
    if not isinstance(path, ZipMember) and not os.path.exists(path):
      raise MediaError(path, "file not found") from None
    raise MediaError(path, f"cannot read audio: {e}") from None
  if data.shape[0] == 0:
    raise MediaError(path, "no audio samples (empty WAV)")
  return data.mean(axis=1, dtype=np.float32), int(rate)


def _is_wav(src: Source) -> bool:
  name = src.name if isinstance(src, ZipMember) else os.fspath(src)
  return name.lower().endswith(".wav")


def decode_audio(src: Source, *, options: DecodeOptions = DecodeOptions()) -> Clip:
  """Decodes the audio of a clip alone (audio-only records): mono at options.audio_rate.

  A WAV (file or zip member) is read with soundfile, anything else through
  PyAV. The clip's duration is the audio's. Raises MediaError like `decode`.
  """
  if not _is_wav(src):
    return decode(src, options=options, with_video=False)
  audio, native_rate = read_wav(src)
  _check_samples(src, audio)
  duration = audio.size / native_rate
  _check_duration(src, duration)
  return Clip(video=None, audio=resample(audio, native_rate, options.audio_rate),
              duration=float(duration), video_duration=None, audio_duration=float(duration))


def _check_samples(src: Source, audio: np.ndarray) -> None:
  """MediaError for audio that is all zeros, or holds NaN or inf (a float WAV can)."""
  bad = int(np.sum(~np.isfinite(audio)))
  if bad or not np.any(audio):
    raise MediaError(src, f"{bad} of {audio.size} audio samples are NaN or inf" if bad
                     else f"no audio (all {audio.size} samples are 0)")


def _check_duration(src: Source, duration: float) -> None:
  """MediaError for a clip of no length, or too short to resample and window (10 ms)."""
  if duration < 0.01:
    raise MediaError(src, "zero duration" if duration <= 0 else
                     f"too short ({duration * 1000:.2f} ms; a clip needs 10 ms or more)")


def resample(audio: np.ndarray, rate: int, new_rate: int) -> np.ndarray:
  """Resamples mono float32 audio [M] with soxr (high quality)."""
  if rate == new_rate:
    return audio.astype(np.float32, copy=False)
  return soxr.resample(audio, rate, new_rate, quality="HQ").astype(np.float32, copy=False)
