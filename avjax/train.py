"""Training: train state, the jitted sharded step, checkpoints, and the fold loop.

Legend: B batch (global), T windows, F frames, H = W crop size, S audio samples,
D embedding size.

`train_and_evaluate(config, workdir)` runs every test fold of `config.folds`:
the model is trained on the other folds into `workdir/fold_{k}/` (checkpoints,
metrics.jsonl, TensorBoard events), then evaluated per gate with KNN
(`avjax.evaluate`), and the folds run so far are aggregated into
`workdir/results.json`, `results.md` and the figures. A fold whose evaluation
is on disk is skipped; an interrupted fold resumes from its latest checkpoint,
data iterator included.

Sharding: one `Mesh` with a `data` axis over all devices (all hosts). Batches
are global arrays sharded on `data`; the train state is replicated. Under jit
the miner therefore mines across the whole global batch and every mean is
global, with no explicit collectives. A batch that does not divide the device
count (CREMA-D's 30 clips on 4 devices) is padded with masked copies of its
first clip (`pad_batch`): the loss, its gradients and the metrics ignore them
(`losses.compute_loss(mask=...)`), so the step equals the unpadded one. (BatchNorm
batch statistics would see the copies: padding needs model.freeze_bn=True.)

Input: with `config.input.cache_on_device` the training folds live in
accelerator memory and the step gathers and augments in-graph
(`avjax.device_data`); otherwise host batches from `avjax.input_pipeline` are
transferred `_DEVICE_PREFETCH` steps ahead of the step that uses them. The
loop never waits for a step's results before dispatching the next: the
metrics stay on the device until the next log line (at most `_MAX_IN_FLIGHT`
steps run ahead), where they are averaged and checked for non-finite values;
a checkpoint is only written after the steps before it are checked.

Precision: parameters, optimiser state, encoder outputs, the LSTMs and the
loss are float32 whatever `config.model.dtype` (bfloat16 runs the encoders'
convolutions in bf16); `config.model.remat` rematerialises I3D blocks.
"""

from __future__ import annotations

import collections
import functools
import os
import time
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from avjax import device_data
from avjax import evaluate
from avjax import input_pipeline
from avjax import losses
from avjax import writers
from avjax.models import gating

_LOSS_KEYS = ("loss", "mse", "triplet", "active_triplets", "no_triplet_anchors")
_METRIC_KEYS = _LOSS_KEYS + ("grad_norm", "nonfinite")
_DEVICE_PREFETCH = 2       # host batches transferred ahead of the step using them
_MAX_IN_FLIGHT = 2         # steps dispatched but not finished before the loop waits


class TrainState(train_state.TrainState):
  batch_stats: Any = None


# --------------------------------------------------------------------------- optimiser


def _is_trunk(path: tuple[str, ...]) -> bool:
  """Parameters of the pretrained encoders (I3D, SoundNet) outside their new heads."""
  return any(p in gating.TRUNK_MODULES for p in path) and not any(p in gating.HEAD_MODULES for p in path)


def make_optimizer(optim: ml_collections.ConfigDict, params: Any) -> optax.GradientTransformation:
  """Adam as torch.optim.Adam(weight_decay=wd): the L2 term is added to the gradient
  before the moment estimates. 'adamw' decouples it (torch.optim.AdamW).
  `trunk_lr_scale` scales the learning rate of the pretrained trunks (0 freezes them)."""
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
  labels = flax.traverse_util.path_aware_map(
      lambda path, _: "trunk" if _is_trunk(path) else "rest", params)
  return optax.multi_transform({"trunk": trunk, "rest": base}, labels)


# --------------------------------------------------------------------------- model glue


def model_inputs(batch: dict, modalities: str) -> tuple[Any, Any]:
  video = batch.get("video") if modalities in ("av", "video") else None
  audio = batch.get("audio") if modalities in ("av", "audio") else None
  return video, audio


def create_train_state(config: ml_collections.ConfigDict, model, sample_batch: dict,
                       rng: jax.Array, replicated: NamedSharding) -> TrainState:
  """Initialises (and loads pretrained weights into) the model, then the optimiser."""
  video, audio = model_inputs(sample_batch, config.model.modalities)
  variables = gating.init_variables(
      model, rng, video=video, audio=audio, pretrained=config.model.pretrained)
  params = variables["params"]
  tx = make_optimizer(config.optim, params)

  def _create(params, batch_stats):
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, batch_stats=batch_stats)

  return jax.jit(_create, out_shardings=replicated)(params, variables.get("batch_stats", {}))


def train_step(state: TrainState, batch: dict, *, config: ml_collections.ConfigDict):
  """One optimisation step on a global batch. Returns (state, metric outputs)."""
  video, audio = model_inputs(batch, config.model.modalities)

  mask = batch.get("mask")                                # [B] bool, False on padding

  def loss_fn(params):
    outputs, new_model_state = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, video, audio, train=True,
        mutable=["batch_stats"])
    loss, metrics = losses.compute_loss(
        outputs, batch["label"], config.loss, config.model.variant, config.model.modalities,
        mask=mask)
    return loss, (metrics, new_model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (metrics, new_model_state)), grads = grad_fn(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_model_state.get("batch_stats", {}))
  metrics = {k: jnp.asarray(metrics.get(k, 0.0), jnp.float32) for k in _LOSS_KEYS}
  metrics["loss"] = loss
  metrics["grad_norm"] = optax.global_norm(grads)
  # 1.0 when this step's loss or gradients are not finite. (The loss alone is not
  # enough: XLA's max, and so relu, can turn NaN activations into finite values
  # while the gradients are NaN.)
  metrics["nonfinite"] = 1.0 - jnp.isfinite(loss + metrics["grad_norm"]).astype(jnp.float32)
  return new_state, metrics


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ("data",))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
  return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def make_train_step(config, mesh: Mesh) -> Callable:
  repl, data = shardings(mesh)
  return jax.jit(functools.partial(train_step, config=config), donate_argnums=(0,),
                 in_shardings=(repl, data), out_shardings=(repl, repl))


_DEVICE_KEYS = ("video", "audio", "label", "window_valid", "mask")


def to_global(batch: dict, data_sharding: NamedSharding) -> dict:
  """Host-local numpy batch -> global jax arrays sharded on `data` (multi-host safe)."""
  return {k: jax.make_array_from_process_local_data(data_sharding, np.asarray(v))
          for k, v in batch.items() if k in _DEVICE_KEYS}


def pad_batch(batch: dict, multiple: int) -> dict:
  """Pads a host batch (every array batch-major) with copies of its first clip up
  to a multiple of `multiple` rows, and sets 'mask' [b'] bool (False on padding,
  and wherever the batch's own 'mask' was False). Unchanged, without a 'mask'
  key, when no padding is needed."""
  b = len(next(iter(batch.values())))
  pad = -b % int(multiple)
  if not pad:
    return batch
  out = {k: np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[:1], pad, axis=0)])
         for k, v in batch.items()}
  mask = np.asarray(batch.get("mask", np.ones(b, bool)), bool)
  out["mask"] = np.concatenate([mask, np.zeros(pad, bool)])
  return out


def check_padding(config, batch_size: int) -> None:
  """Padding a batch of `batch_size` for this host's devices needs frozen BatchNorm."""
  local = batch_size // jax.process_count()
  if local % jax.local_device_count() and not config.model.freeze_bn:
    raise ValueError(
        f"the training batch ({batch_size} = clips_per_class x classes, {local} per host) is padded "
        f"to a multiple of the {jax.local_device_count()} local devices, but "
        "config.model.freeze_bn=False: BatchNorm batch statistics would include the padding. "
        "Set model.freeze_bn=True, or change clips_per_class or the device count.")


# --------------------------------------------------------------------------- checkpoints


def checkpoint_manager(fold_dir: str, config) -> ocp.CheckpointManager:
  """Latest `keep_checkpoints` plus the best by validation accuracy."""
  policy = ocp.checkpoint_managers.AnyPreservationPolicy([
      ocp.checkpoint_managers.LatestN(n=config.train.keep_checkpoints),
      ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["val_accuracy"], n=1,
                                    keep_checkpoints_without_metrics=False),
  ])
  # best_fn makes `manager.best_step()` the best, not the latest (evaluate --checkpoint=best).
  options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                         best_fn=lambda m: m["val_accuracy"], best_mode="max",
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(fold_dir, "checkpoints")),
                               options=options, item_names=("state", "data"))


def save_checkpoint(manager, step: int, state: TrainState, data_state: dict,
                    metrics: dict | None = None) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
      metrics=metrics, force=True)
  manager.wait_until_finished()


def restore_checkpoint(manager, state: TrainState, step: int | None = None):
  """Restores (state, data_state) at `step` (default latest) onto `state`'s shardings."""
  step = manager.latest_step() if step is None else step
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      if isinstance(x, jax.Array) else x, state)
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
  return restored["state"], restored["data"]


# --------------------------------------------------------------------------- fold loop


def training_folds(config, test_fold: int) -> list[int]:
  """Every fold but the held-out `test_fold`."""
  return [f for f in range(config.dataset.num_folds) if f != test_fold]


def _format_eta(seconds: float) -> str:
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}:{m:02d}:{s:02d}"


class NonFiniteLossError(FloatingPointError):
  pass


def _check_finite(summary: dict, test_fold: int, step: int, fold_dir: str, last_good: dict) -> None:
  """Raises when any step averaged into `summary` had a non-finite loss or gradient."""
  if summary["nonfinite"] > 0 or not np.isfinite(summary["loss"]):
    raise NonFiniteLossError(
        f"Fold {test_fold}: the training loss or its gradients became non-finite by step {step} "
        f"(mean loss {summary['loss']}, gradient norm {summary['grad_norm']}); stopping. The last "
        f"good checkpoint (step {last_good['step']}) is kept in "
        f"{os.path.join(fold_dir, 'checkpoints')}; try a lower config.optim.learning_rate.")


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
  return {k: float(np.mean([m[k] for m in host])) for k in _METRIC_KEYS}


def train_fold(config, fold_dir: str, test_fold: int, mesh: Mesh | None = None) -> TrainState:
  """Trains on every fold but `test_fold`; resumes from `fold_dir` when possible."""
  mesh = mesh or make_mesh()
  repl, data_sharding = shardings(mesh)
  train_on = training_folds(config, test_fold)
  num_classes = len(config.dataset.class_names)
  batch_size = config.input.clips_per_class * num_classes
  on_device = bool(config.input.get("cache_on_device", False))
  check_padding(config, batch_size)
  steps_per_epoch = input_pipeline.steps_per_epoch(config, train_on)
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
  state = create_train_state(config, model, first, init_rng, repl)
  if jax.process_index() == 0:
    gating.log_parameter_overview({"params": state.params})

  manager = checkpoint_manager(fold_dir, config)
  start_step = 0
  if manager.latest_step() is not None:
    state, data_state = restore_checkpoint(manager, state)
    train_iter.set_state(data_state)
    start_step = int(jax.device_get(state.step))
    logging.info("Fold %d: resumed from step %d", test_fold, start_step)
  else:
    train_iter.set_state(initial_data_state)

  writer = writers.create_writer(fold_dir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(config.to_dict())
  if on_device:
    step_fn = device_data.make_device_train_step(config, mesh, train_iter.dataset)
    put = functools.partial(device_data.to_global_step_input, data_sharding=data_sharding,
                            replicated=repl)
  else:
    step_fn = make_train_step(config, mesh)
    local_devices = jax.local_device_count()
    put = lambda b: to_global(pad_batch(b, local_devices), data_sharding)  # noqa: E731
  batches = _device_prefetch(train_iter, put, _DEVICE_PREFETCH)
  eval_every = config.train.eval_every_epochs * steps_per_epoch
  logging.info("Fold %d: training folds %s, %d steps (%d per epoch), batch %d%s",
               test_fold, train_on, total_steps, steps_per_epoch, batch_size,
               ", dataset on the device" if on_device else "")

  pending: list[dict] = []      # this log period's metrics, still on the device
  last_good = {"step": start_step}
  t_start, steps_done = time.time(), 0
  for step in range(start_step + 1, total_steps + 1):
    state, metrics = step_fn(state, next(batches))
    pending.append({k: metrics[k] for k in _METRIC_KEYS})
    if len(pending) > _MAX_IN_FLIGHT:  # bounds how far the host runs ahead
      jax.block_until_ready(pending[-1 - _MAX_IN_FLIGHT])
    steps_done += 1
    is_last = step == total_steps
    if step % config.train.log_every_steps == 0 or is_last:
      summary = _summarise(pending)
      pending = []
      _check_finite(summary, test_fold, step, fold_dir, last_good)
      del summary["nonfinite"]
      elapsed = time.time() - t_start
      rate = steps_done / max(elapsed, 1e-9)
      summary["steps_per_sec"] = rate
      summary["epoch"] = step / steps_per_epoch
      writer.write_scalars(step, summary)
      if jax.process_index() == 0:
        print(f"fold {test_fold} step {step}/{total_steps} loss {summary['loss']:.4f} "
              f"active {summary['active_triplets']:.3f} {rate:.2f} steps/s "
              f"ETA {_format_eta((total_steps - step) / max(rate, 1e-9))}", flush=True)
    val_metrics = None
    if eval_every and step % eval_every == 0 and not is_last:
      val_metrics = evaluate.validation_accuracy(config, state, model, test_fold, mesh)
      writer.write_scalars(step, val_metrics)
    if step % config.train.checkpoint_every_steps == 0 or is_last or val_metrics:
      if pending:  # the steps since the last log line must be finite too
        _check_finite(_summarise(pending), test_fold, step, fold_dir, last_good)
      # The iterator runs ahead (prefetch): the state is that of `step` batches consumed.
      save_checkpoint(manager, step, state, dict(train_iter.get_state(), step=step), val_metrics)
      last_good["step"] = step
  batches.close()
  close = getattr(train_iter, "close", None)
  if close is not None:
    close()
  writer.flush()
  writer.close()
  manager.close()
  return state, model


def fig5_groups(config) -> dict[str, tuple[str, ...]]:
  return {"positive": tuple(config.eval.positive_classes),
          "negative": tuple(config.eval.negative_classes)}


def fold_dir_of(workdir: str, fold: int) -> str:
  return os.path.join(workdir, f"fold_{fold}")


def save_config(config, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  os.replace(path + ".tmp", path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains and evaluates every fold of `config.folds`; aggregates the results."""
  from avjax import config_lib  # local: avoids an import cycle with configs
  from avjax import results

  config_lib.validate(config)
  workdir = os.path.abspath(workdir)
  if jax.process_index() == 0:
    save_config(config, workdir)
  input_pipeline.get_builder(config)  # builds the dataset first when allowed and missing
  mesh = make_mesh()
  for fold in config.folds:
    fold_dir = fold_dir_of(workdir, fold)
    if evaluate.fold_is_done(fold_dir):
      logging.info("Fold %d already evaluated in %s: skipping", fold, fold_dir)
      continue
    t0 = time.time()
    state, model = train_fold(config, fold_dir, fold, mesh)
    evaluate.evaluate_fold(config, state, model, fold, fold_dir, mesh)
    logging.info("Fold %d done in %.1f s", fold, time.time() - t0)
  if jax.process_index() != 0:
    return {}
  json_path, md_path = results.write_results(workdir)
  outputs = {"results_json": json_path, "results_md": md_path}
  if config.eval.figures:
    from avjax import figures
    outputs["figures"] = figures.make_all(workdir, groups=fig5_groups(config))
  print("\nResults:")
  for key, value in outputs.items():
    print(f"  {key}: {value}")
  with open(md_path) as f:
    print("\n" + f.read())
  return outputs
