"""MWTSM against a brute-force NumPy reference; batch-hard equivalence; masks; jit."""

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from avjax import mining
from tests.helpers import brute_force


def separate_batch_hard(emb, labels):
  """Hardest positive (largest d, lowest index) and hardest negative (smallest d,
  lowest index), each found on its own."""
  t_count, n, _ = emb.shape
  pos = np.zeros((t_count, n), np.int32)
  neg = np.zeros((t_count, n), np.int32)
  valid = np.zeros((t_count, n), bool)
  for t in range(t_count):
    e = emb[t].astype(np.float64)
    d = ((e[:, None] - e[None]) ** 2).sum(-1)
    for i in range(n):
      positives = [j for j in range(n) if j != i and labels[j] == labels[i]]
      negatives = [j for j in range(n) if labels[j] != labels[i]]
      if positives and negatives:
        pos[t, i] = positives[int(np.argmax(d[i, positives]))]   # np.argmax: first max
        neg[t, i] = negatives[int(np.argmin(d[i, negatives]))]
        valid[t, i] = True
  return pos, neg, valid


def integer_embeddings(rng, t, n, d, high=2):
  # Small integers: distances are exact in float32, and ties are frequent.
  return rng.integers(-high, high + 1, size=(t, n, d)).astype(np.float32)


def assert_same(testcase, got, want, what=""):
  got = [np.asarray(x) for x in jax.device_get(got)]
  np.testing.assert_array_equal(got[2], want[2], err_msg=f"valid {what}")
  np.testing.assert_array_equal(got[0], want[0], err_msg=f"positives {what}")
  np.testing.assert_array_equal(got[1], want[1], err_msg=f"negatives {what}")
  testcase.assertEqual((got[0].dtype, got[1].dtype, got[2].dtype),
                       (np.int32, np.int32, np.bool_))


class MiningTest(parameterized.TestCase):

  @parameterized.parameters(
      dict(seed=0, t=3, labels=[0, 0, 1, 1, 2, 2]),
      dict(seed=1, t=4, labels=[0, 0, 0, 1, 1, 2, 3, 3]),        # class 2: one member
      dict(seed=2, t=8, labels=[0, 0, 1, 1]),                     # triplets run out at t=2
      dict(seed=3, t=2, labels=[1, 1, 1, 1]),                     # no negatives at all
      dict(seed=4, t=5, labels=[0, 1, 2, 3, 0, 1, 2, 3, 0, 1]),   # 2 and 3: one positive
      dict(seed=5, t=6, labels=[0, 1, 0, 2, 1, 2]),
  )
  def test_matches_brute_force(self, seed, t, labels):
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    emb = integer_embeddings(rng, t, len(labels), 2)
    for exclude in (True, False):
      got = mining.mwtsm(jnp.asarray(emb), jnp.asarray(labels), exclude_used=exclude)
      assert_same(self, got, brute_force(emb, labels, exclude), f"exclude_used={exclude}")

  def test_euclidean_distance_matches_brute_force_and_changes_the_picks(self):
    rng = np.random.default_rng(7)
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 3, 0])
    emb = rng.normal(size=(5, len(labels), 3)).astype(np.float32)   # no ties
    got = jax.device_get(mining.mwtsm(jnp.asarray(emb), jnp.asarray(labels),
                                      distance="euclidean"))
    assert_same(self, got, brute_force(emb, labels, distance="euclidean"), "euclidean")
    squared = jax.device_get(mining.mwtsm(jnp.asarray(emb), jnp.asarray(labels)))
    self.assertFalse(np.array_equal(got[1], squared[1]) and np.array_equal(got[0], squared[0]))
    with self.assertRaisesRegex(ValueError, "cosine"):
      mining.mwtsm(jnp.asarray(emb), jnp.asarray(labels), distance="cosine")

  @parameterized.parameters((0, True), (1, True), (2, False), (3, False))
  def test_semihard_matches_brute_force(self, seed, exclude):
    # Integer embeddings put d(i,p) == d(i,n) often: the condition is strict.
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=9)
    window_mask = rng.random((4, 9)) > 0.2
    for emb in (integer_embeddings(rng, 4, 9, 2), rng.normal(size=(4, 9, 3)).astype(np.float32)):
      for mask in (None, window_mask):
        got = jax.device_get(mining.mwtsm(jnp.asarray(emb), jnp.asarray(labels),
                                          exclude_used=exclude, mask=mask, negatives="semihard"))
        assert_same(self, got, brute_force(emb, labels, exclude, mask, negatives="semihard"),
                    f"semihard exclude_used={exclude} mask={mask is not None}")
        p, q, v = got
        d = ((emb[:, :, None] - emb[:, None]) ** 2).sum(-1)
        t_idx, i_idx = np.nonzero(v)
        self.assertGreater(len(t_idx), 0)
        np.testing.assert_array_less(d[t_idx, i_idx, p[t_idx, i_idx]],
                                     d[t_idx, i_idx, q[t_idx, i_idx]])
    hardest = jax.device_get(mining.mwtsm(jnp.asarray(emb), jnp.asarray(labels),
                                          exclude_used=exclude, mask=window_mask))
    self.assertFalse(np.array_equal(hardest[1], got[1]) and np.array_equal(hardest[2], got[2]))
    with self.assertRaisesRegex(ValueError, "negatives 'easy'"):
      mining.mwtsm(jnp.asarray(emb), jnp.asarray(labels), negatives="easy")

  def test_ties_are_frequent_in_the_integer_cases(self):
    # Guards the test above: its data really exercise the tie rule.
    rng = np.random.default_rng(0)
    emb = integer_embeddings(rng, 3, 6, 2)
    d = ((emb[:, :, None] - emb[:, None]) ** 2).sum(-1)
    ties = sum(len(np.unique(row)) < len(row) for row in d.reshape(-1, 6))
    self.assertGreater(ties, 6)

  def test_float_embeddings_match(self):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, size=12)
    emb = rng.normal(size=(4, 12, 5)).astype(np.float32)
    assert_same(self, mining.mwtsm(emb, labels), brute_force(emb, labels))

  def test_runs_out_and_never_repeats(self):
    labels = np.array([0, 0, 1, 1, 1])
    # Triplets per anchor: class 0: 1 positive x 3 negatives = 3; class 1: 2 x 2 = 4.
    t = 6
    emb = np.random.default_rng(0).normal(size=(t, 5, 3)).astype(np.float32)
    p, n, v = jax.device_get(mining.mwtsm(emb, labels))
    np.testing.assert_array_equal(v.sum(axis=0), [3, 3, 4, 4, 4])
    np.testing.assert_array_equal(v[:3, :2], True)
    np.testing.assert_array_equal(v[3:, :2], False)
    np.testing.assert_array_equal(v[:4, 2:], True)
    np.testing.assert_array_equal(v[4:, 2:], False)
    for i in range(5):
      picks = [(p[s, i], n[s, i]) for s in range(t) if v[s, i]]
      self.assertLen(set(picks), len(picks), f"anchor {i} repeats a triplet: {picks}")
      for pp, nn in picks:
        self.assertNotEqual(pp, i)
        self.assertEqual(labels[pp], labels[i])
        self.assertNotEqual(labels[nn], labels[i])
    np.testing.assert_array_equal(np.where(v, 0, p), 0)   # invalid anchors: p = n = 0
    np.testing.assert_array_equal(np.where(v, 0, n), 0)

  def test_without_exclusion_is_batch_hard(self):
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=12)
    for emb in (rng.normal(size=(3, 12, 8)).astype(np.float32),
                integer_embeddings(rng, 3, 12, 2)):             # ties: lowest index on each side
      want = separate_batch_hard(emb, labels)
      assert_same(self, mining.mwtsm(emb, labels, exclude_used=False), want, "mwtsm")
      assert_same(self, mining.batch_hard(emb, labels), want, "batch_hard")
      # The joint argmax over (p, n) without the used mask is the same thing.
      assert_same(self, jax.device_get(mining.mwtsm(emb, labels, exclude_used=False)),
                  brute_force(emb, labels, exclude_used=False), "joint argmax")

  def test_first_window_of_mwtsm_is_batch_hard(self):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=9)
    emb = integer_embeddings(rng, 3, 9, 2)
    mw = jax.device_get(mining.mwtsm(emb, labels))
    bh = jax.device_get(mining.batch_hard(emb, labels))
    for a, b in zip(mw, bh):
      np.testing.assert_array_equal(a[0], b[0])
    self.assertFalse(np.array_equal(mw[1][1:], bh[1][1:]))   # later windows differ

  def test_single_member_class_and_single_class_batch(self):
    emb = np.random.default_rng(1).normal(size=(2, 5, 3)).astype(np.float32)
    _, _, v = jax.device_get(mining.mwtsm(emb, np.array([0, 0, 1, 2, 2])))
    np.testing.assert_array_equal(v, [[True, True, False, True, True]] * 2)
    for exclude in (True, False):
      _, _, v = jax.device_get(mining.mwtsm(emb, np.zeros(5, np.int32), exclude_used=exclude))
      self.assertFalse(v.any())

  def test_mask_equals_mining_the_real_clips(self):
    rng = np.random.default_rng(2)
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 1])
    mask = np.array([1, 1, 0, 1, 1, 1, 0, 1], bool)
    emb = integer_embeddings(rng, 4, 8, 2)
    keep = np.flatnonzero(mask)
    for exclude in (True, False):
      p, n, v = jax.device_get(mining.mwtsm(emb, labels, exclude_used=exclude, mask=mask))
      sp, sn, sv = brute_force(emb[:, keep], labels[keep], exclude)
      self.assertFalse(v[:, ~mask].any())
      np.testing.assert_array_equal(v[:, keep], sv)
      np.testing.assert_array_equal(np.where(sv, p[:, keep], -1), np.where(sv, keep[sp], -1))
      np.testing.assert_array_equal(np.where(sv, n[:, keep], -1), np.where(sv, keep[sn], -1))
      assert_same(self, (p, n, v), brute_force(emb, labels, exclude, mask), "masked")

  def test_per_window_mask_leaves_masked_clips_out_of_that_window(self):
    # Clips 2 and 5 end early (masked from window 2 and 1 on), clip 7 is padding.
    rng = np.random.default_rng(4)
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 1])
    t = 4
    window = np.ones((t, 8), bool)
    window[2:, 2] = window[1:, 5] = window[:, 7] = False
    emb = integer_embeddings(rng, t, 8, 2)
    for exclude in (True, False):
      p, n, v = jax.device_get(mining.mwtsm(emb, labels, exclude_used=exclude, mask=window))
      assert_same(self, (p, n, v), brute_force(emb, labels, exclude, window), f"exclude {exclude}")
      self.assertFalse(v[~window].any())                         # never an anchor there
      for w in range(t):                                        # nor a positive or negative
        self.assertTrue(window[w, p[w, v[w]]].all() and window[w, n[w, v[w]]].all())
      # A window mask equal at every window is the clip mask.
      assert_same(self, mining.mwtsm(emb, labels, exclude_used=exclude,
                                     mask=np.broadcast_to(window[0], (t, 8))),
                  brute_force(emb, labels, exclude, window[0]), "constant window mask")
    with self.assertRaisesRegex(ValueError, r"\[T, N\]"):
      mining.mwtsm(emb, labels, mask=np.ones((t + 1, 8), bool))

  def test_jit_matches_eager_and_no_gradient_leaks(self):
    rng = np.random.default_rng(6)
    emb = jnp.asarray(rng.normal(size=(3, 6, 4)).astype(np.float32))
    labels = jnp.array([0, 0, 1, 1, 2, 2])
    jitted = jax.jit(mining.mwtsm, static_argnames="exclude_used")
    for exclude in (True, False):
      for a, b in zip(jitted(emb, labels, exclude_used=exclude),
                      mining.mwtsm(emb, labels, exclude_used=exclude)):
        np.testing.assert_array_equal(a, b)
    # The picks are integers chosen on stop_gradient'ed inputs: differentiating
    # through a use of them (d(i, p) with p mined) gives only the direct path.
    def f(e):
      p, _, _ = mining.mwtsm(e, labels)
      return jnp.sum(e[0] * e[0, p[0]])
    g = jax.jit(jax.grad(f))(emb)
    self.assertEqual(g.shape, emb.shape)
    self.assertTrue(np.isfinite(np.asarray(g)).all())

  def test_bad_shapes(self):
    with self.assertRaisesRegex(ValueError, r"\[T, N, D\]"):
      mining.mwtsm(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32))
    with self.assertRaisesRegex(ValueError, "labels"):
      mining.mwtsm(jnp.zeros((2, 4, 3)), jnp.zeros(5, jnp.int32))


if __name__ == "__main__":
  absltest.main()
