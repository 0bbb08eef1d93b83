"""`synthetic_av`: a small learnable audio-visual set with the real builders' features.

Legend: T windows, F frames per window (L * 8 fps), H = W = 40 frame size,
S = L * 22050 audio samples per window.

4 classes, 20 actors (10 male, 10 female), 4 clips per class and actor (320
clips of 2.2-2.8 s), 8 fps, 40x40 frames, 22050 Hz audio. The classes carry a
tone and a blob motion whose strength grows over the clip; the actors add
nuisance (see `avjax/data/synthetic.py`). Generated in NumPy from a seed, built
in seconds, no download. Splits `fold0` ... `fold9` (two actors each).

  builder = Builder(config="w4_l1_ov", data_dir="/tmp/tfds")
  builder.download_and_prepare()
  source = builder.as_data_source("fold0")

Tests may shrink the set: `Builder(..., clips_per_actor_class=1)`; the
generation parameters are recorded in the dataset's metadata.
"""

from __future__ import annotations

import pathlib
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from avjax.data import features
from avjax.data import folds as folds_lib
from avjax.data import registry
from avjax.data import synthetic
from avjax.data import windows

NAME = "synthetic_av"


def _describe(name: str) -> str:
  spec = windows.parse_name(name)
  mode = ("spread evenly over the clip" if spec.mode == "fit" else
          "the clip's loudest part" if spec.mode == "apex"
          else f"starting every {spec.hop:g} s")
  return (f"{spec.num_windows} windows of {spec.length:g} s, {mode}; "
          f"{synthetic.FPS} fps, {synthetic.FRAME_SIZE}x{synthetic.FRAME_SIZE} frames")


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for the synthetic audio-visual set."""

  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "A window's first frame is the one that contains its start "
               "(windows.first_frame), as in the real data sets; 1.0.0 took the frame at "
               "or after it.",
      "1.2.0": "The audio is stored as raw float32 bytes (Tensor encoding BYTES), as in the "
               "real data sets: the same values, serialised much faster.",
      "1.3.0": "The video cue is easier for a small random I3D: the class blob's width "
               "depends on the class (synthetic.BLOB_SIZE), backgrounds vary less "
               "(60-100 per channel, was 30-140) and the distractor blob is weaker (0.15 "
               "of the colour difference, was 0.35). The audio is unchanged.",
  }
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n, description=_describe(n))
                     for n in registry.builder_config_names(NAME)]
  DEFAULT_CONFIG_NAME = registry.DATASETS[NAME]["table1"][0]

  # TFDS locates the builder's folder (README.md, CITATIONS.bib, checksums)
  # through `importlib_resources`, a package this project does not install.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(pathlib.Path(__file__).resolve())

  def __init__(self, *, clips_per_actor_class: int = synthetic.CLIPS_PER_ACTOR_CLASS,
               seed: int = 0, **kwargs: Any):
    kwargs.setdefault("file_format", "array_record")
    if clips_per_actor_class < 1:
      raise ValueError(f"clips_per_actor_class must be >= 1, got {clips_per_actor_class}")
    self._clips_per_actor_class = int(clips_per_actor_class)
    self._seed = int(seed)
    super().__init__(**kwargs)

  @property
  def spec(self) -> windows.WindowSpec:
    return windows.parse_name(self.builder_config.name)

  def _info(self) -> tfds.core.DatasetInfo:
    spec = self.spec
    return self.dataset_info_from_configs(
        features=features.features_dict(
            num_windows=spec.num_windows,
            frames_per_window=int(round(spec.length * synthetic.FPS)),
            frame_size=synthetic.FRAME_SIZE,
            samples_per_window=int(round(spec.length * synthetic.AUDIO_RATE)),
            class_names=registry.DATASETS[NAME]["class_names"]),
        homepage="https://github.com/avjax/avjax",
        metadata=tfds.core.MetadataDict(
            fps=synthetic.FPS, frame_size=synthetic.FRAME_SIZE,
            audio_rate=synthetic.AUDIO_RATE, window=spec.name,
            clips_per_actor_class=self._clips_per_actor_class, seed=self._seed,
            num_actors=synthetic.NUM_ACTORS, skipped=[]),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    return {f"fold{k}": self._generate_examples(k) for k in range(folds_lib.NUM_FOLDS)}

  def _generate_examples(self, fold: int):
    actor_fold = synthetic.actor_folds()
    spec = self.spec
    for actor, label, rep in synthetic.all_clips(self._clips_per_actor_class):
      if actor_fold[actor] != fold:
        continue
      record = synthetic.generate_clip(label, actor, rep, spec, seed=self._seed)
      yield record["clip_id"], record
