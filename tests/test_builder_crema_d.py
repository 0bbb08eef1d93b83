"""crema_d_av builder: built from generated FLVs and 16 kHz WAVs named like CREMA-D."""

import pathlib
import tempfile

import numpy as np
from absl.testing import absltest

from avjax.data import folds as folds_lib
from avjax.data import media
from avjax.data import registry
from avjax.data import windows
from tests import builder_base
from tests import dummy_media
from avjax.tfds_builders.crema_d_av import crema_d_av_dataset_builder as lib

REPO = pathlib.Path(__file__).resolve().parents[1]
FLV_TONE = 1000.0   # the FLV's own MP3 track: must not end up in the records

# (stem, video seconds, WAV seconds, WAV tone Hz). The ten male actors
# 1001 ... 1023 cover the ten folds; 1002 is female.
GOOD = [
    ("1001_DFA_ANG_XX", 1.6, 1.64, 300.0),
    ("1005_IEO_HAP_HI", 1.2, 1.25, 350.0),
    ("1011_TIE_SAD_LO", 1.6, 1.60, 400.0),
    ("1014_IOM_FEA_MD", 1.6, 1.62, 450.0),
    ("1015_IWW_NEU_XX", 1.6, 1.63, 500.0),
    ("1016_TAI_DIS_XX", 1.6, 1.61, 550.0),
    ("1017_MTI_ANG_XX", 1.6, 1.64, 600.0),
    ("1019_IWL_HAP_XX", 1.6, 1.60, 650.0),
    ("1022_ITH_SAD_XX", 1.6, 1.62, 700.0),
    ("1023_ITS_FEA_XX", 1.6, 1.63, 750.0),
    ("1002_WSI_NEU_XX", 0.8, 0.85, 800.0),   # shorter than the windows' span
]


def _make_manual_dir(root: pathlib.Path) -> pathlib.Path:
  manual = root / "CREMA-D"
  flv = lambda stem, **kw: dummy_media.write_flv(manual / "VideoFlash" / f"{stem}.flv",
                                                 tone_hz=FLV_TONE, **kw)
  wav = lambda stem, **kw: dummy_media.write_wav(manual / "AudioWAV" / f"{stem}.wav", **kw)
  for stem, vs, ws, hz in GOOD:
    flv(stem, seconds=vs)
    wav(stem, seconds=ws, tone_hz=hz)
  flv("1076_MTI_NEU_XX", seconds=1.0)   # silent WAV
  (manual / "AudioWAV" / "1076_MTI_NEU_XX.wav").write_bytes(
      open(wav("tmp", seconds=1.0), "rb").read()[:44] + bytes(32000))
  (manual / "AudioWAV" / "tmp.wav").unlink()
  flv("1076_MTI_SAD_XX", seconds=1.0)   # empty WAV
  wav("1076_MTI_SAD_XX", seconds=0)
  flv("1064_TIE_SAD_XX", seconds=1.0, num_frames=0)   # no video frames
  wav("1064_TIE_SAD_XX", seconds=1.0)
  flv("1064_IEO_DIS_MD", seconds=3.5)   # video much longer than its audio
  wav("1064_IEO_DIS_MD", seconds=1.0)
  flv("1040_ITH_SAD_XX", seconds=1.0)   # no WAV
  wav("1019_WSI_NEU_XX", seconds=1.0)   # no FLV
  flv("1001_XYZ_ANG_XX", seconds=1.0)   # bad sentence
  wav("1001_XYZ_ANG_XX", seconds=1.0)
  (manual / "VideoDemographics.csv").write_text("not read\n")
  return manual


EXPECTED_SKIPPED = [
    ("1001_XYZ_ANG_XX.flv", "unexpected file name: unknown sentence 'XYZ'"),
    ("1019_WSI_NEU_XX.wav", "no VideoFlash/1019_WSI_NEU_XX.flv"),
    ("1040_ITH_SAD_XX.flv", "no AudioWAV/1040_ITH_SAD_XX.wav"),
    ("1064_IEO_DIS_MD.flv", "video lasts 3.50 s but audio 1.00 s"),
    ("1064_TIE_SAD_XX.flv", "no video stream"),
    ("1076_MTI_NEU_XX.flv", "1076_MTI_NEU_XX.wav: no audio (all 16000 samples are 0)"),
    ("1076_MTI_SAD_XX.flv", "1076_MTI_SAD_XX.wav: no audio samples (empty WAV)"),
]


class CremaDBuilderTest(builder_base.BuilderTestCase):
  lib = lib
  CONFIG = "w4_l1_ov_fit"
  HOMEPAGE = "github.com/CheyneyComputerScience/CREMA-D"

  @classmethod
  def make_manual_dir(cls, root):
    return _make_manual_dir(root)

  def test_configs_and_info(self):
    names = [c.name for c in lib.Builder.BUILDER_CONFIGS]
    av = ["w6_l1_ov", "w6_l1_ov_fit", "w2_l1_ov", "w2_l1_ov_fit", "w4_l1_ov", "w4_l1_ov_fit",
          "w1_l3_no_fit", "w1_l1_no_fit", "w1_l2_no_fit", "w1_l4_no_fit", "w1_l1_no_apex",
          "w1_l3_no_apex"]
    self.assertEqual(names, av + ["audio_" + n for n in av])
    self.assertEqual(lib.Builder.DEFAULT_CONFIG_NAME, "w6_l1_ov")
    self.assertIn("Cao", self.builder.info.citation)
    self.assertIn("Open Database License", self.builder.info.description)
    self.assertEqual(self.builder.info.features["label"].names,
                     list(registry.DATASETS["crema_d_av"]["class_names"]))

  def test_gender_table(self):
    g = lib.genders()
    self.assertLen(g, 91)
    self.assertEqual(sum(v == "male" for v in g.values()), 48)
    self.assertEqual([g[a] for a in (1001, 1002, 1064, 1076, 1090, 1091)],
                     ["male", "female", "male", "female", "male", "female"])

  def test_names_decode_to_labels(self):
    self.assertEqual(lib.parse_name("1001_DFA_ANG_XX"),
                     dict(actor=1001, label=0, intensity=3, statement=8))
    self.assertEqual(lib.parse_name("1091_IEO_SAD_LO"),
                     dict(actor=1091, label=5, intensity=0, statement=0))
    class_names = registry.DATASETS["crema_d_av"]["class_names"]
    for code, name in zip(lib.EMOTIONS, class_names):
      self.assertTrue(name.upper().startswith(code[:2]), (code, name))
    for bad in ("1001_DFA_ANG", "1001_DFA_XXX_XX", "1001_DFA_ANG_ZZ", "abc"):
      with self.assertRaises(ValueError):
        lib.parse_name(bad)

  def test_records(self):
    self.assertEqual(sorted(self.records), sorted(s for s, *_ in GOOD))
    folds = folds_lib.assign_folds(lib.genders())
    genders = self.builder.info.features["gender"].names
    for stem, video_s, wav_s, hz in GOOD:
      r = self.records[stem]
      fields = lib.parse_name(stem)
      self.assertEqual((r["actor"], r["label"], r["intensity"], r["statement"]),
                       (fields["actor"], fields["label"], fields["intensity"], fields["statement"]))
      self.assertEqual(genders[r["gender"]], lib.genders()[r["actor"]])
      self.assertEqual(r["fold"], folds[r["actor"]])
      self.assertEqual(r["video"].shape, (4, 25, 112, 112, 3))
      self.assertEqual(r["audio"].shape, (4, 22050))
      # the audio is the WAV's tone, not the FLV's MP3 track
      self.assertAlmostEqual(builder_base.dominant_hz(r["audio"][0, :int(min(wav_s, 1.0) * 22050)], 22050), hz,
                             delta=25)
      self.assertAlmostEqual(float(r["duration"]), round(video_s * 30000 / 1001) * 1001 / 30000,
                             places=2)
    counts = [self.builder.info.splits[f"fold{k}"].num_examples for k in range(10)]
    self.assertEqual(counts, [sum(folds[int(s[:4])] == k for s, *_ in GOOD) for k in range(10)])

  def test_fit_windows_cover_the_clip(self):
    r = self.records["1011_TIE_SAD_LO"]   # 1.6 s: hop (1.6 - 1) / 3 = 0.2 s, nothing padded
    np.testing.assert_allclose(r["window_valid"], [1, 1, 1, 1])
    duration = float(r["duration"])
    clip = media.decode(self.manual / "VideoFlash/1011_TIE_SAD_LO.flv",
                        audio_path=self.manual / "AudioWAV/1011_TIE_SAD_LO.wav")
    starts = windows.parse_name("w4_l1_ov_fit").starts(duration)
    for k, start in enumerate(starts):
      first = int(round(start * 25))
      np.testing.assert_array_equal(r["video"][k], clip.video[first:first + 25])
      a = int(round(start * 22050))
      inside = clip.audio[a:a + 22050]   # the WAV (1.60 s) ends 30 samples before the video
      np.testing.assert_array_equal(r["audio"][k, :len(inside)], inside)
      np.testing.assert_array_equal(r["audio"][k, len(inside):], 0)
    short = self.records["1002_WSI_NEU_XX"]   # 0.8 s < 1 s: every window is the clip, padded
    np.testing.assert_allclose(short["window_valid"], [float(short["duration"])] * 4, atol=1e-6)
    np.testing.assert_array_equal(short["video"][0, -1], short["video"][0, 20])

  def test_skipped_files_with_reasons(self):
    skipped = self.builder.info.metadata["skipped"]
    self.assertEqual([s["file"] for s in skipped], [f for f, _ in EXPECTED_SKIPPED])
    for got, (_, reason) in zip(skipped, EXPECTED_SKIPPED):
      self.assertIn(reason, got["reason"])
    summary = self.builder.summary()
    self.assertIn("7 file(s) skipped", summary)
    reloaded = lib.Builder(config="w4_l1_ov_fit", data_dir=self.data_dir)
    self.assertEqual(reloaded.info.metadata["skipped"], skipped)
    self.assertEqual(reloaded.info.metadata["window"], "w4_l1_ov_fit")

  def test_readme_fold_table(self):
    self.assert_readme_fold_table()

  def test_bad_manual_dir_fails_at_once(self):
    root = pathlib.Path(tempfile.mkdtemp())
    (root / "no_wav" / "VideoFlash").mkdir(parents=True)
    (root / "empty_flv" / "VideoFlash").mkdir(parents=True)
    (root / "empty_flv" / "AudioWAV").mkdir(parents=True)
    (root / "empty_flv" / "AudioWAV" / "1001_DFA_ANG_XX.wav").write_bytes(b"RIFF")
    lfs = root / "lfs"
    for sub, ext in (("VideoFlash", "flv"), ("AudioWAV", "wav")):
      (lfs / sub).mkdir(parents=True)
      (lfs / sub / f"1001_DFA_ANG_XX.{ext}").write_text(
          "version https://git-lfs.github.com/spec/v1\noid sha256:10dc3f\nsize 350341\n")
    (root / "no_flv" / "AudioWAV").mkdir(parents=True)
    (root / "no_flv" / "AudioWAV" / "1001_DFA_ANG_XX.wav").write_bytes(b"RIFF")
    cases = [(root / "missing", "does not exist"), (root / "no_wav", "has no AudioWAV/"),
             (root / "no_flv", "AudioWAV/ alone is not enough for w2_l1_ov (the audio_w2_l1_ov"),
             (root / "empty_flv", "holds no .flv files"), (lfs, "git-lfs pointer")]
    self.assert_manual_dir_errors(cases, "w2_l1_ov")


if __name__ == "__main__":
  absltest.main()
