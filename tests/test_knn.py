"""KNN predictions equal scikit-learn's KNeighborsClassifier (uniform weights)."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from sklearn.neighbors import KNeighborsClassifier

from avjax import knn


def sklearn_predict(refs, labels, queries, k, algorithm="auto"):
  clf = KNeighborsClassifier(n_neighbors=k, weights="uniform", algorithm=algorithm)
  return clf.fit(refs, labels).predict(queries)


def vote_counts(refs, labels, queries, k, num_classes):
  """NumPy reference: float64 distances, stable sort (ties: lowest index)."""
  d = ((queries[:, None, :].astype(np.float64) - refs[None].astype(np.float64)) ** 2).sum(-1)
  nearest = np.argsort(d, axis=1, kind="stable")[:, :k]
  return np.stack([np.bincount(labels[row], minlength=num_classes) for row in nearest])


class KnnTest(parameterized.TestCase):

  @parameterized.product(seed=(0, 1, 2), k=(1, 5, 15), num_classes=(3, 8), dim=(6, 20))
  def test_matches_sklearn(self, seed, k, num_classes, dim):
    # dim 6: sklearn uses a KD tree; dim 20 (> 15): its brute-force path.
    rng = np.random.default_rng(seed)
    refs = rng.normal(size=(90, dim)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=90)
    queries = rng.normal(size=(37, dim)).astype(np.float32)
    want = sklearn_predict(refs, labels, queries, k)
    got = knn.knn_predict(refs, labels, queries, k=k, num_classes=num_classes, chunk_size=16)
    self.assertEqual(got.dtype, np.int32)
    np.testing.assert_array_equal(got, want)

  @parameterized.product(seed=(0, 1, 2), k=(2, 4, 6))
  def test_vote_ties_match_sklearn(self, seed, k):
    # Even k with 2 classes: many queries have a tied vote; both go to class 0.
    rng = np.random.default_rng(seed)
    refs = rng.normal(size=(60, 3)).astype(np.float32)
    labels = rng.integers(0, 2, size=60)
    queries = rng.normal(size=(50, 3)).astype(np.float32)
    votes = knn.knn_votes(refs, labels, queries, k=k, num_classes=2)
    ties = votes[:, 0] == votes[:, 1]
    self.assertGreaterEqual(ties.sum(), 5)   # the test really has vote ties
    got = knn.knn_predict(refs, labels, queries, k=k, num_classes=2)
    np.testing.assert_array_equal(got[ties], 0)
    np.testing.assert_array_equal(got, sklearn_predict(refs, labels, queries, k))
    np.testing.assert_array_equal(votes, vote_counts(refs, labels, queries, k, 2))

  def test_vote_tie_goes_to_smallest_class_not_nearest(self):
    # k=2: the nearest reference has class 3, the next class 1: tie, class 1 wins.
    refs = np.array([[0.0], [1.0], [10.0]], np.float32)
    labels = np.array([3, 1, 0])
    got = knn.knn_predict(refs, labels, np.array([[0.4]], np.float32), k=2, num_classes=4)
    self.assertEqual(int(got[0]), 1)
    self.assertEqual(int(sklearn_predict(refs, labels, [[0.4]], 2)[0]), 1)

  def test_distance_ties_take_lowest_indices(self):
    # Integer grid data: many references at exactly the same distance. We take the
    # lowest indices among them (scikit-learn leaves this choice to its heap / tree
    # order; see knn.py), which a stable sort of exact distances reproduces.
    rng = np.random.default_rng(0)
    refs = rng.integers(-1, 2, size=(200, 3)).astype(np.float32)
    labels = rng.integers(0, 4, size=200)
    queries = rng.integers(-1, 2, size=(40, 3)).astype(np.float32)
    for k in (1, 5, 15):
      want = vote_counts(refs, labels, queries, k, 4)
      np.testing.assert_array_equal(knn.knn_votes(refs, labels, queries, k=k, num_classes=4),
                                    want, err_msg=f"k={k}")
    # Duplicated references: the lower-index copy is taken first.
    refs = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]], np.float32)
    votes = knn.knn_votes(refs, np.array([0, 1, 2, 0]), np.array([[1.0, 0.0]], np.float32),
                          k=1, num_classes=3)
    np.testing.assert_array_equal(votes, [[0, 1, 0]])

  def test_far_from_origin_matches_sklearn(self):
    # |x|^2 ~ 1e7: the expanded |q|^2 + |r|^2 - 2 q.r would lose the neighbours'
    # order in float32; distances from explicit differences keep it.
    rng = np.random.default_rng(3)
    refs = (1000.0 + rng.normal(size=(80, 10))).astype(np.float32)
    labels = rng.integers(0, 5, size=80)
    queries = (1000.0 + rng.normal(size=(30, 10))).astype(np.float32)
    for k in (1, 15):
      np.testing.assert_array_equal(knn.knn_predict(refs, labels, queries, k=k, num_classes=5),
                                    sklearn_predict(refs, labels, queries, k))

  def test_chunking_is_invisible(self):
    rng = np.random.default_rng(5)
    refs, queries = rng.normal(size=(50, 4)), rng.normal(size=(23, 4))
    labels = rng.integers(0, 5, size=50)
    full = knn.knn_votes(refs, labels, queries, k=7, num_classes=5, chunk_size=1000)
    for chunk in (1, 4, 22):
      np.testing.assert_array_equal(
          knn.knn_votes(refs, labels, queries, k=7, num_classes=5, chunk_size=chunk), full)
    # A byte bound of one query's distance row forces chunks of one query.
    per_query = 4 * 50
    np.testing.assert_array_equal(
        knn.knn_votes(refs, labels, queries, k=7, num_classes=5, max_block_bytes=per_query), full)
    scores = knn.knn_scores(refs, labels, queries, k=7, num_classes=5, chunk_size=4)
    self.assertEqual(scores.shape, (23, 5))
    np.testing.assert_allclose(scores, full / 7, rtol=1e-6)
    np.testing.assert_array_equal(scores.argmax(1),
                                  knn.knn_predict(refs, labels, queries, k=7, num_classes=5))

  def test_scores_equal_sklearn_predict_proba(self):
    rng = np.random.default_rng(6)
    refs, queries = rng.normal(size=(40, 5)), rng.normal(size=(12, 5))
    labels = rng.integers(0, 3, size=40)
    want = KNeighborsClassifier(n_neighbors=5).fit(refs, labels).predict_proba(queries)
    np.testing.assert_allclose(knn.knn_scores(refs, labels, queries, k=5, num_classes=3), want,
                               rtol=1e-6)

  def test_k_equals_number_of_references_and_empty_queries(self):
    refs = np.array([[0.0], [1.0], [2.0]], np.float32)
    got = knn.knn_predict(refs, np.array([2, 1, 1]), np.array([[0.0], [5.0]]), k=3)
    np.testing.assert_array_equal(got, [1, 1])
    self.assertEqual(knn.knn_predict(refs, np.array([2, 1, 1]), np.zeros((0, 1)), k=1).shape,
                     (0,))

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "k = 5 needs 1 <= k <= number of references"):
      knn.knn_predict(np.zeros((3, 2)), np.zeros(3, int), np.zeros((1, 2)), k=5)
    with self.assertRaisesRegex(ValueError, "train_labels must be"):
      knn.knn_predict(np.zeros((3, 2)), np.zeros(2, int), np.zeros((1, 2)), k=1)
    with self.assertRaisesRegex(ValueError, "num_classes=2"):
      knn.knn_predict(np.zeros((3, 2)), np.array([0, 1, 2]), np.zeros((1, 2)), k=1, num_classes=2)
    with self.assertRaisesRegex(ValueError, "same D"):
      knn.knn_predict(np.zeros((3, 2)), np.zeros(3, int), np.zeros((1, 3)), k=1)
    # A NaN reference would be every query's nearest neighbour (top_k ranks it first).
    refs = np.array([[0.0, 0.0], [1.0, np.nan], [5.0, 5.0]], np.float32)
    with self.assertRaisesRegex(knn.NonFiniteEmbeddings,
                                "1 of 3 reference embeddings are not finite.*row 1"):
      knn.knn_predict(refs, np.array([0, 1, 2]), np.zeros((1, 2)), k=1)
    with self.assertRaisesRegex(ValueError, "1 of 2 query embeddings are not finite.*row 0"):
      knn.knn_predict(np.zeros((3, 2)), np.zeros(3, int), np.array([[np.inf, 0], [0, 0]]), k=1)
    from avjax import cli   # a diverged model is a failure (exit 1), not a usage error
    self.assertEqual(cli.exit_status(knn.NonFiniteEmbeddings("x")), cli.FAILURE)


class PerGateTest(absltest.TestCase):

  def test_every_gate_and_modality_matches_sklearn(self):
    # evaluate.predict_per_gate: gate t of AO, VO and AV (audio and video gate embeddings
    # side by side) against scikit-learn's KNN on the same columns.
    from avjax import config_lib
    from avjax import evaluate
    config = config_lib.get_base_config()
    config.dataset.class_names = ("a", "b", "c", "d")
    config.eval.k = 5
    rng = np.random.default_rng(4)
    t = 3
    def emb(n):
      return {"audio_gate": rng.normal(size=(n, t, 4)), "video_gate": rng.normal(size=(n, t, 6)),
              "label": rng.integers(0, 4, n)}
    refs, qrys = emb(40), emb(12)
    got = evaluate.predict_per_gate(config, refs, qrys)
    columns = {"AO": ("audio_gate",), "VO": ("video_gate",), "AV": ("audio_gate", "video_gate")}
    self.assertEqual(sorted(k for k in got if k.startswith("pred_")),
                     ["pred_AO", "pred_AV", "pred_VO"])
    for m, keys in columns.items():
      ref = np.concatenate([refs[k] for k in keys], axis=-1)
      qry = np.concatenate([qrys[k] for k in keys], axis=-1)
      want = [KNeighborsClassifier(5).fit(ref[:, g], refs["label"]).predict(qry[:, g])
              for g in range(t)]
      np.testing.assert_array_equal(got[f"pred_{m}"], np.stack(want), err_msg=m)
      np.testing.assert_allclose(got[f"emb_{m}"], qry[:, -1], rtol=1e-6, err_msg=m)


if __name__ == "__main__":
  absltest.main()
