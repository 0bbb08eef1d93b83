"""results.py: per-fold metrics, aggregation over folds, results.json / results.md.

Fake fold directories follow the evaluation contract (docs/results_schema.md):
predictions are built with a known number of correct answers per gate, so the
expected accuracies, means and stds are known by hand.
"""

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings

import numpy as np
from absl.testing import absltest
from absl.testing import parameterized
from sklearn import metrics as skm

from avjax import compat
from avjax import config_lib
from avjax import evaluate
from avjax import paper
from avjax import report
from avjax import results
from avjax import workdir as workdir_lib
from tests.helpers import RAVDESS_CLASSES, write_fake_fold

# Two folds, 3 gates, 4 classes. Fold 0: 8 clips (2 per class); fold 1: 4 clips, class 3
# absent. AV correct per gate 4,6,8 of 8 and 2,2,3 of 4: accuracies .5,.75,1 and .5,.5,.75.
LABELS0 = [0, 0, 1, 1, 2, 2, 3, 3]
LABELS1 = [0, 1, 2, 2]
CORRECT0 = {"AO": [2, 3, 4], "VO": [4, 4, 6], "AV": [4, 6, 8]}
CORRECT1 = {"AO": [1, 1, 2], "VO": [2, 3, 3], "AV": [2, 2, 3]}


def two_fold_workdir(root, **kwargs):
  write_fake_fold(root, 0, LABELS0, CORRECT0, **kwargs)
  write_fake_fold(root, 1, LABELS1, CORRECT1, **kwargs)
  return root


class MetricsTest(parameterized.TestCase):

  @parameterized.parameters(0, 1, 2)
  def test_confusion_and_uar_match_sklearn(self, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=40)
    labels[labels == 4] = 3  # class 4 absent from the true labels...
    pred = rng.integers(0, 5, size=40)  # ...but predicted
    np.testing.assert_array_equal(results.confusion_matrix(pred, labels, 5),
                                  skm.confusion_matrix(labels, pred, labels=range(5)))
    with self.assertWarns(UserWarning):  # sklearn warns about the class absent from y_true
      expected = skm.balanced_accuracy_score(labels, pred)
    self.assertAlmostEqual(results.uar(pred, labels, 5), expected, places=12)
    recall = results.per_class_recall(pred, labels, 5)
    self.assertTrue(np.isnan(recall[4]))
    np.testing.assert_allclose(recall[:4], skm.recall_score(labels, pred, labels=range(4), average=None))

  def test_out_of_range_prediction_raises(self):
    with self.assertRaisesRegex(ValueError, "outside"):
      results.confusion_matrix(np.array([0, 4]), np.array([0, 1]), 4)


class FoldRowsTest(absltest.TestCase):

  def test_rows_of_one_fold(self):
    with tempfile.TemporaryDirectory() as d:
      fold_dir = write_fake_fold(d, 1, LABELS1, CORRECT1)
      preds, info = results.load_fold(fold_dir)
    rows = results.fold_rows(preds, info)
    self.assertLen(rows, 9)  # 3 modalities x 3 gates
    av = [r for r in rows if r["modality"] == "AV"]
    self.assertEqual([r["gate"] for r in av], [1, 2, 3])
    self.assertEqual([r["accuracy"] for r in av], [0.5, 0.5, 0.75])
    self.assertTrue(all(r["n"] == 4 for r in rows))  # exactly the fold's clips
    self.assertEqual({r["fold"] for r in rows}, {1})
    # Gate 1, AV: the first 2 clips (classes 0 and 1) are wrong; class 3 is absent:
    # recalls 0, 0, 1 over the three classes present.
    self.assertAlmostEqual(av[0]["uar"], 1 / 3)
    for r in rows:
      pred = preds[f"pred_{r['modality']}"][r["gate"] - 1]
      with warnings.catch_warnings():  # "y_pred contains classes not in y_true": class 3
        warnings.simplefilter("ignore", UserWarning)
        expected = skm.balanced_accuracy_score(preds["labels"], pred)
      self.assertAlmostEqual(r["uar"], expected)
    self.assertEqual(set(rows[0]), {"dataset", "config", "variant", "fold", "gate", "modality",
                                    "accuracy", "uar", "n"})

  def test_shape_mismatch_names_the_file(self):
    with tempfile.TemporaryDirectory() as d:
      fold_dir = write_fake_fold(d, 0, LABELS0, CORRECT0, num_windows=4)
      with self.assertRaisesRegex(ValueError, r"predictions.npz: pred_AO has shape \(3, 8\)"):
        results.load_fold(fold_dir)


class AggregateTest(absltest.TestCase):

  def test_mean_and_sample_std_by_hand(self):
    with tempfile.TemporaryDirectory() as d:
      folds = results.load_folds(two_fold_workdir(d))
    rows = [r for preds, info in folds for r in results.fold_rows(preds, info)]
    summary = results.aggregate(rows)
    self.assertLen(summary, 9)
    av = [s for s in summary if s["modality"] == "AV"]
    np.testing.assert_allclose([s["accuracy_mean"] for s in av], [0.5, 0.625, 0.875])
    # Sample std of two values a, b is |a - b| / sqrt(2).
    np.testing.assert_allclose([s["accuracy_std"] for s in av], [0.0, 0.25 / math.sqrt(2), 0.25 / math.sqrt(2)])
    self.assertTrue(all(s["num_folds"] == 2 and s["folds"] == [0, 1] and s["n"] == 12 for s in summary))
    ao_last = results.summary_row(summary, "AO")
    self.assertEqual(ao_last["gate"], 3)
    self.assertAlmostEqual(ao_last["accuracy_mean"], (4 / 8 + 2 / 4) / 2)
    # UAR mean over folds, from sklearn per fold.
    vo1 = results.summary_row(summary, "VO", gate=1)
    expected = np.mean([skm.balanced_accuracy_score(p["labels"], p["pred_VO"][0]) for p, _ in folds])
    self.assertAlmostEqual(vo1["uar_mean"], expected)
    # 95 % interval of the mean of 2 folds: t(0.975, 1) = 12.7062 (tables) x std / sqrt(2).
    for s in av:
      self.assertAlmostEqual(s["accuracy_ci95"], 12.7062047 * s["accuracy_std"] / math.sqrt(2),
                             places=5)
    self.assertAlmostEqual(vo1["uar_ci95"], 12.7062047 * vo1["uar_std"] / math.sqrt(2), places=5)
    # Ten folds: t(0.975, 9) = 2.2622.
    self.assertAlmostEqual(results.ci95_half_width(0.09, 10), 2.2621572 * 0.09 / math.sqrt(10))

  def test_single_fold_std_is_none(self):
    with tempfile.TemporaryDirectory() as d:
      write_fake_fold(d, 3, LABELS0, CORRECT0)
      preds, info = results.load_folds(d)[0]
    summary = results.aggregate(results.fold_rows(preds, info))
    self.assertTrue(all(s["accuracy_std"] is None and s["uar_std"] is None for s in summary))
    self.assertTrue(all(s["accuracy_ci95"] is None and s["uar_ci95"] is None for s in summary))

  def test_repeated_fold_raises(self):
    with tempfile.TemporaryDirectory() as d:
      preds, info = results.load_fold(write_fake_fold(d, 0, LABELS0, CORRECT0))
    rows = results.fold_rows(preds, info)
    with self.assertRaisesRegex(ValueError, "repeated"):
      results.aggregate(rows + rows)


class FormerValuesTest(absltest.TestCase):

  def test_config_and_fold_info_columns_agree(self):
    """A config recorded by 0.1.0 (no avjax_version) that lacks every field of
    compat.FORMER is completed with the table's values, and writes the fold_info.json
    values that an old fold_info.json lacking those keys is read with."""
    old = config_lib.get_base_config().to_dict()
    for row in compat.FORMER:
      if row.field:
        group, name = row.field.split(".")
        del old[group][name]
    completed = config_lib.complete(old, recorded=True)
    info = evaluate.recipe_info(completed)
    for row in compat.FORMER:
      if row.field:
        group, name = row.field.split(".")
        self.assertEqual(completed[group][name], row.value, row.field)
      if row.field and row.info_key:
        self.assertEqual(info[row.info_key], row.info, row.field)
    self.assertLessEqual(set(compat.FOLD_INFO_BEFORE), set(info))
    # A current config keeps today's defaults.
    self.assertEqual(config_lib.complete(config_lib.get_base_config().to_dict(),
                                         recorded=True).loss.negatives, "semihard")

  def test_an_old_fold_info_is_read_with_the_former_values(self):
    """fold_info.json keys a fold does not have read as compat.FOLD_INFO_BEFORE; those it
    has are kept."""
    with tempfile.TemporaryDirectory() as d:
      fold_dir = write_fake_fold(d, 0, [0, 1, 2, 3], {"AO": [2]}, negatives="semihard")
      _, read = results.load_fold(fold_dir)
    for key, value in compat.FOLD_INFO_BEFORE.items():
      self.assertEqual(read[key], "semihard" if key == "negatives" else value, key)
    self.assertEqual(compat.FOLD_INFO_BEFORE["negatives"], "hardest")


class WriteResultsTest(absltest.TestCase):

  def test_json_schema_and_markdown(self):
    with tempfile.TemporaryDirectory() as d:
      two_fold_workdir(d)
      os.makedirs(os.path.join(d, "fold_2"))  # an unfinished fold: ignored
      json_path, md_path = report.write_results(d)
      doc = results.load_results(json_path)
      md = open(md_path).read()
    for key in ("schema_version", "dataset", "config", "variant", "folds", "rows", "summary",
                "class_names", "num_windows", "confusion_last_gate", "paper", "conventions"):
      self.assertIn(key, doc)
    self.assertEqual([f["fold"] for f in doc["folds"]], [0, 1])
    self.assertEqual([f["n"] for f in doc["folds"]], [8, 4])
    self.assertEqual(doc["folds"][1]["class_counts"], [1, 1, 2, 0])
    self.assertLen(doc["rows"], 18)
    self.assertLen(doc["summary"], 9)
    # Last-gate AV confusion summed over folds: every clip once, diagonal = correct ones.
    cm = np.array(doc["confusion_last_gate"]["AV"])
    self.assertEqual(cm.sum(), 12)
    self.assertEqual(np.trace(cm), 8 + 3)
    self.assertEqual(doc["paper"], [])  # synthetic data: nothing in the paper
    self.assertIn("## AV", md)
    # mean .875, std .1768, 95 % interval .875 -+ 12.706 x .1768 / sqrt(2) = [-71.3, 246.3]:
    # shown within 0-100, the JSON keeps the half-width.
    self.assertIn("| 3 (last) | 87.5 ± 17.7 | [0.0, 100.0] |", md)
    # Per-class recall at the last gate over both folds' clips, as scikit-learn counts it.
    with tempfile.TemporaryDirectory() as d:
      folds = results.load_folds(two_fold_workdir(d))
    labels = np.concatenate([p["labels"] for p, _ in folds])
    recall = {m: skm.recall_score(labels, np.concatenate([p[f"pred_{m}"][-1] for p, _ in folds]),
                                  labels=range(4), average=None, zero_division=np.nan)
              for m in ("AO", "VO", "AV")}
    self.assertIn("| Class | Clips | AO | VO | AV |", md)
    for c, name in enumerate(doc["class_names"]):
      cells = ["–" if np.isnan(recall[m][c]) else f"{100 * recall[m][c]:.1f}"
               for m in ("AO", "VO", "AV")]
      self.assertIn(f"| {name} | {int(np.sum(labels == c))} | " + " | ".join(cells) + " |", md)
    self.assertIn("2 of 10", md)
    self.assertIn("checkpoints: fold 0: not recorded", md)   # fold_info without the fields
    self.assertNotIn("not the paper's protocol", md)
    # Folds trained with checkpoint records, on a dataset built from some folds only.
    with tempfile.TemporaryDirectory() as d:
      two_fold_workdir(d, checkpoint_step=30, selected_by="last", allow_missing_folds=True)
      md = open(report.write_results(d)[1]).read()
    self.assertIn("checkpoints: the last checkpoint of each fold, no model selection (step 30)",
                  md)
    self.assertIn("**not the paper's protocol**", md)
    self.assertIn("triplet mining: MWTSM\n", md)          # folds without `negatives`: hardest
    self.assertEqual(doc["negatives"], "hardest")
    # Folds without the loss fields: the paper's distance and margin, MSE weight unknown.
    self.assertIn("- loss: squared Euclidean distances, margin 1; audio-video MSE weight not "
                  "recorded\n", md)
    self.assertEqual((doc["distance"], doc["batch_all_epochs"], doc["mse_weight"]),
                     ("squared", 0, None))
    # ... and without the optimiser's: Adam with L2, its settings unknown.
    self.assertEqual((doc["optimizer"], doc["learning_rate"], doc["weight_decay"]),
                     ("adam", None, None))
    self.assertIn("- optimiser: Adam with the weight decay added to the gradient "
                  "(torch.optim.Adam, `paper_literal`); learning rate and weight decay not "
                  "recorded\n", md)
    # Semi-hard triplets are said in results.md and results.json.
    self.assertNotIn("audio head", md)
    with tempfile.TemporaryDirectory() as d:
      two_fold_workdir(d, negatives="semihard", center_audio_head=True, center_video_head=True)
      json_path, md_path = report.write_results(d)
      doc = results.load_results(json_path)
      self.assertEqual((doc["negatives"], doc["center_audio_head"]), ("semihard", True))
      md = open(md_path).read()
      self.assertIn("triplet mining: MWTSM, semi-hard triplets only", md)
      self.assertIn("audio head: its input centred", md)
      self.assertIn("video head: its input centred (`model.center_video_head`)", md)
    # A batch-all warm-up, non-squared distances and another MSE weight are said too.
    with tempfile.TemporaryDirectory() as d:
      two_fold_workdir(d, batch_all_epochs=3, distance="euclidean", margin=0.2, mse_weight=0.1,
                       optimizer="adamw", learning_rate=1e-3, weight_decay=5e-4)
      json_path, md_path = report.write_results(d)
      doc = results.load_results(json_path)
      self.assertEqual((doc["batch_all_epochs"], doc["distance"], doc["mse_weight"]),
                       (3, "euclidean", 0.1))
      self.assertEqual((doc["optimizer"], doc["learning_rate"], doc["weight_decay"]),
                       ("adamw", 1e-3, 5e-4))
      md = open(md_path).read()
      self.assertIn("- optimiser: AdamW (decoupled weight decay, torch.optim.AdamW), "
                    "learning rate 0.001, weight decay 0.0005\n", md)
      self.assertIn("triplet mining: batch-all triplets for the first 3 epochs "
                    "(the warm-up: loss.batch_all_fraction; not the paper's), then MWTSM\n", md)
      self.assertIn("- loss: euclidean distances (loss.distance, not the paper's squared ones), "
                    "margin 0.2; audio-video MSE weight 0.1 (not the paper's 1)\n", md)
    # The trunks' learning-rate factor is said when it is not 1 and the trunk trained.
    self.assertNotIn("optim.trunk_lr_scale", md)
    for trunk, scale, said in (("finetune_from:conv4", 0.01, True), ("finetune", 0.5, True),
                               ("frozen", 0.01, False), ("finetune", 1.0, False)):
      with tempfile.TemporaryDirectory() as d:
        two_fold_workdir(d, trunk=trunk, trunk_lr_scale=scale)
        md = open(report.write_results(d)[1]).read()
        line = f"trunk layers trained at {scale:g} x the learning rate (optim.trunk_lr_scale)"
        self.assertEqual(line in md, said, (trunk, scale))
    # Folds trained with different configurations (`--config_mismatch=ok`) are said, and a
    # top-level field the folds disagree on is null, not fold 0's value.
    with tempfile.TemporaryDirectory() as d:
      write_fake_fold(d, 0, LABELS0, CORRECT0, trunk="frozen", config_hash="aaaa",
                      speaker_centering=False)
      write_fake_fold(d, 1, LABELS1, CORRECT1, trunk="frozen", config_hash="bbbb",
                      speaker_centering=True)
      json_path, md_path = report.write_results(d)
      doc = json.load(open(json_path))
      self.assertIsNone(doc["speaker_centering"])
      self.assertEqual(doc["speaker_scaling"], False)          # shared: kept
      self.assertEqual([f["config_hash"] for f in doc["folds"]], ["aaaa", "bbbb"])
      self.assertIn("**folds trained with 2 configurations** (config_hash aaaa, bbbb;",
                    open(md_path).read())
    with tempfile.TemporaryDirectory() as d:
      two_fold_workdir(d, config_hash="aaaa")
      self.assertNotIn("configurations** (config_hash", open(report.write_results(d)[1]).read())
    # Speaker centring is said (and that it is not the paper's protocol) when it was used.
    for centred in (False, True):
      with tempfile.TemporaryDirectory() as d:
        two_fold_workdir(d, trunk="frozen", speaker_centering=centred)
        md_path = report.write_results(d)[1]
        md = open(md_path).read()
        self.assertEqual("**features centred per actor** (input.speaker_centering, every fold)"
                         in md, centred)
        doc = json.load(open(md_path[:-2] + "json"))
        self.assertEqual([f["speaker_centering"] for f in doc["folds"]], [centred] * 2)
    # So is a SoundNet head on another layer or statistic than the paper's conv7 mean.
    # (under every trunk: `finetune` accepts any head too).
    for trunk, head, said in (
        ("frozen", ("conv7", "mean"), None), ("finetune", ("conv7", "mean"), None),
        ("frozen", ("conv4", "mean_std"), "SoundNet's head on conv4's mean and std over time"),
        ("frozen", ("conv7", "mean_std"), "SoundNet's head on conv7's mean and std over time"),
        ("finetune", ("conv4", "mean"), "SoundNet's head on conv4's mean over time")):
      with tempfile.TemporaryDirectory() as d:
        two_fold_workdir(d, trunk=trunk, audio_head_layer=head[0], audio_head_stats=head[1])
        md_path = report.write_results(d)[1]
        md = open(md_path).read()
        self.assertEqual("SoundNet's head on" in md, said is not None, head)
        if said:
          self.assertIn(said + " (model.audio_head_layer", md)
        doc = json.load(open(md_path[:-2] + "json"))
        self.assertEqual({(f["audio_head_layer"], f["audio_head_stats"]) for f in doc["folds"]},
                         {head})
    with tempfile.TemporaryDirectory() as d:
      two_fold_workdir(d, mse_weight=1.0)
      self.assertIn("margin 1; audio-video MSE weight 1\n", open(report.write_results(d)[1]).read())

  def test_mixed_configurations_raise(self):
    with tempfile.TemporaryDirectory() as d:
      write_fake_fold(d, 0, LABELS0, CORRECT0)
      write_fake_fold(d, 1, LABELS1, CORRECT1, config="w3_l1_no")
      with self.assertRaisesRegex(ValueError, "config"):
        report.write_results(d)
    with tempfile.TemporaryDirectory() as d:   # one fold's miner took semi-hard triplets
      write_fake_fold(d, 0, LABELS0, CORRECT0)
      write_fake_fold(d, 1, LABELS1, CORRECT1, negatives="semihard")
      with self.assertRaisesRegex(ValueError, "negatives"):
        report.write_results(d)
    with tempfile.TemporaryDirectory() as d:   # one fold trained with AdamW
      write_fake_fold(d, 0, LABELS0, CORRECT0)
      write_fake_fold(d, 1, LABELS1, CORRECT1, optimizer="adamw")
      with self.assertRaisesRegex(ValueError, "optimizer"):
        report.write_results(d)
    with tempfile.TemporaryDirectory() as d:   # one fold had a batch-all warm-up
      write_fake_fold(d, 0, LABELS0, CORRECT0)
      write_fake_fold(d, 1, LABELS1, CORRECT1, batch_all_epochs=2)
      with self.assertRaisesRegex(ValueError, "batch_all_epochs"):
        report.write_results(d)

  def test_workdir_name_with_glob_characters(self):
    # `ao[1]` as a pattern matches `ao1`: the folds must come from the workdir itself.
    with tempfile.TemporaryDirectory() as root:
      workdir, sibling = os.path.join(root, "ao[1]"), os.path.join(root, "ao1")
      two_fold_workdir(workdir)
      write_fake_fold(sibling, 3, LABELS0, CORRECT0)
      self.assertEqual(results.fold_dirs(workdir),
                       [os.path.join(workdir, "fold_0"), os.path.join(workdir, "fold_1")])
      doc = results.load_results(report.write_results(workdir)[0])
    self.assertEqual([f["fold"] for f in doc["folds"]], [0, 1])

  def test_no_folds_raises(self):
    with tempfile.TemporaryDirectory() as d:
      with self.assertRaises(FileNotFoundError):
        report.write_results(d)

  def test_paper_numbers_beside_ours(self):
    correct = {m: [4, 5, 6, 7, 7, 7, 8, 6] for m in ("AO", "VO", "AV")}
    with tempfile.TemporaryDirectory() as d:
      write_fake_fold(d, 0, [0, 1, 2, 3, 4, 5, 6, 7], correct, dataset="ravdess", config="w8_l1_ov",
                      class_names=RAVDESS_CLASSES)
      json_path, md_path = report.write_results(d)
      doc = results.load_results(json_path)
      md = open(md_path).read()
    refs = {(r["table"], r["row"], r["modality"]): r for r in doc["paper"]}
    self.assertEqual(set(refs), {("I", "w8_l1_ov", "AV"), ("II", "AO-Gating", "AO"),
                                 ("II", "VO-Gating", "VO"), ("II", "AV-Gating", "AV")})
    self.assertEqual(refs[("I", "w8_l1_ov", "AV")]["accuracy"], 67.7)
    self.assertEqual(refs[("II", "AO-Gating", "AO")]["accuracy"], 45.3)
    self.assertEqual(refs[("II", "AV-Gating", "AV")]["ours_accuracy_mean"], 6 / 8)  # the last gate
    self.assertIn("67.7", md)
    self.assertIn("45.3", md)
    self.assertIn("| I | RAVDESS 8 windows x 1 s, 0.5 s overlap | AV | 75.0 | 67.7 | +7.3 |", md)
    self.assertIn("last gate", md)


class PaperReferencesTest(parameterized.TestCase):

  def test_describe_windowing(self):
    self.assertEqual(paper.describe_windowing("w8_l1_ov"), "8 windows x 1 s, 0.5 s overlap (fixed hop)")
    self.assertEqual(paper.describe_windowing("w2_l1_no"), "2 windows x 1 s, no overlap (fixed hop)")
    for name in ("w2_l1_ov_fit", "w2_l1_no_fit"):   # the same windows: no overlap claimed
      self.assertEqual(paper.describe_windowing(name), "2 windows x 1 s (spread over the clip)")
    self.assertEqual(paper.describe_windowing("w1_l3_no_fit"), "1 window x 3 s (centred)")
    self.assertEqual(paper.describe_windowing("w1_l1_no_apex"),
                     "1 window x 1 s (the loudest part of the clip)")

  @parameterized.parameters(
      ("ravdess", "w4_l1_no", "gating", "av", {("I", "w4_l1_no")}),
      ("ravdess", "w4_l1_no_fit", "gating", "av", {("I", "w4_l1_no")}),
      ("crema_d_av", "w6_l1_ov", "gating", "av",
       {("I", "w6_l1_ov"), ("II", "AO-Gating"), ("II", "VO-Gating"), ("II", "AV-Gating")}),
      ("crema_d", "w6_l1_ov", "lstm", "av", {("II", "A-LSTM+V-LSTM")}),
      ("ravdess", "w8_l1_ov", "lstm", "audio", {("II", "A-LSTM")}),
      ("ravdess", "w4_l1_ov", "lstm", "audio", set()),  # Table II's LSTM rows use 8 windows
      ("ravdess", "w1_l1_no_fit", "global", "video", {("II", "VO-Global")}),
      ("crema_d_av", "w1_l1_no_fit", "global", "av", {("II", "AV-Global")}),
      ("synthetic_av", "w4_l1_ov", "gating", "av", set()),
  )
  def test_rows_matched(self, dataset, config, variant, modalities, expected):
    refs = paper.paper_references(dataset, config, variant, modalities)
    self.assertEqual({(r["table"], r["row"]) for r in refs}, expected)

  def test_every_cell_as_the_paper_prints_it(self):
    # Tables I and II of the paper's text (../shared/paper.md), parsed here, against paper.py.
    from tests import helpers
    text = (helpers.require_samples().parent / "paper.md").read_text()
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|") and "---" not in line]
    table1, dataset = {}, None
    for cells in rows:
      if len(cells) == 5 and cells[1].isdigit():
        dataset = {"RAVDESS": "ravdess", "CREMAD": "crema_d_av"}.get(cells[0], dataset)
        ov = "ov" if cells[3] == "1" else "no"
        table1.setdefault(dataset, {})[f"w{cells[1]}_l{cells[2]}_{ov}"] = float(cells[4])
    self.assertEqual(table1, paper.PAPER_TABLE1)
    labels = {label: name for name, label, _, _ in paper.TABLE2_ROWS}
    table2 = {"crema_d_av": {}, "ravdess": {}}
    for cells in rows:
      if len(cells) == 3 and cells[0] in labels:
        table2["crema_d_av"][labels[cells[0]]] = float(cells[1])
        table2["ravdess"][labels[cells[0]]] = float(cells[2])
    self.assertEqual(table2, paper.PAPER_TABLE2)

  def test_tables_complete(self):
    self.assertEqual(len(paper.PAPER_TABLE1["ravdess"]) + len(paper.PAPER_TABLE1["crema_d_av"]), 10)
    for ds in ("ravdess", "crema_d_av"):
      self.assertEqual(set(paper.PAPER_TABLE2[ds]), {r[0] for r in paper.TABLE2_ROWS})
    self.assertEqual(paper.PAPER_TABLE2["crema_d_av"]["AV-Gating"], paper.PAPER_TABLE1["crema_d_av"]["w6_l1_ov"])


REPRODUCE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "reproduce.py")


def run_reproduce(*args):
  return subprocess.run([sys.executable, REPRODUCE, *args], capture_output=True, text=True, timeout=120)


def commands_of(stdout):
  """(config argument, run directory) of each printed cross_validate command."""
  out = []
  for line in stdout.splitlines():
    if line.startswith("#") or not line.strip():
      continue
    argv = shlex.split(line)
    if not argv[1].endswith(os.path.join("scripts", "cross_validate.py")):
      raise AssertionError(f"not a cross_validate command: {line}")
    flags = dict(a[2:].split("=", 1) for a in argv[2:])
    out.append((flags["config"], flags["workdir"], flags.get("folds")))
  return out


class ReproduceTest(parameterized.TestCase):

  def test_usage_errors_are_one_line(self):
    with tempfile.TemporaryDirectory() as d:
      for args, want in ((["--folds=10"], "--folds=10: expected comma-separated test folds"),
                         (["--override=train.num_epoch=3"],
                          "the config has no field 'train.num_epoch'"),
                         (["--workdir="], "--workdir is empty")):
        workdir = [] if any(a.startswith("--workdir") for a in args) else [f"--workdir={d}"]
        proc = run_reproduce("--dataset=ravdess", "--table=2", "--dry_run", *workdir, *args)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn(want, proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)
      self.assertEqual(os.listdir(d), [])

  @parameterized.parameters(
      # The `_no` rows' `_fit` twins are the `_ov` rows' (the same windows): run once.
      ("ravdess", "1", "ravdess.py", [w + s for w in ("w2_l1_ov", "w2_l2_ov", "w4_l1_ov", "w6_l1_ov",
                                                       "w8_l1_ov") for s in ("", "_fit")]
                                     + ["w2_l1_no", "w4_l1_no"]),
      ("crema_d", "1", "crema_d.py", [w + s for w in ("w2_l1_ov", "w4_l1_ov", "w6_l1_ov") for s in ("", "_fit")]),
      ("ravdess", "2", "ravdess.py", ["audio_global", "audio_lstm", "w8_l1_ov", "video_global",
                                      "video_lstm", "global", "lstm"]),
      ("crema_d", "2", "crema_d.py", ["audio_global", "audio_lstm", "w6_l1_ov", "video_global",
                                      "video_lstm", "global", "lstm"]),
  )
  def test_dry_run_lists_the_commands(self, dataset, table, config_file, runs):
    with tempfile.TemporaryDirectory() as d:
      proc = run_reproduce(f"--dataset={dataset}", f"--table={table}", f"--workdir={d}", "--dry_run",
                           "--folds=0,3")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      cmds = commands_of(proc.stdout)
      self.assertEqual([c[0].rsplit("/", 2)[-1] for c in cmds], [f"{config_file}:{r}" for r in runs])
      self.assertEqual([c[1] for c in cmds], [os.path.join(d, r) for r in runs])
      self.assertTrue(all(c[2] == "0,3" for c in cmds))
      self.assertEqual(os.listdir(d), [])  # nothing run, nothing written

  def test_audio_rows_read_audio_only_records(self):
    with tempfile.TemporaryDirectory() as d:
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--dry_run",
                           "--rows=AO-Global,A-LSTM")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      self.assertEqual([c[0].rsplit(":", 1)[-1] for c in commands_of(proc.stdout)],
                       ["audio_global", "audio_lstm"])
      reads = [l for l in proc.stdout.splitlines() if l.startswith("# reads")]
      self.assertEqual(reads, ["# reads ravdess/audio_w1_l3_no_fit", "# reads ravdess/audio_w8_l1_ov"])
      proc = run_reproduce("--dataset=crema_d", "--table=2", f"--workdir={d}", "--dry_run",
                           "--rows=VO-LSTM")
      self.assertIn("# reads crema_d_av/w6_l1_ov", proc.stdout)
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--dry_run",
                           "--rows=AO-Lstm")
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("no row AO-Lstm", proc.stderr)

  def test_frozen_trunk_runs_are_labelled_and_kept_apart(self):
    with tempfile.TemporaryDirectory() as d:
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--dry_run",
                           "--rows=AO-Global,AV-Gating", "--trunk=frozen")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      for line in proc.stdout.splitlines():
        if not line.startswith("#"):
          self.assertIn("--config.model.trunk=frozen", shlex.split(line))
      # A cut of SoundNet alone cannot serve the audio-visual rows.
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--dry_run",
                           "--rows=AV-Gating", "--trunk=finetune_from:conv4")
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("no cut of the video encoder", proc.stderr)
      # A finished fine-tuned run is not reused for a frozen table, and vice versa.
      from configs import ravdess
      c = ravdess.get_config("audio_global")
      write_fake_fold(os.path.join(d, "audio_global"), 0, np.repeat(np.arange(8), 2),
                      {"AO": [12]}, dataset=c.dataset.name, config=c.dataset.config,
                      variant=c.model.variant, modalities="audio", class_names=RAVDESS_CLASSES,
                      trunk="frozen")
      report.write_results(os.path.join(d, "audio_global"))
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--folds=0",
                           "--rows=AO-Global", "--dry_run")
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("trunk is 'frozen', this row needs 'finetune'", proc.stderr)
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--folds=0",
                           "--rows=AO-Global", "--trunk=frozen")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      self.assertIn("# reuse", proc.stdout)
      md = open(os.path.join(d, "table2.md")).read()
      self.assertIn("# Table II, RAVDESS: ours (frozen trunks) beside the paper", md)
      self.assertIn("| Embeddings | Paper row | Modality | Ours (frozen trunks) % | Paper % |", md)
      self.assertIn("NOT its recipe", md)
      self.assertEqual(json.load(open(os.path.join(d, "table2.json")))["trunk"], "frozen")

  def test_cpu_token_runs_frozen_without_a_trunk_override(self):
    with tempfile.TemporaryDirectory() as d:
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--dry_run",
                           "--rows=AO-Global,A-LSTM", "--config_args=cpu")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      commands = [shlex.split(l) for l in proc.stdout.splitlines() if not l.startswith("#")]
      self.assertLen(commands, 2)
      for cmd in commands:
        self.assertTrue(any(a.startswith("--config=") and a.endswith(",cpu") for a in cmd), cmd)
        self.assertFalse(any(a.startswith("--config.model.trunk") for a in cmd), cmd)
      # An explicit --trunk still wins over the token's.
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--dry_run",
                           "--rows=AO-Global", "--config_args=cpu", "--trunk=finetune_from:conv4")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      self.assertIn("--config.model.trunk=finetune_from:conv4", proc.stdout)
      # A frozen run on disk without the token's head and centring is not a `cpu` run.
      from configs import ravdess
      labels = np.repeat(np.arange(8), 2)

      def on_disk(variant, per_gate, **info):
        """A one-fold run of `variant` on disk with fold_info `info`; its directory."""
        c = ravdess.get_config(variant)
        run_dir = os.path.join(d, variant)
        write_fake_fold(run_dir, 0, labels, {"AO": per_gate}, dataset=c.dataset.name,
                        config=c.dataset.config, variant=c.model.variant, modalities="audio",
                        class_names=RAVDESS_CLASSES, trunk="frozen", **info)
        report.write_results(run_dir)
        return run_dir

      def table(rows, *flags):
        """reproduce.py's Table II of `rows` under `cpu` from what is on disk."""
        proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--folds=0",
                             f"--rows={rows}", "--config_args=cpu", *flags)
        md = os.path.join(d, "table2.md")
        return proc, (open(md).read() if os.path.exists(md) else "")

      head = dict(audio_head_layer="conv4", audio_head_stats="mean_std")
      on_disk("audio_global", [12])
      proc, _ = table("AO-Global", "--dry_run")
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("speaker_centering is 'False', this row needs 'True'", proc.stderr)
      self.assertIn("audio_head_layer is 'conv7', this row needs 'conv4'", proc.stderr)
      # ... it is one with the centring turned off and the token's head.
      on_disk("audio_global", [12], **head)
      proc, md = table("AO-Global", "--override=input.speaker_centering=false")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      self.assertIn("# reuse", proc.stdout)
      self.assertNotIn("speaker-centred", md)
      # With the centring on disk, the table says what it is.
      on_disk("audio_global", [12], speaker_centering=True, **head)
      proc, md = table("AO-Global")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      self.assertIn("# Table II, RAVDESS: ours (frozen trunks, speaker-centred) beside the paper",
                    md)
      self.assertIn("NOT the paper's protocol", md)
      self.assertNotIn("input.speaker_scaling", md)      # AO-Global: centred, not scaled
      self.assertTrue(json.load(open(os.path.join(d, "table2.json")))["speaker_centering"])
      # A-LSTM under `cpu` also scales: a run on disk without the scaling is refused, and
      # the table names the runs that scaled.
      on_disk("audio_lstm", [12] * 8, speaker_centering=True, **head)
      proc, _ = table("AO-Global,A-LSTM", "--dry_run")
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("speaker_scaling is 'False', this row needs 'True'", proc.stderr)
      lstm_dir = on_disk("audio_lstm", [12] * 8, speaker_centering=True, speaker_scaling=True,
                         **head)
      self.assertIn("then divided by that actor's standard deviation (input.speaker_scaling, "
                    "every fold)", open(os.path.join(lstm_dir, "results.md")).read())
      proc, md = table("AO-Global,A-LSTM")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      self.assertIn("The runs `audio_lstm` also divided them by the speaker's standard deviation",
                    md)
      self.assertEqual(json.load(open(os.path.join(d, "table2.json")))["speaker_scaling_runs"],
                       ["audio_lstm"])

  def test_reuses_finished_runs_and_writes_table(self):
    from avjax.data import windows
    from configs import ravdess
    names = RAVDESS_CLASSES
    labels = np.repeat(np.arange(8), 2)  # 16 clips per fold
    modality_keys = {"av": ("AO", "VO", "AV"), "audio": ("AO",), "video": ("VO",)}
    with tempfile.TemporaryDirectory() as d:
      for run in ("audio_global", "audio_lstm", "w8_l1_ov", "video_global", "video_lstm", "global", "lstm"):
        c = ravdess.get_config(run)
        t = windows.parse_name(c.dataset.config).num_windows
        for fold in (0, 1):
          # AV right on 12 + fold of 16 at the last gate: mean 12.5/16 = 78.125%.
          correct = {m: [8] * (t - 1) + [12 + fold] for m in modality_keys[c.model.modalities]}
          write_fake_fold(os.path.join(d, run), fold, labels, correct, dataset=c.dataset.name,
                          config=c.dataset.config, variant=c.model.variant,
                          modalities=c.model.modalities, class_names=names)
        report.write_results(os.path.join(d, run))
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--folds=0,1")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      self.assertEqual(commands_of(proc.stdout), [])  # every run reused
      self.assertEqual(proc.stdout.count("# reuse"), 7)
      md = open(os.path.join(d, "table2.md")).read()
      table = json.load(open(os.path.join(d, "table2.json")))
      # A 3rd fold requested: the runs do not cover it, so they would be started.
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--folds=0,1,2", "--dry_run")
      self.assertLen(commands_of(proc.stdout), 7)
      # A run that recorded its config (as avjax.main does) is reused only when every
      # protocol field is the row's, the recipe's included, not only those results.json has.
      lstm_dir = os.path.join(d, "audio_lstm")
      workdir_lib.save_config(ravdess.get_config("audio_lstm"), lstm_dir)
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--folds=0,1",
                           "--rows=A-LSTM", "--dry_run")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      self.assertEqual(commands_of(proc.stdout), [])
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--folds=0,1",
                           "--rows=A-LSTM", "--override=loss.margin=0.3", "--dry_run")
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("loss.margin is 1.0, this row needs 0.3", proc.stderr)
      os.remove(os.path.join(lstm_dir, workdir_lib.CONFIG))
      # A run that fails here: its row does not pass an earlier run's numbers as this one's
      # (the dataset is not in the empty data_dir, so the run stops at once).
      empty = tempfile.mkdtemp()
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--folds=0,1,2",
                           "--rows=A-LSTM", f"--override=dataset.data_dir={empty}")
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("runs failed: audio_lstm", proc.stderr)
      self.assertIn("| 2, of an earlier run: this one failed | `audio_lstm` |",
                    open(os.path.join(d, "table2.md")).read())
      # no_mwtsm asks for another configuration than the one on disk: refused.
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--folds=0,1",
                           "--config_args=no_mwtsm", "--dry_run")
      self.assertNotEqual(proc.returncode, 0)
      self.assertIn("exclude_used", proc.stderr)
      # --collect_only starts nothing and marks what is not on disk.
      shutil.rmtree(os.path.join(d, "lstm"))
      proc = run_reproduce("--dataset=ravdess", "--table=2", f"--workdir={d}", "--folds=0,1", "--collect_only")
      self.assertEqual(proc.returncode, 0, proc.stderr)
      self.assertEqual(commands_of(proc.stdout), [])
      self.assertIn("| A-LSTM+V-LSTM | Concatenation of A-LSTM and V-LSTM | AV | – | 65.8 | – | – | missing |",
                    open(os.path.join(d, "table2.md")).read())
    self.assertLen(table["rows"], 9)
    for row in table["rows"]:
      self.assertEqual(row["status"], "ok")
      self.assertAlmostEqual(row["accuracy_mean"], 12.5 / 16)
      self.assertEqual(row["num_folds"], 2)
    self.assertIn("| AV-Gating | AV-Gating Paradigm | AV | 78.1 ± 4.4 | 67.7 | +10.4 |", md)
    self.assertIn("| A-LSTM | A-LSTM | AO | 78.1 ± 4.4 | 40.1 | +38.0 |", md)
    self.assertIn("last gate", md)


if __name__ == "__main__":
  absltest.main()
