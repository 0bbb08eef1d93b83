"""The training sampler's parts: class-balanced epochs of clip indices, a host's slice of
a global batch, and the video crop and flip (pure NumPy; `avjax.input_pipeline` says how
they make a batch)."""

from __future__ import annotations

import numpy as np


def class_balanced_epoch(labels: np.ndarray, clips_per_class: int, num_classes: int,
                         seed: int, epoch: int) -> np.ndarray:
  """Global batches of one epoch: [steps, clips_per_class * num_classes] indices
  into `labels`, each row holding exactly `clips_per_class` of every class
  (`avjax.input_pipeline`'s docstring says how classes with too few clips are dealt)."""
  labels = np.asarray(labels)
  k, c = int(clips_per_class), int(num_classes)
  batch = k * c
  steps = len(labels) // batch
  if steps == 0:
    raise ValueError(f"{len(labels)} clips: fewer than one batch of {batch}")
  rng = np.random.default_rng([int(seed), int(epoch), 1])
  need = steps * k
  per_class = []
  for cls in range(c):
    pool = np.flatnonzero(labels == cls)
    if len(pool) == 0:
      raise ValueError(f"class {cls} has no clip in the training folds")
    drawn: list[int] = []
    while len(drawn) < need:
      perm = rng.permutation(pool)
      # Clips already in the batch being filled go last, so that a batch holds
      # k distinct clips of the class whenever the class has at least k.
      in_batch = set(drawn[len(drawn) - len(drawn) % k:])
      if in_batch:
        perm = np.concatenate([perm[~np.isin(perm, list(in_batch))],
                               perm[np.isin(perm, list(in_batch))]])
      drawn.extend(perm[: need - len(drawn)].tolist())
    per_class.append(np.asarray(drawn, np.int64).reshape(steps, k))
  table = np.concatenate(per_class, axis=1)                           # [steps, B]
  order = np.argsort(rng.random(table.shape), axis=1)                 # shuffle within batches
  return np.take_along_axis(table, order, axis=1)


def host_slice(global_batch: np.ndarray, shard_index: int, shard_count: int) -> np.ndarray:
  """Host `shard_index`'s part of a global batch: [i * B / P, (i + 1) * B / P)."""
  b = len(global_batch)
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
  if b % shard_count:
    raise ValueError(f"global batch {b} is not divisible by {shard_count} hosts; "
                     "change config.input.clips_per_class")
  per = b // shard_count
  return global_batch[shard_index * per:(shard_index + 1) * per]


def crop_flip(video: np.ndarray, crop_y: int, crop_x: int, size: int, flip: bool) -> np.ndarray:
  """[..., H, W, 3] -> [..., size, size, 3] at (crop_y, crop_x), mirrored left-right if `flip`."""
  h, w = video.shape[-3:-1]
  if not (0 <= crop_y <= h - size and 0 <= crop_x <= w - size):
    raise ValueError(f"crop {size} at ({crop_y}, {crop_x}) does not fit frames of {h}x{w}")
  out = video[..., crop_y:crop_y + size, crop_x:crop_x + size, :]
  if flip:
    out = out[..., :, ::-1, :]
  return np.ascontiguousarray(out)
