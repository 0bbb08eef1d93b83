"""One test fold's training run: its setup and its bookkeeping after each step.

`prepare` resolves a fold's training folds, validation fold, steps and warm-up, builds
its data iterator (host pipeline or device-resident), its initial state (each fold's
own seed-derived initialisation) or the one restored from its latest checkpoint, its
checkpoint manager and its metric writer. After each step the loop asks the run what
is due: a log line (`log`: the means since the last one, the non-finite guard naming the
fold, the collapse watch), the validation fold's score (`validate`) and a checkpoint
(`save`). `train.train_fold` drives one run; `fold_group.train_group` drives several side
by side, so that a fold's files are the same whichever way it was trained.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from avjax import device_data
from avjax import evaluate
from avjax import health
from avjax import input_pipeline
from avjax import parallel
from avjax import run_spec
from avjax import train_state as train_state_lib
from avjax import writers
from avjax.data import tfds_access
from avjax.models import gating


def format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}"


def summarise(pending: list[dict], fold: int | None = None) -> dict[str, float]:
  """Means over steps of the per-step metrics (device arrays: this waits for them);
  `fold`: the index of a fold in metrics of a group of folds ([G] each)."""
  host = jax.device_get(pending)
  pick = (lambda v: v) if fold is None else (lambda v: v[fold])
  return {k: float(np.mean([pick(m[k]) for m in host])) for k in host[0]}


@dataclasses.dataclass
class FoldRun:
  """A fold's training run (`prepare`)."""
  config: Any
  test_fold: int
  fold_dir: str
  train_on: list[int]
  val_fold: int | None
  steps_per_epoch: int
  total_steps: int
  batch_all_steps: int
  eval_every: int             # steps between validation scores (0: only at the end, if any)
  on_device: bool
  train_iter: Any
  model: gating.AVModel
  state: Any                  # the initial or restored TrainState
  start_step: int
  manager: Any
  writer: Any
  initial: dict = dataclasses.field(default_factory=dict)   # the collapse watch's reference
  warned: set = dataclasses.field(default_factory=set)
  last_good: int = 0          # the step of the last checkpoint written
  t_start: float = dataclasses.field(default_factory=time.time)
  steps_done: int = 0         # steps run by this process (for the rate)

  def log_due(self, step: int) -> bool:
    return step % self.config.train.log_every_steps == 0 or step == self.total_steps

  def validation_due(self, step: int) -> bool:
    return self.val_fold is not None and (
        step == self.total_steps or bool(self.eval_every and step % self.eval_every == 0))

  def checkpoint_due(self, step: int, val_metrics) -> bool:
    return (step % self.config.train.checkpoint_every_steps == 0 or step == self.total_steps
            or bool(val_metrics))

  def check_finite(self, summary: dict, step: int) -> None:
    health.check_finite(summary, self.test_fold, step, self.fold_dir, {"step": self.last_good})

  def log(self, step: int, summary: dict) -> None:
    """Checks and writes the means of the steps since the last log line; prints one line."""
    self.check_finite(summary, step)
    del summary["nonfinite"]
    rate = self.steps_done / max(time.time() - self.t_start, 1e-9)
    summary["steps_per_sec"] = rate
    summary["epoch"] = step / self.steps_per_epoch
    health.watch_collapse(summary, self.initial, self.warned, self.test_fold, step)
    self.writer.write_scalars(step, summary)
    if jax.process_index() == 0:
      dist = " ".join(f"{k[len('distance_'):][0]}={v:.3g}" for k, v in summary.items()
                      if k.startswith("distance_"))
      print(f"fold {self.test_fold} step {step}/{self.total_steps} loss {summary['loss']:.4f} "
            f"active {summary['active_triplets']:.3f} distance {dist} {rate:.2f} steps/s "
            f"ETA {format_eta((self.total_steps - step) / max(rate, 1e-9))}", flush=True)

  def validate(self, state, step: int, mesh) -> dict:
    """Scores the validation fold (never the test fold) and writes it."""
    metrics = evaluate.validation_accuracy(self.config, state, self.val_fold, self.train_on, mesh)
    self.writer.write_scalars(step, metrics)
    if jax.process_index() == 0:
      print(f"fold {self.test_fold} step {step}: validation fold {self.val_fold} accuracy "
            f"{metrics['validation_accuracy']:.3f}", flush=True)
    return metrics

  def save(self, step: int, state, val_metrics=None) -> None:
    """Checkpoints `state` after `step` batches (the iterator's state with it)."""
    # The iterator may run ahead (prefetch): the state saved is that of `step` batches.
    train_state_lib.save_checkpoint(self.manager, step, state,
                                    dict(self.train_iter.get_state(), step=step), val_metrics)
    self.last_good = step

  def closers(self) -> tuple:
    return (getattr(self.train_iter, "close", None), self.writer.flush, self.writer.close,
            self.manager.close)


def interrupted_message(step: int, runs) -> str:
  """The message of a Ctrl-C during training at (group) step `step`."""
  def resume(run):
    return (f"from its checkpoint of step {run.last_good}" if run.last_good
            else "from the fold's start: no checkpoint was written yet")
  if len(runs) == 1:
    return (f"interrupted at step {step} of fold {runs[0].test_fold}; rerun the same "
            f"command to resume ({resume(runs[0])})")
  return ("interrupted while training folds " + ", ".join(str(r.test_fold) for r in runs) +
          "; rerun the same command to resume (" +
          "; ".join(f"fold {r.test_fold} {resume(r)}" for r in runs) + ")")


def close_quietly(*closers) -> None:
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


def prepare(config, fold_dir: str, test_fold: int, mesh, *,
            dataset: "device_data.DeviceDataset | None" = None) -> FoldRun:
  """A fold's run, resumed from its latest checkpoint when it has one. `dataset`: a
  device-resident dataset to draw from instead of loading the fold's own (the features of
  every fold, `fold_group`; the iterator's indices are then still the fold's own)."""
  spec = run_spec.of(config)
  repl, _ = parallel.shardings(mesh)
  train_on, val_fold = tfds_access.split_folds(config, test_fold)
  on_device = dataset is not None or device_data.use_device(config, train_on)
  steps_per_epoch = tfds_access.steps_per_epoch(config, train_on)
  total_steps = tfds_access.total_steps(config, train_on)

  rng = jax.random.PRNGKey(config.seed)
  init_rng, data_seed = jax.random.split(jax.random.fold_in(rng, test_fold))
  data_seed = int(jax.random.randint(data_seed, (), 0, 2**31 - 1))
  if on_device:
    train_iter = device_data.create_device_iterator(config, train_on, seed=data_seed, mesh=mesh,
                                                    dataset=dataset)
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
  # The test fold is never scored here: only a validation fold, if there is one.
  eval_every = config.train.eval_every_epochs * steps_per_epoch if val_fold is not None else 0
  logging.info("Fold %d: training folds %s, %d steps (%d per epoch), batch %d%s; %s",
               test_fold, train_on, total_steps, steps_per_epoch, spec.batch_size,
               ", dataset on the device" if on_device else "",
               "no model selection (train.validation_fold='none'): the last checkpoint is the "
               "result" if val_fold is None else
               f"validation fold {val_fold} scored every {eval_every} steps and at the end, "
               "the best checkpoint by it is the result")
  return FoldRun(config=config, test_fold=test_fold, fold_dir=fold_dir, train_on=train_on,
                 val_fold=val_fold, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                 batch_all_steps=spec.warmup_epochs * steps_per_epoch, eval_every=eval_every,
                 on_device=on_device, train_iter=train_iter, model=model, state=state,
                 start_step=start_step, manager=manager, writer=writer,
                 initial=health.initial_distances(fold_dir), last_good=start_step)
