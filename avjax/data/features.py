"""The record layout shared by every avjax TFDS builder (one record per clip).

Legend: T windows, F frames per window, H = W frame size, S audio samples per window.

  video         [T, F, H, W, 3] uint8 (zlib)   absent in audio-only configs
  audio         [T, S] float32 in [-1, 1], mono, 22050 Hz (SoundNet's rate; raw bytes)
  label         class index (ClassLabel with the dataset's class names)
  actor         int32, the dataset's own actor id (RAVDESS 1-24, CREMA-D 1001-1091)
  fold          int32 in 0..9, the subject-independent fold of the actor
  gender        ClassLabel ('male', 'female')
  intensity     int32, the dataset's intensity code (RAVDESS 1 normal, 2 strong;
                CREMA-D 0 LO, 1 MD, 2 HI, 3 XX unspecified)
  statement     int32, sentence index (RAVDESS 1-2; CREMA-D 0-11 in the order of
                CREMA_D_SENTENCES, defined in
                avjax/tfds_builders/crema_d_av/crema_d_av_dataset_builder.py, not here)
  clip_id       text, the source file's stem
  duration      float32 seconds of the clip
  window_valid  [T] float32, fraction of each window inside the clip (see windows.py)
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

AUDIO_RATE = 22050
GENDERS = ("male", "female")


def features_dict(
    *, num_windows: int, frames_per_window: int, frame_size: int, samples_per_window: int,
    class_names: tuple[str, ...], with_video: bool = True) -> tfds.features.FeaturesDict:
  """FeaturesDict for one clip record (see module docstring)."""
  t = num_windows
  spec = {
      # Raw bytes: a float list's protobuf serialisation is slow (docs/benchmark_history.md).
      "audio": tfds.features.Tensor(shape=(t, samples_per_window), dtype=np.float32,
                                    encoding=tfds.features.Encoding.BYTES),
      "label": tfds.features.ClassLabel(names=list(class_names)),
      "actor": tfds.features.Scalar(dtype=np.int32),
      "fold": tfds.features.Scalar(dtype=np.int32),
      "gender": tfds.features.ClassLabel(names=list(GENDERS)),
      "intensity": tfds.features.Scalar(dtype=np.int32),
      "statement": tfds.features.Scalar(dtype=np.int32),
      "clip_id": tfds.features.Text(),
      "duration": tfds.features.Scalar(dtype=np.float32),
      "window_valid": tfds.features.Tensor(shape=(t,), dtype=np.float32),
  }
  if with_video:
    spec["video"] = tfds.features.Tensor(
        shape=(t, frames_per_window, frame_size, frame_size, 3), dtype=np.uint8, encoding="zlib")
  return tfds.features.FeaturesDict(spec)
