"""K-nearest-neighbour classification of embeddings, on the accelerator.

Legend: R reference (training) embeddings, Q queries, D embedding size, C
classes, k neighbours.

Rule: Euclidean distance, the k nearest references vote with equal weight, and
a tie in the vote goes to the smallest class index. These are the predictions
of scikit-learn's `KNeighborsClassifier(n_neighbors=k, weights='uniform')`
(its `classes_` are the sorted labels and `predict` takes the first maximum of
the vote fractions), checked in tests/test_knn.py.

Distances are the float32 squared distances |q - r|^2 computed from explicit
differences (no |q|^2 + |r|^2 - 2 q.r expansion, whose cancellation can swap
close neighbours far from the origin, and no TF32 / bf16 matmul passes): what
scikit-learn computes in float64, up to float32 rounding. The k nearest are
taken with `lax.top_k` on the negated distances, which puts the lower index
first among equal values: among references at exactly the same distance, the
LOWEST indices are taken (identical to a stable argsort of the distances).

Exact distance ties are where scikit-learn can differ, because it does not
define that choice: its brute-force search keeps a bounded max-heap per query
(a later candidate equal to the heap's current maximum is dropped, and which
of several equal maxima is evicted depends on the heap layout and, when it
splits the references over threads, on the thread count), and its KD / ball
trees visit references in tree order. On integer-grid data full of such ties
its own 'brute' and 'kd_tree' algorithms pick different neighbour sets for
most queries (docs/design.md, "Evaluation"), so no rule matches "scikit-learn"
there. On data without a distance tie at the k-th
neighbour (the normal case for real-valued embeddings) predictions are
identical; identical reference embeddings are such ties, and they can change a
vote only when their labels differ.

Memory. Queries are processed in chunks of `chunk_size` (padded to one
compiled shape). XLA fuses the broadcast difference, square and sum into one
reduction, so a chunk holds the [chunk, R] distance block, 4 chunk R bytes
(measured on CPU: the compiled temp size is that block; an unfused backend
would also need the [chunk, R, D] differences). RAVDESS (R ~ 1300) with chunk
1024: 5 MB; CREMA-D (R ~ 6700): 27 MB. `max_block_bytes` lowers the chunk size
to keep 4 chunk R bytes under a bound.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from avjax import errors


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _chunk_votes(refs: jax.Array, ref_labels: jax.Array, queries: jax.Array, k: int,
                 num_classes: int) -> jax.Array:
  """[chunk, C] int32 vote counts of the k nearest references of each query."""
  refs = refs.astype(jnp.float32)                                  # [R, D]
  queries = queries.astype(jnp.float32)                            # [c, D]
  diff = queries[:, None, :] - refs[None, :, :]                    # [c, R, D], fused away
  d = jnp.sum(diff * diff, axis=-1)                                # [c, R]
  _, idx = jax.lax.top_k(-d, k)                                    # equal: lower index first
  return jnp.sum(jax.nn.one_hot(ref_labels[idx], num_classes, dtype=jnp.int32), axis=1)


class NonFiniteEmbeddings(errors.Failure, ValueError):
  """NaN or inf among the embeddings (a diverged model or a damaged checkpoint): exit 1."""


def knn_votes(train_emb, train_labels, query_emb, k: int = 15, num_classes: int | None = None,
              chunk_size: int = 1024, max_block_bytes: int | None = None) -> np.ndarray:
  """[Q, C] int32 vote counts among the k nearest training embeddings.

  Args:
    train_emb: [R, D] reference embeddings.
    train_labels: [R] int labels in [0, num_classes).
    query_emb: [Q, D] query embeddings.
    k: number of neighbours, 1 <= k <= R.
    num_classes: C; default max(train_labels) + 1.
    chunk_size: queries per distance block.
    max_block_bytes: optional bound on a chunk's [chunk, R] float32 distance
      block; lowers the chunk size (to no less than 1 query).
  """
  train_emb = np.asarray(train_emb)
  train_labels = np.asarray(train_labels)
  query_emb = np.asarray(query_emb)
  if train_emb.ndim != 2 or query_emb.ndim != 2 or train_emb.shape[1] != query_emb.shape[1]:
    raise ValueError(f"knn: expected [R, D] references and [Q, D] queries with the same D, got "
                     f"{train_emb.shape} and {query_emb.shape}")
  if train_labels.shape != (len(train_emb),):
    raise ValueError(f"knn: train_labels must be [R] = [{len(train_emb)}], got shape "
                     f"{train_labels.shape}")
  if not np.issubdtype(train_labels.dtype, np.integer):
    raise ValueError(f"knn: train_labels must be integers, got dtype {train_labels.dtype}")
  for what, emb in (("reference", train_emb), ("query", query_emb)):
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():   # top_k would rank a NaN distance nearest
      raise NonFiniteEmbeddings(
          f"knn: {int(bad.sum())} of {len(emb)} {what} embeddings are not finite (NaN or inf; "
          f"first at row {int(np.argmax(bad))}): the model diverged or a checkpoint is damaged")
  num_refs = len(train_emb)
  if not 1 <= k <= num_refs:
    raise ValueError(f"knn: k = {k} needs 1 <= k <= number of references ({num_refs})")
  if num_classes is None:
    num_classes = int(train_labels.max()) + 1
  if train_labels.min() < 0 or train_labels.max() >= num_classes:
    raise ValueError(f"knn: train_labels must lie in [0, num_classes={num_classes}), got "
                     f"[{train_labels.min()}, {train_labels.max()}]")
  if chunk_size < 1:
    raise ValueError(f"knn: chunk_size must be >= 1, got {chunk_size}")
  if max_block_bytes is not None:
    per_query = 4 * num_refs
    chunk_size = max(1, min(chunk_size, max_block_bytes // per_query))
  q = len(query_emb)
  if q == 0:
    return np.zeros((0, num_classes), np.int32)
  chunk = min(chunk_size, q)
  refs = jnp.asarray(train_emb, jnp.float32)
  labels = jnp.asarray(train_labels, jnp.int32)
  out = []
  for start in range(0, q, chunk):
    block = query_emb[start:start + chunk]
    n_real = len(block)
    if n_real < chunk:  # one compiled shape for every chunk
      block = np.concatenate([block, np.zeros((chunk - n_real, block.shape[1]), block.dtype)])
    votes = _chunk_votes(refs, labels, jnp.asarray(block, jnp.float32), k=k,
                         num_classes=num_classes)
    out.append(votes[:n_real])
  return np.asarray(jnp.concatenate(out), np.int32)


def knn_predict(train_emb, train_labels, query_emb, k: int = 15, num_classes: int | None = None,
                chunk_size: int = 1024, max_block_bytes: int | None = None) -> np.ndarray:
  """[Q] int32 majority-vote class of the k nearest references (tie: smallest class)."""
  votes = knn_votes(train_emb, train_labels, query_emb, k, num_classes, chunk_size,
                    max_block_bytes)
  return np.argmax(votes, axis=1).astype(np.int32)  # first maximum: smallest class index


def knn_scores(train_emb, train_labels, query_emb, k: int = 15, num_classes: int | None = None,
               chunk_size: int = 1024, max_block_bytes: int | None = None) -> np.ndarray:
  """[Q, C] float32 fraction of the k neighbours voting for each class (sklearn's
  `predict_proba` with uniform weights); its first argmax is `knn_predict`."""
  votes = knn_votes(train_emb, train_labels, query_emb, k, num_classes, chunk_size,
                    max_block_bytes)
  return (votes / np.float32(k)).astype(np.float32)
