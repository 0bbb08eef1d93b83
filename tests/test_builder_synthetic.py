"""synthetic_av: builds in seconds, right layout, deterministic, learnable classes."""

import tempfile
import time

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from avjax.data import folds as folds_lib
from avjax.data import synthetic
from avjax.data import windows
from tests import builder_base
from avjax.tfds_builders.synthetic_av import synthetic_av_dataset_builder as lib

_CLIPS = 1  # per actor and class: 80 clips, 8 per fold


def _build(config: str, seed: int = 0, clips: int = _CLIPS):
  data_dir = tempfile.mkdtemp()
  builder = lib.Builder(config=config, data_dir=data_dir, clips_per_actor_class=clips, seed=seed)
  t0 = time.time()
  builder.download_and_prepare()
  builder.root_dir = data_dir
  return builder, time.time() - t0


def _records(builder, folds=range(10)):
  src = builder.as_data_source("+".join(f"fold{f}" for f in folds))
  return [src[i] for i in range(len(src))]


class SyntheticBuilderTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.builder, cls.seconds = _build("w4_l1_ov")
    cls.records = _records(cls.builder)

  def test_builds_in_seconds_with_all_configs(self):
    self.assertLess(self.seconds, 30.0)
    self.assertEqual([c.name for c in lib.Builder.BUILDER_CONFIGS],
                     ["w4_l1_ov", "w4_l1_ov_fit", "w2_l1_ov", "w2_l1_ov_fit", "w1_l1_no_fit"])
    self.assertEqual(lib.Builder.DEFAULT_CONFIG_NAME, "w4_l1_ov")
    self.assertTrue(self.builder.info.description)  # README.md picked up
    self.assertIn("Ghaleb", self.builder.info.citation)

  def test_splits_shapes_and_labels(self):
    splits = self.builder.info.splits
    self.assertEqual(sorted(splits.keys()), sorted(f"fold{k}" for k in range(10)))
    self.assertEqual([splits[f"fold{k}"].num_examples for k in range(10)], [8] * 10)
    r = self.records[0]
    self.assertEqual(r["video"].shape, (4, 8, 40, 40, 3))
    self.assertEqual(r["video"].dtype, np.uint8)
    self.assertEqual(r["audio"].shape, (4, 22050))
    self.assertEqual(r["audio"].dtype, np.float32)
    self.assertEqual(r["window_valid"].shape, (4,))
    labels = np.array([r["label"] for r in self.records])
    np.testing.assert_array_equal(np.bincount(labels), [20] * 4)
    ids = [r["clip_id"] for r in self.records]
    self.assertLen(set(ids), 80)
    self.assertEqual(self.builder.info.features["label"].names, ["class0", "class1", "class2", "class3"])

  def test_actors_folds_and_genders(self):
    genders = {a: ("male" if a % 2 else "female") for a in range(1, 21)}
    expected = folds_lib.assign_folds(genders)
    gender_names = self.builder.info.features["gender"].names
    for fold in range(10):
      for r in _records(self.builder, [fold]):
        self.assertEqual(r["fold"], fold)
        self.assertEqual(expected[r["actor"]], fold)
        self.assertEqual(gender_names[r["gender"]], genders[r["actor"]])
        self.assertIn(f"a{r['actor']:02d}-c{r['label']}", r["clip_id"].decode())

  def test_metadata_survives_reload(self):
    again = lib.Builder(config="w4_l1_ov", data_dir=self.builder.root_dir)
    self.assertTrue(again.is_prepared())
    meta = again.info.metadata
    self.assertEqual((meta["clips_per_actor_class"], meta["seed"], meta["fps"]), (_CLIPS, 0, 8))

  def test_fixed_windows_pad_short_clips(self):
    # w4_l1_ov spans 2.5 s; clips last 2.2-2.8 s.
    short = [r for r in self.records if r["duration"] < 2.45]
    self.assertNotEmpty(short)
    for r in short:
      valid = r["window_valid"]
      np.testing.assert_allclose(valid[:3], 1.0)
      np.testing.assert_allclose(valid[3], r["duration"] - 1.5, atol=1e-5)
      inside = int(round((r["duration"] - 1.5) * 22050))
      self.assertTrue(np.all(r["audio"][3, inside + 1:] == 0.0))
      self.assertGreater(np.abs(r["audio"][3, inside - 2000:inside - 1]).max(), 0.01)
    repeated = 0
    for r in short:
      # window 3 starts at frame 12 (1.5 s); frames past the clip's last one repeat it
      last = int(np.ceil(r["duration"] * 8 - 1e-9)) - 1 - 12
      for k in range(last + 1, 8):
        np.testing.assert_array_equal(r["video"][3, k], r["video"][3, last])
        repeated += 1
      self.assertFalse(np.array_equal(r["video"][3, last - 1], r["video"][3, last]))
    self.assertGreater(repeated, 0)

  def test_fit_windows_never_pad(self):
    spec = windows.parse_name("w4_l1_ov_fit")
    for label in range(4):
      r = synthetic.generate_clip(label, 3, 0, spec)
      np.testing.assert_allclose(r["window_valid"], 1.0)
      self.assertGreater(np.abs(r["audio"][-1, -100:]).max(), 0.0)

  def test_cut_windows_indices(self):
    # frame i holds value i; audio sample j holds j: the cut is checkable by value.
    frames = np.broadcast_to(np.arange(20, dtype=np.uint8)[:, None, None, None], (20, 2, 2, 3))
    audio = np.arange(2.4 * 100, dtype=np.float32) + 1
    spec = windows.parse_name("w4_l1_ov")  # starts 0, 0.5, 1, 1.5 s
    out = synthetic.cut_windows(frames, 8, audio, 100, spec, duration=2.4)
    np.testing.assert_array_equal(out["video"][:, :, 0, 0, 0],
                                  [list(range(0, 8)), list(range(4, 12)), list(range(8, 16)),
                                   [12, 13, 14, 15, 16, 17, 18, 19]])
    np.testing.assert_array_equal(out["audio"][1], np.arange(50, 150) + 1)
    np.testing.assert_array_equal(out["audio"][3, :90], np.arange(150, 240) + 1)
    np.testing.assert_array_equal(out["audio"][3, 90:], 0)
    np.testing.assert_allclose(out["window_valid"], [1, 1, 1, 0.9], atol=1e-6)
    # a clip ending inside window 3: its frames past the end repeat the last frame
    out = synthetic.cut_windows(frames[:14], 8, audio, 100, spec, duration=1.75)
    np.testing.assert_array_equal(out["video"][3, :, 0, 0, 0], [12, 13, 13, 13, 13, 13, 13, 13])

  def test_same_seed_same_records_other_seed_differs(self):
    spec = windows.parse_name("w2_l1_ov")
    a = synthetic.generate_clip(2, 7, 1, spec, seed=5)
    b = synthetic.generate_clip(2, 7, 1, spec, seed=5)
    c = synthetic.generate_clip(2, 7, 1, spec, seed=6)
    for key in ("video", "audio", "window_valid", "duration"):
      np.testing.assert_array_equal(a[key], b[key])
    self.assertFalse(np.array_equal(a["audio"], c["audio"]))
    self.assertFalse(np.array_equal(a["video"], c["video"]))
    # two builds from the same seed hold identical records
    built = [_records(_build("w1_l1_no_fit", seed=5)[0], [4]) for _ in range(2)]
    self.assertLen(built[0], 8)
    for r1, r2 in zip(*built):
      for key in r1:
        np.testing.assert_array_equal(r1[key], r2[key])

  def test_classes_differ_by_dominant_frequency(self):
    # Last window: the class tone (scaled by the actor's pitch) dominates.
    tol = 2 ** (synthetic.ACTOR_PITCH_SEMITONES / 12) * 1.01
    for r in self.records:
      f = builder_base.dominant_hz(r["audio"][-1], 22050)
      expected = synthetic.CLASS_FREQS_HZ[r["label"]]
      self.assertBetween(f, expected / tol, expected * tol, msg=r["clip_id"])

  def test_class_cue_grows_over_time(self):
    for r in self.records[:16]:
      f = synthetic.CLASS_FREQS_HZ[r["label"]] * synthetic.actor_params(r["actor"]).pitch
      t = np.arange(22050) / 22050
      def tone_amp(x):
        return abs(np.dot(x, np.exp(-2j * np.pi * f * t))) * 2 / len(x)
      amps = [tone_amp(r["audio"][k]) for k in range(3)]  # windows fully inside the clip
      self.assertLess(amps[0], amps[1])
      self.assertLess(amps[1], amps[2])

  def test_motion_is_class_specific(self):
    spec = windows.parse_name("w4_l1_ov_fit")

    def track(label):
      # bright blob minus the clip's median background -> centroid per frame
      v = synthetic.generate_clip(label, 4, 0, spec)["video"].astype(np.float32).mean(-1)
      v = v.reshape(-1, 40, 40)[-12:]          # the late frames, where the cue is strong
      w = np.clip(v - np.median(v, axis=(1, 2), keepdims=True) - 40, 0, None)
      grid = np.arange(40)
      cy = (w.sum(2) * grid).sum(1) / w.sum((1, 2))
      cx = (w.sum(1) * grid).sum(1) / w.sum((1, 2))
      size = (w > 0).sum((1, 2))
      return cy, cx, size

    rise_y, _, rise_size = track(0)
    fall_y, _, fall_size = track(1)
    _, swing_x, swing_size = track(2)
    # The blob's width is class-specific too (synthetic.BLOB_SIZE 0.8 < 1.0 < 1.25): its
    # area above the threshold grows with it.
    self.assertLess(1.2 * rise_size.mean(), fall_size.mean())
    self.assertLess(1.2 * fall_size.mean(), swing_size.mean())
    _, pulse_x, pulse_size = track(3)
    self.assertLess(rise_y[-1], rise_y[0] - 2)      # rises: y decreases
    self.assertGreater(fall_y[-1], fall_y[0] + 2)   # falls
    self.assertGreater(np.ptp(swing_x), 4)          # swings horizontally
    self.assertLess(np.ptp(pulse_x), 2)             # pulses in place
    self.assertGreater(pulse_size.max(), 1.5 * pulse_size.min())

  def test_bad_arguments(self):
    with self.assertRaises(ValueError):
      lib.Builder(config="w4_l1_ov", data_dir=tempfile.mkdtemp(), clips_per_actor_class=0)
    with self.assertRaises(ValueError):
      synthetic.generate_clip(4, 1, 0, windows.parse_name("w2_l1_ov"))


if __name__ == "__main__":
  absltest.main()
