"""benchmarks/benchmark.py (scripts/benchmark.py) at tiny shapes: the models section, MWTSM
against the per-anchor reference of tests/test_mining.py, peaks, growth and markdown; the
harness's BENCHMARKS.md block and worker subprocess. (The train-step report's fields and
its FLOPs against the batch are checked by tests/test_device_check.py, whose dry run
measures the tiny train step through `measure_train_step`.)"""

import json
import pathlib
import tempfile

import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from avjax import mining
from benchmarks import benchmark
from benchmarks import harness
from tests.helpers import brute_force


class MwtsmReferenceTest(parameterized.TestCase):

  @parameterized.parameters((0, 12, 3, 3), (1, 10, 4, 2), (2, 16, 5, 4))
  def test_agrees_with_mining_on_ties(self, seed, n, t, classes):
    # Small integer embeddings: exact float32 distances and many ties, so the
    # lowest-flat-index rule and the used-triplet exclusion are both exercised.
    rng = np.random.default_rng(seed)
    emb = rng.integers(0, 3, (t, n, 3)).astype(np.float32)
    labels = rng.integers(0, classes, n).astype(np.int32)
    ref = brute_force(emb, labels)
    got = [np.asarray(a) for a in jax.jit(mining.mwtsm)(emb, labels)]
    for g, r in zip(got, ref):
      np.testing.assert_array_equal(g, r)
    # Picks are triplets of the right labels and never repeat for an anchor.
    p, q, v = ref
    for w in range(t):
      for i in np.flatnonzero(v[w]):
        self.assertEqual(labels[p[w, i]], labels[i])
        self.assertNotEqual(p[w, i], i)
        self.assertNotEqual(labels[q[w, i]], labels[i])
    seen = {(i, p[w, i], q[w, i]) for w in range(t) for i in range(n) if v[w, i]}
    self.assertLen(seen, int(v.sum()))

  def test_reference_runs_out_of_triplets(self):
    # 2 clips of class 0, 1 of class 1: anchor 0 has one triplet (1, 2): valid at
    # the first window only.
    emb = np.zeros((3, 3, 2), np.float32)
    p, q, v = brute_force(emb, np.array([0, 0, 1]))
    np.testing.assert_array_equal(v[:, 0], [True, False, False])
    self.assertEqual((p[0, 0], q[0, 0]), (1, 2))
    self.assertFalse(v[:, 2].any())  # no positive for the lone class-1 clip

  def test_measure_mwtsm(self):
    r = benchmark.measure_mwtsm(n=16, windows=3, dim=8, repeats=1, reference=brute_force)
    self.assertTrue(r["all_equal"])
    self.assertEqual(r["picks_agree"], 1.0)
    self.assertGreater(r["mwtsm_s"], 0)
    # Without a reference: the miner's times only.
    r = benchmark.measure_mwtsm(n=16, windows=3, dim=8, repeats=1)
    self.assertGreater(r["batch_hard_s"], 0)
    self.assertNotIn("all_equal", r)


class ModelsTest(absltest.TestCase):

  def test_forward(self):
    # Forward only: compiling forward + backward costs about a minute on 2 cores.
    r = benchmark.measure_models("tiny", batch=2, repeats=1, skip_backward=True)
    self.assertEqual(r["shape"], dict(B=2, T=2, F=4, H=16, W=16, S=5000))
    self.assertEqual(r["model"]["embed_dim"], 16)
    self.assertGreater(r["num_params"], 0)
    self.assertGreater(r["forward"]["median_s"], 0)
    self.assertGreater(r["forward"]["xla_peak_estimate_mib"], 0)
    self.assertNotIn("forward_backward", r)
    json.dumps(r)  # serialisable
    text = benchmark.render_markdown(dict(machine=harness.machine_info(), sections={"models": r}))
    self.assertIn("| tiny B=2 T=2 F=4 16x16 S=5000, gating float32", text)

  def test_unknown_section_is_refused(self):
    with self.assertRaises(SystemExit):
      benchmark.main(["--preset=tiny", "--sections=no_such_section"])


class HelpersTest(absltest.TestCase):

  def test_peak_flops(self):
    self.assertEqual(benchmark.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16"), 989e12)
    self.assertEqual(benchmark.peak_flops("NVIDIA H100 PCIe", "bfloat16"), 756e12)
    self.assertEqual(benchmark.peak_flops("NVIDIA H200", "float32"), 67e12)
    self.assertIsNone(benchmark.peak_flops("cpu", "float32"))

  def test_cost_model(self):
    self.assertAlmostEqual(benchmark.cost_model_flops(40, 8, 25, 96, (1.0, 1.0)), 40 * 0.37e12)
    self.assertAlmostEqual(benchmark.cost_model_flops(1, 4, 25, 48, (1.0, 1.0)), 0.37e12 / 8)
    self.assertIsNone(benchmark.cost_model_flops(40, 8, 25, 96, (0.125, 1.0)))

  def test_md_table(self):
    self.assertEqual(harness.md_table(["a", "b"], [[1, ""], ["x", 2.5]]),
                     "| a | b |\n|---|---|\n| 1 | |\n| x | 2.5 |")

  def test_growth(self):
    g = benchmark.growth([1, 2, 4, 8], [1.0, 1.5, 2.5, 4.0], tolerance=1.0)
    self.assertEqual((g["size_ratio"], g["time_ratio"]), (8, 4.0))
    self.assertTrue(g["at_most_linear"])
    self.assertFalse(benchmark.growth([1, 2], [1.0, 2.6], tolerance=1.25)["at_most_linear"])

  def test_main_json_and_markdown_section(self):
    with tempfile.TemporaryDirectory() as d:
      out, md = pathlib.Path(d, "b.json"), pathlib.Path(d, "B.md")
      md.write_text("# Benchmarks\n\nhand-written text\n")
      for _ in range(2):  # the second run replaces the section
        benchmark.main(["--preset=tiny", "--sections=mwtsm", f"--out={out}", "--update_md",
                        f"--md={md}"], mwtsm_reference=brute_force)
      report = json.loads(out.read_text())
      machine = report["machine"]
      for key in ("cpu_model", "cpu_cores", "device_kind", "device_count", "jax_version",
                  "command", "date", "loadavg"):
        self.assertIn(key, machine)
      self.assertLen(machine["loadavg"], 3)
      self.assertTrue(report["sections"]["mwtsm"][0]["all_equal"])
      text = md.read_text()
      self.assertIn("hand-written text", text)
      self.assertEqual(text.count("<!-- benchmark.py:tiny begin -->"), 1)
      self.assertIn("| 12 | 3 | 8 |", text)

  def test_layers_section(self):
    # SoundNet at the tiny shape: every layer in both forms, auto's pick, the table.
    report = benchmark.run("tiny", ["layers"])
    rows = report["sections"]["layers"]
    self.assertEqual([r["layer"] for r in rows], [f"conv{i}" for i in range(1, 8)])
    for r in rows:
      self.assertCountEqual(r["forms"], ("xla", "matmul"))
      times = {f: c["fwd_bwd_s"] for f, c in r["forms"].items()}
      self.assertTrue(all(t > 0 for t in times.values()))
      self.assertEqual(r["fastest"], min(times, key=times.get))
      self.assertEqual(r["auto"], "matmul" if r["layer"] in ("conv6", "conv7") else "xla")
    self.assertTrue(rows[0]["first"])
    text = benchmark.render_markdown(report)
    self.assertIn("#### soundnet, tiny shape", text)
    self.assertIn("| conv7 |", text)
    self.assertIn("`auto`", text)


class FoldsProductsTest(absltest.TestCase):

  def test_conv_products_match_xlas_flops(self):
    """`benchmark_folds.product_shapes` of `finetune_from:conv4`: conv5-conv7's im2col
    products are what the matmul form of those layers computes (XLA's FLOPs of their
    forward pass from conv4's 23 x 128 map of a 1 s window; the native convolution counts
    only the taps inside the padding, about 0.63 of them here), and the frozen trunk has
    the LSTM's product alone."""
    import jax.numpy as jnp

    from avjax.models import soundnet
    from benchmarks import benchmark_folds
    config = benchmark_folds._config("tiny", "finetune_from:conv4")
    h = int(config.model.lstm_hidden)
    shapes = benchmark_folds.product_shapes(config, batch=2, windows=1)
    self.assertEqual(shapes[0], (2, h, 4 * h))
    self.assertEqual(shapes[1:], [(2 * 12, 4 * 128, 256), (2 * 2, 4 * 256, 512),
                                  (2 * 2, 4 * 512, 1024)])
    net = soundnet.SoundNet8(final_endpoint="conv7", input_endpoint="conv4", conv_impl="matmul")
    x = jnp.zeros((2, 23, 128), jnp.float32)
    variables = net.init(jax.random.PRNGKey(0), x)
    compiled = jax.jit(lambda v, y: net.apply(v, y)[0]).lower(variables, x).compile()
    xla = harness.cost_analysis(compiled)["flops"]
    products = sum(2 * r * i * c for r, i, c in shapes[1:])
    self.assertAlmostEqual(xla / products, 1.0, delta=0.02)
    frozen = benchmark_folds._config("tiny", "frozen")
    self.assertEqual(benchmark_folds.product_shapes(frozen, batch=2, windows=1), [(2, h, 4 * h)])


class HarnessTest(absltest.TestCase):

  def test_update_markdown_rewrites_only_its_own_block(self):
    # cpu_quick's block comes first and its name starts with "cpu": rewriting cpu's block
    # (then appending tiny's) keeps every other byte, the other block included.
    with tempfile.TemporaryDirectory() as d:
      md = pathlib.Path(d, "B.md")
      quick = ("<!-- benchmark.py:cpu_quick begin -->\nquick\n"
               "<!-- benchmark.py:cpu_quick end -->")
      text = (f"# B\n\nhand-written  \n\n{quick}\n\nbetween\n"
              "<!-- benchmark.py:cpu begin -->\nold\nrows\n<!-- benchmark.py:cpu end -->\ntail")
      md.write_text(text)
      harness.update_markdown(md, "cpu", "new\n")
      self.assertEqual(md.read_text(), text.replace("\nold\nrows\n", "\nnew\n"))
      harness.update_markdown(md, "tiny", "tiny\n")
      self.assertEqual(md.read_text(), text.replace("\nold\nrows\n", "\nnew\n")
                       + "\n\n## Generated: preset `tiny`\n\n<!-- benchmark.py:tiny begin -->"
                       "\ntiny\n<!-- benchmark.py:tiny end -->\n")

  def test_worker_subprocess(self):
    # The worker's JSON comes back, with the host-platform device count replaced (one flag,
    # not the caller's 4 and the worker's 2); a failing worker gives its error line, a
    # slow one a timeout.
    code = ("import json, os, sys; json.dump({'flags': os.environ['XLA_FLAGS']}, "
            "open(sys.argv[sys.argv.index('--worker_out') + 1], 'w'))")
    r = harness.run_worker_subprocess(["-c", code], devices=2, timeout=60)
    self.assertEqual(r["flags"].count("--xla_force_host_platform_device_count"), 1, r)
    self.assertIn("--xla_force_host_platform_device_count=2", r["flags"])
    r = harness.run_worker_subprocess(["-c", "raise ValueError('no such case')"], timeout=60)
    self.assertEqual(r["error"], "exit 1: ValueError: no such case")
    r = harness.run_worker_subprocess(["-c", "import time; time.sleep(30)"], timeout=1)
    self.assertEqual(r["error"], "timed out after 1 s")


if __name__ == "__main__":
  absltest.main()
