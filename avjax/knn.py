"""K-nearest-neighbour classification of embeddings, on the accelerator.

Legend: R reference embeddings, Q queries, D embedding size, C classes.

Euclidean distance, the k nearest references vote with equal weight, and ties
in the vote go to the smallest class index: the predictions of scikit-learn's
`KNeighborsClassifier(n_neighbors=k, weights='uniform')` (tests/test_knn.py).
Among references at exactly the same distance the one with the lower index is
taken first (scikit-learn's brute-force search gives the same on data without
such distance ties; with them it is implementation-defined).

Queries are processed in chunks of `chunk_size`, so a distance block never
holds more than chunk_size x R floats.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.jit, static_argnames=("k", "num_classes"))
def _votes(refs: jax.Array, ref_labels: jax.Array, queries: jax.Array, k: int,
           num_classes: int) -> jax.Array:
  """[chunk, C] vote counts of the k nearest references."""
  refs = refs.astype(jnp.float32)
  queries = queries.astype(jnp.float32)
  d = (jnp.sum(queries ** 2, -1)[:, None] + jnp.sum(refs ** 2, -1)[None, :]
       - 2.0 * queries @ refs.T)                          # [chunk, R]
  _, idx = jax.lax.top_k(-d, k)                           # ties: lower index first
  return jnp.sum(jax.nn.one_hot(ref_labels[idx], num_classes, dtype=jnp.int32), axis=1)


def knn_votes(train_emb, train_labels, query_emb, k: int = 15, num_classes: int | None = None,
              chunk_size: int = 1024) -> np.ndarray:
  """[Q, C] int vote counts among the k nearest training embeddings."""
  train_emb = np.asarray(train_emb)
  train_labels = np.asarray(train_labels).astype(np.int32)
  query_emb = np.asarray(query_emb)
  if train_emb.ndim != 2 or query_emb.ndim != 2 or train_emb.shape[1] != query_emb.shape[1]:
    raise ValueError(f"expected [R, D] references and [Q, D] queries, got {train_emb.shape} "
                     f"and {query_emb.shape}")
  if len(train_labels) != len(train_emb):
    raise ValueError(f"{len(train_labels)} labels for {len(train_emb)} references")
  if not 1 <= k <= len(train_emb):
    raise ValueError(f"k = {k} needs 1 <= k <= number of references ({len(train_emb)})")
  if num_classes is None:
    num_classes = int(train_labels.max()) + 1
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  q = len(query_emb)
  chunk = min(chunk_size, max(q, 1))
  refs = jnp.asarray(train_emb)
  labels = jnp.asarray(train_labels)
  out = []
  for start in range(0, q, chunk):
    block = query_emb[start:start + chunk]
    pad = chunk - len(block)
    if pad:  # one compiled shape for every chunk
      block = np.concatenate([block, np.zeros((pad, block.shape[1]), block.dtype)])
    votes = np.asarray(_votes(refs, labels, jnp.asarray(block), k, num_classes))
    out.append(votes[:chunk - pad])
  if not out:
    return np.zeros((0, num_classes), np.int32)
  return np.concatenate(out)


def knn_predict(train_emb, train_labels, query_emb, k: int = 15, num_classes: int | None = None,
                chunk_size: int = 1024) -> np.ndarray:
  """[Q] int32 majority-vote class of the k nearest references (ties: smallest class)."""
  votes = knn_votes(train_emb, train_labels, query_emb, k, num_classes, chunk_size)
  return np.argmax(votes, axis=1).astype(np.int32)


def knn_scores(train_emb, train_labels, query_emb, k: int = 15, num_classes: int | None = None,
               chunk_size: int = 1024) -> np.ndarray:
  """[Q, C] float32 fraction of the k neighbours voting for each class."""
  votes = knn_votes(train_emb, train_labels, query_emb, k, num_classes, chunk_size)
  return (votes / k).astype(np.float32)
