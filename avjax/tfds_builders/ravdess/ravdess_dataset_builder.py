"""`ravdess`: the RAVDESS speech clips as windowed records, audio-visual or audio-only.

Legend: T windows, F = L * 25 frames per window, S = L * 22050 audio samples.

Reads the official `Video_Speech_Actor_XX.zip` files (MP4s are read from
inside the zips, one at a time, nothing extracted) or their extracted
`Actor_XX/` folders from the manual_dir. Only modality-01 (audio-visual)
speech files are used: the video-only (02) twins carry no audio. 1440 clips,
24 actors (odd ids male), 8 emotions, label = emotion code - 1.

  builder = Builder(config="w8_l1_ov", data_dir="~/tensorflow_datasets")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir="/data/ravdess"))
  source = builder.as_data_source("fold0")   # record["video"]: [T, F, 112, 112, 3]

Audio-only configs (`audio_w8_l1_ov`, ...: every windowing with the `audio_`
prefix) read the modality-03 speech WAVs (`03-01-EE-II-SS-RR-AA.wav`, 48 kHz
16-bit, a few stereo, extra RIFF chunks) from `Audio_Speech_Actors_01-24.zip`
or its extracted `Actor_XX/` folders: the same fields, labels and folds, no
`video`. A recording's clip ids differ between the two families only in the
first (modality) field: `01-01-03-01-02-01-05` (audio-visual) is
`03-01-03-01-02-01-05` (audio-only).
"""

from __future__ import annotations

import pathlib
import re
import zipfile

from avjax.data import builder_lib
from avjax.data import media

NAME = "ravdess"
NUM_ACTORS = 24
HOMEPAGE = "https://zenodo.org/record/1188976"
_NAME_RE = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
_RANGES = {"emotion": (1, 8), "intensity": (1, 2), "statement": (1, 2),
           "repetition": (1, 2), "actor": (1, NUM_ACTORS)}

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Expected the official RAVDESS audio-visual speech files in manual_dir:
  Video_Speech_Actor_01.zip ... Video_Speech_Actor_24.zip
or their extracted folders Actor_01/ ... Actor_24/ holding
01-01-EE-II-SS-RR-AA.mp4 files (modality 01 = audio-visual, channel 01 = speech).
Download them from Zenodo record 1188976: {HOMEPAGE}
(Livingstone & Russo 2018, CC BY-NC-SA 4.0).
The audio-only configs (audio_w8_l1_ov, ...) need only the speech audio:
  Audio_Speech_Actors_01-24.zip (about 200 MB, same Zenodo record)
or its extracted Actor_01/ ... Actor_24/ folders holding 03-01-EE-II-SS-RR-AA.wav
files (modality 03 = audio-only, channel 01 = speech). The audio-visual configs
need the MP4s: the WAVs are not enough for them.
"""


def genders() -> dict[int, str]:
  """RAVDESS actors 1-24: odd ids male, even ids female."""
  return {a: "male" if a % 2 else "female" for a in range(1, NUM_ACTORS + 1)}


def parse_name(stem: str) -> dict[str, int]:
  """Fields of a RAVDESS file stem 'MM-CC-EE-II-SS-RR-AA'; ValueError when malformed."""
  m = _NAME_RE.match(stem)
  if not m:
    raise ValueError("name is not modality-channel-emotion-intensity-statement-repetition-actor")
  keys = ("modality", "channel", "emotion", "intensity", "statement", "repetition", "actor")
  fields = dict(zip(keys, map(int, m.groups())))
  for key, (lo, hi) in _RANGES.items():
    if not lo <= fields[key] <= hi:
      raise ValueError(f"{key} {fields[key]:02d} is outside {lo:02d}-{hi:02d}")
  return fields


def _is_metadata(name: str) -> bool:
  """macOS AppleDouble files ('__MACOSX/', '._x.mp4'): not media."""
  parts = pathlib.PurePosixPath(name.replace("\\", "/")).parts
  return "__MACOSX" in parts or parts[-1].startswith("._")


def _candidates(manual_dir: pathlib.Path, ext: str = ".mp4"):
  """(stem, source) of every `ext` file in manual_dir, extracted files first, then zip members."""
  for path in builder_lib.find_files(manual_dir, ext):
    if not _is_metadata(path.relative_to(manual_dir).as_posix()):
      yield path.stem, str(path)
  for archive in builder_lib.find_files(manual_dir, ".zip"):
    try:
      with zipfile.ZipFile(archive) as z:
        names = [n for n in z.namelist() if n.lower().endswith(ext) and not _is_metadata(n)]
    except (zipfile.BadZipFile, OSError) as e:
      raise builder_lib.ManualDirError(
          f"{archive} is not a readable zip archive ({e}): download it again.\n"
          f"{MANUAL_DOWNLOAD_INSTRUCTIONS}") from None
    for name in sorted(names):
      # Older Windows zip tools write `Actor_01\x.wav`: the stem is after either separator.
      yield pathlib.PurePosixPath(name.replace("\\", "/")).stem, media.ZipMember(str(archive), name)


class Builder(builder_lib.AVBuilder):
  """DatasetBuilder for RAVDESS audio-visual speech (modality 01)."""

  DATASET = NAME
  HOMEPAGE = HOMEPAGE
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = builder_lib.builder_configs(NAME)
  DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

  def genders(self) -> dict[int, str]:
    return genders()

  def find_clips(self, manual_dir: pathlib.Path):
    # Audio-visual configs read modality-01 MP4s; audio-only configs modality-03 WAVs.
    ext, modality = (".wav", 3) if self.audio_only else (".mp4", 1)
    clips: dict[str, builder_lib.ClipEntry] = {}
    rejected = []
    other_modality = 0
    for stem, src in _candidates(manual_dir, ext):
      if stem in clips:
        continue  # extracted copy already listed
      try:
        f = parse_name(stem)
      except ValueError as e:
        rejected.append(builder_lib.skipped(stem + ext, f"unexpected file name: {e}"))
        continue
      if f["channel"] != 1:
        continue  # song, not speech
      if f["modality"] != modality:
        if self.audio_only or f["modality"] == 2:
          other_modality += 1  # video-only (02) twins; stray MP4/WAVs of another modality
        else:
          rejected.append(builder_lib.skipped(stem + ext, f"modality {f['modality']:02d} is not 01"))
        continue
      clips[stem] = builder_lib.ClipEntry(
          clip_id=stem, src=src, actor=f["actor"],
          fields=dict(label=f["emotion"] - 1, intensity=f["intensity"], statement=f["statement"]))
    if not clips:
      if self.audio_only and (other_modality or any(_candidates(manual_dir, ".mp4"))):
        raise builder_lib.ManualDirError(
            f"manual_dir {manual_dir} holds RAVDESS files but no audio-only speech WAVs "
            f"(modality 03) for the audio-only config {self.builder_config.name}.\n"
            f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
      if not self.audio_only and (other_modality or any(_candidates(manual_dir, ".wav"))):
        raise builder_lib.ManualDirError(
            f"manual_dir {manual_dir} holds RAVDESS files but no audio-visual speech MP4s "
            f"(modality 01): video-only (02) MP4s and audio-only WAVs are not enough for "
            f"{self.builder_config.name} (the audio_{self.builder_config.name} config reads "
            f"the WAVs).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    return list(clips.values()), rejected
