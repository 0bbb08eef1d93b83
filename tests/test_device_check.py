"""scripts/device_check.py (benchmarks/device_check.py): its dry run (the GPU check's code
paths at the tests' tiny shape, in subprocesses, with the data stack blocked), the report's
fields and targets, and the wheels it names for the device.

The dry run also carries the checks of `benchmark.measure_train_step`'s report (its train
sections run it): fields, FLOPs against the batch, no cost model for a narrow model.
"""

import importlib.metadata
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap
from unittest import mock

import jax
from absl.testing import absltest

from benchmarks import device_check

# The command the docs give: the dry run runs it as they do.
_PATH = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "device_check.py"

# Every process of the dry run loads this (PYTHONPATH): importing one of the modules the
# device's image lacks fails, and each process leaves its pid in the folder.
_BLOCKER = """
import importlib.abc, os, sys
BLOCKED = {blocked!r}
class _Blocked(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in BLOCKED:
      raise ImportError(f"{{name}}: blocked by tests/test_device_check.py (not on the device)")
    return None
sys.meta_path.insert(0, _Blocked())
open(os.path.join({folder!r}, f"loaded-{{os.getpid()}}"), "w").close()
"""


class DryRunTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.out = tempfile.mkdtemp()
    cls.blocker = tempfile.mkdtemp()
    pathlib.Path(cls.blocker, "sitecustomize.py").write_text(textwrap.dedent(
        _BLOCKER.format(blocked=device_check.NOT_NEEDED, folder=cls.blocker)))
    env = dict(os.environ)
    # One device, as on the GPU machine (conftest.py's XLA flags otherwise).
    env["XLA_FLAGS"] = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                              env.get("XLA_FLAGS", ""))
    env["PYTHONPATH"] = os.pathsep.join(x for x in (cls.blocker, env.get("PYTHONPATH")) if x)
    cls.proc = subprocess.run([sys.executable, str(_PATH), "--dry_run", f"--out={cls.out}"],
                              env=env, capture_output=True, text=True, timeout=900)
    path = pathlib.Path(cls.out, "device_check.json")
    cls.report = json.loads(path.read_text()) if path.is_file() else None

  def setUp(self):
    self.assertEqual(self.proc.returncode, 0, self.proc.stderr[-3000:])
    self.assertIsNotNone(self.report, self.proc.stderr[-3000:])

  def test_every_section_ran_in_order_without_error(self):
    names = [name for name, _, _ in device_check.SECTIONS]
    self.assertEqual(self.report["skipped"], {})
    self.assertEqual(list(self.report["sections"]), names)
    for name, r in self.report["sections"].items():
      self.assertNotIn("error", r, name)
    self.assertTrue(self.report["dry_run"])
    self.assertTrue(self.report["complete"])
    self.assertEqual(self.report["xla_mem_fraction"],
                     os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92"))
    self.assertLess(self.report["total_s"], self.report["budget_s"])

  def test_the_data_stack_is_blocked_and_not_needed(self):
    # The driver, 3 train steps, the loop, max_batch's run and extraction.
    loaded = [p for p in os.listdir(self.blocker) if p.startswith("loaded-")]
    self.assertGreaterEqual(len(loaded), 7)
    imported = set(self.report["imported_distributions"])
    wheels = {device_check.normalise(n) for n, _, _ in device_check.WHEELS}
    self.assertEqual(imported - device_check.IMAGE_PACKAGES - wheels, set())
    self.assertLessEqual(wheels, imported)          # no wheel carried for nothing
    self.assertIn("flax", imported)

  def test_train_step_fields(self):
    s = self.report["sections"]
    for name, dtype, remat in (("train_fp32", "float32", False), ("train_bf16", "bfloat16", False),
                               ("train_bf16_remat", "bfloat16", True)):
      r = s[name]
      self.assertEqual((r["case"]["dtype"], r["case"]["remat"]), (dtype, remat), name)
      for key in ("compile_s", "step_s", "clips_per_s", "xla_flops_per_step", "peak_memory_mib",
                  "achieved_flops_per_s", "num_params", "loss"):
        self.assertIn(key, r, name)
      self.assertAlmostEqual(r["clips_per_s"], r["case"]["batch"] / r["step_s"], places=6)
      self.assertEqual(r["device_count"], 1)
      self.assertEqual(r["xla_flops_per_step"], r["xla_flops"])   # one device's program
      self.assertIsNone(r["utilisation"])                 # no known peak for a CPU
      self.assertNotIn("utilisation_of_bf16_peak", r)
      self.assertNotIn("xla_over_cost_model", r)          # narrow model: no cost model
      self.assertNotIn("ravdess_run_hours", r)            # tiny shape: no projection
    # bf16 compute keeps fp32 parameters, and its first step (same weights and batch) is
    # close to fp32's; remat recomputes the same function.
    f32, b16, remat = s["train_fp32"], s["train_bf16"], s["train_bf16_remat"]
    self.assertEqual(b16["num_params"], f32["num_params"])
    for r in (f32, b16, remat):
      self.assertEqual(r["param_dtypes"], ["float32"])
      self.assertTrue(math.isfinite(r["first_loss"]))
    self.assertAlmostEqual(b16["first_loss"], f32["first_loss"], delta=0.05 * f32["first_loss"])
    self.assertAlmostEqual(b16["first_grad_norm"], f32["first_grad_norm"],
                           delta=0.2 * f32["first_grad_norm"])
    self.assertAlmostEqual(remat["first_loss"], b16["first_loss"], delta=1e-3 * b16["first_loss"])
    self.assertAlmostEqual(remat["first_grad_norm"], b16["first_grad_norm"],
                           delta=2e-2 * b16["first_grad_norm"])

  def test_the_largest_batch(self):
    r = self.report["sections"]["max_batch"]
    bf16 = self.report["sections"]["train_bf16"]
    self.assertEqual(r["estimate_mib"], bf16["xla_peak_estimate_mib"])
    # The fixed part is the train state: 16 bytes a parameter at least (fp32 parameters,
    # Adam's two moments, fp32 gradients are temporaries), and under the whole estimate.
    self.assertGreater(r["fixed_mib"], 12 * bf16["num_params"] / 2**20)
    self.assertGreater(r["mib_per_clip"], 0)
    self.assertAlmostEqual(r["fixed_mib"] + r["batch"] * r["mib_per_clip"], r["estimate_mib"],
                           places=3)
    # The dry run's limit fits B exactly: predicted B, and B ran (the same program again).
    self.assertEqual(r["memory_limit_source"], "dry run")
    self.assertEqual((r["predicted"], r["largest_ok"]), (r["batch"], r["batch"]))
    self.assertEqual(r["tries"][-1]["estimate_mib"], r["estimate_mib"])

  def test_loop_and_extraction(self):
    s = self.report["sections"]
    loop = s["loop"]
    self.assertEqual(loop["steps"], 6)
    for key in ("bare_step_s", "steady_step_s", "host_inputs_s"):
      self.assertGreater(loop[key], 0, key)
    self.assertAlmostEqual(loop["input_overhead"], loop["steady_step_s"] / loop["bare_step_s"] - 1)
    self.assertTrue(jax.numpy.isfinite(loop["final_loss"]))
    rows = {(x["modality"], x["dtype"]): x for x in s["extraction"]["rows"]}
    self.assertEqual(set(rows), {("video", "float32"), ("video", "bfloat16"), ("audio", "float32")})
    # Pooled features of the tiny trunks: I3D x0.125 up to Mixed_3b (256 -> 32 channels),
    # SoundNet x0.25 (1024 -> 256).
    self.assertEqual(rows["video", "float32"]["feature_shape"], [32])
    self.assertEqual(rows["audio", "float32"]["feature_shape"], [256])
    for row in rows.values():
      self.assertGreater(row["clips_per_s"], 0)

  def test_folds_side_by_side(self):
    """The `folds` sections: one fold's step and three vmapped, their rates and ratios,
    with the frozen trunk and with conv5-conv7 trained from cached conv4 maps."""
    sections = self.report["sections"]
    for name, trunk in device_check.FOLDS_TRUNK.items():
      r = sections[name]
      self.assertEqual(r["trunk"], trunk)
      one, three = r["rows"]
      self.assertEqual((one["group"], three["group"]), (1, 3))
      self.assertGreater(r["flops_per_fold_step"], 0)
      for x in r["rows"]:
        self.assertAlmostEqual(x["achieved_flops_per_s"],
                               x["group"] * r["flops_per_fold_step"] / x["step_s"])
        self.assertAlmostEqual(x["ratio_to_matmul_peak"],
                               x["achieved_flops_per_s"] / x["matmul_peak_flops_per_s"])
      self.assertAlmostEqual(three["speedup_over_first"], 3 * one["step_s"] / three["step_s"])
    # Training conv5-conv7 adds their products (three im2col shapes) and their work.
    frozen, conv4 = sections["folds"], sections["folds_conv4"]
    self.assertEqual((len(frozen["products"]), len(conv4["products"])), (1, 4))
    self.assertEqual(frozen["products"][0], conv4["products"][0])
    self.assertGreater(conv4["flops_per_fold_step"], 2 * frozen["flops_per_fold_step"])

  def test_summary_table_and_benchmarks_block(self):
    text = self.proc.stdout
    self.assertIn("device check (dry run)", text)
    for name, _, _ in device_check.SECTIONS:
      self.assertIn(f"| {name} |", text)
    self.assertIn("input not the bottleneck", text)
    md = pathlib.Path(self.out, "B.md")
    stale = "STALE-BLOCK-7f3a"   # not a word a path or the new block could contain
    md.write_text(f"# B\n\n<!-- benchmark.py:device_check begin -->\n{stale}\n"
                  "<!-- benchmark.py:device_check end -->\ntail\n")
    json_path = str(pathlib.Path(self.out, "device_check.json"))
    device_check.main(["--render", json_path, "--update_md", "--md", str(md)])
    block = md.read_text()
    self.assertNotIn(stale, block)
    self.assertTrue(block.startswith("# B\n\n<!-- benchmark.py:device_check begin -->\n"))
    self.assertTrue(block.endswith("<!-- benchmark.py:device_check end -->\ntail\n"))
    self.assertIn("Generated by `scripts/device_check.py`", block)
    self.assertIn("| train_bf16 |", block)
    self.assertTrue(block.endswith("<!-- benchmark.py:device_check end -->\ntail\n"))


class WheelsTest(absltest.TestCase):

  def test_wheels_fit_the_limit_and_are_not_in_the_image(self):
    total = sum(size for _, _, size in device_check.WHEELS)
    self.assertLessEqual(total, device_check.WHEELS_LIMIT_BYTES)
    self.assertLessEqual(device_check.WHEELS_LIMIT_BYTES, 60 * 2**20)
    for name, _, _ in device_check.WHEELS:
      self.assertNotIn(device_check.normalise(name), device_check.IMAGE_PACKAGES)

  def test_wheels_are_the_versions_the_project_runs(self):
    for name, version, _ in device_check.WHEELS:
      self.assertEqual(importlib.metadata.version(name), version, name)

  def test_targets_and_projection(self):
    r = {"case": {"shape": "ravdess"}, "step_s": 0.1, "device_kind": "NVIDIA H200",
         "device_count": 1, "achieved_flops_per_s": 400e12}
    r = device_check.with_targets(r)
    self.assertAlmostEqual(r["utilisation_of_bf16_peak"], 400 / 989)
    # 10 folds x 100 epochs x 32 steps of 0.1 s.
    self.assertAlmostEqual(r["ravdess_run_hours"], 32_200 * 0.1 / 3600)

  def test_the_report_is_written_after_every_section(self):
    # A run killed at the device's time limit keeps the sections it measured.
    snapshots = []
    fake = {"wall_s": 1.0}
    with tempfile.TemporaryDirectory() as out, \
         mock.patch.object(device_check, "_worker", lambda *a, **k: dict(fake)), \
         mock.patch.object(device_check.benchmark, "run_case_subprocess",
                           lambda *a, **k: dict(fake)), \
         mock.patch.object(device_check, "section_max_batch", lambda *a, **k: dict(fake)), \
         mock.patch.object(device_check, "summary", lambda report: []), \
         mock.patch.object(device_check, "brief", lambda name, r: ""), \
         mock.patch.object(device_check.harness, "write_json",
                           lambda path, report: snapshots.append(
                               (str(path), list(report["sections"]), report["complete"]))):
      report = device_check.run(False, 1e5, 2, None, out=out)
      names = [name for name, _, _ in device_check.SECTIONS]
      self.assertEqual([s[1] for s in snapshots], [names[:i + 1] for i in range(len(names))])
      self.assertEqual({s[0] for s in snapshots}, {os.path.join(out, "device_check.json")})
      self.assertFalse(any(s[2] for s in snapshots))
      self.assertTrue(report["complete"])

  def test_sections_are_skipped_when_time_runs_out(self):
    clock = device_check.Clock(100.0, dry_run=False)
    self.assertEqual(clock.plan("train_fp32")[0], 60)
    self.assertLessEqual(clock.plan("train_fp32")[1], 100.0)
    clock.budget = 30.0
    minimum, cap = clock.plan("train_fp32")
    self.assertLess(cap, minimum)


if __name__ == "__main__":
  absltest.main()
