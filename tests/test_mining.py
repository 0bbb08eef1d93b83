"""MWTSM against a brute-force NumPy reference; batch-hard equivalence; jit."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from avjax import mining


def brute_force(emb, labels, exclude_used=True):
  """Loops over windows, anchors, positives and negatives (DESIGN.md's definition)."""
  t_count, n, _ = emb.shape
  pos = np.zeros((t_count, n), np.int32)
  neg = np.zeros((t_count, n), np.int32)
  valid = np.zeros((t_count, n), bool)
  used = set()
  for t in range(t_count):
    e = emb[t].astype(np.float64)
    d = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    picked_now = []
    for i in range(n):
      best, best_score = None, -np.inf
      for p, q in itertools.product(range(n), range(n)):   # flat order p*N+q: first max wins
        if p == i or labels[p] != labels[i] or labels[q] == labels[i]:
          continue
        if exclude_used and (i, p, q) in used:
          continue
        score = d[i, p] - d[i, q]
        if score > best_score:
          best, best_score = (p, q), score
      if best is not None:
        pos[t, i], neg[t, i], valid[t, i] = best[0], best[1], True
        picked_now.append((i,) + best)
    used.update(picked_now)
  return pos, neg, valid


def integer_embeddings(rng, t, n, d, high=4):
  # Small integers: distances are exact in float32, and ties are frequent.
  return rng.integers(-high, high + 1, size=(t, n, d)).astype(np.float32)


class MiningTest(parameterized.TestCase):

  @parameterized.parameters(
      dict(seed=0, t=3, labels=[0, 0, 1, 1, 2, 2]),
      dict(seed=1, t=4, labels=[0, 0, 0, 1, 1, 2, 3, 3]),        # classes 2: one member
      dict(seed=2, t=8, labels=[0, 0, 1, 1]),                     # triplets run out
      dict(seed=3, t=2, labels=[1, 1, 1, 1]),                     # no negatives at all
      dict(seed=4, t=5, labels=[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]),
  )
  def test_matches_brute_force(self, seed, t, labels):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    emb = integer_embeddings(rng, t, len(labels), 3)
    for exclude in (True, False):
      got = jax.device_get(mining.mwtsm(jnp.asarray(emb), jnp.asarray(labels), exclude_used=exclude))
      want = brute_force(emb, labels, exclude)
      np.testing.assert_array_equal(got[2], want[2], err_msg=f"valid, exclude={exclude}")
      np.testing.assert_array_equal(np.where(want[2], got[0], 0), want[0], err_msg="positives")
      np.testing.assert_array_equal(np.where(want[2], got[1], 0), want[1], err_msg="negatives")

  def test_float_embeddings_match(self):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, size=12)
    emb = rng.normal(size=(4, 12, 5)).astype(np.float32)
    got = jax.device_get(mining.mwtsm(emb, labels))
    want = brute_force(emb, labels)
    for g, w in zip(got, want):
      np.testing.assert_array_equal(g, w)

  def test_runs_out_and_never_repeats(self):
    labels = np.array([0, 0, 1, 1])   # each anchor has 1 positive x 2 negatives = 2 triplets
    emb = np.random.default_rng(0).normal(size=(5, 4, 2)).astype(np.float32)
    p, n, v = jax.device_get(mining.mwtsm(emb, labels))
    np.testing.assert_array_equal(v.sum(axis=0), [2, 2, 2, 2])
    np.testing.assert_array_equal(v[:2], True)
    np.testing.assert_array_equal(v[2:], False)
    for i in range(4):
      picks = [(p[t, i], n[t, i]) for t in range(5) if v[t, i]]
      self.assertLen(set(picks), len(picks))

  def test_without_exclusion_is_batch_hard(self):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=16)
    emb = rng.normal(size=(3, 16, 8)).astype(np.float32)
    p, n, v = jax.device_get(mining.mwtsm(emb, labels, exclude_used=False))
    for t in range(3):
      d = ((emb[t][:, None] - emb[t][None]) ** 2).sum(-1)
      for i in range(16):
        positives = [j for j in range(16) if j != i and labels[j] == labels[i]]
        negatives = [j for j in range(16) if labels[j] != labels[i]]
        if not positives or not negatives:
          self.assertFalse(v[t, i])
          continue
        self.assertEqual(p[t, i], positives[int(np.argmax(d[i, positives]))])
        self.assertEqual(n[t, i], negatives[int(np.argmin(d[i, negatives]))])

  def test_jit_and_shapes(self):
    emb = jnp.ones((3, 6, 4))
    labels = jnp.array([0, 0, 1, 1, 2, 2])
    p, n, v = jax.jit(mining.mwtsm, static_argnames="exclude_used")(emb, labels)
    self.assertEqual((p.shape, n.shape, v.shape), ((3, 6),) * 3)
    self.assertEqual((p.dtype, n.dtype, v.dtype), (jnp.int32, jnp.int32, jnp.bool_))


if __name__ == "__main__":
  absltest.main()
