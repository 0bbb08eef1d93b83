"""Several test folds trained side by side as one program (`train.parallel_folds`).

The paper's protocol is ten small trainings, one per test fold. Here the data of every
fold goes to the device once (a cached trunk's features, or with 'finetune' the media,
`avjax.device_data`), the folds' train states are stacked on a leading axis, and one
train step vmapped over that axis (`steps.make_group_train_step`) advances every fold of
the group: each gathers its own batch, with its own parameters, optimiser state,
sampler, augmentation or view draws and seed-derived initialisation. Each fold keeps its
own `fold_run.FoldRun` (its iterator, checkpoints, metrics.jsonl, log lines, non-finite
guard, collapse watch, validation fold), so its files are those of the same fold trained
alone, up to float reassociation in the batched products (tests/test_fold_group.py
states the tolerance).

Folds of unequal size have unequal epoch lengths, and folds resumed after a kill may
start at different steps: the loop runs until every fold has reached its own step
count, and a fold that has finished keeps its state (the step masks its update) and
draws no batch. On several devices the fold axis is sharded (`parallel.fold_mesh`): the
group is padded with masked copies of its first fold to a multiple of the devices, and
each device trains its folds' whole batches (ten folds on eight devices: sixteen slots,
two per device). One process only for now: several hosts train one fold per process.
"""

from __future__ import annotations

import jax
import numpy as np

from avjax import device_data
from avjax import errors
from avjax import fold_run
from avjax import parallel
from avjax import steps
from avjax import train_state as train_state_lib
from avjax.data import tfds_access

_MAX_IN_FLIGHT = 2         # group steps dispatched but not finished before the loop waits


def _union_positions(train_on, counts: dict[int, int], order: list[int]) -> np.ndarray:
  """The positions, in the data of the folds `order` concatenated (`device_data.load`),
  of the clips of the folds `train_on` in their own concatenation (the fold's iterator's
  indices)."""
  offsets = dict(zip(order, np.cumsum([0] + [counts[f] for f in order[:-1]])))
  return np.concatenate([np.arange(offsets[f], offsets[f] + counts[f]) for f in train_on]
                        ).astype(np.int32)


def load_all_folds(config, mesh):
  """(the data of every fold with clips on the device, those folds, their sizes)."""
  info = tfds_access.dataset_info(config)
  counts = {int(f): int(n) for f, n in info["num_clips_per_fold"].items() if n > 0}
  order = sorted(counts)
  return device_data.load(config, order, mesh), order, counts


def train_group(config, fold_dirs: dict[int, str], mesh) -> dict[int, tuple]:
  """Trains the test folds of `fold_dirs` ({fold: its directory}) side by side; each
  resumes from its own latest checkpoint. Returns {fold: (final state, model)}."""
  if jax.process_count() > 1:   # train.check_at_start says it first, naming the field
    raise errors.UsageError("folds side by side run in one process")
  dataset, order, counts = load_all_folds(config, mesh)
  labels = np.asarray(jax.device_get(dataset.arrays["label"]))
  runs, positions = [], []
  for fold, fold_dir in fold_dirs.items():
    run = fold_run.prepare(config, fold_dir, fold, mesh, dataset=dataset)
    where = _union_positions(run.train_on, counts, order)
    own = run.train_iter.labels
    if not np.array_equal(labels[where], own):
      raise RuntimeError(f"fold {fold}: the labels of every fold's data on the device do not "
                         "match the fold's own training clips (folds out of order)")
    runs.append(run)
    positions.append(where)
  # The group's slots: the folds, then masked copies of the first up to a multiple of the
  # devices (the fold axis is sharded over them; one device per slot's share).
  g = len(runs)
  slots = parallel.fold_slots(g, mesh)
  _, per_fold, fold_batch = parallel.fold_shardings(mesh)
  main_repl, _ = parallel.shardings(mesh)
  state = train_state_lib.stack_states(
      [r.state for r in runs] + [runs[0].state] * (slots - g), sharding=per_fold)
  for r in runs:   # the group's stacked copy replaces them (alone, the donating step frees it)
    r.state = None
  step_fn = steps.make_group_train_step(config, mesh, dataset)
  pad = [0] * (slots - g)
  batch_all = jax.device_put(np.asarray([r.batch_all_steps for r in runs] + pad, np.int32), per_fold)
  totals = jax.device_put(np.asarray([r.total_steps for r in runs] + pad, np.int32), per_fold)
  metric_keys = steps.metric_keys(config.model.modalities)

  def fold_state(i):   # fold i's state, replicated as a fold trained alone has it
    return jax.device_put(train_state_lib.unstack_state(state, i), main_repl)

  done = [r.start_step for r in runs]           # steps each fold has taken
  pending: list[list] = [[] for _ in runs]      # per fold: its log period's group metrics
  in_flight: list = []
  last = [None] * g                             # each fold's last inputs (a finished fold's filler)
  step = 0
  try:
    while any(d < r.total_steps for d, r in zip(done, runs)):
      step += 1
      active = [d < r.total_steps for d, r in zip(done, runs)]
      for i, run in enumerate(runs):
        if active[i] or last[i] is None:
          inputs = dict(next(run.train_iter) if active[i] else run.train_iter.inputs(0))
          inputs["index"] = positions[i][np.asarray(inputs["index"])]   # into every fold's data
          last[i] = inputs
      rows = last + [last[0]] * (slots - g)
      group_inputs = {k: jax.device_put(np.stack([np.asarray(r[k]) for r in rows]),
                                        fold_batch if k == "index" else per_fold)
                      for k in last[0]}
      state, metrics = step_fn(state, group_inputs, batch_all, totals)
      metrics = {k: metrics[k] for k in metric_keys}
      in_flight.append(metrics)
      if len(in_flight) > _MAX_IN_FLIGHT:   # bounds how far the host runs ahead
        jax.block_until_ready(in_flight.pop(0))
      for i, run in enumerate(runs):
        if not active[i]:
          continue
        done[i] += 1
        run.steps_done += 1
        pending[i].append(metrics)
        s = done[i]
        if run.log_due(s):
          run.log(s, fold_run.summarise(pending[i], i))
          pending[i] = []
        due_val = run.validation_due(s)
        if due_val or run.checkpoint_due(s, None):
          if pending[i]:   # the steps since the last log line must be finite first
            run.check_finite(fold_run.summarise(pending[i], i), s)
          mine = fold_state(i)
          val_metrics = run.validate(mine, s, mesh) if due_val else None
          run.save(s, mine, val_metrics)
  except KeyboardInterrupt:
    raise errors.Interrupted(fold_run.interrupted_message(step, runs)) from None
  finally:   # after an error or Ctrl-C too; their own errors do not hide the first one
    fold_run.close_quietly(*(c for r in runs for c in r.closers()))
  return {r.test_fold: (fold_state(i), r.model) for i, r in enumerate(runs)}
