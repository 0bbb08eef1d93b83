"""Device-resident data: the same batches as the host pipeline, the same train step,
resumption and a short train_fold. (The in-graph speed and pitch changes both paths
use are tested in tests/test_augment.py.)"""

import json
import os
import tempfile

import jax
import numpy as np
from absl.testing import absltest

from avjax import augment
from avjax import config_tokens
from avjax import device_data as dd
from avjax import input_pipeline as ip
from avjax import parallel
from avjax import steps
from tests import helpers
from avjax import train
from avjax import train_state
from avjax.models import gating

_WINDOWING = "w2_l1_ov"
_TRAIN_FOLDS = list(range(1, 10))


class DeviceDataTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = helpers.synthetic_data_dir(_WINDOWING)  # shared, 80 clips
    cls.mesh = parallel.make_mesh()
    cls.repl, cls.data = parallel.shardings(cls.mesh)

  def config(self, **input_overrides):
    c = helpers.tiny_config(clips_per_class=2, crop=16)   # small: I3D's compile dominates
    config_tokens.set_dataset(c, "synthetic_av")
    del c.tiny
    c.dataset.config = _WINDOWING
    c.dataset.data_dir = self.data_dir
    c.dataset.build = False
    c.input.prefetch = 1
    c.input.speed_range = 0.0
    c.input.pitch_shift_semitones = 0.0
    for k, v in input_overrides.items():
      c.input[k] = v
    return c

  def device_batch(self, it, step, dataset):
    inputs = parallel.to_global_step_input(it.inputs(step), data_sharding=self.data,
                                     replicated=self.repl)
    fn = jax.jit(lambda a, i: augment.augment_in_graph(a, i, crop_size=dataset.crop_size,
                                                       max_semitones=dataset.max_semitones))
    return jax.device_get(fn(dataset.arrays, inputs))

  def test_batches_equal_host_batches_and_resume(self):
    config = self.config()                     # crop, flip and noise on
    host = ip.create_train_iterator(config, _TRAIN_FOLDS, seed=3)
    dev = dd.create_device_iterator(config, _TRAIN_FOLDS, seed=3, mesh=self.mesh)
    self.assertEqual(dev.dataset.arrays["video"].shape, (72, 2, 8, 40, 40, 3))
    flips, offsets = set(), set()
    for step in range(5):
      want = next(host)
      inputs = next(dev)
      np.testing.assert_array_equal(inputs["index"], host.global_indices(step))
      got = self.device_batch(dev, step, dev.dataset)
      for key in ("video", "label", "window_valid"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=f"step {step} {key}")
      # The host ships raw audio and the draws; the step adds the noise in-graph.
      for key in ("speed", "semitones", "noise"):
        np.testing.assert_array_equal(inputs[key], want["aug"][key], err_msg=f"step {step} {key}")
      np.testing.assert_array_equal(got["audio"], want["audio"] + want["aug"]["noise"][None],
                                    err_msg=f"step {step} audio")
      flips.add(bool(inputs["flip"]))
      offsets.add(tuple(inputs["crop"].tolist()))
    self.assertGreater(len(offsets), 1)
    # Resume: the state is the host pipeline's, and restores the same inputs.
    state = json.loads(json.dumps(dev.get_state()))
    self.assertEqual(state, host.get_state())
    want = [next(dev) for _ in range(6)]             # crosses the epoch end (9 steps)
    again = dd.create_device_iterator(config, _TRAIN_FOLDS, seed=3, mesh=self.mesh,
                                      dataset=dev.dataset)
    again.set_state(state)
    for w in want:
      g = next(again)
      for key in w:
        np.testing.assert_array_equal(g[key], w[key], err_msg=key)
    with self.assertRaisesRegex(ValueError, "seed"):
      dd.create_device_iterator(config, _TRAIN_FOLDS, seed=4, mesh=self.mesh,
                                dataset=dev.dataset).set_state(state)

  def test_padded_indices_are_masked(self):
    inputs = {"index": np.arange(6, dtype=np.int32), "crop": np.zeros(2, np.int32),
              "flip": np.asarray(False), "speed": np.float32(1), "semitones": np.float32(0),
              "noise": np.zeros((2, 22050), np.float32)}
    out = parallel.to_global_step_input(inputs, data_sharding=self.data, replicated=self.repl)
    self.assertEqual(out["index"].shape, (8,))
    np.testing.assert_array_equal(np.asarray(out["mask"]), [True] * 6 + [False] * 2)

  def test_noise_and_augmented_batch_statistics(self):
    config = self.config(speed_range=0.1, pitch_shift_semitones=1.0, audio_noise_std=0.05)
    dev = dd.create_device_iterator(config, _TRAIN_FOLDS, seed=1, mesh=self.mesh)
    clean = {k: v for k, v in dev.dataset.arrays.items()}
    clean["audio"] = jax.numpy.zeros_like(clean["audio"])
    silent = dd.DeviceDataset(clean, dev.dataset.crop_size, dev.dataset.audio_rate, 1.0)
    got = self.device_batch(dev, 2, silent)["audio"]       # zero audio: noise only
    self.assertBetween(float(got.std()), 0.045, 0.055)
    np.testing.assert_array_equal(got, np.broadcast_to(got[0], got.shape))
    # Speed and pitch on real audio: finite, same length, comparable energy.
    inputs = dev.inputs(2)
    self.assertNotEqual(float(inputs["speed"]), 1.0)
    self.assertNotEqual(float(inputs["semitones"]), 0.0)
    audio = self.device_batch(dev, 2, dev.dataset)["audio"]
    raw = np.asarray(dev.dataset.arrays["audio"])[inputs["index"]]
    self.assertEqual(audio.shape, raw.shape)
    self.assertTrue(np.all(np.isfinite(audio)))
    self.assertBetween(float(audio.std() / raw.std()), 0.7, 1.4)

  def test_train_step_loss_equals_host_path(self):
    # audio_lstm: the steps' wiring does not depend on the model, and without I3D both
    # compile several times faster (the video gather, crop and flip are checked against
    # the host batches above). Speed, pitch and noise on, over w4_l1_ov, whose last window
    # passes the end of the synthetic clips under 2.5 s: the noise must follow each clip's
    # `window_valid` in both paths.
    config = self.config(speed_range=0.1, pitch_shift_semitones=1.0, audio_noise_std=0.05)
    config.dataset.config = "w4_l1_ov"
    config.dataset.data_dir = helpers.synthetic_data_dir("w4_l1_ov")
    config_tokens.apply_args(config, "audio_lstm")
    host = ip.create_train_iterator(config, _TRAIN_FOLDS, seed=5)
    dev = dd.create_device_iterator(config, _TRAIN_FOLDS, seed=5, mesh=self.mesh)
    batch = next(host)
    self.assertGreater(np.sum((batch["window_valid"] > 0) & (batch["window_valid"] < 1)), 0)
    self.assertTrue(config.loss.mask_padded_windows)
    model = gating.create_model(config.model)
    losses = []
    for path in ("host", "device"):
      state = train_state.create_train_state(config, model, batch, jax.random.PRNGKey(0),
                                             self.repl)
      if path == "host":
        _, m = steps.make_train_step(config, self.mesh)(state, parallel.to_global(batch, self.data))
      else:
        step = steps.make_device_train_step(config, self.mesh, dev.dataset)
        _, m = step(state, parallel.to_global_step_input(next(dev), data_sharding=self.data,
                                                    replicated=self.repl))
      losses.append({k: float(v) for k, v in m.items()})
    for key in ("loss", "mse", "triplet", "grad_norm"):
      np.testing.assert_allclose(losses[1][key], losses[0][key], rtol=1e-5, err_msg=key)

  def test_train_fold_on_device_resumes(self):
    config = self.config(cache_on_device=True, speed_range=0.1, pitch_shift_semitones=1.0)
    config.model.freeze_bn = True
    # Audio only: resumption does not depend on the modality, and SoundNet compiles fast.
    config_tokens.apply_args(config, "audio_lstm")
    config.train.max_steps = 2
    config.train.log_every_steps = 1
    config.train.checkpoint_every_steps = 1
    config.train.eval_every_epochs = 0
    workdir = tempfile.mkdtemp()
    train.train_fold(config, workdir, test_fold=0)
    config.train.max_steps = 3
    state, _ = train.train_fold(config, workdir, test_fold=0)
    self.assertEqual(int(state.step), 3)
    lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    self.assertEqual([r["step"] for r in lines], [1, 2, 3])
    self.assertTrue(all(np.isfinite(r["loss"]) for r in lines))
    manager = train_state.checkpoint_manager(workdir, config)
    _, data_state = train_state.restore_checkpoint(manager, state)
    self.assertEqual(data_state["step"], 3)


if __name__ == "__main__":
  absltest.main()
