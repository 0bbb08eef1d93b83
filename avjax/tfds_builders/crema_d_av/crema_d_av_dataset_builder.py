"""`crema_d_av`: the CREMA-D clips, video and audio (or audio only), as windowed records.

Legend: T windows, F = L * 25 frames per window, S = L * 22050 audio samples.

Video from `VideoFlash/*.flv` (VP6 480x360, 29.97 fps), audio from
`AudioWAV/*.wav` (16 kHz mono), both from a manual_dir laid out like the
official repository (github.com/CheyneyComputerScience/CREMA-D). 7442 clips,
91 actors (1001-1091), 6 emotions, 12 sentences, 4 levels. TFDS's own
`crema_d` is audio only; this one is audio-visual.

File names are ActorID_Sentence_Emotion_Level, e.g. 1001_DFA_ANG_XX:
label = index of the emotion in (ANG, DIS, FEA, HAP, NEU, SAD), intensity =
LO 0, MD 1, HI 2, XX 3, statement = index in CREMA_D_SENTENCES.

  builder = Builder(config="w6_l1_ov", data_dir="~/tensorflow_datasets")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir="/data/CREMA-D"))

Audio-only configs (`audio_w6_l1_ov`, ...: every windowing with the `audio_`
prefix) read `AudioWAV/` alone (no `VideoFlash/` needed): the same fields,
labels, folds and clip ids, no `video`. WAVs with no samples or only zeros
(1076_MTI_NEU_XX, 1076_MTI_SAD_XX, 1064_TIE_SAD_XX) are skipped with the reason.
"""

from __future__ import annotations

import pathlib
import re

from avjax.data import builder_lib

NAME = "crema_d_av"
HOMEPAGE = "https://github.com/CheyneyComputerScience/CREMA-D"
EMOTIONS = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")   # in the order of the class names
LEVELS = {"LO": 0, "MD": 1, "HI": 2, "XX": 3}
CREMA_D_SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
_NAME_RE = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_LFS_HEADER = b"version https://git-lfs"

# Actors' sex from CREMA-D's VideoDemographics.csv (CheyneyComputerScience/CREMA-D
# at commit 98df52c29f4fc2a3cc6d2536b96112d013ba5290; 48 male, 43 female).
# Every other actor of 1001-1091 is male.
FEMALE_ACTORS = frozenset((
    1002, 1003, 1004, 1006, 1007, 1008, 1009, 1010, 1012, 1013, 1018, 1020, 1021, 1024, 1025,
    1028, 1029, 1030, 1037, 1043, 1046, 1047, 1049, 1052, 1053, 1054, 1055, 1056, 1058, 1060,
    1061, 1063, 1072, 1073, 1074, 1075, 1076, 1078, 1079, 1082, 1084, 1089, 1091))
ACTORS = range(1001, 1092)

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Expected the official CREMA-D files in manual_dir, laid out like the official
repository:
  VideoFlash/1001_DFA_ANG_XX.flv ...   (7442 FLV files, video)
  AudioWAV/1001_DFA_ANG_XX.wav ...     (7442 WAV files, 16 kHz audio)
The audio-only configs (audio_w6_l1_ov, ...) need AudioWAV/ only.
Get them from {HOMEPAGE} (a git-lfs repository: clone it and run `git lfs pull`;
pointer files of ~130 bytes are not media). Licence: Open Database License.
"""


def genders() -> dict[int, str]:
  return {a: "female" if a in FEMALE_ACTORS else "male" for a in ACTORS}


def parse_name(stem: str) -> dict[str, int]:
  """Fields of a CREMA-D stem 'ActorID_Sentence_Emotion_Level'; ValueError when malformed."""
  m = _NAME_RE.match(stem)
  if not m:
    raise ValueError("name is not ActorID_Sentence_Emotion_Level (e.g. 1001_DFA_ANG_XX)")
  actor, sentence, emotion, lvl = m.groups()
  if sentence not in CREMA_D_SENTENCES:
    raise ValueError(f"unknown sentence {sentence!r}")
  if emotion not in EMOTIONS:
    raise ValueError(f"unknown emotion {emotion!r}")
  if lvl not in LEVELS:
    raise ValueError(f"unknown level {lvl!r}")
  return dict(actor=int(actor), label=EMOTIONS.index(emotion), intensity=LEVELS[lvl],
              statement=CREMA_D_SENTENCES.index(sentence))


def _is_lfs_pointer(path: pathlib.Path) -> bool:
  try:
    if path.stat().st_size > 1024:
      return False
    with open(path, "rb") as f:
      return f.read(len(_LFS_HEADER)) == _LFS_HEADER
  except OSError:
    return False


class Builder(builder_lib.AVBuilder):
  """DatasetBuilder for CREMA-D, audio-visual."""

  DATASET = NAME
  HOMEPAGE = HOMEPAGE
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = builder_lib.builder_configs(NAME)
  DEFAULT_CONFIG_NAME = BUILDER_CONFIGS[0].name

  def genders(self) -> dict[int, str]:
    return genders()

  def find_clips(self, manual_dir: pathlib.Path):
    if self.audio_only:
      return self._find_audio_clips(manual_dir)
    video_dir, audio_dir = manual_dir / "VideoFlash", manual_dir / "AudioWAV"
    missing = [d.name + "/" for d in (video_dir, audio_dir) if not d.is_dir()]
    if missing:
      hint = ""
      if not video_dir.is_dir() and audio_dir.is_dir():
        hint = (f" AudioWAV/ alone is not enough for {self.builder_config.name} (the "
                f"audio_{self.builder_config.name} config reads it).")
      raise builder_lib.ManualDirError(
          f"manual_dir {manual_dir} has no {' and no '.join(missing)} (it holds: "
          f"{builder_lib.listing(manual_dir)}).{hint}\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    # ('._*' files are macOS metadata, not media)
    videos = {p.stem: p for p in sorted(video_dir.glob("*.flv")) if not p.name.startswith("._")}
    audios = {p.stem: p for p in sorted(audio_dir.glob("*.wav")) if not p.name.startswith("._")}
    if not videos or not audios:
      empty = video_dir if not videos else audio_dir
      raise builder_lib.ManualDirError(
          f"{empty} holds no {'.flv' if not videos else '.wav'} files (it holds: "
          f"{builder_lib.listing(empty)}).\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    pointers = [p for p in list(videos.values())[:20] + list(audios.values())[:20] if _is_lfs_pointer(p)]
    if pointers:
      raise builder_lib.ManualDirError(
          f"{pointers[0]} is a git-lfs pointer, not media: run `git lfs pull` in the CREMA-D "
          f"clone.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    clips, rejected = [], []
    for stem, video in videos.items():
      try:
        f = parse_name(stem)
      except ValueError as e:
        rejected.append(builder_lib.skipped(video.name, f"unexpected file name: {e}"))
        continue
      if stem not in audios:
        rejected.append(builder_lib.skipped(video.name, f"no AudioWAV/{stem}.wav"))
        continue
      actor = f.pop("actor")
      clips.append(builder_lib.ClipEntry(clip_id=stem, src=str(video), actor=actor, fields=f,
                                         audio_path=str(audios[stem])))
    for stem in sorted(set(audios) - set(videos)):
      rejected.append(builder_lib.skipped(audios[stem].name, f"no VideoFlash/{stem}.flv"))
    return clips, rejected


  def _find_audio_clips(self, manual_dir: pathlib.Path):
    """Audio-only configs: every AudioWAV/*.wav (the record's audio source is the WAV)."""
    audio_dir = manual_dir / "AudioWAV"
    if not audio_dir.is_dir():
      raise builder_lib.ManualDirError(
          f"manual_dir {manual_dir} has no AudioWAV/, which the audio-only config "
          f"{self.builder_config.name} reads (it holds: {builder_lib.listing(manual_dir)}).\n"
          f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    audios = {p.stem: p for p in sorted(audio_dir.glob("*.wav")) if not p.name.startswith("._")}
    if not audios:
      raise builder_lib.ManualDirError(
          f"{audio_dir} holds no .wav files (it holds: {builder_lib.listing(audio_dir)}).\n"
          f"{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    pointers = [p for p in list(audios.values())[:20] if _is_lfs_pointer(p)]
    if pointers:
      raise builder_lib.ManualDirError(
          f"{pointers[0]} is a git-lfs pointer, not media: run `git lfs pull` in the CREMA-D "
          f"clone.\n{MANUAL_DOWNLOAD_INSTRUCTIONS}")
    clips, rejected = [], []
    for stem, wav in audios.items():
      try:
        f = parse_name(stem)
      except ValueError as e:
        rejected.append(builder_lib.skipped(wav.name, f"unexpected file name: {e}"))
        continue
      actor = f.pop("actor")
      clips.append(builder_lib.ClipEntry(clip_id=stem, src=str(wav), actor=actor, fields=f))
    return clips, rejected
