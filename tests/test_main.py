"""The entry point's command line."""

import os
import subprocess
import sys
import tempfile

from absl.testing import absltest

from avjax import main as avjax_main


class MainTest(absltest.TestCase):

  def test_help_shows_config_and_workdir(self):
    out = subprocess.run([sys.executable, "-m", "avjax.main", "--helpfull"],
                         capture_output=True, text=True, timeout=120)
    # absl exits 1 after printing help.
    self.assertIn("--config", out.stdout, out.stderr)
    self.assertIn("--workdir", out.stdout)
    # scripts/cross_validate.py takes the flags that the errors of both tell users to pass
    # (--config_mismatch=ok after a config change, --take_over_locks for another host's).
    script = os.path.join(os.path.dirname(__file__), "..", "scripts", "cross_validate.py")
    cv = subprocess.run([sys.executable, script, "--helpfull"], capture_output=True, text=True,
                        timeout=120)
    for flag in ("--config_mismatch: <error|ok>", "--[no]take_over_locks", "--folds"):
      self.assertIn(flag, cv.stdout, cv.stderr)
      if flag != "--folds":
        self.assertIn(flag, out.stdout)

  def test_missing_flags_fail(self):
    out = subprocess.run([sys.executable, "-m", "avjax.main"], capture_output=True, text=True, timeout=120)
    self.assertNotEqual(out.returncode, 0)
    self.assertIn("workdir", out.stderr + out.stdout)

  def test_user_errors_are_one_line_and_write_nothing(self):
    root = tempfile.mkdtemp()
    empty_data = os.path.join(root, "no_data")
    os.makedirs(empty_data)
    cases = {  # name: (command, exit status, expected message)
        "unknown token": (["avjax.main", "--config=configs/demo.py:bogus"], 2,
                          "error: Unknown config argument 'bogus'"),
        "misspelled field": (["avjax.main", "--config=configs/demo.py",
                              "--config.train.num_epoch=3"], 2, 'Did you mean "num_epochs"'),
        "out of range": (["avjax.main", "--config=configs/demo.py",
                          "--config.train.checkpoint_every_steps=0"], 2,
                         "error: config.train.checkpoint_every_steps: 0 must be >= 1"),
        "dataset not built": (["avjax.main", "--config=configs/demo.py", "--config.dataset.build=False",
                               f"--config.dataset.data_dir={empty_data}"], 1, "is not prepared"),
        "missing config file": (["avjax.main", "--config=configs/nothere.py"], 2,
                                "error: --config: Failed loading config file"),
    }
    procs = {}
    for name, (cmd, _, _) in cases.items():   # started together: the imports overlap
      workdir = os.path.join(root, name.replace(" ", "_"))
      procs[name] = (workdir, subprocess.Popen(
          [sys.executable, "-m", *cmd, f"--workdir={workdir}"], stdout=subprocess.PIPE,
          stderr=subprocess.PIPE, text=True))
    for name, (workdir, proc) in procs.items():
      _, err = proc.communicate(timeout=300)
      status, message = cases[name][1:]
      self.assertEqual(proc.returncode, status, f"{name}: {err}")
      self.assertIn(message, err, name)
      self.assertNotIn("Traceback", err, name)
      lines = err.strip().splitlines()            # absl's INFO log lines may come first
      first = [i for i, line in enumerate(lines) if line.startswith("error: ")]
      self.assertLen(first, 1, f"{name}: {err}")
      self.assertLessEqual(len(lines) - first[0], 2, f"{name}: {err}")   # + a help hint
      self.assertFalse(os.path.exists(workdir), f"{name}: the workdir was created")

  def test_start_up_line_and_cpu_fallback_warning(self):
    import types
    def fake_jax(backend, kind):
      devices = [types.SimpleNamespace(device_kind=kind)] * 2
      return types.SimpleNamespace(
          __version__="0.10.2", devices=lambda: devices, default_backend=lambda: backend,
          local_device_count=lambda: 2, process_index=lambda: 0, process_count=lambda: 1)
    with absltest.mock.patch.dict("os.environ", {"CUDA_VISIBLE_DEVICES": "0,1"}, clear=True):
      line, warning = avjax_main.backend_report(fake_jax("cpu", "cpu"))
      self.assertEqual(line, "avjax: JAX 0.10.2, backend cpu, 2 device(s) (cpu), 2 local; "
                             "process 0 of 1")
      self.assertIn("running on CPU although CUDA_VISIBLE_DEVICES=0,1", warning)
      self.assertIn("ACCEL=cuda12", warning)
      _, warning = avjax_main.backend_report(fake_jax("gpu", "NVIDIA H200"))
      self.assertIsNone(warning)                  # the GPU is in use
    with absltest.mock.patch.dict("os.environ", {"JAX_PLATFORMS": "cuda"}, clear=True):
      self.assertIn("JAX_PLATFORMS=cuda", avjax_main.backend_report(fake_jax("cpu", "cpu"))[1])
    with absltest.mock.patch.dict("os.environ", {}, clear=True), \
         absltest.mock.patch("os.path.exists", return_value=False):
      self.assertIsNone(avjax_main.backend_report(fake_jax("cpu", "cpu"))[1])   # a CPU machine

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
