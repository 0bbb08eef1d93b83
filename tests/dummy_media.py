"""Small media files in the official RAVDESS and CREMA-D formats and names, for tests.

Legend: H, W frame size; N frames.

* RAVDESS: H.264 + AAC (48 kHz) MP4 named like `01-01-03-01-02-01-05.mp4`.
* CREMA-D: FLV (Sorenson `flv` video, as FFmpeg has no VP6 encoder, and MP3
  audio) named like `VideoFlash/1001_DFA_ANG_XX.flv`, plus a 16 kHz 16-bit WAV
  `AudioWAV/1001_DFA_ANG_XX.wav`.

Frame i is uniform grey at `level(i)` (distinct for neighbouring frames, so a
test can tell which source frame a decoded frame shows); audio is a sine.
H.264 is written losslessly (crf 0).
"""

from __future__ import annotations

import fractions
import os
import pathlib
import struct
import zipfile
from typing import Callable, Iterable, Sequence

import av
import numpy as np
import soundfile

RAVDESS_FPS = fractions.Fraction(30000, 1001)


def level(i: int) -> int:
  """Grey level of frame i: 6 apart for neighbours, wrapping within [16, 238)."""
  return 16 + (6 * i) % 222


def grey_frame(i: int, height: int, width: int) -> np.ndarray:
  return np.full((height, width, 3), level(i), np.uint8)


def sine(seconds: float, rate: int, hz: float = 440.0, amplitude: float = 0.5) -> np.ndarray:
  t = np.arange(int(round(seconds * rate))) / rate
  return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def write_av(path: str | os.PathLike, *, container_format: str, video_codec: str, audio_codec: str,
             seconds: float = 2.5, fps: fractions.Fraction | int = RAVDESS_FPS,
             size: tuple[int, int] = (64, 48), num_frames: int | None = None,
             audio_rate: int = 48000, channels: int = 1, with_audio: bool = True,
             tone_hz: float | tuple[float, ...] = 440.0,
             frame_fn: Callable[[int, int, int], np.ndarray] = grey_frame,
             frames: Iterable[np.ndarray] | None = None, audio: np.ndarray | None = None,
             pix_fmt: str = "yuv420p",
             video_options: dict[str, str] | None = None) -> pathlib.Path:
  """Writes a clip: the one PyAV writer of the tests and benchmarks.

  Video: `frames` (RGB uint8 [H, W, 3] each, `size` = (W, H)) when given, else
  `frame_fn(i, H, W)` for i < `num_frames` (default `seconds` x `fps`); `num_frames=0`
  writes a video stream without frames. Audio: `audio` ([M] or [C, M] float32 at
  `audio_rate`) when given, else a sine of `tone_hz` per channel for `seconds`."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  width, height = size
  if frames is None:
    n = int(round(seconds * fps)) if num_frames is None else num_frames
    frames = (frame_fn(i, height, width) for i in range(n))
  if audio is not None:
    x = np.asarray(audio, np.float32).reshape(-1, np.shape(audio)[-1])   # [C, M]
    channels = x.shape[0]
  with av.open(str(path), "w", format=container_format) as c:
    vs = c.add_stream(video_codec, rate=fps)
    vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
    if video_options:
      vs.options = video_options
    a = None
    if with_audio:
      a = c.add_stream(audio_codec, rate=audio_rate)
      a.layout = "stereo" if channels == 2 else "mono"
    for i, image in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
      frame.pts = i
      for p in vs.encode(frame):
        c.mux(p)
    for p in vs.encode():
      c.mux(p)
    if a is not None:
      if audio is None:
        tones = tone_hz if isinstance(tone_hz, tuple) else (tone_hz,) * channels
        x = np.stack([sine(seconds, audio_rate, hz) for hz in tones])   # [C, M], a tone per channel
      layout = a.layout.name
      for s in range(0, x.shape[1], 1024):
        chunk = np.ascontiguousarray(x[:, s:s + 1024])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts = audio_rate, s
        for p in a.encode(frame):
          c.mux(p)
      for p in a.encode():
        c.mux(p)
  return path


def write_lossless(path, frames: np.ndarray, fps: int, audio: np.ndarray | None,
                   rate: int) -> pathlib.Path:
  """MKV with FFV1 (bgr0, lossless RGB) video and float32 PCM audio: decodes to exactly
  `frames` [N, H, W, 3] and `audio` [M] (no audio stream when None)."""
  return write_av(path, container_format="matroska", video_codec="ffv1",
                  audio_codec="pcm_f32le", fps=fps, size=(frames.shape[2], frames.shape[1]),
                  frames=frames, audio=audio, audio_rate=rate, with_audio=audio is not None,
                  pix_fmt="bgr0")


def write_mp4(path, **kwargs) -> pathlib.Path:
  """RAVDESS-like MP4: H.264 (lossless) + AAC, 29.97 fps, 48 kHz."""
  kwargs.setdefault("audio_rate", 48000)
  kwargs.setdefault("video_options", {"crf": "0", "preset": "ultrafast"})
  return write_av(path, container_format="mp4", video_codec="libx264", audio_codec="aac", **kwargs)


def write_flv(path, **kwargs) -> pathlib.Path:
  """CREMA-D-like FLV: Sorenson video + MP3 (44.1 kHz), 29.97 fps, 480x360 scaled down."""
  kwargs.setdefault("audio_rate", 44100)
  kwargs.setdefault("size", (48, 36))
  kwargs.setdefault("video_options", {"qscale": "1"})
  return write_av(path, container_format="flv", video_codec="flv", audio_codec="mp3", **kwargs)


def write_wav(path, *, seconds: float = 2.5, rate: int = 16000, channels: int = 1,
              tone_hz: float = 440.0) -> pathlib.Path:
  """16-bit PCM WAV (CREMA-D's AudioWAV: 16 kHz mono); seconds=0 writes no samples."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  x = sine(seconds, rate, tone_hz)
  soundfile.write(str(path), np.tile(x[:, None], (1, channels)), rate, subtype="PCM_16")
  return path


def ravdess_name(*, emotion: int, actor: int, modality: int = 1, channel: int = 1,
                 intensity: int = 1, statement: int = 1, repetition: int = 1) -> str:
  return f"{modality:02d}-{channel:02d}-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}.mp4"


def crema_name(actor: int, sentence: str, emotion: str, level_code: str = "XX") -> str:
  return f"{actor}_{sentence}_{emotion}_{level_code}"


def zip_dir(folder: str | os.PathLike, archive: str | os.PathLike, arc_root: str) -> pathlib.Path:
  """Zips `folder`'s files under `arc_root/` (like Video_Speech_Actor_01.zip: Actor_01/...)."""
  folder, archive = pathlib.Path(folder), pathlib.Path(archive)
  with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
    for p in sorted(folder.iterdir()):
      z.write(p, f"{arc_root}/{p.name}")
  return archive


def write_files(paths: Sequence[str | os.PathLike], writer, **kwargs) -> list[pathlib.Path]:
  return [writer(p, **kwargs) for p in paths]


def write_riff_wav(path, samples: np.ndarray, rate: int, *,
                   chunks_before: Sequence[tuple[bytes, bytes]] = ((b"FLLR", b"\x00" * 498),),
                   chunks_after: Sequence[tuple[bytes, bytes]] = (
                       (b"LIST", b"INFOISFT\x0e\x00\x00\x00Lavf58.29.100\x00"),
                       (b"bext", b"\x00" * 602), (b"_PMX", b"<x:xmpmeta/>\x00"))) -> pathlib.Path:
  """A 16-bit PCM WAV written byte by byte with extra RIFF chunks around `data`, like
  RAVDESS's audio-only files (`fmt `, FLLR, data, LIST, bext, _PMX).

  samples: [M] or [M, C] int16.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  x = np.asarray(samples, np.int16)
  x = x[:, None] if x.ndim == 1 else x
  channels = x.shape[1]

  def chunk(tag: bytes, body: bytes) -> bytes:
    pad = b"\x00" if len(body) % 2 else b""
    return tag + struct.pack("<I", len(body)) + body + pad

  fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * channels * 2, channels * 2, 16)
  body = b"WAVE" + chunk(b"fmt ", fmt)
  body += b"".join(chunk(t, b) for t, b in chunks_before)
  body += chunk(b"data", x.astype("<i2").tobytes())
  body += b"".join(chunk(t, b) for t, b in chunks_after)
  path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
  return path
