"""Training: the fold loop and the whole job.

`train_and_evaluate(config, workdir)` runs every test fold of `config.folds`:
the model is trained on the other folds into `workdir/fold_{k}/` (checkpoints,
metrics.jsonl, TensorBoard events; `avjax.workdir` names every file), then
evaluated per gate with KNN (`avjax.evaluate`), and the folds run so far are
aggregated into `workdir/results.json`, `results.md` and the figures. A fold
whose evaluation is on disk is skipped; an interrupted fold resumes from its
latest checkpoint, data iterator included.

Where the pieces live: the train state, optimiser and checkpoints in
`avjax.train_state`; the jitted steps in `avjax.steps` (built once per process,
so every fold reuses one compilation); the mesh, shardings and batch padding in
`avjax.parallel`. Batches are global arrays sharded on a `data` axis over all
devices and the state is replicated, so the miner mines across the whole global
batch and every mean is global with no explicit collective.

Input: with `config.input.cache_on_device` the training folds live in
accelerator memory and the step gathers and crops in-graph
(`avjax.device_data`); otherwise host batches from `avjax.input_pipeline` are
transferred `_DEVICE_PREFETCH` steps ahead of the step that uses them. Either
way the audio is augmented inside the step (`avjax.augment`). The loop never
waits for a step's results before dispatching the next: the metrics stay on the
device until the next log line (at most `_MAX_IN_FLIGHT` steps run ahead),
where they are averaged and checked for non-finite values; a checkpoint is only
written after the steps before it are checked.

Precision: parameters, optimiser state, encoder outputs, the LSTMs and the
loss are float32 whatever `config.model.dtype` (bfloat16 runs the encoders'
convolutions in bf16); `config.model.remat` rematerialises I3D blocks.
"""

from __future__ import annotations

import collections
import functools
import os
import time
from typing import Callable

import jax
import ml_collections
from absl import logging
from jax.sharding import Mesh

from avjax import config_lib
from avjax import errors
from avjax import evaluate
from avjax import feature_store
from avjax import fold_group
from avjax import fold_lock
from avjax import fold_run
from avjax import input_pipeline
from avjax import losses
from avjax import parallel
from avjax import report
from avjax import results
from avjax import run_spec
from avjax import steps
from avjax import train_state as train_state_lib
from avjax import workdir as workdir_lib
from avjax.data import folds as folds_lib
from avjax.data import tfds_access
from avjax.models import gating
from avjax.train_state import TrainState

_DEVICE_PREFETCH = 2       # host batches transferred ahead of the step using them
_MAX_IN_FLIGHT = 2         # steps dispatched but not finished before the loop waits


# --------------------------------------------------------------------------- fold loop


def _device_prefetch(iterator, put: Callable, size: int):
  """Yields put(next(iterator)), transferring `size` batches ahead."""
  queue: collections.deque = collections.deque()
  while True:
    while len(queue) < max(1, size):
      queue.append(put(next(iterator)))
    yield queue.popleft()


def _steps_left(config, fold_dir: str, test_fold: int) -> bool:
  """Whether the fold has steps to train (False: its last checkpoint is its last step)."""
  try:
    step = train_state_lib.saved_step(fold_dir, config, "latest")
  except train_state_lib.CheckpointNotFound:
    return True
  return step < tfds_access.total_steps(config, tfds_access.split_folds(config, test_fold)[0])


def _parallel_folds_of(fold_dir: str, fold: int, training: list[int], group: int) -> int | None:
  """fold_info's `parallel_folds` for a fold of a group of `group` of which `training`
  trained now: their number, else None (the recorded value stays), or the group's size
  when nothing is recorded (a kill between the group's training and this evaluation)."""
  if fold in training:
    return len(training)
  return None if os.path.isfile(os.path.join(fold_dir, workdir_lib.FOLD_INFO)) else group


def train_fold(config, fold_dir: str, test_fold: int, mesh: Mesh | None = None
               ) -> tuple[TrainState, gating.AVModel]:
  """Trains on every fold but `test_fold`; resumes from `fold_dir` when possible.
  Returns (the final state, the model)."""
  config = config_lib.complete(config)
  mesh = mesh or parallel.make_mesh()
  repl, data_sharding = parallel.shardings(mesh)
  feature_store.ensure(config, mesh)   # a cached trunk's features (nothing for 'finetune')
  run = fold_run.prepare(config, fold_dir, test_fold, mesh)
  state, train_iter = run.state, run.train_iter
  if run.on_device:
    step_fn = steps.make_device_train_step(config, mesh, train_iter.dataset, run.batch_all_steps)
    put = functools.partial(parallel.to_global_step_input, data_sharding=data_sharding,
                            replicated=repl)
  else:
    step_fn = steps.make_train_step(config, mesh, run.batch_all_steps)
    local_devices = jax.local_device_count()
    put = lambda b: parallel.to_global(parallel.pad_batch(b, local_devices), data_sharding)  # noqa: E731
  batches = _device_prefetch(train_iter, put, _DEVICE_PREFETCH)

  metric_keys = steps.metric_keys(config.model.modalities)
  pending: list[dict] = []      # this log period's metrics, still on the device
  step = run.start_step
  try:
    for step in range(run.start_step + 1, run.total_steps + 1):
      state, metrics = step_fn(state, next(batches))
      pending.append({k: metrics[k] for k in metric_keys})
      if len(pending) > _MAX_IN_FLIGHT:  # bounds how far the host runs ahead
        jax.block_until_ready(pending[-1 - _MAX_IN_FLIGHT])
      run.steps_done += 1
      if run.log_due(step):
        run.log(step, fold_run.summarise(pending))
        pending = []
      due_val = run.validation_due(step)
      if pending and (due_val or run.checkpoint_due(step, None)):
        # The steps since the last log line must be finite before scoring or saving.
        run.check_finite(fold_run.summarise(pending), step)
      val_metrics = run.validate(state, step, mesh) if due_val else None
      if run.checkpoint_due(step, val_metrics):
        run.save(step, state, val_metrics)
  except KeyboardInterrupt:
    raise errors.Interrupted(fold_run.interrupted_message(step, [run])) from None
  finally:   # after an error or Ctrl-C too; their own errors do not hide the first one
    fold_run.close_quietly(batches.close, *run.closers())
  return state, run.model


def check_at_start(config) -> None:
  """The checks that need the dataset's sizes, run before anything is written: every
  test fold has clips and training folds holding at least one batch, and `eval.k` is at
  most the number of KNN references (the training clips of every test fold); folds side
  by side run in one process."""
  if config.train.parallel_folds != 1 and jax.process_count() > 1:
    raise errors.UsageError(
        f"config.train.parallel_folds={config.train.parallel_folds!r} trains folds side by side "
        f"in one process, and this run has {jax.process_count()}: set it to 1, or run one "
        "process per host with every device of the host (a fold axis over them)")
  smallest = None
  for fold in config.folds:
    train_on, _ = tfds_access.split_folds(config, fold)
    tfds_access.steps_per_epoch(config, train_on)   # at least one batch
    n = tfds_access.num_clips(tfds_access.get_builder(config), train_on)
    if smallest is None or n < smallest[0]:
      smallest = (n, fold)
  if smallest is not None and config.eval.k > smallest[0]:
    raise errors.UsageError(
        f"config.eval.k: {config.eval.k} is more than the {smallest[0]} training clips of "
        f"test fold {smallest[1]}, the KNN references; use at most {smallest[0]}")


def _unreadable_outputs(fold_dir: str) -> str | None:
  """Why a fold marked done cannot be read back (its evaluation files), or None."""
  try:
    results.check_fold_outputs(fold_dir)
  except errors.CorruptFileError as e:
    return f"{os.path.basename(e.path)} cannot be read ({e.reason})"
  return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       config_mismatch: str = "error", take_over_locks: bool = False) -> dict:
  """Trains and evaluates every fold of `config.folds`; aggregates the results.

  The first run records its config in `workdir/config.json`; a later run whose config
  differs in a field that changes the model, data or protocol stops before touching
  anything (`workdir.record_config`) unless `config_mismatch='ok'`. Each fold records
  the config it was trained with (`fold_k/config.json`; its hash in fold_info.json).

  A fold held by another process is skipped (`take_over_locks`: also take the locks of
  other hosts' processes); when every fold left to do is held, nothing is done and
  errors.FoldsHeld lists them. A finished fold whose evaluation files do not read back
  is evaluated again from its checkpoint."""
  if config_mismatch not in ("error", "ok"):
    raise ValueError(f"config_mismatch must be 'error' or 'ok', got {config_mismatch!r}")
  allow = config_mismatch == "ok"
  config = config_lib.complete(config)
  config_lib.validate(config)
  spec = run_spec.of(config)   # the derived facts, resolved once (avjax.run_spec)
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise NotADirectoryError(f"--workdir {workdir} is a file, not a directory")
  write = jax.process_index() == 0
  workdir_lib.record_config(config, workdir, allow, write=False)   # checks before writing
  for fold in config.folds:
    fold_config = os.path.join(workdir_lib.fold_dir(workdir, fold), workdir_lib.CONFIG)
    workdir_lib.record_config(config, workdir, allow, path=fold_config, write=False)
  builder = tfds_access.get_builder(config)  # builds the dataset first when allowed and missing
  if tfds_access.reads_video(config, builder):
    input_pipeline.check_crop(config, tfds_access.dataset_info(config)["frame_size"])
  check_at_start(config)
  logging.info("Run: %s", spec.describe())
  notice = losses.mwtsm_notice(config.model.variant, spec.window.num_windows,
                               config.loss.exclude_used)
  if write:
    print(f"Run: {spec.describe()}", flush=True)
    if notice:
      print(notice, flush=True)
  # Only now, with every check passed, is anything written to the workdir.
  workdir_lib.record_config(config, workdir, allow, write=write)
  mesh = parallel.make_mesh()
  feature_store.ensure(config, mesh)   # frozen / finetune_from: the encoders' fixed part, once
  held: list[tuple[int, fold_lock.FoldLocked]] = []
  worked = 0
  todo = []
  for fold in config.folds:
    fold_dir = workdir_lib.fold_dir(workdir, fold)
    if workdir_lib.fold_is_done(fold_dir):
      problem = _unreadable_outputs(fold_dir)
      if problem is None:
        logging.info("Fold %d already evaluated in %s: skipping", fold, fold_dir)
        continue
      if write:
        print(f"fold {fold}: {problem}: evaluating the fold again from its checkpoint",
              flush=True)
    todo.append(fold)
  # train.parallel_folds: groups of folds trained side by side (avjax.fold_group).
  size = len(todo) if config.train.parallel_folds == "all" else int(config.train.parallel_folds)
  size = max(size, 1)
  for first in range(0, len(todo), size):
    members = _lock_folds(todo[first:first + size], workdir, take_over_locks, held)
    try:
      t0 = time.time()
      for fold, fold_dir, _ in members:
        workdir_lib.record_config(config, workdir, allow, write=write,
                                  path=os.path.join(fold_dir, workdir_lib.CONFIG))
      # Folds re-evaluated without a step to train keep their recorded `parallel_folds`.
      training = [f for f, d, _ in members if _steps_left(config, d, f)]
      if len(members) > 1:
        trained = fold_group.train_group(config, {f: d for f, d, _ in members}, mesh)
      else:
        trained = {f: train_fold(config, d, f, mesh) for f, d, _ in members}
      for fold, fold_dir, _ in members:
        state, model = trained.pop(fold)
        # With a validation fold its best checkpoint is the result, else the last state.
        which = train_state_lib.result_checkpoint(config, fold)
        if which == "best":
          state, model = evaluate.restore_for_eval(config, fold_dir, fold, mesh, "best")
        evaluate.evaluate_fold(config, state, model, fold, fold_dir, mesh,
                               selected_by=evaluate.checkpoint_selection(config, fold, which),
                               parallel_folds=_parallel_folds_of(fold_dir, fold, training,
                                                              len(members)))
        worked += 1
      if members:
        logging.info("Fold(s) %s done in %.1f s", [f for f, _, _ in members], time.time() - t0)
    finally:
      for _, _, lock in members:
        lock.release()
  if held and not worked:
    raise errors.FoldsHeld(_describe_held(held, take_over_locks))
  if jax.process_index() != 0:
    return {}
  if not any(workdir_lib.fold_is_done(workdir_lib.fold_dir(workdir, f))
             for f in range(folds_lib.NUM_FOLDS)):
    print(f"No fold of {workdir} is finished yet: no results to write.", flush=True)
    return {}
  json_path, md_path = report.write_results(workdir)
  outputs = {"results_json": json_path, "results_md": md_path}
  if config.eval.figures:
    from avjax import figures  # matplotlib only when figures are wanted
    outputs["figures"] = figures.make_all(workdir, groups=config_lib.fig5_groups(config))
  print("\nResults:")
  for key, value in outputs.items():
    print(f"  {key}: {value}")
  with open(md_path) as f:
    print("\n" + f.read())
  if held:
    print(f"Not included yet: {_describe_held(held, take_over_locks)}", flush=True)
  return outputs


def _lock_folds(folds, workdir: str, take_over_locks: bool, held: list) -> list[tuple]:
  """[(fold, its directory, its lock)] for the folds of `folds` this process now holds and
  that are still to do; a fold another live process holds is skipped (and added to
  `held`). One process per fold on a shared workdir; multi-host runs train every fold
  together and take no lock."""
  members = []
  for fold in folds:
    fold_dir = workdir_lib.fold_dir(workdir, fold)
    lock = fold_lock.FoldLock(fold_dir, take_over_foreign=take_over_locks)
    if jax.process_count() == 1:
      try:
        lock.acquire()
      except fold_lock.FoldLocked as e:
        print(f"fold {fold}: skipped, {e}", flush=True)
        held.append((fold, e))
        continue
      fold_lock.clean_temp(fold_dir)   # a killed process's .tmp files
    if workdir_lib.fold_is_done(fold_dir) and _unreadable_outputs(fold_dir) is None:
      lock.release()   # finished while we waited for the lock
      continue
    members.append((fold, fold_dir, lock))
  return members


def _describe_held(held: list[tuple[int, "fold_lock.FoldLocked"]], take_over_locks: bool) -> str:
  folds = "; ".join(f"fold {fold} by process {e.holder.get('pid')} on host "
                    f"{e.holder.get('host')} since {e.holder.get('start')}" for fold, e in held)
  text = (f"fold(s) {[f for f, _ in held]} are held by other processes, so this run trained "
          f"and evaluated none of them ({folds}). Rerun the same command when they finish")
  if any(e.foreign for _, e in held) and not take_over_locks:
    text += ("; if a holder on another host is gone (e.g. a job requeued elsewhere), rerun "
             "with --take_over_locks")
  return text + "."
