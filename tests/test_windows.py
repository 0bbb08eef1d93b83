"""Window arithmetic: fixed hop with padding, and the `fit` mode."""

import numpy as np
from absl.testing import absltest

from avjax.data import windows


class WindowsTest(absltest.TestCase):

  def test_parse_names(self):
    s = windows.parse_name("w8_l1_ov")
    self.assertEqual((s.num_windows, s.length, s.overlap, s.mode), (8, 1.0, 0.5, "fixed"))
    self.assertEqual(s.span, 4.5)  # 1 + 7 * 0.5, as DESIGN.md says
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


if __name__ == "__main__":
  absltest.main()
