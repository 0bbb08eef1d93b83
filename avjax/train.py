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
import sys
import time
from typing import Callable

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from avjax import config_lib
from avjax import device_data
from avjax import errors
from avjax import evaluate
from avjax import feature_store
from avjax import health
from avjax import fold_lock
from avjax import input_pipeline
from avjax import parallel
from avjax import report
from avjax import results
from avjax import run_spec
from avjax import steps
from avjax import train_state as train_state_lib
from avjax import workdir as workdir_lib
from avjax import writers
from avjax.data import folds as folds_lib
from avjax.data import tfds_access
from avjax.models import gating
from avjax.train_state import TrainState

_DEVICE_PREFETCH = 2       # host batches transferred ahead of the step using them
_MAX_IN_FLIGHT = 2         # steps dispatched but not finished before the loop waits


# --------------------------------------------------------------------------- fold loop


def _format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}"


def _device_prefetch(iterator, put: Callable, size: int):
  """Yields put(next(iterator)), transferring `size` batches ahead."""
  queue: collections.deque = collections.deque()
  while True:
    while len(queue) < max(1, size):
      queue.append(put(next(iterator)))
    yield queue.popleft()


def _summarise(pending: list[dict]) -> dict[str, float]:
  """Means over steps of the per-step metrics (device arrays: this waits for them)."""
  host = jax.device_get(pending)
  return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def train_fold(config, fold_dir: str, test_fold: int, mesh: Mesh | None = None
               ) -> tuple[TrainState, gating.AVModel]:
  """Trains on every fold but `test_fold`; resumes from `fold_dir` when possible.
  Returns (the final state, the model)."""
  config = config_lib.complete(config)
  spec = run_spec.of(config)
  mesh = mesh or parallel.make_mesh()
  repl, data_sharding = parallel.shardings(mesh)
  train_on, val_fold = tfds_access.split_folds(config, test_fold)
  feature_store.ensure(config, mesh)   # a cached trunk's features (nothing for 'finetune')
  batch_size = spec.batch_size
  on_device = device_data.use_device(config, train_on)
  parallel.check_padding(config.model.freeze_bn, batch_size)
  steps_per_epoch = tfds_access.steps_per_epoch(config, train_on)
  total_steps = config.train.num_epochs * steps_per_epoch
  if config.train.max_steps:
    total_steps = min(total_steps, config.train.max_steps)

  rng = jax.random.PRNGKey(config.seed)
  init_rng, data_seed = jax.random.split(jax.random.fold_in(rng, test_fold))
  del rng
  data_seed = int(jax.random.randint(data_seed, (), 0, 2**31 - 1))

  if on_device:
    train_iter = device_data.create_device_iterator(config, train_on, seed=data_seed, mesh=mesh)
    initial_data_state = train_iter.get_state()
    first = train_iter.sample_batch()  # shapes for initialisation
  else:
    train_iter = input_pipeline.create_train_iterator(config, train_on, seed=data_seed)
    initial_data_state = train_iter.get_state()
    first = next(train_iter)  # shapes for initialisation
  model = gating.create_model(config.model)
  state = train_state_lib.create_train_state(config, model, first, init_rng, repl)
  if jax.process_index() == 0:
    gating.log_parameter_overview({"params": state.params})

  # Holding the fold's lock: a save that a killed process left half-written is removed.
  manager = train_state_lib.checkpoint_manager(fold_dir, config, cleanup_tmp=True)
  start_step = 0
  restored = train_state_lib.restore_latest(manager, state, fold_dir)
  if restored is not None:
    state, data_state, _ = restored
    train_iter.set_state(data_state)
    start_step = int(jax.device_get(state.step))
    logging.info("Fold %d: resumed from step %d", test_fold, start_step)
  else:
    train_iter.set_state(initial_data_state)

  writer = writers.create_writer(fold_dir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(config.to_dict())
  batch_all_steps = spec.warmup_epochs * steps_per_epoch
  if on_device:
    step_fn = steps.make_device_train_step(config, mesh, train_iter.dataset, batch_all_steps)
    put = functools.partial(parallel.to_global_step_input, data_sharding=data_sharding,
                            replicated=repl)
  else:
    step_fn = steps.make_train_step(config, mesh, batch_all_steps)
    local_devices = jax.local_device_count()
    put = lambda b: parallel.to_global(parallel.pad_batch(b, local_devices), data_sharding)  # noqa: E731
  batches = _device_prefetch(train_iter, put, _DEVICE_PREFETCH)
  # The test fold is never scored here: only a validation fold, if there is one.
  eval_every = config.train.eval_every_epochs * steps_per_epoch if val_fold is not None else 0
  logging.info("Fold %d: training folds %s, %d steps (%d per epoch), batch %d%s; %s",
               test_fold, train_on, total_steps, steps_per_epoch, batch_size,
               ", dataset on the device" if on_device else "",
               "no model selection (train.validation_fold='none'): the last checkpoint is the "
               "result" if val_fold is None else
               f"validation fold {val_fold} scored every {eval_every} steps and at the end, "
               "the best checkpoint by it is the result")

  metric_keys = steps.metric_keys(config.model.modalities)
  initial = health.initial_distances(fold_dir)   # the collapse watch's reference distances
  warned: set = set()
  pending: list[dict] = []      # this log period's metrics, still on the device
  last_good = {"step": start_step}
  t_start, steps_done = time.time(), 0
  step = start_step
  try:
    for step in range(start_step + 1, total_steps + 1):
      state, metrics = step_fn(state, next(batches))
      pending.append({k: metrics[k] for k in metric_keys})
      if len(pending) > _MAX_IN_FLIGHT:  # bounds how far the host runs ahead
        jax.block_until_ready(pending[-1 - _MAX_IN_FLIGHT])
      steps_done += 1
      is_last = step == total_steps
      if step % config.train.log_every_steps == 0 or is_last:
        summary = _summarise(pending)
        pending = []
        health.check_finite(summary, test_fold, step, fold_dir, last_good)
        del summary["nonfinite"]
        elapsed = time.time() - t_start
        rate = steps_done / max(elapsed, 1e-9)
        summary["steps_per_sec"] = rate
        summary["epoch"] = step / steps_per_epoch
        health.watch_collapse(summary, initial, warned, test_fold, step)
        writer.write_scalars(step, summary)
        if jax.process_index() == 0:
          dist = " ".join(f"{k[len('distance_'):][0]}={v:.3g}" for k, v in summary.items()
                          if k.startswith("distance_"))
          print(f"fold {test_fold} step {step}/{total_steps} loss {summary['loss']:.4f} "
                f"active {summary['active_triplets']:.3f} distance {dist} {rate:.2f} steps/s "
                f"ETA {_format_eta((total_steps - step) / max(rate, 1e-9))}", flush=True)
      val_metrics = None
      if val_fold is not None and (is_last or (eval_every and step % eval_every == 0)):
        val_metrics = evaluate.validation_accuracy(config, state, val_fold, train_on, mesh)
        writer.write_scalars(step, val_metrics)
        if jax.process_index() == 0:
          print(f"fold {test_fold} step {step}: validation fold {val_fold} accuracy "
                f"{val_metrics['validation_accuracy']:.3f}", flush=True)
      if step % config.train.checkpoint_every_steps == 0 or is_last or val_metrics:
        if pending:  # the steps since the last log line must be finite too
          health.check_finite(_summarise(pending), test_fold, step, fold_dir, last_good)
        # The iterator runs ahead (prefetch): the state is that of `step` batches consumed.
        train_state_lib.save_checkpoint(manager, step, state, dict(train_iter.get_state(), step=step), val_metrics)
        last_good["step"] = step
  except KeyboardInterrupt:
    resume = (f"from its checkpoint of step {last_good['step']}" if last_good["step"]
              else "from the fold's start: no checkpoint was written yet")
    raise errors.Interrupted(f"interrupted at step {step} of fold {test_fold}; rerun the same "
                             f"command to resume ({resume})") from None
  finally:   # after an error or Ctrl-C too; their own errors do not hide the first one
    _close_quietly(batches.close, getattr(train_iter, "close", None), writer.flush,
                   writer.close, manager.close)
  return state, model


def _close_quietly(*closers) -> None:
  """Calls each closer; while an exception is propagating their errors are dropped."""
  failing = sys.exc_info()[0] is not None
  for close in closers:
    if close is None:
      continue
    try:
      close()
    except Exception:  # noqa: BLE001
      if not failing:
        raise


def check_at_start(config) -> None:
  """The checks that need the dataset's sizes, run before anything is written: every
  test fold has clips and training folds holding at least one batch, and `eval.k` is at
  most the number of KNN references (the training clips of every test fold)."""
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
  if write:
    print(f"Run: {spec.describe()}", flush=True)
  # Only now, with every check passed, is anything written to the workdir.
  workdir_lib.record_config(config, workdir, allow, write=write)
  mesh = parallel.make_mesh()
  feature_store.ensure(config, mesh)   # frozen / finetune_from: the encoders' fixed part, once
  held: list[tuple[int, fold_lock.FoldLocked]] = []
  worked = 0
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
    # One process per fold on a shared workdir: a fold another live process holds is
    # skipped. (Multi-host runs train every fold together and take no lock.)
    lock = fold_lock.FoldLock(fold_dir, take_over_foreign=take_over_locks)
    if jax.process_count() == 1:
      try:
        lock.acquire()
      except fold_lock.FoldLocked as e:
        print(f"fold {fold}: skipped, {e}", flush=True)
        held.append((fold, e))
        continue
      fold_lock.clean_temp(fold_dir)   # a killed process's .tmp files
    try:
      if workdir_lib.fold_is_done(fold_dir) and _unreadable_outputs(fold_dir) is None:
        continue   # finished while we waited for the lock
      t0 = time.time()
      workdir_lib.record_config(config, workdir, allow, write=write,
                                path=os.path.join(fold_dir, workdir_lib.CONFIG))
      state, model = train_fold(config, fold_dir, fold, mesh)
      # With a validation fold its best checkpoint is the result, else the last state.
      which = "latest" if tfds_access.split_folds(config, fold)[1] is None else "best"
      if which == "best":
        state, model = evaluate.restore_for_eval(config, fold_dir, fold, mesh, "best")
      evaluate.evaluate_fold(config, state, model, fold, fold_dir, mesh,
                             selected_by=evaluate.checkpoint_selection(config, fold, which))
      worked += 1
      logging.info("Fold %d done in %.1f s", fold, time.time() - t0)
    finally:
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


def _describe_held(held: list[tuple[int, "fold_lock.FoldLocked"]], take_over_locks: bool) -> str:
  folds = "; ".join(f"fold {fold} by process {e.holder.get('pid')} on host "
                    f"{e.holder.get('host')} since {e.holder.get('start')}" for fold, e in held)
  text = (f"fold(s) {[f for f, _ in held]} are held by other processes, so this run trained "
          f"and evaluated none of them ({folds}). Rerun the same command when they finish")
  if any(e.foreign for _, e in held) and not take_over_locks:
    text += ("; if a holder on another host is gone (e.g. a job requeued elsewhere), rerun "
             "with --take_over_locks")
  return text + "."
