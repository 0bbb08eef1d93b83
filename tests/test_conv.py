"""Convolution forms (avjax.models.conv): the matmul form is XLA's convolution, layer by layer.

Every convolution shape of SoundNet-8 and I3D at full width (recorded from the
models by `conv.conv_layers`, at small spatial extents) is computed in both
forms; outputs and the gradients with respect to input and kernel agree within
1e-5 of their largest magnitude in float32 and within bf16 rounding in bf16.
Shapes: N windows, S... spatial, Cin / Cout channels, K kernel offsets.
"""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from jax import lax

from avjax import config_lib
from tests import helpers
from avjax.models import conv
from avjax.models import gating
from avjax.models import i3d
from avjax.models import soundnet


def _dimension_numbers(spatial: int) -> lax.ConvDimensionNumbers:
  """Channels-last input and output, [K..., Cin, Cout] kernel: flax's layout."""
  io = (0, spatial + 1) + tuple(range(1, spatial + 1))
  return lax.ConvDimensionNumbers(io, (spatial + 1, spatial) + tuple(range(spatial)), io)


def _forms(x, w, g, strides, padding, rhs_dilation=None, with_bfloat16=False):
  """(y, dy/dx, dy/dw) of sum(conv(x, w) * g) for 'xla' and for 'matmul'; with
  `with_bfloat16`, also both in bfloat16: ((xla, matmul), (xla bf16, matmul bf16)).
  Traceable: `_both_forms` jits it for one layer."""
  dn = _dimension_numbers(x.ndim - 2)

  def run(fn, x, w):
    def loss(x, w):
      y = fn(x, w, strides, padding, rhs_dilation=rhs_dilation, dimension_numbers=dn)
      return jnp.sum(y.astype(jnp.float32) * g), y
    (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, w)
    return (y, *grads)

  out = (run(lax.conv_general_dilated, x, w), run(conv.matmul_conv, x, w))
  if not with_bfloat16:
    return out
  xb, wb = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
  return out, (run(lax.conv_general_dilated, xb, wb), run(conv.matmul_conv, xb, wb))


def _both_forms(x, w, g, strides, padding, rhs_dilation=None):
  """`_forms` in float32 for one convolution, jitted."""
  return jax.jit(lambda x, w: _forms(x, w, g, strides, padding, rhs_dilation))(x, w)


def _arrays(input_shape, kernel, features, seed=0):
  rng = np.random.default_rng(seed)
  cin = input_shape[-1]
  x = rng.normal(size=input_shape).astype(np.float32)
  w = (rng.normal(size=tuple(kernel) + (cin, features)) / np.sqrt(np.prod(kernel) * cin)).astype(np.float32)
  return x, w


def _cotangent(x, w, strides, padding, rhs_dilation=None, seed=1):
  out = jax.eval_shape(lambda x, w: lax.conv_general_dilated(
      x, w, strides, padding, rhs_dilation=rhs_dilation,
      dimension_numbers=_dimension_numbers(x.ndim - 2)), x, w)
  return np.random.default_rng(seed).normal(size=out.shape).astype(np.float32)


def _network_layers():
  """Each distinct convolution of SoundNet-8 and I3D at full width (small extents:
  48 x 48 frames keep odd sizes under stride-2 'SAME', i.e. asymmetric padding)."""
  layers = conv.conv_layers(soundnet.SoundNet8(), jnp.zeros((1, 22050)), network="soundnet")
  layers += conv.conv_layers(i3d.I3D(), jnp.zeros((1, 10, 48, 48, 3), jnp.uint8), network="i3d")
  unique = {}
  for spec in layers:
    key = (spec["input_shape"], spec["kernel"], spec["strides"], spec["padding"], spec["features"])
    unique.setdefault(key, spec)
  return list(unique.values())


# bf16 is checked on one layer of each kind: SoundNet's long thin first layer, its
# short wide last one, I3D's 7x7x7 stem, a 3x3x3 and a 1x1x1 unit, the logits head.
_BF16_LAYERS = ("conv1", "conv7", "Conv3d_1a_7x7", "Conv3d_2c_3x3",
                "Mixed_4b/Branch_1/Conv3d_0b_3x3", "Mixed_5c/Branch_0/Conv3d_0a_1x1",
                "Logits/Conv3d_0c_1x1")


def _relative(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)


class MatmulConvTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.layers = _network_layers()

  def test_the_recorded_layers_are_the_networks(self):
    by_net = {n: [s for s in self.layers if s["network"] == n] for n in ("soundnet", "i3d")}
    self.assertEqual([s["layer"] for s in by_net["soundnet"]], [l[0] for l in soundnet.LAYERS])
    names = {s["layer"] for s in by_net["i3d"]}
    self.assertIn("Conv3d_1a_7x7", names)
    self.assertIn("Mixed_5c/Branch_1/Conv3d_0b_3x3", names)
    self.assertIn("Logits/Conv3d_0c_1x1", names)
    stem = next(s for s in by_net["i3d"] if s["layer"] == "Conv3d_1a_7x7")
    self.assertEqual((stem["kernel"], stem["strides"], stem["features"]), ((7, 7, 7), (2, 2, 2), 64))
    self.assertGreater(len(by_net["i3d"]), 40)

  def test_every_layer_agrees_in_float32_and_within_bfloat16_rounding(self):
    # float32: within 1e-5 of the largest magnitude, every layer. bfloat16 (8-bit
    # mantissa, both forms in bf16 against the float32 result): within 2^-6, a few
    # bf16 roundings, on _BF16_LAYERS. All layers in one jitted program (the cost is
    # compiling: one program per layer took about 50 s).
    cases = []
    for spec in self.layers:
      x, w = _arrays(spec["input_shape"], spec["kernel"], spec["features"])
      g = _cotangent(x, w, spec["strides"], spec["padding"])
      cases.append((spec, x, w, g))

    def everything(arrays):
      return [_forms(x, w, g, spec["strides"], spec["padding"],
                     with_bfloat16=spec["layer"] in _BF16_LAYERS)
              for (spec, *_), (x, w, g) in zip(cases, arrays)]

    results = jax.jit(everything)([case[1:] for case in cases])
    self.assertLen({s["layer"] for s in self.layers if s["layer"] in _BF16_LAYERS},
                   len(_BF16_LAYERS))
    for (spec, *_), forms in zip(cases, results):
      with self.subTest(layer=f"{spec['network']}/{spec['layer']}"):
        bf16 = spec["layer"] in _BF16_LAYERS
        (ref, mat), (ref16, mat16) = forms if bf16 else (forms, (None,) * 2)
        self.assertEqual(ref[0].shape, mat[0].shape)
        for what, a, b in zip(("output", "d/dx", "d/dw"), ref, mat):
          self.assertLess(_relative(a, b), 1e-5, what)
        if bf16:
          self.assertEqual(mat16[0].dtype, jnp.bfloat16)
          for what, a, b16, c16 in zip(("output", "d/dx", "d/dw"), ref, ref16, mat16):
            self.assertLess(_relative(a, b16), 2 ** -6, f"{what} xla bf16")
            self.assertLess(_relative(a, c16), 2 ** -6, f"{what} matmul bf16")

  @parameterized.named_parameters(
      ("1d_explicit_stride3", (2, 31, 3), (5,), (3,), ((4, 1),), None),
      ("1d_dilated", (2, 40, 2), (4,), (2,), ((2, 2),), (3,)),
      ("2d_same_stride2_odd", (1, 9, 11, 4), (3, 2), (2, 2), "SAME", None),
      ("2d_valid", (2, 8, 7, 3), (3, 3), (1, 2), "VALID", None),
      ("3d_same_stride2", (1, 7, 9, 9, 3), (7, 7, 7), (2, 2, 2), "SAME", None),
      ("3d_1x1_strided", (1, 5, 6, 6, 4), (1, 1, 1), (2, 2, 2), "SAME", None),
  )
  def test_general_padding_strides_and_dilation(self, shape, kernel, strides, padding, dilation):
    x, w = _arrays(shape, kernel, 5)
    g = _cotangent(x, w, strides, padding, dilation)
    ref, mat = _both_forms(x, w, g, strides, padding, dilation)
    for what, a, b in zip(("output", "d/dx", "d/dw"), ref, mat):
      self.assertLess(_relative(a, b), 1e-5, what)

  def test_unsupported_arguments_raise(self):
    x, w = _arrays((1, 8, 4), (3,), 4)
    with self.assertRaisesRegex(NotImplementedError, "feature groups"):
      conv.matmul_conv(x, w[:, :2], (1,), "SAME", feature_group_count=2)
    with self.assertRaisesRegex(ValueError, "does not fit"):
      conv.matmul_conv(x, w[:, :3], (1,), "SAME")
    with self.assertRaisesRegex(ValueError, "smaller than the kernel"):
      conv.matmul_conv(x[:, :2], w, (1,), "VALID")


class ConvImplChoiceTest(absltest.TestCase):

  def test_auto_table(self):
    # CPU: SoundNet's conv6 / conv7 and I3D's stem as matmuls, the wide 3x3x3 units not.
    self.assertIs(conv.conv_fn("auto", "soundnet", "conv7", backend="cpu"), conv.matmul_conv)
    self.assertIs(conv.conv_fn("auto", "soundnet", "conv6", backend="cpu"), conv.matmul_conv)
    self.assertIsNone(conv.conv_fn("auto", "soundnet", "conv1", backend="cpu"))
    self.assertIs(conv.conv_fn("auto", "i3d", "Conv3d_1a_7x7", backend="cpu"), conv.matmul_conv)
    self.assertIs(conv.conv_fn("auto", "i3d", "Mixed_4b/Branch_0/Conv3d_0a_1x1", backend="cpu"),
                  conv.matmul_conv)
    self.assertIsNone(conv.conv_fn("auto", "i3d", "Mixed_3c/Branch_1/Conv3d_0b_3x3", backend="cpu"))
    # Every layer the table names exists in the networks.
    names = {s["layer"] for s in _network_layers()}
    for network, (_, others) in conv.AUTO["cpu"].items():
      self.assertLessEqual(set(others), names, network)
    # Unmeasured backends: XLA's convolution everywhere.
    for backend in ("gpu", "tpu"):
      self.assertIsNone(conv.conv_fn("auto", "soundnet", "conv7", backend=backend))
      self.assertIsNone(conv.conv_fn("auto", "i3d", "Conv3d_1a_7x7", backend=backend))
    self.assertIs(conv.conv_fn("matmul", "soundnet", "conv1"), conv.matmul_conv)
    self.assertIsNone(conv.conv_fn("xla", "i3d", "Conv3d_1a_7x7"))

  def test_bad_choice_raises(self):
    with self.assertRaisesRegex(ValueError, "model.conv_impl"):
      conv.conv_fn("fast", "i3d", "Conv3d_1a_7x7")
    config = helpers.tiny_config()
    config.model.conv_impl = "fast"
    with self.assertRaisesRegex(ValueError, "model.conv_impl"):
      config_lib.validate(config)

  def test_parameters_do_not_depend_on_the_form(self):
    # Same names, shapes and initial values: checkpoints move between forms.
    config = helpers.tiny_config()
    batch = helpers.tiny_batch(config)
    trees = {}
    for impl in ("xla", "matmul"):  # 'auto' is a mix of the two
      config.model.conv_impl = impl
      model = gating.create_model(config.model)
      trees[impl] = jax.jit(lambda v, a: model.init(jax.random.PRNGKey(0), v, a, train=False))(
          batch["video"][:1, :1], batch["audio"][:1, :1])
    jax.tree_util.tree_map(np.testing.assert_array_equal, trees["xla"], trees["matmul"])


if __name__ == "__main__":
  absltest.main()
