"""Fold assignment: subject-independent, complete, balanced, deterministic."""

import collections

from absl.testing import absltest

from avjax.data import folds


def ravdess_genders():
  return {a: "male" if a % 2 else "female" for a in range(1, 25)}


class FoldsTest(absltest.TestCase):

  def test_every_actor_in_exactly_one_fold(self):
    g = ravdess_genders()
    f = folds.assign_folds(g)
    self.assertEqual(set(f), set(g))
    self.assertTrue(all(0 <= k < 10 for k in f.values()))

  def test_balanced_sizes_and_genders(self):
    g = ravdess_genders()
    f = folds.assign_folds(g)
    sizes = collections.Counter(f.values())
    self.assertEqual(len(sizes), 10)
    self.assertLessEqual(max(sizes.values()) - min(sizes.values()), 1)
    for k in range(10):
      actors = [a for a, fold in f.items() if fold == k]
      males = sum(g[a] == "male" for a in actors)
      self.assertLessEqual(abs(males - (len(actors) - males)), 2)

  def test_deterministic_and_order_free(self):
    g = ravdess_genders()
    shuffled = dict(reversed(list(g.items())))
    self.assertEqual(folds.assign_folds(g), folds.assign_folds(shuffled))

  def test_crema_d_sized(self):
    # 91 actors, 48 male / 43 female as in CREMA-D.
    g = {1000 + i: ("male" if i <= 48 else "female") for i in range(1, 92)}
    f = folds.assign_folds(g)
    sizes = collections.Counter(f.values())
    self.assertEqual(sorted(sizes.values()), [9] * 9 + [10])

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, "at least 10 actors"):
      folds.assign_folds({1: "male"})
    with self.assertRaisesRegex(ValueError, "unknown gender"):
      folds.assign_folds({a: "x" for a in range(12)})

  def test_table(self):
    table = folds.fold_table(ravdess_genders())
    self.assertEqual(len(table.splitlines()), 12)


if __name__ == "__main__":
  absltest.main()
