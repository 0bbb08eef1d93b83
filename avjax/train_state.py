"""Train state: the state class, the optimiser, creation, checkpoints and their
restoration (for training, evaluation and inference).

Needs neither the data stack nor the training loop: `avjax.train`,
`avjax.evaluate` and `avjax.predict` all build on it.

Checkpoints: one orbax `CheckpointManager` per fold directory
(`workdir.checkpoint_dir`), items `state` (this TrainState) and `data` (the
training iterator's JSON state). It keeps the latest `train.keep_checkpoints`
and the best by the saved `validation_accuracy` metric (a validation fold's score,
never the test fold's; `config.train.validation_fold`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging as std_logging
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state
from jax.sharding import NamedSharding

from avjax import config_lib
from avjax import errors
from avjax import workdir as workdir_lib
from avjax.data import registry
from avjax.models import gating


class TrainState(train_state.TrainState):
  batch_stats: Any = None


# --------------------------------------------------------------------------- optimiser


def is_trunk(path: tuple[str, ...]) -> bool:
  """Parameters of the pretrained encoders (I3D, SoundNet) outside their new heads."""
  return (any(p in gating.TRUNK_MODULES for p in path)
          and not any(p in gating.HEAD_MODULES for p in path))


def make_optimizer(optim: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  """Adam as torch.optim.Adam(weight_decay=wd): the L2 term is added to the gradient
  before the moment estimates. 'adamw' decouples it (torch.optim.AdamW).
  `trunk_lr_scale` scales the learning rate of the pretrained trunks (0 freezes them).

  The same transformation object for equal settings and parameter structure: it is
  part of the train state's tree structure, so a new one per fold would make every
  jitted function taking the state compile again."""
  optim = ml_collections.ConfigDict(optim)
  treedef = jax.tree_util.tree_structure(params)
  return _optimizer(optim.to_json(sort_keys=True), treedef)


def optimizer_for(config: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  """`make_optimizer` for `config.optim` of the completed `config` (its `trunk_lr_scale`
  resolved for `config.model.trunk` when None)."""
  return make_optimizer(config_lib.complete(config).optim, params)


@functools.lru_cache(maxsize=32)
def _optimizer(optim_json: str, treedef) -> optax.GradientTransformation:
  optim = ml_collections.ConfigDict(json.loads(optim_json))
  if optim.name == "adam":
    base = optax.chain(
        optax.add_decayed_weights(optim.weight_decay),
        optax.scale_by_adam(b1=optim.b1, b2=optim.b2, eps=optim.eps),
        optax.scale_by_learning_rate(optim.learning_rate))
  elif optim.name == "adamw":
    base = optax.adamw(optim.learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                       weight_decay=optim.weight_decay)
  else:
    raise ValueError(f"config.optim.name: unknown optimiser {optim.name!r}")
  scale = float(optim.trunk_lr_scale)
  if scale == 1.0:
    return base
  trunk = optax.set_to_zero() if scale == 0.0 else optax.chain(base, optax.scale(scale))
  params = jax.tree_util.tree_unflatten(treedef, [0] * treedef.num_leaves)   # structure only
  labels = flax.traverse_util.path_aware_map(
      lambda path, _: "trunk" if is_trunk(path) else "rest", params)
  return optax.multi_transform({"trunk": trunk, "rest": base}, labels)


# --------------------------------------------------------------------------- creation


def create_train_state(config: ml_collections.ConfigDict, model, sample_batch: dict,
                       rng: jax.Array, replicated: NamedSharding, *,
                       pretrained: bool | None = None) -> TrainState:
  """Initialises the model (loading pretrained weights when `config.model.pretrained`,
  or `pretrained` when given), then the optimiser; the state is replicated.
  `sample_batch` gives the input shapes (arrays or ShapeDtypeStructs)."""
  video, audio = gating.model_inputs(sample_batch, config.model.modalities)
  pretrained = config.model.pretrained if pretrained is None else pretrained
  variables = gating.init_variables(model, rng, video=video, audio=audio, pretrained=pretrained)
  tx = optimizer_for(config, variables["params"])
  # Eager: the optimiser's initial state is zeros shaped like the parameters, and
  # a jitted create would compile again for every new `tx`. Placing the result
  # is a jitted identity (multi-host safe), cheap to compile.
  state = TrainState.create(apply_fn=gating.apply_fn(model), params=variables["params"], tx=tx,
                            batch_stats=variables.get("batch_stats", {}))
  # A strongly typed step: `create`'s Python 0 is weakly typed, a restored one is not,
  # and jit would compile again for the restored state.
  state = state.replace(step=np.zeros((), np.int32))
  return _placer(replicated)(state)


@functools.lru_cache(maxsize=8)
def _placer(sharding: NamedSharding):
  return jax.jit(lambda tree: tree, out_shardings=sharding)


def abstract_train_state(config, model, sample_batch: dict,
                         replicated: NamedSharding) -> TrainState:
  """The state's shapes, dtypes and shardings without computing it (for restoring):
  no initialiser runs and no pretrained weight is read."""
  abstract = jax.eval_shape(functools.partial(
      create_train_state, config, model, sample_batch, jax.random.PRNGKey(0), replicated,
      pretrained=False))
  # eval_shape leaves some leaves (the step) without a sharding: set it on all.
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated)
      if isinstance(x, jax.ShapeDtypeStruct) else x, abstract)


# --------------------------------------------------------------------------- checkpoints


def checkpoint_manager(fold_dir: str, config, cleanup_tmp: bool = False,
                       create: bool = True) -> ocp.CheckpointManager:
  """Latest `keep_checkpoints` plus the best by validation accuracy. `cleanup_tmp`
  (only for the process holding the fold's lock: another may be saving) removes the
  half-written steps (`<step>.orbax-checkpoint-tmp*`) of a killed process. Readers
  pass `create=False` (after `require_checkpoints`): they leave the workdir as it is."""
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=config.train.keep_checkpoints),
      ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["validation_accuracy"], n=1,
                                    keep_checkpoints_without_metrics=False),
  ])
  # best_fn makes `manager.best_step()` the best, not the latest.
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=create,
                                         best_fn=lambda m: m["validation_accuracy"], best_mode="max",
                                         enable_async_checkpointing=False,
                                         cleanup_tmp_directories=cleanup_tmp)
  path = workdir_lib.checkpoint_dir(fold_dir)
  try:
    return ocp.CheckpointManager(path, options=options, item_names=("state", "data"))
  except OSError as e:
    raise (errors.as_storage_error(e, path, "create") or e) from e


class _OrbaxThreadErrors(std_logging.Filter):
  """Drops the log records of orbax's writer threads and asyncio tasks that repeat, with
  a traceback each, the error a save raises anyway."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    text = record.getMessage()
    return not ("raised an exception" in text or "exception was never retrieved" in text
                or "Task was destroyed but it is pending" in text)


_QUIET = _OrbaxThreadErrors()


@contextlib.contextmanager
def _quiet_background_errors():
  """Orbax's background errors silenced while saving; after a failed save they stay
  silenced (asyncio reports unretrieved tasks when they are collected, later)."""
  loggers = [std_logging.getLogger("absl"), std_logging.getLogger("asyncio")]
  for logger in loggers:
    logger.addFilter(_QUIET)
  yield   # an exception raised here skips what follows: the filter stays
  for logger in loggers:
    logger.removeFilter(_QUIET)


def save_checkpoint(manager, step: int, state: TrainState, data_state: dict,
                    metrics: dict | None = None) -> None:
  """Saves step `step` and waits until it is on disk. A save the file system refuses
  (orbax reports a full disk as `ValueError: RESOURCE_EXHAUSTED`) raises
  errors.StorageError naming the step's folder, after removing what it had written."""
  step_dir = os.path.join(os.fspath(manager.directory), str(step))
  try:
    with _quiet_background_errors():
      manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
          metrics=metrics, force=True)
      manager.wait_until_finished()
  except Exception as e:  # noqa: BLE001  (orbax and tensorstore raise many types)
    failure = errors.as_storage_error(e, step_dir)
    if failure is None:
      raise
    parent = os.path.dirname(step_dir)
    for name in _names(parent):
      if name == str(step) or name.startswith(f"{step}.orbax-checkpoint-tmp"):
        errors.remove_quietly(os.path.join(parent, name))
    raise failure from e


def _names(folder: str) -> list[str]:
  try:
    return os.listdir(folder)
  except OSError:
    return []


def _abstract(state):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)) else x, state)


def restore_checkpoint(manager, state: TrainState, step: int | None = None):
  """Restores (state, data_state) at `step` (default latest) onto `state`'s shardings
  (`state` may be concrete or abstract)."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(state)), data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of a fold restores (every step is corrupt)."""


def _short(e: Exception, limit: int = 400) -> str:
  text = " ".join(str(e).split())
  return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def restore_latest(manager, state: TrainState, fold_dir: str):
  """(state, data_state, step) of the newest checkpoint that restores, or None when the
  fold has none. A step that fails to restore (a truncated tensor file, an empty
  metadata file, an empty step folder ...) is reported with its folder and the error,
  and the previous step is tried; once an older step restores, the newer ones that did
  not are moved aside to `fold_dir/checkpoints.bad/<step>` (kept for inspection, out of
  orbax's way). When no step restores, nothing is moved (every step failing alike is
  as likely an out-of-memory, a file-system error or changed shapes as corruption, and
  a rerun must find them) and this raises CheckpointRestoreError: never a silent start
  from scratch."""
  ckpt = workdir_lib.checkpoint_dir(fold_dir)
  failed = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      restored, data_state = restore_checkpoint(manager, state, step)
    except Exception as e:  # noqa: BLE001  (orbax, tensorstore and JSON raise many types)
      failed.append((step, _short(e)))
      print(f"warning: checkpoint step {step} ({os.path.join(ckpt, str(step))}) cannot be "
            f"restored: {_short(e)}; trying the previous step", flush=True)
      logging.warning("checkpoint step %d of %s cannot be restored: %s", step, ckpt, _short(e))
      continue
    if failed:
      for bad, _ in failed:
        moved = workdir_lib.move_aside(os.path.join(ckpt, str(bad)),
                                       os.path.join(fold_dir, workdir_lib.BAD_CHECKPOINTS))
        print(f"checkpoint step {bad} moved to {moved}", flush=True)
      manager.reload()
      print(f"resuming from step {step} of {ckpt} (steps {[b for b, _ in failed]} could not "
            "be restored)", flush=True)
    return restored, data_state, int(step)
  if failed:
    raise CheckpointRestoreError(
        f"no checkpoint of {ckpt} restores (steps {[b for b, _ in failed]}; the newest: "
        f"{failed[0][1]}). Nothing was moved or deleted. If the cause is passing (memory, the "
        f"file system), rerun; if the steps are corrupt, remove {fold_dir} to train this fold "
        "from scratch")
  return None


def best_step(manager) -> int | None:
  """The kept step with the highest `validation_accuracy` in its saved metrics (the later
  on a tie), or None when none has one (runs without a validation fold; the
  `val_accuracy` of earlier versions scored the test fold and is not a validation
  score). Read from the saved metrics rather than `CheckpointManager.best_step()`,
  which only knows the best when the manager was created with a `best_fn`."""
  best = None
  for step in manager.all_steps():
    metrics = manager.metrics(step) or {}
    acc = metrics.get("validation_accuracy") if isinstance(metrics, dict) else None
    if acc is not None and (best is None or float(acc) >= best[0]):
      best = (float(acc), int(step))
  return None if best is None else best[1]


class CheckpointNotFound(FileNotFoundError):
  pass


def result_checkpoint(config, test_fold: int) -> str:
  """The checkpoint training reports as the fold's result: 'best' (by the validation
  fold) when the run has one, else 'latest'. The default of re-evaluation and of
  avjax.predict, so that neither changes a run's selection rule."""
  return "latest" if registry.validation_fold(config, test_fold) is None else "best"


def require_checkpoints(fold_dir: str) -> None:
  """CheckpointNotFound unless the fold has a checkpoint folder (which readers must not
  create: an empty one would make an untrained fold look trained)."""
  if not os.path.isdir(workdir_lib.checkpoint_dir(fold_dir)):
    raise CheckpointNotFound(f"no checkpoints in {workdir_lib.checkpoint_dir(fold_dir)}: "
                             "that fold has not been trained (python -m avjax.main trains it)")


def saved_step(fold_dir: str, config, which: str) -> int:
  """The step of the fold's `latest` or `best` checkpoint, read without writing anything;
  CheckpointNotFound when there is none."""
  require_checkpoints(fold_dir)
  manager = checkpoint_manager(fold_dir, config, create=False)
  try:
    return select_step(manager, fold_dir, which)
  finally:
    manager.close()


def select_step(manager, fold_dir: str, which: str) -> int:
  """The step of the `latest` or `best` checkpoint; CheckpointNotFound when there is none."""
  ckpt = workdir_lib.checkpoint_dir(fold_dir)
  if manager.latest_step() is None:
    raise CheckpointNotFound(f"no checkpoint in {ckpt}")
  if which == "latest":
    return int(manager.latest_step())
  if which != "best":
    raise ValueError(f"checkpoint {which!r} is not 'latest' or 'best'")
  step = best_step(manager)
  if step is None:
    raise CheckpointNotFound(
        f"no best checkpoint in {ckpt}: no checkpoint has a validation-fold accuracy (the run "
        "had no config.train.validation_fold); use --checkpoint=latest")
  return step


def restore_for_inference(config, fold_dir: str, sample_batch: dict, replicated: NamedSharding,
                          which: str = "latest", step: int | None = None):
  """(state, model, step): the fold's `latest` or `best` checkpoint (or `step`) restored
  onto an abstract state built from `sample_batch`'s shapes; neither the dataset
  nor the pretrained weights are needed. Raises CheckpointNotFound when absent."""
  require_checkpoints(fold_dir)
  model = gating.create_model(config.model)
  abstract = abstract_train_state(config, model, sample_batch, replicated)
  manager = checkpoint_manager(fold_dir, config, create=False)
  try:
    if step is None:
      step = select_step(manager, fold_dir, which)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))
  finally:
    manager.close()
  return restored["state"], model, int(step)


def stack_states(states, sharding=None):
  """The states' arrays stacked on a new leading axis (folds side by side,
  `avjax.fold_group`), each placed with `sharding` as soon as it is stacked (so that no
  whole stacked copy is held twice); the static fields (model, optimiser) are the first
  state's: every fold's are built alike."""
  leaves = [jax.tree.leaves(s) for s in states]
  place = (lambda x: x) if sharding is None else (lambda x: jax.device_put(x, sharding))
  return jax.tree.structure(states[0]).unflatten([place(jnp.stack(xs)) for xs in zip(*leaves)])


def unstack_state(stacked, i: int):
  """The `i`th state of `stack_states`' result."""
  return jax.tree.map(lambda x: x[i], stacked)

