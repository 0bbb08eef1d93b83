"""The jitted steps of training: `train_step` (pure) and its sharded, jitted forms.

Legend: B batch (global), T windows, F frames, X crop size, S audio samples.

Needs jax, flax, optax and the models only, not the data stack (tensorflow-datasets,
grain, PyAV, soxr): the device check runs it on machines without those.

Each jitted step is built once per process for a (step fields, mesh) pair
(`_step_key`): every fold of a run, and every test using the same shapes, reuses
one compilation.
"""

from __future__ import annotations

import collections
import functools
import json
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from avjax import augment
from avjax import choices
from avjax import losses
from avjax import parallel
from avjax.models import gating
from avjax.train_state import TrainState

LOSS_KEYS = ("loss", "mse", "triplet", "active_triplets", "no_triplet_anchors")
METRIC_KEYS = LOSS_KEYS + ("grad_norm", "param_norm", "nonfinite")
# Per modality in use (losses.compute_loss): collapse watch.
MODALITY_KEYS = ("distance", "zero_hinge")


def metric_keys(modalities: str) -> tuple[str, ...]:
  """The metrics a train step of a `modalities` model returns."""
  mods = choices.BRANCHES[modalities]
  return METRIC_KEYS + tuple(f"{k}_{m}" for m in mods for k in MODALITY_KEYS)
# Traces per jitted function (a traced body runs once per compilation): the tests
# check that folds, validation and evaluation do not compile again.
TRACES: collections.Counter = collections.Counter()


def train_step(state: TrainState, batch: dict, aug: dict | None = None, *,
               config: ml_collections.ConfigDict, batch_all_steps: int | jax.Array = 0):
  """One optimisation step on a global batch. Returns (state, metric outputs).

  `aug` (the batch's audio draws: speed [], semitones [], noise [T, S]) augments
  the raw audio in-graph first (`augment.augment_audio`); None leaves it as is.
  Reads `config.model.modalities`, `config.model.variant`, `config.loss` (with
  `loss.mask_padded_windows` the batch's 'window_valid' masks the noise, the
  LSTMs and the loss) and `config.input.pitch_shift_semitones` only (`_step_key`: the jitted step is shared
  by configs that agree on them). Steps before `batch_all_steps` (`run_spec.RunSpec.warmup_epochs`
  times the steps per epoch) take the batch-all triplet term."""
  TRACES["train_step"] += 1
  window_valid = gating.window_valid(batch, config.loss.mask_padded_windows)  # [B, T] or None
  if aug is not None and "audio" in batch:
    batch = dict(batch, audio=augment.augment_audio(
        batch["audio"], aug["speed"], aug["semitones"], aug["noise"],
        max_semitones=float(config.input.pitch_shift_semitones), window_valid=window_valid))
  video, audio = gating.model_inputs(batch, config.model.modalities)

  mask = batch.get("mask")                                # [B] bool, False on padding
  if isinstance(batch_all_steps, int):
    batch_all = state.step < batch_all_steps if batch_all_steps else None
  else:   # traced: each fold of a group its own (`make_group_train_step`)
    batch_all = state.step < batch_all_steps
  # The model's batch statistics (BatchNorm with freeze_bn=False, the centred heads'
  # batch means) leave out the padding copies as well as the padded windows.
  model_valid = window_valid
  if mask is not None:
    bt = (video if video is not None else audio).shape[:2]
    pad = jnp.broadcast_to(jnp.asarray(mask, jnp.float32)[:, None], bt)
    model_valid = pad if window_valid is None else pad * window_valid

  def loss_fn(params):
    outputs, new_model_state = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, video, audio, train=True,
        window_valid=model_valid, mutable=["batch_stats"])
    loss, metrics = losses.compute_loss(
        outputs, batch["label"], config.loss, config.model.variant, config.model.modalities,
        mask=mask, window_valid=window_valid, batch_all=batch_all)
    return loss, (metrics, new_model_state)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (metrics, new_model_state)), grads = grad_fn(state.params)
  new_state = state.apply_gradients(grads=grads, batch_stats=new_model_state.get("batch_stats", {}))
  keys = LOSS_KEYS + tuple(k for k in metric_keys(config.model.modalities) if k not in METRIC_KEYS)
  metrics = {k: jnp.asarray(metrics.get(k, 0.0), jnp.float32) for k in keys}
  metrics["loss"] = loss
  metrics["grad_norm"] = optax.global_norm(grads)
  # The trainable weights' global L2 norm after the update: weights that shrink
  # towards 0 while the gate embeddings collapse show the optimiser's weight decay
  # outweighing the loss (docs/experiments.md).
  metrics["param_norm"] = optax.global_norm(new_state.params)
  # 1.0 when this step's loss or gradients are not finite. (The loss alone is not
  # enough: XLA's max, and so relu, can turn NaN activations into finite values
  # while the gradients are NaN.)
  metrics["nonfinite"] = 1.0 - jnp.isfinite(loss + metrics["grad_norm"]).astype(jnp.float32)
  return new_state, metrics


def _step_key(config) -> str:
  """The config fields a jitted step depends on (besides the state's model and optimiser,
  which are part of the state's tree structure and so of jit's own cache key)."""
  return json.dumps({"model": {k: config.model[k] for k in ("variant", "modalities")},
                     "loss": config.loss.to_dict(),
                     "input": {k: config.input[k] for k in ("crop_size", "pitch_shift_semitones")}},
                    sort_keys=True, default=str)


_STEPS: dict[tuple, Callable] = {}


def jitted_train_step(config, mesh: Mesh, donate: bool = True, batch_all_steps: int = 0
                      ) -> Callable:
  """`train_step` jitted as (state, batch, aug) with explicit shardings: state and aug
  replicated, the batch sharded on `data`; the state donated unless `donate=False`.
  Built once per (step fields, mesh, donate, batch_all_steps)."""
  key = ("host", _step_key(config), mesh, donate, int(batch_all_steps))
  if key not in _STEPS:
    repl, data = parallel.shardings(mesh)
    _STEPS[key] = jax.jit(functools.partial(train_step, config=config,
                                            batch_all_steps=int(batch_all_steps)),
                          donate_argnums=(0,) if donate else (),
                          in_shardings=(repl, data, repl), out_shardings=(repl, repl))
  return _STEPS[key]


def make_train_step(config, mesh: Mesh, batch_all_steps: int = 0) -> Callable:
  """(state, global batch) -> (state, metrics): `jitted_train_step` with the batch's
  'aug' entry (if any) passed as its own replicated argument. Every fold of a run
  reuses one compilation."""
  jitted = jitted_train_step(config, mesh, batch_all_steps=batch_all_steps)

  def run(state, batch):
    batch = dict(batch)
    aug = batch.pop(parallel.AUG_KEY, None)
    return jitted(state, batch, aug)

  return run


def make_device_train_step(config, mesh: Mesh, dataset, batch_all_steps: int = 0) -> Callable:
  """(state, step inputs) -> (state, metrics) for `config.input.cache_on_device`: gathers
  and augments the batch in-graph (`augment.augment_in_graph`), then `train_step`.
  The dataset arrays are arguments of the jitted function (not constants), bound here;
  the jitted function is built once per (step fields, mesh, padded or not)."""
  repl, data = parallel.shardings(mesh)
  crop_size, max_semitones = dataset.crop_size, dataset.max_semitones
  mask_padded = bool(config.loss.mask_padded_windows)
  features = tuple(dataset.features)

  def step(state, arrays, inputs):
    if features:   # a cached trunk: gather the features (augmented at extraction, if at all)
      batch = augment.gather_features(arrays, inputs, features)
    else:
      batch = augment.augment_in_graph(arrays, inputs, crop_size=crop_size,
                                       max_semitones=max_semitones,
                                       mask_padded_windows=mask_padded)
    batch = {k: jax.lax.with_sharding_constraint(v, data) for k, v in batch.items()}
    return train_step(state, batch, config=config, batch_all_steps=batch_all_steps)

  if features:
    input_shardings = {"index": data, "mask": data, "view": repl}
  else:
    input_shardings = {"index": data, "mask": data, "crop": repl, "flip": repl, "speed": repl,
                       "semitones": repl, "noise": repl}

  def jitted(has_mask: bool):
    key = ("device", _step_key(config), mesh, has_mask, int(batch_all_steps), features)
    if key not in _STEPS:
      shard = {k: v for k, v in input_shardings.items() if has_mask or k != "mask"}
      _STEPS[key] = jax.jit(step, donate_argnums=(0,), in_shardings=(repl, repl, shard),
                            out_shardings=(repl, repl))
    return _STEPS[key]

  def run(state, inputs):
    return jitted("mask" in inputs)(state, dataset.arrays, inputs)

  return run


def make_group_train_step(config, mesh: Mesh, dataset) -> Callable:
  """(stacked state, inputs, batch_all_steps [G], total_steps [G]) -> (state, metrics [G])
  for `train.parallel_folds`: G folds' states stacked on a leading axis and one
  `train_step` vmapped over them, each fold gathering its own batch from the data of
  every fold held on the device (`dataset`, `avjax.device_data`): its cached features
  (`inputs`: 'index' [G, B], 'view' [G]) or its media, cropped and augmented in-graph
  with its own draws ('index' [G, B] and the `augment.step_inputs` of each fold stacked).
  The fold axis is sharded over the devices (`parallel.fold_mesh`: G a multiple of the
  device count, `parallel.fold_slots`), each device training its folds' whole batches;
  on one device the step is only vmapped. A fold whose state has reached its
  `total_steps` keeps it (folds of unequal epoch lengths, resumed at different steps, or
  padding slots share the loop; its metrics at those steps are meaningless). Built once
  per (step fields, mesh, cached modalities); the state is donated."""
  features = tuple(dataset.features)
  crop_size, max_semitones = dataset.crop_size, dataset.max_semitones
  mask_padded = bool(config.loss.mask_padded_windows)
  repl, per_fold, fold_batch = parallel.fold_shardings(mesh)

  def one(state, arrays, inputs, batch_all_steps, total_steps):
    if features:
      batch = augment.gather_features(arrays, inputs, features)
    else:
      batch = augment.augment_in_graph(arrays, inputs, crop_size=crop_size,
                                       max_semitones=max_semitones,
                                       mask_padded_windows=mask_padded)
    new_state, metrics = train_step(state, batch, config=config,
                                    batch_all_steps=batch_all_steps)
    active = state.step < total_steps
    new_state = jax.tree.map(lambda new, old: jnp.where(active, new, old), new_state, state)
    return new_state, metrics

  def step(state, arrays, inputs, batch_all_steps, total_steps):
    TRACES["group_train_step"] += 1
    return jax.vmap(one, in_axes=(0, None, 0, 0, 0))(state, arrays, inputs, batch_all_steps,
                                                      total_steps)

  keys = ("index", "view") if features else ("index", "crop", "flip", "speed", "semitones",
                                              "noise")
  key = ("group", _step_key(config), mesh, features)
  if key not in _STEPS:
    shard = {k: fold_batch if k == "index" else per_fold for k in keys}
    _STEPS[key] = jax.jit(step, donate_argnums=(0,),
                          in_shardings=(per_fold, repl, shard, per_fold, per_fold),
                          out_shardings=(per_fold, per_fold))
  jitted = _STEPS[key]

  def run(state, inputs, batch_all_steps, total_steps):
    return jitted(state, dataset.arrays, inputs, batch_all_steps, total_steps)

  return run
