"""The whole job on the synthetic set: resume, NaN handling, cross-validation outputs.

Uses the shared synthetic set and the shared tiny two-fold workdir of
`tests.helpers` (built once per test process) and trains a tiny model for a few
steps per case; every train_fold reuses one compilation of the step.
"""

import contextlib
import functools
import io
import json
import os
import pathlib
import shutil
import tempfile
from unittest import mock

import jax
import numpy as np
from absl.testing import absltest

from avjax import config_lib
from avjax import errors
from avjax import health
from avjax import fold_lock
from avjax import input_pipeline
from avjax import parallel
from avjax import protocol
from avjax import steps
from avjax.data import tfds_access
from tests import helpers
from avjax import evaluate
from avjax import train
from avjax import train_state
from avjax import workdir as workdir_lib
from avjax.models import gating
from tests.helpers import tiny_synthetic_config


@functools.cache
def straight_run():
  """(fold_dir, final state) of 4 uninterrupted steps (checkpoints at 2 and 4); read-only."""
  fold_dir = tempfile.mkdtemp()
  state, _ = train.train_fold(tiny_synthetic_config(max_steps=4), fold_dir, test_fold=0)
  return fold_dir, state


class ResumeAndNanTest(absltest.TestCase):

  def test_interrupted_run_resumes_to_the_same_parameters(self):
    resumed = tempfile.mkdtemp()
    traces = steps.TRACES["train_step"]
    _, state_a = straight_run()
    # "Interrupted" after 2 steps (a checkpoint is written at step 2), then resumed.
    train.train_fold(tiny_synthetic_config(max_steps=2), resumed, test_fold=0)
    state_b, _ = train.train_fold(tiny_synthetic_config(max_steps=4), resumed, test_fold=0)
    self.assertEqual(int(state_a.step), 4)
    self.assertEqual(int(state_b.step), 4)
    # Three train_fold runs of one config compiled the step at most once.
    self.assertLessEqual(steps.TRACES["train_step"] - traces, 1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 jax.device_get(state_a.params), jax.device_get(state_b.params))
    # And the resumed run did not start over: its metrics log holds steps 1-2 then 3-4.
    logged = [json.loads(line)["step"] for line in open(os.path.join(resumed, "metrics.jsonl"))]
    self.assertEqual(logged, [1, 2, 3, 4])

  def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(self):
    config = tiny_synthetic_config(max_steps=4)                  # checkpoints at steps 2 and 4
    straight, state_a = straight_run()

    def truncate_a_tensor_file(step_dir):
      chunks = sorted(p for p in pathlib.Path(step_dir, "state").rglob("*")
                      if p.is_file() and p.parent.name == "d")
      biggest = max(chunks, key=lambda p: p.stat().st_size)
      biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])

    def empty_the_metadata(step_dir):
      pathlib.Path(step_dir, "data", "metadata").write_text("")

    def empty_the_folder(step_dir):
      shutil.rmtree(step_dir)
      os.makedirs(step_dir)

    # Each corruption: reported, moved aside, the previous step restored (checked on the
    # restore itself, which is cheap); then one full resume trains on from it.
    config = config_lib.complete(config)
    repl, _ = parallel.shardings(parallel.make_mesh())
    model = gating.create_model(config.model)
    abstract = train_state.abstract_train_state(config, model, evaluate.sample_batch(config), repl)
    for corrupt in (truncate_a_tensor_file, empty_the_folder):
      fold_dir = os.path.join(tempfile.mkdtemp(), "fold_0")
      shutil.copytree(straight, fold_dir)
      corrupt(os.path.join(fold_dir, "checkpoints", "4"))
      manager = train_state.checkpoint_manager(fold_dir, config)
      try:
        with contextlib.redirect_stdout(io.StringIO()) as out:
          _, data_state, step = train_state.restore_latest(manager, abstract, fold_dir)
      finally:
        manager.close()
      self.assertEqual((step, data_state["step"]), (2, 2), corrupt.__name__)
      self.assertIn(f"checkpoint step 4 ({fold_dir}/checkpoints/4)", out.getvalue())
      self.assertTrue(os.path.isdir(os.path.join(fold_dir, "checkpoints.bad", "4")))
    fold_dir = os.path.join(tempfile.mkdtemp(), "fold_0")
    shutil.copytree(straight, fold_dir)
    empty_the_metadata(os.path.join(fold_dir, "checkpoints", "4"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      state_b, _ = train.train_fold(config, fold_dir, test_fold=0)     # resumes from step 2
    self.assertIn("checkpoint step 4", out.getvalue())
    self.assertIn("resuming from step 2", out.getvalue())
    self.assertEqual(int(state_b.step), 4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 jax.device_get(state_a.params), jax.device_get(state_b.params))
    # Every step corrupt: an error naming the checkpoints, never a silent restart.
    fold_dir = os.path.join(tempfile.mkdtemp(), "fold_0")
    shutil.copytree(straight, fold_dir)
    for step in ("2", "4"):
      empty_the_metadata(os.path.join(fold_dir, "checkpoints", step))
    with contextlib.redirect_stdout(io.StringIO()), \
         self.assertRaisesRegex(train_state.CheckpointRestoreError, r"steps \[4, 2\]"):
      train.train_fold(config, fold_dir, test_fold=0)
    # ... and nothing moved: a failure common to every step (here, as from changed shapes
    # or memory) must not leave the next run an empty folder to start from scratch in.
    self.assertEqual(sorted(os.listdir(os.path.join(fold_dir, "checkpoints"))), ["2", "4"])
    self.assertFalse(os.path.exists(os.path.join(fold_dir, "checkpoints.bad")))
    with contextlib.redirect_stdout(io.StringIO()), \
         self.assertRaises(train_state.CheckpointRestoreError):
      train.train_fold(config, fold_dir, test_fold=0)

  def test_nan_loss_stops_and_keeps_last_good_checkpoint(self):
    workdir = tempfile.mkdtemp()
    original = input_pipeline.create_train_iterator

    class PoisonAfter:
      def __init__(self, inner, good_steps):
        self.inner, self.count, self.good = inner, 0, good_steps
      def __next__(self):
        batch = next(self.inner)
        self.count += 1
        if self.count > self.good + 1:  # +1: the first batch only initialises the model
          batch = dict(batch, audio=np.full_like(batch["audio"], np.nan))
        return batch
      def get_state(self):
        return self.inner.get_state()
      def set_state(self, state):
        self.inner.set_state(state)

    config = tiny_synthetic_config(max_steps=6, checkpoint_every_steps=1)
    try:
      input_pipeline.create_train_iterator = lambda *a, **k: PoisonAfter(original(*a, **k), 2)
      with self.assertRaisesRegex(health.NonFiniteLossError, r"last good checkpoint \(step 2\)"):
        train.train_fold(config, workdir, test_fold=0)
      # Non-finite from the first step: there is no checkpoint to speak of.
      input_pipeline.create_train_iterator = lambda *a, **k: PoisonAfter(original(*a, **k), 0)
      with self.assertRaisesRegex(health.NonFiniteLossError, "No checkpoint was written"):
        train.train_fold(config, tempfile.mkdtemp(), test_fold=0)
    finally:
      input_pipeline.create_train_iterator = original
    manager = train_state.checkpoint_manager(workdir, config)
    self.assertEqual(manager.latest_step(), 2)


class _Recording:
  """A training iterator that records the actors of every batch it yields."""

  def __init__(self, inner, actors):
    self._inner, self._actors = inner, actors

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._inner)
    self._actors.extend(np.asarray(batch["actor"]).tolist())
    return batch

  def __getattr__(self, name):
    return getattr(self._inner, name)


@contextlib.contextmanager
def recording():
  """Records the fold lists `evaluate.embed` is called with and the actors of the
  training batches."""
  embedded, actors = [], []
  embed, create = evaluate.embed, input_pipeline.create_train_iterator

  def spy_embed(config, state, folds, mesh):
    embedded.append(list(folds))
    return embed(config, state, folds, mesh)

  def spy_create(*args, **kwargs):
    return _Recording(create(*args, **kwargs), actors)

  with mock.patch.object(evaluate, "embed", spy_embed), \
       mock.patch.object(input_pipeline, "create_train_iterator", spy_create):
    yield embedded, actors


class ModelSelectionTest(absltest.TestCase):
  """The test fold is never scored during training; a validation fold is left out
  of training, scored, and picks the checkpoint."""

  def test_without_validation_fold_the_test_fold_is_never_scored(self):
    config = tiny_synthetic_config(max_steps=3, eval_every_epochs=1)   # validation_fold 'none'
    with recording() as (embedded, _):
      train.train_fold(config, tempfile.mkdtemp(), test_fold=0)
    self.assertEqual(embedded, [])     # no KNN scoring at all, so not of the test fold

  def test_next_fold_is_left_out_scored_and_selects_the_checkpoint(self):
    from avjax.data import synthetic
    config = tiny_synthetic_config(max_steps=3, eval_every_epochs=0, checkpoint_every_steps=1)
    config.train.validation_fold = "next"
    config.folds = (0,)
    config.eval.figures = False
    workdir = tempfile.mkdtemp()
    with recording() as (embedded, actors), contextlib.redirect_stdout(io.StringIO()):
      train.train_and_evaluate(config, workdir)
    folds_of = synthetic.actor_folds()
    self.assertTrue(actors)
    self.assertEqual({folds_of[a] for a in actors} & {0, 1}, set())   # neither test nor validation
    training = [2, 3, 4, 5, 6, 7, 8, 9]
    # During training: the validation fold 1 against the training folds (at the last
    # step); then the test evaluation: the test fold against the same references.
    self.assertEqual(embedded, [training, [1], training, [0]])
    info = json.load(open(os.path.join(workdir, "fold_0", workdir_lib.FOLD_INFO)))
    self.assertEqual(info["selected_by"], "validation_fold:1")
    fold_dir = os.path.join(workdir, "fold_0")
    manager = train_state.checkpoint_manager(fold_dir, config)
    try:
      metrics = manager.metrics(3)
      self.assertEqual(metrics["validation_fold"], 1)
      self.assertEqual(info["checkpoint_step"], train_state.best_step(manager))
    finally:
      manager.close()
    self.assertEqual(info["num_train_clips"], 8 * len(training))
    results_md = open(os.path.join(workdir, workdir_lib.RESULTS_MD)).read()
    self.assertIn("best by validation fold 1", results_md)
    # Re-evaluation and inference default to the checkpoint the run reported, so neither
    # turns a validation-selected result into the last checkpoint's.
    self.assertEqual(train_state.result_checkpoint(config, 0), "best")
    write_npz, info_path = workdir_lib.write_npz, os.path.join(fold_dir, workdir_lib.FOLD_INFO)

    def write_while_undone(path, arrays):    # the former fold_info.json is gone meanwhile
      self.assertFalse(os.path.exists(info_path), path)
      write_npz(path, arrays)
    with contextlib.redirect_stdout(io.StringIO()), \
         mock.patch.object(workdir_lib, "write_npz", write_while_undone):
      evaluate.reevaluate(workdir)
    again = json.load(open(os.path.join(fold_dir, workdir_lib.FOLD_INFO)))
    self.assertEqual((again["selected_by"], again["checkpoint_step"]),
                     (info["selected_by"], info["checkpoint_step"]))
    from avjax import predictor as predictor_lib
    predictor = predictor_lib.Predictor(workdir)
    self.assertEqual((predictor.checkpoint, predictor.step), ("best", info["checkpoint_step"]))
    # Not while another process holds the fold; not a fold whose training has not ended
    # (evaluating marks it done, and avjax.main would never finish it).
    from avjax import errors
    from avjax import fold_lock
    with fold_lock.FoldLock(fold_dir), \
         self.assertRaisesRegex(errors.Failure, "fold 0 is in use by another process"):
      evaluate.reevaluate(workdir)
    shutil.rmtree(os.path.join(workdir_lib.checkpoint_dir(fold_dir), "3"))
    with self.assertRaisesRegex(errors.UsageError, r"fold 0: its training stopped at step 2 of 3"):
      evaluate.reevaluate(workdir)
    self.assertEqual(json.load(open(info_path)), again)        # nothing rewritten
    config.train.validation_fold = "none"
    self.assertEqual(train_state.result_checkpoint(config, 0), "latest")


class FoldLockTest(absltest.TestCase):

  def test_a_fold_held_by_another_process_is_skipped(self):
    config = tiny_synthetic_config(max_steps=2)
    config.folds = (2,)
    workdir = tempfile.mkdtemp()
    fold_dir = os.path.join(workdir, "fold_2")
    with fold_lock.FoldLock(fold_dir), contextlib.redirect_stdout(io.StringIO()) as out, \
         self.assertRaisesRegex(errors.FoldsHeld, rf"fold\(s\) \[2\] are held .*fold 2 by "
                                rf"process {os.getpid()} on host"):
      train.train_and_evaluate(config, workdir)    # as a second process would: nothing to do
    self.assertIn("fold 2: skipped", out.getvalue())
    self.assertEqual(sorted(os.listdir(fold_dir)), [])         # untouched (lock released)

  def test_a_crop_larger_than_the_frames_is_refused_before_writing(self):
    config = tiny_synthetic_config(max_steps=1)
    config.input.crop_size = 64                       # the synthetic frames are 40 x 40
    workdir = os.path.join(tempfile.mkdtemp(), "w")
    with self.assertRaisesRegex(ValueError, "crop_size = 64 is larger than the stored frames"):
      train.train_and_evaluate(config, workdir)
    self.assertFalse(os.path.exists(workdir))

  def test_a_workdir_that_is_a_file_is_refused_before_anything(self):
    path = os.path.join(tempfile.mkdtemp(), "file")
    with open(path, "w") as f:
      f.write("not a workdir")
    with self.assertRaisesRegex(NotADirectoryError, "is a file"):
      train.train_and_evaluate(tiny_synthetic_config(max_steps=1), path)


class CrossValidationTest(absltest.TestCase):

  def test_two_folds_give_results_and_figures(self):
    workdir = helpers.tiny_workdir()          # train_and_evaluate, folds 0 and 1, 2 steps each
    config = tiny_synthetic_config(max_steps=2)
    config.folds = (0, 1)
    self.assertTrue(os.path.isfile(os.path.join(workdir, workdir_lib.RESULTS_JSON)))
    self.assertTrue(os.path.isfile(os.path.join(workdir, workdir_lib.RESULTS_MD)))
    figures = sorted(pathlib.Path(workdir, workdir_lib.FIGURES).glob("*.png"))
    self.assertLen(figures, 4, figures)
    for p in figures:
      self.assertEqual(p.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
    doc = json.load(open(os.path.join(workdir, workdir_lib.RESULTS_JSON)))
    self.assertEqual([(f["selected_by"], f["checkpoint_step"]) for f in doc["folds"]],
                     [("last", 2), ("last", 2)])
    self.assertIn("the last checkpoint of each fold, no model selection",
                  open(os.path.join(workdir, workdir_lib.RESULTS_MD)).read())
    with self.assertRaisesRegex(train_state.CheckpointNotFound, "no validation fold"):
      evaluate.restore_for_eval(workdir_lib.load_config(workdir),
                                os.path.join(workdir, "fold_0"), 0, parallel.make_mesh(), "best")
    for fold in (0, 1):
      with np.load(os.path.join(workdir, f"fold_{fold}", "predictions.npz")) as preds:
        clip_ids = tfds_access.clip_ids(config, [fold])
        self.assertEqual(list(preds["clip_id"]), clip_ids)          # exactly the fold's clips
        self.assertEqual(preds["pred_AV"].shape, (4, len(clip_ids)))  # T gates x clips
        rows = [r for r in doc["rows"] if r["fold"] == fold and r["modality"] == "AV"]
        self.assertEqual({r["n"] for r in rows}, {len(clip_ids)})
        acc = np.mean(preds["pred_AV"][-1] == preds["labels"])
        last = max(rows, key=lambda r: r["gate"])
        self.assertAlmostEqual(last["accuracy"], acc, places=6)
    # `python -m avjax.evaluate` restores the last checkpoint and reproduces the predictions.
    with np.load(os.path.join(workdir, "fold_1", "predictions.npz")) as saved:
      saved = {k: saved[k] for k in saved.files}
    saved_config = workdir_lib.load_config(workdir)
    mesh = parallel.make_mesh()
    state, model = evaluate.restore_for_eval(saved_config, os.path.join(workdir, "fold_1"), 1, mesh)
    traces = steps.TRACES["eval_forward"]
    again = evaluate.evaluate_fold(saved_config, state, model, 1, tempfile.mkdtemp(), mesh)
    # Two folds' evaluations (references and queries, one batch shape) compile the
    # forward at most once (none when this process trained the workdir: the restored
    # state's optimiser, model and step types equal the trained one's).
    evaluate.evaluate_fold(saved_config, state, model, 0, tempfile.mkdtemp(), mesh)
    self.assertLessEqual(steps.TRACES["eval_forward"] - traces, 1)
    for key in ("pred_AO", "pred_VO", "pred_AV", "labels"):
      np.testing.assert_array_equal(again[key], saved[key], err_msg=key)
    np.testing.assert_allclose(again["emb_AV"], saved["emb_AV"], rtol=1e-5, atol=1e-6)
    # An eval batch that does not divide the 4 devices is padded and masked: same result.
    self.assertEqual(mesh.devices.size, 4)
    saved_config.input.eval_batch_size = 7
    odd = evaluate.evaluate_fold(saved_config, state, model, 1, tempfile.mkdtemp(), mesh)
    for key in ("pred_AO", "pred_VO", "pred_AV", "labels"):
      np.testing.assert_array_equal(odd[key], saved[key], err_msg=key)
    np.testing.assert_allclose(odd["emb_AV"], saved["emb_AV"], rtol=1e-5, atol=1e-6)
    # Finished folds are skipped when the same command runs again.
    self.assertTrue(workdir_lib.fold_is_done(os.path.join(workdir, "fold_0")))
    mtime = os.path.getmtime(os.path.join(workdir, "fold_0", "predictions.npz"))
    config.eval.figures = False
    outputs = train.train_and_evaluate(config, workdir)
    self.assertTrue(os.path.isfile(outputs["results_json"]))
    self.assertEqual(mtime, os.path.getmtime(os.path.join(workdir, "fold_0", "predictions.npz")))
    # Each fold recorded the config it was trained with, and its hash.
    info = json.load(open(os.path.join(workdir, "fold_0", workdir_lib.FOLD_INFO)))
    self.assertEqual(info["config_hash"], protocol.config_hash(saved_config))
    self.assertEqual(workdir_lib.load_fold_config(workdir, 0).model.variant, "gating")
    # A rerun under another variant stops before touching anything.
    copy = os.path.join(tempfile.mkdtemp(), "w")
    shutil.copytree(workdir, copy)
    before = {p: os.path.getmtime(p) for p in pathlib.Path(copy).rglob("*")}
    config.model.variant = "lstm"
    with self.assertRaisesRegex(workdir_lib.ConfigMismatchError, "model.variant"):
      train.train_and_evaluate(config, copy)
    self.assertEqual(before, {p: os.path.getmtime(p) for p in pathlib.Path(copy).rglob("*")})


if __name__ == "__main__":
  absltest.main()
