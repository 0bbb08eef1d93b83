"""The entry point's command line."""

import subprocess
import sys

from absl.testing import absltest

from avjax import main as avjax_main


class MainTest(absltest.TestCase):

  def test_help_shows_config_and_workdir(self):
    out = subprocess.run([sys.executable, "-m", "avjax.main", "--helpfull"],
                         capture_output=True, text=True, timeout=120)
    # absl exits 1 after printing help.
    self.assertIn("--config", out.stdout, out.stderr)
    self.assertIn("--workdir", out.stdout)

  def test_missing_flags_fail(self):
    out = subprocess.run([sys.executable, "-m", "avjax.main"], capture_output=True, text=True, timeout=120)
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("workdir", out.stderr + out.stdout)

  def test_multiprocess_detection(self):
    env = {}
    with absltest.mock.patch.dict("os.environ", env, clear=True):
      self.assertFalse(avjax_main._is_multiprocess())
    with absltest.mock.patch.dict("os.environ", {"SLURM_NTASKS": "1"}, clear=True):
      self.assertFalse(avjax_main._is_multiprocess())
    with absltest.mock.patch.dict("os.environ", {"SLURM_NTASKS": "4"}, clear=True):
      self.assertTrue(avjax_main._is_multiprocess())
    with absltest.mock.patch.dict("os.environ", {"JAX_COORDINATOR_ADDRESS": "h:1234"}, clear=True):
      self.assertTrue(avjax_main._is_multiprocess())


if __name__ == "__main__":
  absltest.main()
