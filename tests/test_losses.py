"""The per-gate loss at hand-computed values; variants; gradients."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl.testing import absltest

from avjax import losses


def loss_config(margin=1.0, mse_weight=1.0, exclude_used=True):
  return ml_collections.ConfigDict(dict(margin=margin, mse_weight=mse_weight, triplet_weight=1.0,
                                        exclude_used=exclude_used))


class LossTest(absltest.TestCase):

  def test_hand_computed_example(self):
    # N=4 clips (labels 0,0,1,1), T=1 window, D=1 so that distances are easy.
    # Audio gate: 0, 1, 3, 5. Video gate: 0, 2, 2, 6. Margin 1.
    # Audio, anchor 0: p=1 (d=1), negatives 2 (d=9), 3 (d=25): hardest n=2 -> max(1-9+1,0)=0
    #        anchor 1: p=0 (d=1), n=2 (d=4)  -> max(1-4+1,0)=0
    #        anchor 2: p=3 (d=4), n=1 (d=4)  -> max(4-4+1,0)=1
    #        anchor 3: p=2 (d=4), n=1 (d=16) -> 0
    # Video, anchor 0: p=1 (d=4), n=2 (d=4)  -> 1
    #        anchor 1: p=0 (d=4), n=2 (d=0)  -> 5
    #        anchor 2: p=3 (d=16), n=1 (d=0) -> 17
    #        anchor 3: p=2 (d=16), n=1 (d=16) -> 1
    # triplet = (1 + 1 + 5 + 17 + 1) / (2 * 4) = 25 / 8
    # Encoders: audio_enc = (0,0),(1,1),(0,0),(2,0); video_enc = (0,0),(1,0),(0,2),(2,0)
    # MSE = (0 + 1 + 4 + 0) / 4 = 1.25
    out = {
        "audio_gate": jnp.array([[[0.]], [[1.]], [[3.]], [[5.]]]),
        "video_gate": jnp.array([[[0.]], [[2.]], [[2.]], [[6.]]]),
        "audio_enc": jnp.array([[[0., 0.]], [[1., 1.]], [[0., 0.]], [[2., 0.]]]),
        "video_enc": jnp.array([[[0., 0.]], [[1., 0.]], [[0., 2.]], [[2., 0.]]]),
    }
    labels = jnp.array([0, 0, 1, 1])
    loss, m = losses.compute_loss(out, labels, loss_config(), "gating", "av")
    self.assertAlmostEqual(float(m["triplet"]), 25 / 8, places=5)
    self.assertAlmostEqual(float(m["mse"]), 1.25, places=5)
    self.assertAlmostEqual(float(loss), 25 / 8 + 1.25, places=5)
    self.assertAlmostEqual(float(m["triplet_audio"]), 1 / 4, places=5)
    self.assertAlmostEqual(float(m["triplet_video"]), 24 / 4, places=5)
    self.assertAlmostEqual(float(m["active_triplets"]), 5 / 8, places=5)
    self.assertAlmostEqual(float(m["no_triplet_anchors"]), 0.0)
    # Single modality: divided by N, no MSE.
    loss_a, m_a = losses.compute_loss(out, labels, loss_config(mse_weight=0.0), "lstm", "audio")
    self.assertAlmostEqual(float(loss_a), 1 / 4, places=5)
    self.assertAlmostEqual(float(m_a["mse"]), 0.0)

  def test_averages_over_gates_and_lstm_uses_last(self):
    rng = np.random.default_rng(0)
    n, t = 6, 3
    out = {k: jnp.asarray(rng.normal(size=(n, t, 4)).astype(np.float32))
           for k in ("audio_gate", "video_gate", "audio_enc", "video_enc")}
    labels = jnp.array([0, 0, 1, 1, 2, 2])
    _, m = losses.compute_loss(out, labels, loss_config(), "gating", "av")
    diff = np.asarray(out["video_enc"] - out["audio_enc"])
    self.assertAlmostEqual(float(m["mse"]), float((diff ** 2).sum(-1).mean()), places=5)
    last = {k: v[:, -1:] for k, v in out.items()}
    _, m_last = losses.compute_loss(last, labels, loss_config(), "gating", "av")
    _, m_lstm = losses.compute_loss(out, labels, loss_config(), "lstm", "av")
    self.assertAlmostEqual(float(m_lstm["triplet"]), float(m_last["triplet"]), places=5)
    self.assertAlmostEqual(float(m_lstm["mse"]), 0.0)

  def test_no_valid_triplet_counts_anchor(self):
    out = {"audio_gate": jnp.zeros((4, 2, 3))}
    loss, m = losses.compute_loss(out, jnp.zeros(4, jnp.int32), loss_config(), "global", "audio")
    self.assertEqual(float(loss), 0.0)
    self.assertEqual(float(m["no_triplet_anchors"]), 1.0)

  def test_gradient_flows_to_gate_and_encoder_embeddings(self):
    rng = np.random.default_rng(1)
    out = {k: jnp.asarray(rng.normal(size=(6, 2, 3)).astype(np.float32))
           for k in ("audio_gate", "video_gate", "audio_enc", "video_enc")}
    labels = jnp.array([0, 0, 1, 1, 2, 2])
    grads = jax.jit(jax.grad(lambda o: losses.compute_loss(o, labels, loss_config(margin=10.0),
                                                           "gating", "av")[0]))(out)
    for k, g in grads.items():
      self.assertGreater(float(jnp.abs(g).sum()), 0.0, k)


if __name__ == "__main__":
  absltest.main()
