"""KNN predictions equal scikit-learn's KNeighborsClassifier (uniform weights)."""

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from sklearn.neighbors import KNeighborsClassifier

from avjax import knn


class KnnTest(parameterized.TestCase):

  @parameterized.product(seed=(0, 1, 2), k=(1, 2, 5, 15), num_classes=(2, 3, 8))
  def test_matches_sklearn(self, seed, k, num_classes):
    rng = np.random.default_rng(seed)
    refs = rng.normal(size=(120, 6)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=120)
    queries = rng.normal(size=(37, 6)).astype(np.float32)
    want = KNeighborsClassifier(n_neighbors=k).fit(refs, labels).predict(queries)
    got = knn.knn_predict(refs, labels, queries, k=k, num_classes=num_classes, chunk_size=16)
    np.testing.assert_array_equal(got, want)

  def test_vote_ties_go_to_smallest_class(self):
    # k=2, the two nearest references have classes 3 and 1: a tie, class 1 wins.
    refs = np.array([[0.0], [1.0], [10.0]], np.float32)
    labels = np.array([3, 1, 0])
    got = knn.knn_predict(refs, labels, np.array([[0.4]], np.float32), k=2, num_classes=4)
    self.assertEqual(int(got[0]), 1)
    want = KNeighborsClassifier(n_neighbors=2).fit(refs, labels).predict([[0.4]])
    self.assertEqual(int(want[0]), 1)

  def test_chunking_is_invisible(self):
    rng = np.random.default_rng(5)
    refs, queries = rng.normal(size=(50, 4)), rng.normal(size=(23, 4))
    labels = rng.integers(0, 5, size=50)
    a = knn.knn_predict(refs, labels, queries, k=7, num_classes=5, chunk_size=1)
    b = knn.knn_predict(refs, labels, queries, k=7, num_classes=5, chunk_size=1000)
    np.testing.assert_array_equal(a, b)
    scores = knn.knn_scores(refs, labels, queries, k=7, num_classes=5, chunk_size=4)
    np.testing.assert_allclose(scores.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(scores.argmax(1), a)

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "k = 5"):
      knn.knn_predict(np.zeros((3, 2)), np.zeros(3, int), np.zeros((1, 2)), k=5)
    with self.assertRaisesRegex(ValueError, "labels"):
      knn.knn_predict(np.zeros((3, 2)), np.zeros(2, int), np.zeros((1, 2)), k=1)


if __name__ == "__main__":
  absltest.main()
