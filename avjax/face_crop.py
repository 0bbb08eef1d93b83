"""The face box of `python -m avjax.predict --face_crop`: OpenCV's bundled Haar cascade on
a few decoded frames, one square box (even pixel sizes) around the faces found."""

from __future__ import annotations

import os

import numpy as np

from avjax import errors


FACE_EXTRA = 'pip install "opencv-python-headless>=4.8,<5"'


def face_box(path: str, max_checked: int = 40, wanted: int = 12) -> tuple[int, int, int, int] | None:
  """A square box (x, y, side, side) in source pixels around the largest face, or None.

  OpenCV's bundled frontal-face Haar cascade runs on about two frames per second
  of the clip's start (at most `max_checked` frames, stopping after `wanted`
  detections); the median of the per-frame largest faces, widened 1.6x to keep
  the whole head, gives one box for the whole clip (a fixed crop keeps the
  motion the model sees).
  """
  cv2 = require_cv2()
  from avjax.data import media
  cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades,
                                               "haarcascade_frontalface_default.xml"))
  container = media._open(path)
  boxes, checked, width, height = [], 0, 0, 0
  try:
    videos = media.video_streams(container)
    if not videos:
      raise media.MediaError(path, "no video stream")
    stream = videos[0]
    rate = stream.average_rate or stream.guessed_rate
    stride = max(1, int(round(float(rate) / 2))) if rate else 5
    for i, frame in enumerate(container.decode(stream)):
      if i % stride:
        continue
      gray = frame.to_ndarray(format="gray")
      height, width = gray.shape
      minimum = max(20, min(width, height) // 10)
      faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5,
                                       minSize=(minimum, minimum))
      if len(faces):
        boxes.append(max(faces.tolist(), key=lambda b: b[2] * b[3]))
      checked += 1
      if checked >= max_checked or len(boxes) >= wanted:
        break
  except Exception as e:  # noqa: BLE001  (av.FFmpegError and friends: report, do not crash)
    if isinstance(e, media.MediaError):
      raise
    raise media.MediaError(path, f"cannot decode for face detection: {e}") from None
  finally:
    container.close()
  if not boxes:
    return None
  x, y, w, h = np.median(np.asarray(boxes, np.float64), axis=0)
  side = min(1.6 * max(w, h), width, height)
  x0 = min(max(0.0, x + w / 2 - side / 2), width - side)
  y0 = min(max(0.0, y + h / 2 - side / 2), height - side)
  side_i = int(side) // 2 * 2
  return int(x0) // 2 * 2, int(y0) // 2 * 2, side_i, side_i


def require_cv2():
  """OpenCV 4 (its bundled Haar cascades), or errors.UsageError with the pip command."""
  try:
    import cv2
  except ImportError:
    raise errors.UsageError(f"--face_crop needs OpenCV, which is not installed: {FACE_EXTRA} "
                     "(or pip install 'avjax[face]')") from None
  cascade = os.path.join(getattr(getattr(cv2, "data", None), "haarcascades", ""),
                         "haarcascade_frontalface_default.xml")
  if not os.path.isfile(cascade) or not hasattr(cv2, "CascadeClassifier"):
    raise errors.UsageError(f"--face_crop needs OpenCV 4's bundled Haar cascades; OpenCV "
                     f"{cv2.__version__} has none: {FACE_EXTRA}")
  return cv2
