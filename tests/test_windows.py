"""Window arithmetic: fixed hop with padding, and the `fit` mode."""

import fractions
import math

import numpy as np
from absl.testing import absltest

from avjax.data import windows


class WindowsTest(absltest.TestCase):

  def test_parse_names(self):
    s = windows.parse_name("w8_l1_ov")
    self.assertEqual((s.num_windows, s.length, s.overlap, s.mode), (8, 1.0, 0.5, "fixed"))
    self.assertEqual(s.span, 4.5)  # 1 + 7 * 0.5 s
    s = windows.parse_name("w2_l2_no_fit")
    self.assertEqual((s.num_windows, s.length, s.overlap, s.mode), (2, 2.0, 0.0, "fit"))
    self.assertEqual(windows.parse_name(s.name), s)
    with self.assertRaises(ValueError):
      windows.parse_name("w8_l1")

  def test_fixed_starts_and_padding(self):
    s = windows.parse_name("w8_l1_ov")
    np.testing.assert_allclose(s.starts(3.8), np.arange(8) * 0.5)
    valid = s.valid_fraction(3.8)
    # windows starting at 3.0 and 3.5 s reach 4.0 and 4.5 s: partly outside a 3.8 s clip.
    np.testing.assert_allclose(valid, [1, 1, 1, 1, 1, 1, 0.8, 0.3], atol=1e-6)
    s = windows.parse_name("w4_l1_no")
    np.testing.assert_allclose(s.starts(10.0), [0, 1, 2, 3])
    np.testing.assert_allclose(s.valid_fraction(2.5), [1, 1, 0.5, 0], atol=1e-6)

  def test_fit_mode_never_pads_clips_longer_than_l(self):
    s = windows.parse_name("w8_l1_ov_fit")
    for duration in (1.0, 2.3, 3.8, 7.0):
      starts = s.starts(duration)
      self.assertAlmostEqual(starts[0], 0.0)
      self.assertAlmostEqual(starts[-1] + s.length, duration)
      np.testing.assert_allclose(s.valid_fraction(duration), 1.0)
    # Shorter than one window: every window starts at 0 and is partly padded.
    np.testing.assert_allclose(s.starts(0.6), 0.0)
    np.testing.assert_allclose(s.valid_fraction(0.6), 0.6, atol=1e-6)

  def test_single_fit_window_is_centred(self):
    s = windows.parse_name("w1_l1_no_fit")
    np.testing.assert_allclose(s.starts(3.0), [1.0])

  def test_apex_window_is_the_loudest_stretch(self):
    s = windows.parse_name("w1_l1_no_apex")
    self.assertEqual((s.num_windows, s.length, s.mode), (1, 1.0, "apex"))
    self.assertEqual(windows.parse_name(s.name), s)
    with self.assertRaisesRegex(ValueError, "one window"):
      windows.parse_name("w2_l1_no_apex")
    rate = 100
    rng = np.random.default_rng(0)
    audio = 0.01 * rng.standard_normal(400)                  # 4 s of quiet noise
    audio[230:310] += np.sin(np.arange(80))                  # a loud burst, 2.3-3.1 s
    # Every 1 s window holding the whole burst has its energy; the earliest starts at
    # 2.1 s (it ends at 3.1 s). A brute-force search over the 0.01 s grid agrees.
    energy = [np.sum(audio[i:i + rate] ** 2) for i in range(0, 301)]
    want = int(np.argmax(energy)) / rate
    got = windows.apex_start(audio, rate, 1.0, 4.0)
    self.assertAlmostEqual(got, want)
    self.assertGreaterEqual(got, 2.1 - 1e-9)
    self.assertLessEqual(got, 2.3 + 1e-9)
    self.assertEqual(windows.apex_start(audio[:80], rate, 1.0, 0.8), 0.0)   # shorter than L
    np.testing.assert_allclose(windows.window_starts(s, 4.0, audio, rate), [got])
    np.testing.assert_allclose(windows.window_starts(s, 4.0), [1.5])       # no audio: centred
    out = windows.cut_windows(s, 4.0, audio=audio.astype(np.float32), rate=rate)
    start = int(round(got * rate))
    np.testing.assert_array_equal(out["audio"][0], audio[start:start + rate].astype(np.float32))
    np.testing.assert_allclose(out["window_valid"], [1.0])


class CutWindowsTest(absltest.TestCase):
  """windows.cut_windows by value: frame n holds n, audio sample m holds m + 1."""

  def setUp(self):
    super().setUp()
    self.video = np.broadcast_to(np.arange(20, dtype=np.uint8)[:, None, None, None], (20, 2, 2, 3))
    self.audio = np.arange(1, 241, dtype=np.float32)

  def test_fixed_windows_pad_past_the_end(self):
    spec = windows.parse_name("w4_l1_ov")   # starts 0, 0.5, 1, 1.5 s
    out = windows.cut_windows(spec, 2.4, video=self.video, fps=8, audio=self.audio, rate=100)
    self.assertEqual(set(out), {"video", "audio", "window_valid"})
    self.assertEqual(out["video"].shape, (4, 8, 2, 2, 3))
    np.testing.assert_array_equal(out["video"][:, :, 0, 0, 0],
                                  [list(range(0, 8)), list(range(4, 12)), list(range(8, 16)),
                                   list(range(12, 20))])
    np.testing.assert_array_equal(out["audio"][1], np.arange(51, 151))
    np.testing.assert_array_equal(out["audio"][3, :90], np.arange(151, 241))
    np.testing.assert_array_equal(out["audio"][3, 90:], 0)
    self.assertEqual(out["audio"].dtype, np.float32)
    np.testing.assert_allclose(out["window_valid"], [1, 1, 1, 0.9], atol=1e-6)
    out = windows.cut_windows(spec, 1.75, video=self.video[:14], fps=8)   # last frame repeated
    self.assertEqual(set(out), {"video", "window_valid"})
    np.testing.assert_array_equal(out["video"][3, :, 0, 0, 0], [12, 13, 13, 13, 13, 13, 13, 13])

  def test_first_frame_is_the_one_containing_the_start(self):
    # Frames carry their index; the reference reads each start as the exact decimal
    # it stands for (Fraction) and finds n with n / fps <= s < (n + 1) / fps.
    video = np.broadcast_to((np.arange(200) % 256).astype(np.uint8)[:, None, None, None],
                            (200, 1, 1, 3))
    cases = [("w8_l1_ov", 4.0, 25), ("w6_l1_ov", 3.5, 30), ("w3_l1_no_fit", 1.6, 25),
             ("w4_l1_ov", 2.0, 5), ("w5_l1_ov_fit", 3.37, 29.97)]
    for name, duration, fps in cases:
      spec = windows.parse_name(name)
      starts = spec.starts(duration)
      got = windows.cut_windows(spec, duration, video=video, fps=fps)["video"][:, 0, 0, 0, 0]
      for s, g in zip(starts, got):
        exact = fractions.Fraction(s).limit_denominator(10_000)
        rate = fractions.Fraction(fps).limit_denominator(10_000)
        want = math.floor(exact * rate)
        self.assertEqual(int(g), want, f"{name} at {fps} fps: start {s} in frame {want}, got {g}")
        self.assertLessEqual(fractions.Fraction(want) / rate, exact)
    # The examples of the rule: halves go down (no banker's rounding), and
    # 0.3 * 25 = 7.4999... and 0.28 * 25 = 6.9999... read as 7.5 and 7.
    np.testing.assert_array_equal(windows.first_frame(np.array([0.5, 1.5, 2.5, 0.3, 0.28]), 25),
                                  [12, 37, 62, 7, 7])

  def test_audio_alone_and_missing_rates(self):
    spec = windows.parse_name("w2_l1_no")
    out = windows.cut_windows(spec, 2.4, audio=self.audio, rate=100)
    self.assertEqual(set(out), {"audio", "window_valid"})
    np.testing.assert_array_equal(out["audio"][1], np.arange(101, 201))
    with self.assertRaises(ValueError):
      windows.cut_windows(spec, 2.4, video=self.video)
    with self.assertRaises(ValueError):
      windows.cut_windows(spec, 2.4, audio=self.audio)


if __name__ == "__main__":
  absltest.main()
