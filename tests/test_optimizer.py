"""The optimiser equals torch.optim.Adam(weight_decay=...) / AdamW, written out by hand."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from avjax import config_lib
from avjax import train_state


def torch_adam_reference(p, grads, lr, wd, b1, b2, eps, decoupled):
  """torch.optim.Adam / AdamW update rules (PyTorch docs), step by step."""
  m = np.zeros_like(p)
  v = np.zeros_like(p)
  p = p.copy()
  for t, g in enumerate(grads, start=1):
    if decoupled:
      p = p - lr * wd * p
    else:
      g = g + wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat = m / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
  return p


class OptimizerTest(absltest.TestCase):

  def _run(self, name, trunk_lr_scale=1.0):
    optim = config_lib.get_base_config().optim
    optim.name = name
    optim.learning_rate = 0.01
    optim.weight_decay = 0.1   # large so that the two decay rules differ visibly
    optim.trunk_lr_scale = trunk_lr_scale
    rng = np.random.default_rng(0)
    p0 = rng.normal(size=(3, 4)).astype(np.float64)
    grads = [rng.normal(size=(3, 4)) for _ in range(4)]
    params = {"head": {"kernel": jnp.asarray(p0, jnp.float32)}}
    tx = train_state.make_optimizer(optim, params)
    opt_state = tx.init(params)
    for g in grads:
      updates, opt_state = tx.update({"head": {"kernel": jnp.asarray(g, jnp.float32)}}, opt_state, params)
      params = jax.tree.map(lambda a, b: a + b, params, updates)
    expected = torch_adam_reference(p0, grads, 0.01, 0.1, optim.b1, optim.b2, optim.eps,
                                    decoupled=(name == "adamw"))
    return np.asarray(params["head"]["kernel"]), expected

  def test_adam_matches_torch_adam_l2(self):
    got, expected = self._run("adam")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

  def test_adamw_matches_torch_adamw(self):
    got, expected = self._run("adamw")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

  def test_adam_and_adamw_differ(self):
    a, _ = self._run("adam")
    b, _ = self._run("adamw")
    self.assertGreater(np.abs(a - b).max(), 1e-4)

  def test_trunk_layers_move_at_the_trunk_scale_on_the_model_tree(self):
    # The gating model's real parameter tree: the encoders' layers move at 0.01 x the
    # update the scale-1 optimiser gives them (weight decay included), the heads (SoundNet's
    # Embedding, I3D's Logits) and the LSTMs at 1 x.
    from avjax.models import gating
    from tests.helpers import tiny_batch, tiny_config
    config = tiny_config()
    batch = tiny_batch(config)
    model = gating.create_model(config.model)
    video, audio = gating.model_inputs(batch, config.model.modalities)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), video, audio, train=False))["params"]
    rng = np.random.default_rng(1)
    params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), shapes)
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), shapes)
    updates = {}
    for scale in (1.0, 0.01):
      optim = config_lib.get_base_config().optim
      optim.trunk_lr_scale = scale
      tx = train_state.make_optimizer(optim, params)
      updates[scale], _ = tx.update(grads, tx.init(params), params)
    full, scaled = (flax.traverse_util.flatten_dict(updates[s], sep="/") for s in (1.0, 0.01))
    flat = {k: (np.asarray(v), np.asarray(scaled[k])) for k, v in full.items()}
    trunk = {k for k in flat if train_state.is_trunk(tuple(k.split("/")))}
    self.assertTrue(any(k.startswith("audio_encoder/conv1/") for k in trunk))
    self.assertTrue(any(k.startswith("video_encoder/Conv3d_1a_7x7/") for k in trunk))
    for head in ("audio_encoder/Embedding/", "video_encoder/Logits/", "audio_lstm/"):
      self.assertTrue(any(k.startswith(head) for k in flat) and
                      not any(k.startswith(head) for k in trunk), head)
    for k, (full, scaled) in flat.items():
      np.testing.assert_allclose(scaled, (0.01 if k in trunk else 1.0) * np.asarray(full),
                                 rtol=1e-5, atol=1e-12, err_msg=k)


if __name__ == "__main__":
  absltest.main()
