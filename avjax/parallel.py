"""Mesh, shardings and global arrays: the data-parallel layout of every jitted step.

Legend: B batch (global), b host slice of it, P processes (hosts).

One `Mesh` with a `data` axis over all devices (all hosts). Batches are global
arrays sharded on `data`; train state and model variables are replicated. A
batch that does not divide the device count (CREMA-D's 30 clips on 4 devices)
is padded with masked copies of its first clip (`pad_batch`); the loss, its
gradients, the metrics, evaluation and the model's batch statistics (BatchNorm with
freeze_bn=False, the centred heads) ignore them (`steps.train_step` passes the mask
to the model).

Needs only jax and numpy: the train step and the models run without the data
stack (tensorflow-datasets, grain, PyAV, soxr).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Batch entries that go to the device (the rest, e.g. 'actor', stay on the host).
DEVICE_KEYS = ("video", "audio", "label", "window_valid", "mask")
# The batch's augmentation draws (not batch-major: replicated, never padded).
AUG_KEY = "aug"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named `data` over `devices` (default: every device of every host)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), ("data",))


def shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding]:
  """(replicated, sharded on `data` along the leading axis)."""
  return NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))


def fold_mesh(mesh: Mesh) -> Mesh:
  """The mesh of test folds trained side by side (`train.parallel_folds`): a `fold` axis
  over the devices of `mesh`, each device training its share of the group's folds whole,
  beside a `data` axis of 1."""
  return Mesh(np.asarray(mesh.devices).reshape(-1, 1), ("fold", "data"))


def fold_shardings(mesh: Mesh) -> tuple[NamedSharding, NamedSharding, NamedSharding]:
  """(replicated, stacked per fold [G, ...] sharded on `fold`, the folds' batches
  [G, B, ...] sharded on `fold` then `data`) on `fold_mesh(mesh)`."""
  fm = fold_mesh(mesh)
  return NamedSharding(fm, P()), NamedSharding(fm, P("fold")), NamedSharding(fm, P("fold", "data"))


def fold_slots(folds: int, mesh: Mesh) -> int:
  """`folds` rounded up to a multiple of the devices: the group's slots, the extra ones
  masked copies."""
  n = int(np.asarray(mesh.devices).size)
  return -(-int(folds) // n) * n


def to_global(batch: dict, data_sharding: NamedSharding) -> dict:
  """Host-local numpy batch -> global jax arrays sharded on `data` (multi-host safe).
  Only `DEVICE_KEYS` are transferred, plus `batch['aug']` (the same on every host)
  replicated."""
  out = {k: jax.make_array_from_process_local_data(data_sharding, np.asarray(v))
         for k, v in batch.items() if k in DEVICE_KEYS}
  if AUG_KEY in batch:
    out[AUG_KEY] = replicate(batch[AUG_KEY], NamedSharding(data_sharding.mesh, P()))
  return out


def replicate(tree, replicated: NamedSharding):
  """Host values (numpy, scalars) -> global arrays replicated on every device."""
  def put(v):
    v = np.asarray(v)
    return jax.make_array_from_callback(v.shape, replicated, lambda idx: v[idx])
  return jax.tree.map(put, tree)


def pad_batch(batch: dict, multiple: int) -> dict:
  """Pads a host batch (every array but 'aug' batch-major) with copies of its first clip up
  to a multiple of `multiple` rows, and sets 'mask' [B'] bool (False on padding,
  and wherever the batch's own 'mask' was False). Unchanged, without a 'mask'
  key, when no padding is needed."""
  b = len(next(v for k, v in batch.items() if k != AUG_KEY))
  pad = -b % int(multiple)
  if not pad:
    return batch
  out = {k: v if k == AUG_KEY else np.concatenate([np.asarray(v), np.repeat(np.asarray(v)[:1], pad, axis=0)])
         for k, v in batch.items()}
  mask = np.asarray(batch.get("mask", np.ones(b, bool)), bool)
  out["mask"] = np.concatenate([mask, np.zeros(pad, bool)])
  return out


def to_global_step_input(inputs: dict, *, data_sharding: NamedSharding,
                         replicated: NamedSharding) -> dict[str, jax.Array]:
  """The device-resident path's host step inputs (`augment.step_inputs`, or index and
  view for cached features) -> global arrays: 'index' (padded with masked copies to a
  multiple of the local devices, 'mask' added then) sharded on `data`, the rest (the
  augmentation parameters, the view) replicated."""
  index = np.asarray(inputs["index"], np.int32)
  pad = -len(index) % jax.local_device_count()
  out = {}
  if pad:
    mask = np.concatenate([np.ones(len(index), bool), np.zeros(pad, bool)])
    index = np.concatenate([index, np.repeat(index[:1], pad)])
    out["mask"] = jax.make_array_from_process_local_data(data_sharding, mask)
  out["index"] = jax.make_array_from_process_local_data(data_sharding, index)
  for key in inputs:
    if key in ("index", "mask"):
      continue
    value = np.asarray(inputs[key])
    out[key] = jax.make_array_from_callback(value.shape, replicated, lambda idx, v=value: v[idx])
  return out
