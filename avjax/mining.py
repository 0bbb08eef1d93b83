"""MWTSM: multi-window triplet set mining (paper Sect. III-D), in-graph.

Legend: T windows (gates), N clips in the (global) batch, D embedding size.

Definition (docs/design.md). At window t, for anchor i, MWTSM picks the positive p
and the negative n with

  label(p) == label(i), p != i, label(n) != label(i),
  (i, p, n) not picked at an earlier window (of this modality),

that maximise d(i, p) - d(i, n), d the squared Euclidean distance: the hardest
triplet not used yet. Ties go to the lowest flat index p * N + n. An anchor
with no such triplet left is invalid at that window (`valid` False, p = n = 0).
Only picks of valid anchors are marked as used. The function is called once
per modality, so each modality has its own record of used triplets.

Semi-hard negatives (`negatives='semihard'`, `loss.negatives`). FaceNet (Schroff
et al. 2015, the paper's [26]) §3.2 found that the hardest negatives "can in practice
lead to bad local minima early on in training ... a collapsed model" and trains on
semi-hard ones instead: negatives farther from the anchor than the positive. With
'semihard' the candidates of each anchor are further restricted to the triplets with
d(i, p) < d(i, n) (strictly); among them the pick is again the one maximising
d(i, p) - d(i, n), the hardest semi-hard triplet, and the exclusion of used
triplets and the masks apply as above. An anchor with no such triplet is invalid at
that window. Without `exclude_used` the same joint argmax runs with no used mask.

Batch-hard equivalence (`exclude_used=False`). Without the used mask every
window is mined on its own, and since

  max_{p, n} [d(i, p) - d(i, n)] = max_p d(i, p) - min_n d(i, n)

the maximisers are exactly {hardest positives} x {hardest negatives}; the
lowest flat index p * N + n among them is (lowest hardest positive, lowest
hardest negative). So the joint argmax without a mask IS batch-hard mining
(Hermans et al. 2017) with first-index tie breaking, and `exclude_used=False`
is implemented that way: an argmax over positives and an argmin over negatives,
O(N^2) per window instead of O(N^3). (In floating point the joint score
fl(d_p - d_n) can merge two nearly equal scores into one value, so a joint
argmax could in principle differ from batch-hard on such rounding ties; the
separate form is batch-hard exactly. tests/test_mining.py checks both forms
against a brute-force joint argmax.) MWTSM's first window equals batch-hard.

Implementation of MWTSM: `jax.lax.scan` over windows carrying the [N, N, N]
bool mask `used[i, p, n]`; per window a masked [N, N, N] score tensor and one
argmax per anchor over the flattened (p, n) axis (`jnp.argmax` returns the
first maximum, i.e. the lowest flat index). No Python loop over anchors, no
host callback; jit-able (`exclude_used` is a static Python bool).

Distances are computed from `stop_gradient`'ed embeddings by explicit
differences (exact float32, no matmul, so no TF32 / bf16 matmul passes on
GPU / TPU): mining only selects indices, and the loss recomputes d(i, p) and
d(i, n) of the picked triplets with gradients, with the same formula.

Memory (per call, i.e. per modality): the carried mask is N^3 bytes; one
window's body holds the [N, N, N] float32 scores and bool masks (3-5 N^3
bytes; XLA fuses the [N, N, D] differences into the distance reduction).
Measured on CPU (jit, D = 400): 0.26 MB temporaries at N = 40 (RAVDESS's
global batch, 5 x 8 classes), 0.11 MB at N = 30 (CREMA-D), 12.6 MB at N = 160;
N = 1000 would need about 4 GB: beyond a few hundred clips mine per device
(shard_map). Under jit the global batch is one array, so the whole global
batch is mined (tests/test_losses.py checks a 4-device sharded batch).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from avjax import choices


def pairwise_sq_distances(x: jax.Array) -> jax.Array:
  """[N, D] -> [N, N] squared Euclidean distances, float32, by differences."""
  x = x.astype(jnp.float32)
  diff = x[:, None, :] - x[None, :, :]                   # [N, N, D]
  return jnp.sum(diff * diff, axis=-1)


def _pair_masks(labels: jax.Array, mask: jax.Array | None
                ) -> tuple[jax.Array, jax.Array]:
  """[N] labels (and clip mask) -> ([i, p] positive ok, [i, n] negative ok), bool."""
  labels = jnp.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f"mining: labels must be [N], got shape {labels.shape}")
  n = labels.shape[0]
  same = labels[:, None] == labels[None, :]
  positive = same & ~jnp.eye(n, dtype=bool)              # [i, p]
  negative = ~same                                       # [i, n]
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    both = mask[:, None] & mask[None, :]
    positive, negative = positive & both, negative & both
  return positive, negative


def _window_masks(mask: jax.Array | None, t: int, n: int) -> jax.Array | None:
  """An [N] clip mask or a [T, N] per-window mask -> [T, N] bool (None stays None)."""
  if mask is None:
    return None
  mask = jnp.asarray(mask, bool)
  if mask.shape not in ((n,), (t, n)):
    raise ValueError(f"mining: mask must be [N] = [{n}] or [T, N] = [{t}, {n}], "
                     f"got shape {mask.shape}")
  return jnp.broadcast_to(mask, (t, n))


def triplet_mask(labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """[N] labels -> [N, N, N] bool: (i, p, n) is a valid triplet (ignoring use)."""
  positive, negative = _pair_masks(labels, mask)
  return positive[:, :, None] & negative[:, None, :]     # [i, p, n]


def _check(embeddings: jax.Array, labels: jax.Array) -> None:
  if embeddings.ndim != 3:
    raise ValueError(f"mining: embeddings must be [T, N, D], got shape {embeddings.shape}")
  if jnp.shape(labels) != (embeddings.shape[1],):
    raise ValueError(f"mining: labels must be [N] = [{embeddings.shape[1]}], "
                     f"got shape {jnp.shape(labels)}")


def batch_hard(embeddings: jax.Array, labels: jax.Array, mask: jax.Array | None = None
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Batch-hard mining per window: hardest positive and hardest negative.

  Args:
    embeddings: [T, N, D]; labels: [N] int; mask: optional [N] bool, False for
      padding clips (never anchors, positives or negatives), or [T, N] for a
      mask per window (a clip masked at window t takes no part in window t).

  Returns:
    (positives, negatives, valid), each [T, N] (int32, int32, bool); ties go to
    the lowest index; p = n = 0 where invalid.
  """
  embeddings = jax.lax.stop_gradient(jnp.asarray(embeddings))
  _check(embeddings, labels)
  t, n = embeddings.shape[:2]
  masks = _window_masks(mask, t, n)                      # [T, N] or None
  if masks is None:
    positive, negative = _pair_masks(labels, None)       # [N, N] each, every window
  else:
    positive, negative = jax.vmap(lambda m: _pair_masks(labels, m))(masks)  # [T, N, N]
  d = jax.vmap(pairwise_sq_distances)(embeddings)        # [T, N, N]
  p = jnp.argmax(jnp.where(positive, d, -jnp.inf), axis=-1)  # first max: lowest index
  q = jnp.argmin(jnp.where(negative, d, jnp.inf), axis=-1)   # first min: lowest index
  valid = jnp.any(positive, axis=-1) & jnp.any(negative, axis=-1)  # [N] or [T, N]
  valid = jnp.broadcast_to(valid, (t, n))
  zero = jnp.zeros_like(p)
  return (jnp.where(valid, p, zero).astype(jnp.int32),
          jnp.where(valid, q, zero).astype(jnp.int32), valid)


def distances(x: jax.Array, distance: str = "squared") -> jax.Array:
  """[N, D] -> [N, N] distances: 'squared' Euclidean (the paper's) or 'euclidean'
  (sqrt(d + 1e-12): finite gradients where d = 0)."""
  d = pairwise_sq_distances(x)
  if distance == "squared":
    return d
  if distance == "euclidean":
    return jnp.sqrt(d + 1e-12)
  raise ValueError(f"mining: distance {distance!r} is not 'squared' or 'euclidean'")


def mwtsm(embeddings: jax.Array, labels: jax.Array, exclude_used: bool = True,
          mask: jax.Array | None = None, distance: str = "squared",
          negatives: str = "hardest") -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mines one triplet per anchor and window (one modality).

  Args:
    embeddings: [T, N, D] embeddings of one modality at every window.
    labels: [N] int class labels.
    exclude_used: exclude triplets picked at earlier windows (MWTSM). False
      gives plain batch-hard mining (see the module docstring). Static.
    mask: optional [N] bool, False for padding clips: they are never anchors
      (valid False), positives or negatives. Or [T, N]: a mask per window (a
      clip masked at window t is neither anchor, positive nor negative there;
      its earlier picks stay used).
    distance: 'squared' (the paper's d) or 'euclidean' (`loss.distance`): the score
      d(i, p) - d(i, n) of the joint argmax. Batch-hard's picks are the same under
      both (the hardest positive and negative do not change under a square root).
    negatives: 'hardest' (the paper's reading) or 'semihard': only triplets with
      d(i, p) < d(i, n) are candidates (module docstring). Static.

  Returns:
    (positives, negatives, valid), each [T, N]: int32, int32, bool.
  """
  distances(jnp.zeros((1, 1)), distance)                 # checks the name
  if negatives not in choices.NEGATIVES:
    raise ValueError(f"mining: negatives {negatives!r} is not one of {choices.NEGATIVES}")
  semihard = negatives == "semihard"
  if not exclude_used and not semihard:
    return batch_hard(embeddings, labels, mask)
  embeddings = jax.lax.stop_gradient(jnp.asarray(embeddings))
  _check(embeddings, labels)
  t, n = embeddings.shape[:2]
  masks = _window_masks(mask, t, n)                      # [T, N] or None
  allowed0 = triplet_mask(labels)                        # [N, N, N]
  anchors = jnp.arange(n)

  def step(used, inputs):  # used [N, N, N] bool, emb [N, D], window mask [N]
    emb, window = inputs
    d = distances(emb, distance)                         # [N, N]
    score = d[:, :, None] - d[:, None, :]                # [i, p, n] = d(i,p) - d(i,n)
    allowed = allowed0 & ~used
    if semihard:
      allowed = allowed & (score < 0)                    # d(i, p) < d(i, n)
    if masks is not None:
      allowed = allowed & triplet_mask(labels, window)
    allowed = allowed.reshape(n, n * n)                  # [i, p*N + n]
    flat = jnp.where(allowed, score.reshape(n, n * n), -jnp.inf)
    best = jnp.argmax(flat, axis=1)                      # first maximum: lowest p*N + n
    valid = jnp.any(allowed, axis=1)                     # [N]
    best = jnp.where(valid, best, 0)
    p, q = best // n, best % n
    if exclude_used:
      used = used.at[anchors, p, q].set(used[anchors, p, q] | valid)  # distinct i: no clash
    return used, (p.astype(jnp.int32), q.astype(jnp.int32), valid)

  used0 = jnp.zeros((n, n, n), dtype=bool)
  windows = masks if masks is not None else jnp.ones((t, n), bool)
  _, (positives, negatives, valid) = jax.lax.scan(step, used0, (embeddings, windows))
  return positives, negatives, valid
