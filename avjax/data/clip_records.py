"""A clip's record: its decoded windows cut (`cut_windows`, `make_record`), and the jobs
that make records in worker processes (`ClipJob`, `run_job`, `Scheduler`), and the
records' sha256 (`record_digest`, `content_digest`)."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import multiprocessing
import os
import zlib
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from avjax.data import media
from avjax.data import windows as windows_lib


def cut_windows(clip: media.Clip, spec: windows_lib.WindowSpec, options: media.DecodeOptions) -> dict[str, np.ndarray]:
  """A decoded clip's windows (`windows.cut_windows` at options.fps and
  options.audio_rate; the video frame nearest each window's start) and its
  'duration'. 'video' only when the clip has video, 'audio' only when it has audio."""
  out = windows_lib.cut_windows(spec, clip.duration, video=clip.video, fps=options.fps,
                                audio=clip.audio, rate=options.audio_rate)
  out["duration"] = np.float32(clip.duration)
  return out


def make_record(src: media.Source, spec: windows_lib.WindowSpec, *,
                audio_path: str | os.PathLike | None = None,
                options: media.DecodeOptions = media.DecodeOptions(),
                fields: Mapping[str, Any] | None = None,
                with_video: bool = True) -> dict[str, Any]:
  """One record of avjax/data/features.py: the windowed media plus `fields`
  (label, actor, fold, gender, intensity, statement, clip_id). Without video
  (audio-only records) the audio comes from `audio_path` when given, else `src`."""
  if with_video:
    clip = media.decode(src, audio_path=audio_path, options=options)
  else:
    clip = media.decode_audio(audio_path if audio_path is not None else src, options=options)
  record = dict(fields or {})
  record.update(cut_windows(clip, spec, options))
  return record


class ZlibVideo(bytes):
  """Video already encoded as TFDS's `Tensor(encoding='zlib')` encodes it
  (`zlib.compress(array.tobytes())`), done in the worker so that the builder's
  main process does not spend ~0.2 s per clip compressing."""

  @classmethod
  def encode(cls, video: np.ndarray) -> "ZlibVideo":
    return cls(zlib.compress(np.ascontiguousarray(video, dtype=np.uint8).tobytes()))


def record_digest(record: Mapping[str, Any]) -> str:
  """sha256 of a record's fields: their names, dtypes, shapes and bytes (a video
  compressed in the worker, `clip_records.ZlibVideo`, by its compressed bytes)."""
  h = hashlib.sha256()
  for name in sorted(record):
    value = record[name]
    if isinstance(value, str):
      value = value.encode()
    if isinstance(value, bytes):
      head, data = "bytes", value
    else:
      a = np.ascontiguousarray(value)
      head, data = f"{a.dtype.str}{a.shape}", a.tobytes()
    h.update(f"{name}\0{head}\0{len(data)}\0".encode())
    h.update(data)
  return h.hexdigest()


def content_digest(digests: Mapping[str, str]) -> str:
  """One sha256 of {record key: record_digest}, whatever order the records came in."""
  h = hashlib.sha256()
  for key in sorted(digests):
    h.update(f"{key}\0{digests[key]}\n".encode())
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class ClipJob:
  """Everything a worker process needs to make one record."""
  key: str
  src: media.Source
  spec: windows_lib.WindowSpec
  options: media.DecodeOptions
  fields: Mapping[str, Any]
  audio_path: str | None = None
  compress_video: bool = False   # return record["video"] as ZlibVideo
  with_video: bool = True        # False: audio-only record

  @property
  def video_shape(self) -> tuple[int, ...]:
    """[T, F, H, W, 3] of the record's video."""
    o = self.options
    return (self.spec.num_windows, o.frames_per_window(self.spec.length), o.frame_size, o.frame_size, 3)

  @property
  def file(self) -> str:
    """The file name reported when the clip is skipped."""
    name = self.src.name if isinstance(self.src, media.ZipMember) else os.fspath(self.src)
    return os.path.basename(name)


def run_job(job: ClipJob) -> tuple[str, dict[str, Any] | None, str | None]:
  """(key, record, None), or (key, None, reason) when the clip is unusable."""
  try:
    record = make_record(job.src, job.spec, audio_path=job.audio_path, options=job.options,
                         fields=job.fields, with_video=job.with_video)
  except media.MediaError as e:
    path = os.path.basename(e.path.split("::")[-1])
    reason = e.reason if path == job.file else f"{path}: {e.reason}"
    return job.key, None, reason
  if job.compress_video and job.with_video:
    video = record["video"]
    if video.shape != job.video_shape or video.dtype != np.uint8:   # a bug, not a bad file
      raise ValueError(f"{job.file}: video {video.shape} {video.dtype}, expected {job.video_shape} uint8")
    record["video"] = ZlibVideo.encode(video)
  return job.key, record, None


class Scheduler:
  """Decodes every fold's clips in one process pool, in fold order.

  Jobs are submitted in the order the splits are generated (fold0's, then
  fold1's, ...), at most `2 * num_workers` ahead of the writer, so the pool
  stays busy across fold boundaries while memory stays bounded. A result that
  arrives for a later fold waits in a buffer; an abandoned fold (TFDS's
  max_examples_per_split) drops its results and unsubmitted jobs.
  """

  def __init__(self, jobs: Mapping[int, Sequence[ClipJob]], num_workers: int):
    self._order = [(f, job) for f in sorted(jobs) for job in jobs[f]]
    self._count = {f: len(jobs[f]) for f in jobs}
    self._window = 2 * num_workers
    self._next = 0
    self._inflight: collections.deque = collections.deque()   # (fold, future)
    self._buffer: dict[int, collections.deque] = collections.defaultdict(collections.deque)
    self._abandoned: set[int] = set()
    # spawn: safe when the caller has threads (JAX, grain); workers import only media.py.
    self._pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=num_workers, mp_context=multiprocessing.get_context("spawn"))

  def _fill(self) -> None:
    while len(self._inflight) < self._window and self._next < len(self._order):
      fold, job = self._order[self._next]
      self._next += 1
      if fold not in self._abandoned:
        self._inflight.append((fold, self._pool.submit(run_job, job)))

  def results(self, fold: int) -> Iterator[tuple[str, Any, str | None]]:
    remaining = self._count.get(fold, 0)
    try:
      while remaining:
        if self._buffer[fold]:
          result = self._buffer[fold].popleft()
        else:
          self._fill()
          if not self._inflight:
            raise RuntimeError(f"fold{fold}: {remaining} clips were never scheduled")
          other, future = self._inflight.popleft()
          result = future.result()
          self._fill()
          if other != fold:
            if other not in self._abandoned:
              self._buffer[other].append(result)
            continue
        remaining -= 1
        yield result
    finally:
      if remaining:
        self._abandoned.add(fold)
        self._buffer.pop(fold, None)

  def close(self) -> None:
    for _, future in self._inflight:
      future.cancel()
    self._inflight.clear()
    self._pool.shutdown(wait=True, cancel_futures=True)
