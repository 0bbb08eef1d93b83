"""crema_d_av audio-only configs: built from `AudioWAV/` alone (no `VideoFlash/`).

The real AudioWAV files of ../shared/samples/crema_d (16 kHz mono, five with
full-scale samples) plus generated ones for the folds those do not cover, and
the known defective files (silent, empty).
"""

import pathlib
import shutil

import numpy as np
import soundfile
import soxr
import tensorflow_datasets as tfds
from absl.testing import absltest

from avjax.data import builder_lib
from avjax.data import folds as folds_lib
from tests import builder_base
from tests import dummy_media
from avjax.tfds_builders.crema_d_av import crema_d_av_dataset_builder as lib

S = 22050


def _make_manual_dir(root: pathlib.Path, samples: pathlib.Path) -> tuple[pathlib.Path, list[str]]:
  manual = root / "CREMA-D"
  audio = manual / "AudioWAV"
  audio.mkdir(parents=True)
  real = []
  for wav in sorted((samples / "AudioWAV").glob("*.wav")):
    shutil.copy(wav, audio / wav.name)
    real.append(wav.stem)
  folds = folds_lib.assign_folds(lib.genders())
  covered = {folds[int(s[:4])] for s in real}
  for actor in lib.ACTORS:   # one generated clip for each fold the real files miss
    if folds[actor] not in covered:
      covered.add(folds[actor])
      dummy_media.write_wav(audio / f"{actor}_ITS_HAP_HI.wav", seconds=1.4, tone_hz=300 + actor % 50)
  (audio / "1076_MTI_NEU_XX.wav").write_bytes(
      open(dummy_media.write_wav(root / "tmp.wav", seconds=1.0), "rb").read()[:44] + bytes(32000))
  dummy_media.write_wav(audio / "1076_MTI_SAD_XX.wav", seconds=0)
  dummy_media.write_wav(audio / "1001_XYZ_ANG_XX.wav", seconds=1.0)   # bad sentence
  return manual, real


class CremaDAudioOnlyTest(builder_base.BuilderTestCase):
  lib = lib
  CONFIG = "audio_w2_l1_ov"
  SAMPLES = "crema_d"

  @classmethod
  def make_manual_dir(cls, root):
    manual, cls.real = _make_manual_dir(root, cls.samples)
    return manual

  def test_fields_and_no_video(self):
    self.assertNotIn("video", self.builder.info.features)
    self.assertFalse((self.manual / "VideoFlash").exists())
    self.assertLen(self.real, 10)
    folds = folds_lib.assign_folds(lib.genders())
    for clip_id, r in self.records.items():
      f = lib.parse_name(clip_id)   # the same ids as the audio-visual records
      self.assertEqual((r["label"], r["actor"], r["intensity"], r["statement"]),
                       (f["label"], f["actor"], f["intensity"], f["statement"]))
      self.assertEqual(r["fold"], folds[f["actor"]])
      self.assertEqual(r["audio"].shape, (2, S))

  def test_real_wavs_resampled_without_normalisation(self):
    full_scale = 0
    for stem in self.real:
      data, rate = soundfile.read(self.manual / "AudioWAV" / f"{stem}.wav", dtype="float32")
      self.assertEqual((rate, data.ndim), (16000, 1))
      full_scale += bool(np.any(data == -1.0))
      ref = soxr.resample(data, rate, S, quality="HQ").astype(np.float32)
      r = self.records[stem]
      n = min(S, len(ref))
      np.testing.assert_allclose(r["audio"][0][:n], ref[:n], atol=1e-6, err_msg=stem)
      self.assertAlmostEqual(float(r["duration"]), len(data) / rate, places=4)
    self.assertEqual(full_scale, 5)   # the samples README: five reach -32768

  def test_defective_files_skipped(self):
    skipped = {s["file"]: s["reason"] for s in self.builder.info.metadata["skipped"]}
    self.assertEqual(skipped, {
        "1001_XYZ_ANG_XX.wav": "unexpected file name: unknown sentence 'XYZ'",
        "1076_MTI_NEU_XX.wav": "no audio (all 16000 samples are 0)",
        "1076_MTI_SAD_XX.wav": "no audio samples (empty WAV)",
    })

  def test_audio_config_needs_only_audiowav(self):
    empty = self.root / "empty"
    empty.mkdir()
    builder = lib.Builder(config="audio_w2_l1_ov", data_dir=self.root / "d2", num_workers=1)
    with self.assertRaisesRegex(builder_lib.ManualDirError, "has no AudioWAV/, which the audio-only"):
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=empty))


if __name__ == "__main__":
  absltest.main()
