"""The train step: sharding, padding, multi-process, bf16, the optimiser wiring.

Every distinct step compiles once (seconds for the tiny model on 2 cores, several times
more with I3D), so the runs are memoised and shared by the tests that check different
properties of the same steps: the 4-device AV run serves the sharding and every-collection
tests, the 4-device audio_lstm run the two-process test. (bf16 and remat steps against
fp32: tests/test_device_check.py, whose dry run trains the gating model in all three.)
"""

import functools
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from avjax import config_tokens
from avjax import health
from avjax import losses
from avjax import parallel
from avjax import steps
from avjax import train_state
from avjax.models import gating
from tests.helpers import parity_config, tiny_batch

REPO = pathlib.Path(__file__).resolve().parents[1]


def run_steps(config, mesh, batches):
  """(initial params, final params, per-step metrics) of `batches` from PRNGKey(0)."""
  before, state, metrics = run_steps_state(config, mesh, batches)
  return before, jax.device_get(state.params), metrics


def run_steps_state(config, mesh, batches):
  """(initial params, final train state, per-step metrics) of `batches` from PRNGKey(0)."""
  repl, data = parallel.shardings(mesh)
  model = gating.create_model(config.model)
  state = train_state.create_train_state(config, model, batches[0], jax.random.PRNGKey(0), repl)
  before = jax.device_get(state.params)
  step = steps.make_train_step(config, mesh)
  metrics = []
  for b in batches:
    state, m = step(state, parallel.to_global(b, data))
    metrics.append({k: float(v) for k, v in m.items()})
  return before, state, metrics


def mesh_of(devices: int):
  return parallel.make_mesh(jax.devices()[:devices])


@functools.cache
def parity_run(devices: int, arg: str = ""):
  """`parity_config` (with config token `arg`, e.g. 'audio_lstm')'s two steps on
  tiny_batch seeds 0 and 1 on `devices` devices."""
  config = audio_config(arg) if arg else parity_config()
  return run_steps(config, mesh_of(devices), [tiny_batch(config, seed) for seed in range(2)])


def audio_config(arg: str = "audio_lstm", **kwargs):
  """`parity_config` for one modality. The tests of padding and processes train
  audio_lstm: the train step's wiring is the same for every model, and without I3D the
  step compiles several times faster (the whole AV step is trained by the sharding and
  every-collection tests)."""
  config = parity_config(**kwargs)
  config_tokens.apply_args(config, arg)
  return config


def history(metrics):
  return {k: [m[k] for m in metrics] for k in metrics[0]}


def assert_same_training(test, a, b):
  """Two runs of the same 2 steps (configured by `parity_config`) agree up to
  float32 rounding of reordered reductions: step-1 values, and the step-2 loss
  and gradient norm, which depend on the step-1 update."""
  for key in ("loss", "mse", "triplet", "grad_norm"):
    np.testing.assert_allclose(a[key][0], b[key][0], rtol=2e-4, err_msg=f"step 1 {key}")
  np.testing.assert_allclose(a["loss"][1], b["loss"][1], rtol=2e-4, err_msg="step 2 loss")
  np.testing.assert_allclose(a["grad_norm"][1], b["grad_norm"][1], rtol=5e-3, err_msg="step 2 grad_norm")
  test.assertTrue(np.all(np.isfinite(a["loss"])))


class TrainStepTest(absltest.TestCase):

  def test_sharded_step_matches_single_device(self):
    self.assertGreaterEqual(jax.device_count(), 4)
    _, _, m4 = parity_run(4)
    _, _, m1 = parity_run(1)
    # Reductions are ordered differently across 4 shards: equal up to float32
    # rounding. The step-2 loss depends on the step-1 update, so it checks the
    # update too.
    assert_same_training(self, history(m4), history(m1))
    self.assertTrue(np.isfinite(m4[1]["loss"]))

  def test_padded_batch_matches_unpadded(self):
    """A batch of 6 on 4 devices (padded to 8, masked) trains like 6 on 1 device, with
    BatchNorm on batch statistics (freeze_bn=False): its running statistics too."""
    config = audio_config(num_classes=3, clips_per_class=2)
    config.model.freeze_bn = False
    # The default centred audio head takes the batch mean in training, and every
    # BatchNorm of SoundNet its batch's moments: the padding copies must enter neither
    # (they did before the step masked the model's statistics).
    self.assertTrue(config.model.center_audio_head)
    batches = [tiny_batch(config, seed) for seed in range(2)]
    padded = [parallel.pad_batch(b, 4) for b in batches]
    self.assertEqual(padded[0]["video"].shape[0], 8)
    np.testing.assert_array_equal(padded[0]["mask"], [True] * 6 + [False] * 2)
    self.assertNotIn("mask", parallel.pad_batch(batches[0], 3))
    _, s4, m4 = run_steps_state(config, mesh_of(4), padded)
    _, s1, m1 = run_steps_state(config, mesh_of(1), batches)
    assert_same_training(self, history(m4), history(m1))
    stats4, stats1 = jax.device_get(s4.batch_stats), jax.device_get(s1.batch_stats)
    self.assertGreater(len(jax.tree.leaves(stats1)), 2)   # SoundNet's BatchNorms and the head's
    init = jax.device_get(train_state.create_train_state(
        config, gating.create_model(config.model), batches[0], jax.random.PRNGKey(0),
        parallel.shardings(mesh_of(1))[0]).batch_stats)
    jax.tree.map(lambda a, b, c: (self.assertFalse(np.allclose(b, c)),
                                  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)),
                 stats4, stats1, init)
    # Without the mask the copies would count: the loss differs. (An all-True mask is
    # the same as no mask, and keeps the batch's structure, so the step is not
    # compiled again.)
    unmasked = dict(padded[0], mask=np.ones(8, bool))
    _, _, m = run_steps(config, mesh_of(4), [unmasked])
    self.assertGreater(abs(m[0]["loss"] - m1[0]["loss"]), 1e-4)

  def test_warm_up_takes_batch_all_then_mined_triplets(self):
    # The step's switch (state.step < batch_all_steps), with the count static (one fold)
    # and traced (a fold group's own count), on a stand-in model: gate = w * fixed.
    config = audio_config("audio_global")
    self.assertEqual(config.loss.negatives, "semihard")
    emb = np.random.default_rng(3).normal(size=(6, 1, 4)).astype(np.float32)
    labels = np.array([0, 0, 1, 1, 2, 2], np.int32)
    batch = {"audio": np.zeros((6, 1, 8), np.float32), "label": labels,
             "window_valid": np.ones((6, 1), np.float32)}

    def apply_fn(variables, video, audio, **kwargs):
      return {"audio_gate": variables["params"]["w"] * emb}, {"batch_stats": {}}

    def want(w, batch_all):
      return float(losses.compute_loss({"audio_gate": w * emb}, labels, config.loss, "global",
                                        "audio", batch_all=jnp.asarray(batch_all))[1]["triplet"])

    forms = {"static": jax.jit(functools.partial(steps.train_step, config=config,
                                                 batch_all_steps=2)),
             "traced": lambda st, b: jax.jit(functools.partial(
                 steps.train_step, config=config))(st, b, batch_all_steps=jnp.asarray(2))}
    for form, step in forms.items():
      state = train_state.TrainState.create(apply_fn=apply_fn, params={"w": jnp.ones(())},
                                            tx=optax.sgd(0.05), batch_stats={})
      for i in range(4):
        w = float(state.params["w"])
        self.assertNotAlmostEqual(want(w, True), want(w, False), places=3)
        state, m = step(state, batch)
        self.assertAlmostEqual(float(m["triplet"]), want(w, i < 2), places=5, msg=f"{form} {i}")

  def test_step_changes_every_trainable_collection(self):
    before, after, _ = parity_run(4)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
    for top, sub in changed.items():
      self.assertTrue(any(jax.tree.leaves(sub)), f"parameters under {top} did not change")


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


class CollapseWatchTest(absltest.TestCase):

  def test_warns_once_when_a_modality_falls_below_one_percent(self):
    initial, warned = {}, set()
    first = {"loss": 1.3, "distance_audio": 50.0, "distance_video": 40.0}
    health.watch_collapse(first, initial, warned, 0, 10)
    self.assertEqual((first["collapsed"], initial), (0.0, {"distance_audio": 50.0,
                                                            "distance_video": 40.0}))
    with self.assertLogs(level="WARNING") as logs:
      later = {"distance_audio": 0.4, "distance_video": 30.0}
      health.watch_collapse(later, initial, warned, 0, 20)
    self.assertEqual(later["collapsed"], 1.0)
    self.assertIn("audio gate embeddings have COLLAPSED", logs.output[0])
    self.assertNotIn("weights' norm", logs.output[0])      # not logged: not said
    # With the weights' norm logged, the warning says how it moved.
    initial, warned = {}, set()
    health.watch_collapse({"distance_audio": 50.0, "param_norm": 60.0}, initial, warned, 0, 10)
    with self.assertLogs(level="WARNING") as logs:
      health.watch_collapse({"distance_audio": 0.1, "param_norm": 0.6}, initial, warned, 0, 20)
    self.assertIn("norm is 0.6, 1.0% of its initial 60: the weights are decaying", logs.output[0])
    initial, warned = {"distance_audio": 50.0, "param_norm": 60.0}, set()
    with self.assertLogs(level="WARNING") as logs:
      health.watch_collapse({"distance_audio": 0.1, "param_norm": 61.0}, initial, warned, 0, 20)
    self.assertIn("norm is 61, 101.7% of its initial 60.", logs.output[0])
    self.assertEqual(warned, {"audio"})
    again = {"distance_audio": 0.3, "distance_video": 30.0}
    health.watch_collapse(again, initial, warned, 0, 30)   # flagged again, warned once
    self.assertEqual((again["collapsed"], warned), (1.0, {"audio"}))

  def test_a_resumed_fold_compares_with_its_first_log_line(self):
    with tempfile.TemporaryDirectory() as d:
      with open(os.path.join(d, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 0, "learning_rate": 0.1}) + "\n")
        f.write(json.dumps({"step": 10, "loss": 2.0, "distance_audio": 8.0,
                            "param_norm": 5.0}) + "\n")
        f.write(json.dumps({"step": 20, "loss": 1.0, "distance_audio": 4.0}) + "\n")
      self.assertEqual(health.initial_distances(d), {"distance_audio": 8.0, "param_norm": 5.0})
      self.assertEqual(health.initial_distances(os.path.join(d, "none")), {})


class MultiProcessTest(absltest.TestCase):

  def test_two_processes_match_one(self):
    """Two jax.distributed CPU processes (2 devices each) train like one process with 4
    (this process: conftest's 4 CPU devices, the same config (audio_lstm) and batches)."""
    out = tempfile.mkdtemp()
    worker = str(REPO / "tests" / "distributed_worker.py")
    env = dict(os.environ)
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, worker, "--num_processes=2", f"--process_id={i}",
                               f"--port={port}", f"--out={out}/two"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs):
      self.assertEqual(p.returncode, 0, log[-3000:])
    with open(f"{out}/two.json") as f:
      two = json.load(f)
    _, _, one = parity_run(4, arg="audio_lstm")
    assert_same_training(self, two, history(one))


if __name__ == "__main__":
  absltest.main()
