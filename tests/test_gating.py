"""The gating model: scanned LSTM, variants' shapes, gradients, frozen BN, sharding, loading.

Shapes: B clips, T windows, F frames, H x W pixels, S samples, D = embed_dim,
G = lstm_hidden.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from avjax import config_lib
from avjax import losses
from avjax.models import gating
from avjax.models import i3d
from avjax.models import weights
from tests.helpers import random_variables

D, G = 16, 12
B, T, F, HW, S = 4, 3, 8, 32, 5000


def tiny_config(**overrides) -> ml_collections.ConfigDict:
  model = config_lib.get_base_config().model
  model.update(dict(embed_dim=D, lstm_hidden=G, video_width=0.125, audio_width=0.25,
                    pretrained=False, freeze_bn=False))
  model.update(overrides)
  return model


def tiny_inputs(seed: int = 0, batch: int = B, windows: int = T):
  rng = np.random.default_rng(seed)
  video = rng.integers(0, 256, (batch, windows, F, HW, HW, 3), dtype=np.uint8)
  audio = rng.uniform(-0.5, 0.5, (batch, windows, S)).astype(np.float32)
  return video, audio


def shapes_of(model, video, audio):
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), video, audio)


def torch_lstm_numpy(x: np.ndarray, p: dict) -> np.ndarray:
  """torch.nn.LSTM (one layer, batch_first, zero state) in NumPy: gates i, f, g, o."""
  b, t, _ = x.shape
  hidden = p["weight_hh_l0"].shape[1]
  h = np.zeros((b, hidden))
  c = np.zeros((b, hidden))
  sig = lambda z: 1.0 / (1.0 + np.exp(-z))
  out = []
  for step in range(t):
    z = x[:, step] @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T + p["bias_hh_l0"]
    i, f, g, o = np.split(z, 4, axis=1)
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(c)
    out.append(h)
  return np.stack(out, axis=1)


class TemporalLSTMTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)  # [B, T, D]
    self.lstm = gating.TemporalLSTM(hidden=4)
    self.variables = jax.jit(self.lstm.init)(jax.random.PRNGKey(1), self.x)
    self.hs = np.asarray(self.lstm.apply(self.variables, self.x))  # [B, T, G]

  def test_scan_equals_the_cell_stepped_in_a_python_loop(self):
    # Random nonzero biases (flax starts them at 0), so a mix-up between gates would show.
    cell = random_variables(self.variables["params"]["cell"], seed=2)
    hs = np.asarray(self.lstm.apply({"params": {"cell": cell}}, self.x))
    step = gating.nn.OptimizedLSTMCell(4)
    carry = gating.zero_carry(2, 4)
    for t in range(self.x.shape[1]):
      carry, h = step.apply({"params": cell}, carry, self.x[:, t])
      np.testing.assert_allclose(hs[:, t], h, rtol=1e-6, atol=1e-6)
    self.assertEqual(hs.shape, (2, 5, 4))
    self.assertGreater(np.abs(hs[:, -1] - hs[:, 0]).max(), 1e-3)  # the state evolves

  def test_pytorch_conversion_reproduces_the_outputs(self):
    torch_params = gating.lstm_to_torch(self.variables["params"]["cell"])
    self.assertEqual(torch_params["weight_ih_l0"].shape, (16, 3))
    self.assertEqual(torch_params["weight_hh_l0"].shape, (16, 4))
    np.testing.assert_allclose(torch_lstm_numpy(self.x.astype(np.float64), torch_params), self.hs,
                               rtol=1e-5, atol=1e-5)


  def test_padded_windows_pass_the_carry_unchanged(self):
    # Clip 0 ends after window 2, clip 1 after window 0.
    valid = np.array([[1, 1, 0, 0, 0], [0.5, 0, 0, 0, 0]], np.float32)
    masked = np.asarray(self.lstm.apply(self.variables, self.x, valid > 0))
    np.testing.assert_array_equal(masked[0, 2:], np.broadcast_to(masked[0, 1], (3, 4)))
    np.testing.assert_array_equal(masked[1, 1:], np.broadcast_to(masked[1, 0], (4, 4)))
    np.testing.assert_allclose(masked[0, :2], self.hs[0, :2], rtol=1e-6, atol=1e-7)
    other = self.x.copy()
    other[0, 2:] = 50.0
    other[1, 1:] = -7.0
    np.testing.assert_array_equal(
        np.asarray(self.lstm.apply(self.variables, other, valid > 0)), masked)
    # Every window real: the unmasked LSTM (up to float rounding of another program).
    np.testing.assert_allclose(self.lstm.apply(self.variables, self.x, np.ones((2, 5), bool)),
                               self.hs, rtol=1e-6, atol=1e-7)


class VariantShapesTest(parameterized.TestCase):

  @parameterized.parameters(
      ("gating", "av"), ("lstm", "av"), ("lstm", "audio"), ("lstm", "video"),
      ("global", "av"), ("global", "audio"), ("global", "video"))
  def test_outputs_and_modules(self, variant, modalities):
    windows = 1 if variant == "global" else T
    model = gating.create_model(tiny_config(variant=variant, modalities=modalities))
    video, audio = tiny_inputs(windows=windows)
    variables = shapes_of(model, video, audio)
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, video, audio)
    used = {"av": ("video", "audio"), "audio": ("audio",), "video": ("video",)}[modalities]
    gate_dim = D if variant == "global" else G
    expected = {}
    for m in used:
      expected[f"{m}_enc"] = (B, windows, D)
      expected[f"{m}_gate"] = (B, windows, gate_dim)
    self.assertEqual({k: v.shape for k, v in out.items()}, expected)
    self.assertTrue(all(v.dtype == jnp.float32 for v in out.values()))
    modules = {f"{m}_encoder" for m in used}
    if variant != "global":
      modules |= {f"{m}_lstm" for m in used}
    self.assertEqual(set(variables["params"]), modules)

  def test_gating_needs_both_modalities(self):
    with self.assertRaisesRegex(ValueError, "gating.*both modalities"):
      gating.create_model(tiny_config(variant="gating", modalities="audio"))

  def test_missing_input_raises(self):
    model = gating.create_model(tiny_config())
    video, audio = tiny_inputs()
    with self.assertRaisesRegex(ValueError, "needs audio"):
      shapes_of(model, video, None)

  def test_bfloat16_compute_keeps_float32_params(self):
    model = gating.create_model(tiny_config(dtype="bfloat16"))
    variables = shapes_of(model, *tiny_inputs())
    self.assertTrue(all(v.dtype == jnp.float32 for v in jax.tree_util.tree_leaves(variables)))
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, *tiny_inputs())
    self.assertTrue(all(v.dtype == jnp.float32 for v in out.values()))


class GatingModelTest(absltest.TestCase):
  """One tiny 'gating' model, random (not flax-initialised: compiling the
  initialisers costs ~20 s on CPU) variables."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.video, cls.audio = tiny_inputs()
    cls.model = gating.create_model(tiny_config())
    cls.variables = random_variables(shapes_of(cls.model, cls.video, cls.audio))

  @classmethod
  def loss_and_grads(cls, video, audio, valid):
    """(loss, outputs), gradients of the paper's loss in training mode (batch-statistics
    BN), windows with `valid` == 0 masked; one compilation for every test."""
    if not hasattr(cls, "_loss_and_grads"):
      labels = np.array([0, 0, 1, 1])
      loss_config = config_lib.get_base_config().loss

      def loss(params, video, audio, valid):
        out, _ = cls.model.apply({"params": params, "batch_stats": cls.variables["batch_stats"]},
                                 video, audio, train=True, window_valid=valid,
                                 mutable=["batch_stats"])
        return losses.compute_loss(out, labels, loss_config, "gating", "av",
                                   window_valid=valid)[0], out

      cls._loss_and_grads = jax.jit(jax.value_and_grad(loss, has_aux=True))
    return cls._loss_and_grads(cls.variables["params"], video, audio, valid)

  def test_gradients_reach_every_parameter(self):
    (_, _), grads = self.loss_and_grads(self.video, self.audio, np.ones((B, T), np.float32))
    self.assertEqual(set(grads), {"video_encoder", "audio_encoder", "video_lstm", "audio_lstm"})
    zero = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
            if not np.any(np.asarray(g))]
    self.assertEqual(zero, [])

  def test_padded_windows_change_neither_loss_nor_gradients(self):
    # Training mode with batch statistics (freeze_bn=False): BatchNorm, the LSTMs,
    # the MSE and the miner all leave the padded windows out.
    valid = np.ones((B, T), np.float32)
    valid[1, 2] = valid[2, 1:] = 0.0
    valid[3, 2] = 0.3                       # partly valid: a real window
    (l1, out1), g1 = self.loss_and_grads(self.video, self.audio, valid)
    rng = np.random.default_rng(9)
    video, audio = self.video.copy(), self.audio.copy()
    video[1, 2] = 255 - video[1, 2]
    video[2, 1:] = rng.integers(0, 256, video[2, 1:].shape)
    audio[1, 2] = rng.uniform(-1, 1, audio[1, 2].shape)
    audio[2, 1:] = 0.9
    (l2, out2), g2 = self.loss_and_grads(video, audio, valid)
    self.assertEqual(float(l1), float(l2))
    for path, a in jax.tree_util.tree_leaves_with_path(g1):
      b = g2
      for key in path:
        b = b[key.key]
      np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    for k in ("audio_gate", "video_gate"):
      np.testing.assert_array_equal(out1[k], out2[k], err_msg=k)
      np.testing.assert_array_equal(out1[k][1, 2], out1[k][1, 1], err_msg=k)   # last real gate
      np.testing.assert_array_equal(out1[k][2, 1:], np.broadcast_to(out1[k][2, 0], (T - 1, G)))
    # The partly valid window is real: changing it changes the loss.
    video[3, 2] = 255 - video[3, 2]
    self.assertNotEqual(float(self.loss_and_grads(video, audio, valid)[0][0]), float(l1))

  def test_frozen_batch_norm_keeps_statistics_in_training_mode(self):
    # Frozen BN with the paper's heads (a centred head's running mean belongs to the
    # fresh head and trains whatever freeze_bn: `conv.Centering`).
    paper_heads = self.model.clone(center_audio_head=False, center_video_head=False)
    eval_out = jax.jit(functools.partial(paper_heads.apply, train=False))(
        self.variables, self.video, self.audio)
    paths = [jax.tree_util.keystr(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(self.variables["batch_stats"])[0]]
    leaves_before = jax.tree_util.tree_leaves(self.variables["batch_stats"])
    after = {}
    # model.{video,audio}_bn_momentum reach every BatchNorm of their encoder: momentum 0
    # stores the batch's statistics, 0.5 half of them on the old values. The centred heads
    # keep their own 0.9, whatever the encoder's (`conv.Centering`).
    for freeze, momentum in ((True, None), (False, 0.0), (False, 0.5)):
      rates = {} if momentum is None else dict(video_bn_momentum=momentum,
                                               audio_bn_momentum=momentum)
      model = (paper_heads if freeze else self.model).clone(freeze_bn=freeze, **rates)
      out, state = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(
          self.variables, self.video, self.audio)
      after[momentum] = jax.tree_util.tree_leaves(state["batch_stats"])
      unchanged = [np.array_equal(a, b) for a, b in zip(leaves_before, after[momentum])]
      if freeze:
        self.assertTrue(all(unchanged))
        for k in eval_out:  # frozen BN in training = inference normalisation
          np.testing.assert_allclose(out[k], eval_out[k], rtol=1e-5, atol=1e-6)
      else:
        self.assertFalse(any(unchanged))
    self.assertTrue(any("HeadCentering" in p for p in paths))
    for path, old, batch, half in zip(paths, leaves_before, after[0.0], after[0.5]):
      if "HeadCentering" in path:
        np.testing.assert_allclose(half, batch, rtol=1e-5, atol=1e-6, err_msg=path)
      else:
        np.testing.assert_allclose(half, 0.5 * old + 0.5 * batch, rtol=1e-5, atol=1e-6,
                                   err_msg=path)

  def test_forward_sharded_over_four_devices_matches_unsharded(self):
    devices = jax.devices()
    self.assertLen(devices, 4, "the root conftest.py sets 4 host CPU devices")
    mesh = Mesh(np.asarray(devices), ("data",))
    data, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    forward = lambda v, x, a: self.model.apply(v, x, a, train=False)
    expected = jax.jit(forward)(self.variables, self.video, self.audio)
    sharded = jax.jit(forward, in_shardings=(repl, data, data), out_shardings=data)
    video = jax.device_put(self.video, data)
    audio = jax.device_put(self.audio, data)
    out = sharded(jax.device_put(self.variables, repl), video, audio)
    for k, v in expected.items():
      self.assertEqual(out[k].sharding, data)
      self.assertLen(out[k].addressable_shards, 4)
      np.testing.assert_allclose(out[k], v, rtol=1e-5, atol=1e-5)


class PretrainedInitTest(absltest.TestCase):

  def test_init_variables_loads_both_encoders(self):
    model = gating.create_model(config_lib.get_base_config().model)  # full width, D = G = 400
    variables = gating.init_variables(model, jax.random.PRNGKey(0), video=(2, 3, 8, 32, 32, 3),
                                      audio=(2, 3, 5000), pretrained=True)
    p, s = variables["params"], variables["batch_stats"]
    kinetics = i3d.kinetics_variables()
    sound8 = weights.soundnet8()
    np.testing.assert_array_equal(p["video_encoder"]["Mixed_4b"]["Branch_1"]["Conv3d_0b_3x3"]["Conv_0"]["kernel"],
                                  kinetics["params/Mixed_4b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel"])
    np.testing.assert_array_equal(p["video_encoder"]["Logits"]["Conv3d_0c_1x1"]["Conv_0"]["bias"],
                                  kinetics["params/Logits/Conv3d_0c_1x1/Conv_0/bias"])
    np.testing.assert_array_equal(s["video_encoder"]["Conv3d_2c_3x3"]["BatchNorm_0"]["mean"],
                                  kinetics["batch_stats/Conv3d_2c_3x3/BatchNorm_0/mean"])
    np.testing.assert_array_equal(p["audio_encoder"]["conv6"]["Conv_0"]["kernel"], sound8["conv6/weights"][:, 0])
    np.testing.assert_array_equal(s["audio_encoder"]["conv1"]["BatchNorm_0"]["var"], sound8["conv1/var"])
    self.assertEqual(p["audio_encoder"]["Embedding"]["kernel"].shape, (1024, 400))
    self.assertEqual(p["video_lstm"]["cell"]["hi"]["kernel"].shape, (400, 400))

    with self.assertLogs(level="INFO") as logs:
      total = gating.log_parameter_overview(variables)
    sizes = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(p))
    self.assertEqual(total, sizes)
    self.assertTrue(any("video_encoder" in line for line in logs.output))


if __name__ == "__main__":
  absltest.main()
