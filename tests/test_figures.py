"""figures.py / scripts/make_figures.py: the four PNGs from fake fold directories."""

import os
import subprocess
import sys
import tempfile
from unittest import mock

import numpy as np
from absl.testing import absltest

from avjax import figures
from avjax.data import registry
from tests.helpers import RAVDESS_CLASSES, write_fake_fold

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ravdess_like(root, num_folds=2):
  labels = np.repeat(np.arange(8), 3)  # 24 clips, 3 per class
  for f in range(num_folds):
    correct = {"AO": [8, 9, 10, 10], "VO": [10, 12, 13, 15], "AV": [12, 14, 16, 17 + f]}
    write_fake_fold(root, f, labels, correct, dataset="ravdess", config="w4_l1_ov",
                    class_names=RAVDESS_CLASSES, seed=f)
  return root


def assert_png(test, path):
  test.assertTrue(os.path.isfile(path), path)
  with open(path, "rb") as f:
    head = f.read(8)
  test.assertEqual(head, PNG_MAGIC, path)
  test.assertGreater(os.path.getsize(path), 5000, path)  # a real picture, not an empty canvas


class FiguresTest(absltest.TestCase):

  def test_make_all_writes_four_pngs(self):
    with tempfile.TemporaryDirectory() as d:
      paths = figures.make_all(ravdess_like(d))
      self.assertEqual([os.path.basename(p) for p in paths],
                       [figures.FILENAMES[k] for k in ("tsne", "accuracy", "positive_negative", "confusion")])
      for p in paths:
        self.assertEqual(os.path.dirname(p), os.path.join(d, "figures"))
        assert_png(self, p)

  def test_fig5_skipped_without_the_classes_and_explicit_groups(self):
    names = registry.DATASETS["crema_d_av"]["class_names"]
    labels = np.repeat(np.arange(6), 3)
    with tempfile.TemporaryDirectory() as d:
      write_fake_fold(d, 0, labels, {"AV": [9, 12]}, dataset="crema_d_av", config="w2_l1_ov",
                      class_names=names)
      paths = figures.make_all(d)
      names_out = [os.path.basename(p) for p in paths]
      self.assertNotIn(figures.FILENAMES["positive_negative"], names_out)
      self.assertLen(paths, 3)
      for p in paths:
        assert_png(self, p)
      self.assertFalse(os.path.exists(os.path.join(d, "figures", figures.FILENAMES["positive_negative"])))
      out = os.path.join(d, "crema_groups")
      paths = figures.make_all(d, out_dir=out, groups=figures.POSITIVE_NEGATIVE_CREMA_D)
      assert_png(self, os.path.join(out, figures.FILENAMES["positive_negative"]))
      with self.assertRaisesRegex(ValueError, "calm"):
        figures.make_all(d, out_dir=out, groups=figures.POSITIVE_NEGATIVE_RAVDESS)

  def test_plotted_values(self):
    # Figs. 4-6 read back from their Axes against accuracies computed here from the folds'
    # predictions (each modality with its own counts, so a swapped one shows).
    saved = {}

    def keep(fig, path):
      saved[os.path.basename(path)] = fig
      return path

    with tempfile.TemporaryDirectory() as d, mock.patch.object(figures, "_save", keep):
      ravdess_like(d)
      folds = [np.load(os.path.join(d, f"fold_{f}", "predictions.npz")) for f in (0, 1)]
      figures.make_all(d)
    acc = {m: 100 * np.array([(z[f"pred_{m}"] == z["labels"]).mean(axis=1) for z in folds])
           for m in ("AO", "VO", "AV")}                                      # [folds, gates]
    # Fig. 4: mean and sample std over folds per gate; x ticks at the windows' ends.
    ax = saved[figures.FILENAMES["accuracy"]].axes[0]
    bars = {c.get_label(): c for c in ax.containers}
    for m, a in acc.items():
      line, _, (err,) = bars[m]
      np.testing.assert_allclose(line.get_xdata(), [1, 2, 3, 4])
      np.testing.assert_allclose(line.get_ydata(), a.mean(axis=0), err_msg=m)
      half = [seg[1, 1] - seg[0, 1] for seg in err.get_segments()]
      np.testing.assert_allclose(half, 2 * a.std(axis=0, ddof=1), err_msg=m)
    self.assertEqual([t.get_text() for t in ax.get_xticklabels()],
                     ["1\n1 s", "2\n1.5 s", "3\n2 s", "4\n2.5 s"])
    # Fig. 5: the paper's groups, mean over folds of each fold's accuracy on the group's clips.
    ax = saved[figures.FILENAMES["positive_negative"]].axes[0]
    for c in ax.containers:
      group = [RAVDESS_CLASSES.index(n) for n in c.get_label().split(": ")[1].split(" (")[0]
               .split(", ")]
      want = np.mean([100 * (z["pred_AV"] == z["labels"])[:, np.isin(z["labels"], group)].mean(1)
                      for z in folds], axis=0)
      np.testing.assert_allclose(c[0].get_ydata(), want, err_msg=c.get_label())
    self.assertEqual(sorted(c.get_label().split(":")[0] for c in ax.containers),
                     ["negative", "positive"])
    # Fig. 6: last-gate confusion pooled over folds, rows (true classes) normalised.
    fig6 = saved[figures.FILENAMES["confusion"]]
    for ax, m in zip(fig6.axes, ("AO", "VO", "AV")):
      cm = np.zeros((8, 8))
      for z in folds:
        np.add.at(cm, (z["labels"], z[f"pred_{m}"][-1]), 1)
      np.testing.assert_allclose(ax.images[0].get_array(), 100 * cm / cm.sum(1, keepdims=True),
                                 err_msg=m)
      self.assertTrue(ax.get_title().startswith(f"{m}: accuracy"))

  def test_group_accuracy(self):
    labels = np.array([1, 2, 3, 4, 5, 1])
    pred = np.array([[1, 2, 0, 0, 0, 0],    # positives (1, 2): 2 of 3 right
                     [0, 0, 3, 4, 5, 0]])   # negatives (3, 4, 5): 3 of 3 right
    np.testing.assert_allclose(figures.group_accuracy(pred, labels, [1, 2]), [2 / 3, 0])
    np.testing.assert_allclose(figures.group_accuracy(pred, labels, [3, 4, 5]), [0, 1])
    self.assertTrue(np.isnan(figures.group_accuracy(pred, labels, [7])).all())

  def test_script(self):
    with tempfile.TemporaryDirectory() as d:
      ravdess_like(d, num_folds=1)
      out = os.path.join(d, "out")
      proc = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_figures.py"),
                             f"--workdir={d}", f"--out_dir={out}", "--tsne_fold=0"],
                            capture_output=True, text=True, timeout=300)
      self.assertEqual(proc.returncode, 0, proc.stderr)
      self.assertEqual(sorted(os.listdir(out)), sorted(figures.FILENAMES.values()))


if __name__ == "__main__":
  absltest.main()
