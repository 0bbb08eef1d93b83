"""MWTSM: multimodal, window-wise triplet set mining, in-graph.

Legend: T windows (gates), N clips in the (global) batch, D embedding size.

At window t, for anchor i, MWTSM picks the positive p and negative n with
  label(p) == label(i), p != i, label(n) != label(i),
  (i, p, n) not picked at an earlier window (of this modality),
that maximise d(i, p) - d(i, n), d the squared Euclidean distance: the hardest
triplet not used yet. Ties go to the lowest flat index p * N + n. An anchor
with no such triplet left is marked invalid (its p and n are 0).

With `exclude_used=False` nothing is excluded and every window is mined
independently: since max_{p,n} [d(i,p) - d(i,n)] = max_p d(i,p) - min_n d(i,n),
that is plain batch-hard mining (hardest positive, hardest negative).

Implementation: per window a masked [N, N, N] score tensor and one argmax per
anchor; the [N, N, N] bool mask of used triplets is carried through
`jax.lax.scan` over windows. Memory: N^3 floats per window (N = 40 for
RAVDESS's batch: 256 KB), so the global batch of a data-parallel run is mined
as a whole. Distances are computed on stop-gradient'ed embeddings: mining only
selects indices; the loss recomputes distances with gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pairwise_sq_distances(x: jax.Array) -> jax.Array:
  """[N, D] -> [N, N] squared Euclidean distances (clamped at 0)."""
  x = x.astype(jnp.float32)
  sq = jnp.sum(x * x, axis=-1)
  d = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
  return jnp.maximum(d, 0.0)


def triplet_mask(labels: jax.Array) -> jax.Array:
  """[N] labels -> [N, N, N] bool: (i, p, n) is a valid triplet."""
  labels = jnp.asarray(labels)
  n = labels.shape[0]
  same = labels[:, None] == labels[None, :]
  positive = same & ~jnp.eye(n, dtype=bool)           # [i, p]
  negative = ~same                                     # [i, n]
  return positive[:, :, None] & negative[:, None, :]   # [i, p, n]


def mwtsm(embeddings: jax.Array, labels: jax.Array, exclude_used: bool = True
          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Mines one triplet per anchor and window.

  Args:
    embeddings: [T, N, D] embeddings of one modality at every window.
    labels: [N] int class labels.
    exclude_used: exclude triplets picked at earlier windows (MWTSM); False
      gives batch-hard mining.

  Returns:
    (positives, negatives, valid), each [T, N]: int32, int32, bool.
  """
  embeddings = jax.lax.stop_gradient(jnp.asarray(embeddings))
  t, n, _ = embeddings.shape
  valid_triplets = triplet_mask(labels)  # [N, N, N]

  def step(used, emb):  # used [N, N, N] bool, emb [N, D]
    d = pairwise_sq_distances(emb)                         # [N, N]
    score = d[:, :, None] - d[:, None, :]                  # [i, p, n] = d(i,p) - d(i,n)
    allowed = valid_triplets & ~used if exclude_used else valid_triplets
    flat_allowed = allowed.reshape(n, n * n)
    flat_score = jnp.where(flat_allowed, score.reshape(n, n * n), -jnp.inf)
    best = jnp.argmax(flat_score, axis=1)                  # first maximum: lowest p*N+n
    valid = jnp.any(flat_allowed, axis=1)
    best = jnp.where(valid, best, 0)
    picked = (jax.nn.one_hot(best, n * n, dtype=jnp.bool_) & valid[:, None]).reshape(n, n, n)
    positives = (best // n).astype(jnp.int32)
    negatives = (best % n).astype(jnp.int32)
    return used | picked, (positives, negatives, valid)

  used0 = jnp.zeros((n, n, n), dtype=bool)
  _, (positives, negatives, valid) = jax.lax.scan(step, used0, embeddings)
  return positives, negatives, valid
