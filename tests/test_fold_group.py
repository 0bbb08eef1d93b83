"""Folds trained side by side (`train.parallel_folds`, avjax.fold_group) against the same
folds trained one at a time: the same losses at every step, the same predictions and
KNN accuracy, per-fold files as before; a group whose folds start at different steps
(one resumed after a kill) ends where the one-at-a-time run ends.

Tolerance: the group's step is the single fold's step vmapped over the folds, so XLA
may block and order the batched products differently: the losses agree to 1e-5
(relative) at every step, the evaluation's embeddings to 1e-4 (relative; 1e-5 absolute,
after the differences of five steps add up) and the KNN predictions exactly (the tests'
tiny shapes; on the suite's 4 CPU devices the fold axis is sharded, on one it is only
vmapped). Over a whole training the differences grow (about 1e-5 relative after 30
steps, 1e-4 after 50 here) until a near tie of the miner's argmax goes the other way,
so longer runs agree in distribution, not step for step."""

import contextlib
import io
import json
import os
import shutil
import tempfile
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest

from avjax import config_lib
from avjax import fold_group
from avjax import fold_run
from avjax import health
from avjax import parallel
from avjax import steps
from avjax import train
from avjax import workdir as workdir_lib
from tests import helpers

FOLDS = (0, 1, 2)
MAX_STEPS = 5


def group_config(parallel_folds=1):
  c = helpers.tiny_synthetic_config(max_steps=MAX_STEPS)
  c.model.trunk = "frozen"
  c.model.modalities = "audio"
  c.model.variant = "lstm"
  c.input.cache_on_device = True
  c.eval.figures = False
  c.eval.reference_bank = False
  c.folds = FOLDS
  c.train.parallel_folds = parallel_folds
  return c


def losses(workdir, fold):
  path = os.path.join(workdir_lib.fold_dir(workdir, fold), workdir_lib.METRICS)
  return {r["step"]: r["loss"] for r in map(json.loads, open(path)) if "loss" in r}


def predictions(workdir, fold):
  with np.load(os.path.join(workdir_lib.fold_dir(workdir, fold), workdir_lib.PREDICTIONS)) as z:
    return {k: z[k] for k in z.files}


def fold_info(workdir, fold):
  with open(os.path.join(workdir_lib.fold_dir(workdir, fold), workdir_lib.FOLD_INFO)) as f:
    return json.load(f)


class FoldGroupTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix="avjax_group_")
    cls.alone = os.path.join(cls.tmp, "alone")
    cls.side = os.path.join(cls.tmp, "side")
    cls.resumed = os.path.join(cls.tmp, "resumed")
    with contextlib.redirect_stdout(io.StringIO()):
      train.train_and_evaluate(group_config(1), cls.alone)
      cls.traces = steps.TRACES["group_train_step"]
      out = io.StringIO()
      with contextlib.redirect_stdout(out):
        train.train_and_evaluate(group_config("all"), cls.side)
      cls.side_log = out.getvalue()
      cls.side_traces = steps.TRACES["group_train_step"] - cls.traces
      # A kill after fold 1's checkpoint of step 2: fold 1 resumes at step 2 beside folds
      # 0 and 2 starting from 0, finishes two group steps early and waits, masked.
      config = config_lib.complete(group_config(3))
      config.train.max_steps = 2
      train.train_fold(config, workdir_lib.fold_dir(cls.resumed, 1), 1, parallel.make_mesh())
      train.train_and_evaluate(group_config(3), cls.resumed)
      # On one device the fold axis is only vmapped (the suite's 4 devices shard it, the
      # three folds padded to four slots).
      cls.one_device = os.path.join(cls.tmp, "one_device")
      fold_group.train_group(config_lib.complete(group_config(3)),
                             {f: workdir_lib.fold_dir(cls.one_device, f) for f in FOLDS},
                             parallel.make_mesh(jax.devices()[:1]))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_same_losses_at_every_step(self):
    for fold in FOLDS:
      alone, side = losses(self.alone, fold), losses(self.side, fold)
      self.assertEqual(sorted(side), list(range(1, MAX_STEPS + 1)), fold)
      self.assertEqual(sorted(alone), sorted(side))
      np.testing.assert_allclose([side[s] for s in sorted(side)],
                                 [alone[s] for s in sorted(alone)], rtol=1e-5, err_msg=str(fold))

  def test_same_predictions_and_embeddings(self):
    for fold in FOLDS:
      a, b = predictions(self.alone, fold), predictions(self.side, fold)
      self.assertEqual(sorted(a), sorted(b))
      np.testing.assert_array_equal(a["pred_AO"], b["pred_AO"])
      np.testing.assert_array_equal(a["clip_id"], b["clip_id"])
      np.testing.assert_allclose(b["emb_AO"], a["emb_AO"], rtol=1e-4, atol=1e-5)

  def test_fold_files_say_how_the_fold_was_trained(self):
    for fold in FOLDS:
      a, b = fold_info(self.alone, fold), fold_info(self.side, fold)
      self.assertEqual((a["parallel_folds"], b["parallel_folds"]), (1, 3))
      self.assertEqual(a["checkpoint_step"], b["checkpoint_step"])
      self.assertEqual(a["config_hash"], b["config_hash"])   # a run-only field
      ckpts = workdir_lib.checkpoint_dir(workdir_lib.fold_dir(self.side, fold))
      self.assertIn(str(MAX_STEPS), os.listdir(ckpts))
    self.assertIn("fold 2 step 5/5", self.side_log)
    self.assertEqual(self.side_traces, 1)   # one compilation for the three folds' steps
    with open(os.path.join(self.side, "results.json")) as f:
      side = json.load(f)
    with open(os.path.join(self.alone, "results.json")) as f:
      alone = json.load(f)
    self.assertEqual([r["accuracy"] for r in side["rows"]], [r["accuracy"] for r in alone["rows"]])

  def test_folds_resumed_at_different_steps_end_as_alone(self):
    steps_logged = sorted(losses(self.resumed, 1))
    self.assertEqual(steps_logged, list(range(1, MAX_STEPS + 1)))   # 1-2 alone, 3-5 in the group
    for fold in FOLDS:
      a, r = predictions(self.alone, fold), predictions(self.resumed, fold)
      np.testing.assert_array_equal(a["pred_AO"], r["pred_AO"])
      np.testing.assert_allclose(r["emb_AO"], a["emb_AO"], rtol=1e-4, atol=1e-5)
      self.assertEqual(fold_info(self.resumed, fold)["checkpoint_step"], MAX_STEPS)
    np.testing.assert_allclose([losses(self.resumed, 1)[s] for s in (3, 4, 5)],
                               [losses(self.alone, 1)[s] for s in (3, 4, 5)], rtol=1e-5)

  def test_one_device_vmaps_the_same_steps(self):
    self.assertEqual(jax.device_count(), 4)
    for fold in FOLDS:
      alone, one = losses(self.alone, fold), losses(self.one_device, fold)
      self.assertEqual(sorted(one), sorted(alone))
      np.testing.assert_allclose([one[s] for s in sorted(one)],
                                 [alone[s] for s in sorted(alone)], rtol=1e-5, err_msg=str(fold))

  def test_a_non_finite_fold_is_named(self):
    """Fold 1 of a group starts from NaN weights: the guard stops the group naming it."""
    original = fold_run.prepare

    def poisoned(config, fold_dir, test_fold, mesh, **kwargs):
      run = original(config, fold_dir, test_fold, mesh, **kwargs)
      if test_fold == 1:
        run.state = run.state.replace(params=jax.tree.map(lambda x: x * np.nan, run.state.params))
      return run

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(fold_run, "prepare", poisoned):
      with contextlib.redirect_stdout(io.StringIO()):
        with self.assertRaisesRegex(health.NonFiniteLossError,
                                    r"^Fold 1: .*No checkpoint was written"):
          train.train_and_evaluate(group_config(2), tmp)
      self.assertFalse(os.path.exists(workdir_lib.checkpoint_dir(workdir_lib.fold_dir(tmp, 1))
                                      + "/1"))

  def test_positions_of_a_folds_clips_in_every_folds_features(self):
    counts = {0: 3, 1: 2, 2: 4, 5: 1}
    got = fold_group._union_positions([1, 5], counts, [0, 1, 2, 5])
    np.testing.assert_array_equal(got, [3, 4, 9])


class ValidationFoldTest(absltest.TestCase):
  """Each fold of a group scores its own validation fold (the next one) and its result
  is the best checkpoint by it, as when trained alone."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix="avjax_group_val_")
    for name, value in (("alone", 1), ("side", 2)):
      c = group_config(value)
      c.folds = (0, 1)
      c.train.max_steps = 4
      c.train.validation_fold = "next"
      c.train.eval_every_epochs = 0     # scored at the end
      with contextlib.redirect_stdout(io.StringIO()):
        train.train_and_evaluate(c, os.path.join(cls.tmp, name))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_each_fold_selected_by_its_validation_fold(self):
    for fold in (0, 1):
      infos = [fold_info(os.path.join(self.tmp, n), fold) for n in ("alone", "side")]
      self.assertEqual([i["selected_by"] for i in infos], [f"validation_fold:{fold + 1}"] * 2)
      self.assertEqual([i["checkpoint_step"] for i in infos], [4, 4])
      scores = []
      for name in ("alone", "side"):
        path = os.path.join(workdir_lib.fold_dir(os.path.join(self.tmp, name), fold),
                            workdir_lib.METRICS)
        scores.append([r["validation_accuracy"] for r in map(json.loads, open(path))
                       if "validation_accuracy" in r])
      self.assertLen(scores[0], 1)
      self.assertEqual(scores[0], scores[1])


class ReevaluatedGroupTest(absltest.TestCase):

  def test_a_fold_evaluated_again_keeps_its_parallel_folds(self):
    # Folds trained side by side whose predictions are lost are evaluated again from their
    # last checkpoints, training nothing: they still say they were trained beside 3.
    with tempfile.TemporaryDirectory() as tmp:
      workdir = os.path.join(tmp, "side")
      with contextlib.redirect_stdout(io.StringIO()):
        train.train_and_evaluate(group_config("all"), workdir)
      for fold in (0, 1):
        path = os.path.join(workdir_lib.fold_dir(workdir, fold), workdir_lib.PREDICTIONS)
        open(path, "wb").write(b"not an npz")
      # Fold 2 as a kill between the group's training and its evaluation leaves it.
      os.remove(os.path.join(workdir_lib.fold_dir(workdir, 2), workdir_lib.FOLD_INFO))
      with contextlib.redirect_stdout(io.StringIO()) as out:
        train.train_and_evaluate(group_config("all"), workdir)
      self.assertIn("evaluating the fold again from its checkpoint", out.getvalue())
      self.assertEqual([fold_info(workdir, f)["parallel_folds"] for f in FOLDS], [3, 3, 3])
      self.assertEqual([fold_info(workdir, f)["checkpoint_step"] for f in FOLDS], [MAX_STEPS] * 3)


class MediaGroupTest(absltest.TestCase):
  """model.trunk='finetune': the folds' media on the device, each fold cropping and
  augmenting its own batches in-graph with its own draws (speed, pitch and noise on)."""

  def test_same_losses_as_alone(self):
    with tempfile.TemporaryDirectory() as tmp:
      for name, value in (("alone", 1), ("side", "all")):
        c = group_config(value)
        c.model.trunk = "finetune"
        c.folds = (0, 1)
        c.train.max_steps = 3
        c.input.speed_range = 0.1
        c.input.pitch_shift_semitones = 1.0
        c.input.audio_noise_std = 0.005      # set here: the check does not follow the default
        with contextlib.redirect_stdout(io.StringIO()):
          train.train_and_evaluate(c, os.path.join(tmp, name))
      for fold in (0, 1):
        alone, side = (losses(os.path.join(tmp, n), fold) for n in ("alone", "side"))
        self.assertEqual(sorted(side), [1, 2, 3])
        np.testing.assert_allclose([side[s] for s in (1, 2, 3)], [alone[s] for s in (1, 2, 3)],
                                   rtol=1e-5, err_msg=str(fold))
        self.assertEqual(fold_info(os.path.join(tmp, "side"), fold)["parallel_folds"], 2)


class CachedViewsGroupTest(absltest.TestCase):
  """Two cached augmented views: each fold of a group draws its own view every step."""

  def test_same_losses_as_alone(self):
    with tempfile.TemporaryDirectory() as tmp:
      for name, value in (("alone", 1), ("side", "all")):
        c = group_config(value)
        c.input.cached_views = 2
        c.folds = (0, 1)
        c.train.max_steps = 4
        with contextlib.redirect_stdout(io.StringIO()):
          train.train_and_evaluate(c, os.path.join(tmp, name))
      for fold in (0, 1):
        alone, side = (losses(os.path.join(tmp, n), fold) for n in ("alone", "side"))
        self.assertEqual(sorted(side), [1, 2, 3, 4])
        np.testing.assert_allclose([side[s] for s in sorted(side)],
                                   [alone[s] for s in sorted(alone)], rtol=1e-5, err_msg=str(fold))


class ParallelFoldsConfigTest(absltest.TestCase):

  def test_values_and_what_it_needs(self):
    for value, expected in (("3", 3), ("all", "all"), (2, 2)):
      c = config_lib.complete(group_config(value))
      config_lib.validate(c)
      self.assertEqual(c.train.parallel_folds, expected)
    for value in (0, "two", True):
      with self.assertRaisesRegex(ValueError, "train.parallel_folds"):
        config_lib.validate(config_lib.complete(group_config(value)))
    c = group_config(2)
    c.model.trunk = "finetune"
    c.input.cache_on_device = "auto"   # media stay on the host unless asked
    with self.assertRaisesRegex(ValueError, "train.parallel_folds.*cache_on_device=True"):
      config_lib.validate(config_lib.complete(c))
    c.input.cache_on_device = True
    config_lib.validate(config_lib.complete(c))
    c = group_config(2)
    c.input.cache_on_device = False
    with self.assertRaisesRegex(ValueError, "on the device"):
      config_lib.validate(config_lib.complete(c))


if __name__ == "__main__":
  absltest.main()
