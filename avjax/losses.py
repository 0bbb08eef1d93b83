"""The paper's per-gate loss: audio-video MSE plus MWTSM-mined triplet hinges.

Legend: N clips (batch), T windows (gates), D encoder embedding, G gate embedding.

Gating (the paper, DESIGN.md):
  L = (1/T) sum_t [ mse_w * MSE_t + trip_w * (1/(M N)) sum_{m} sum_i hinge_{m,t,i} ]
  MSE_t = (1/N) sum_i || f^v_{it} - f^a_{it} ||^2          (encoder embeddings)
  hinge_{m,t,i} = max(d(i, p) - d(i, n) + margin, 0)       (gate embeddings h^m_t)
with d the squared Euclidean distance, (p, n) mined by MWTSM per modality m, and
M = 2 modalities, i.e. the paper's 1/(2N). We average over gates with 1/T; the
paper writes 1/(2T) overall, a constant factor 2 on the whole loss.

Variants:
* 'lstm': each modality's LSTM on its own: the triplet term at the LAST gate
  only, no MSE. With one window MWTSM has no earlier window, so it is batch-hard
  mining.
* 'global': one window; triplets on the gate embedding (= the encoder
  embedding), no MSE.
Single modality ('audio' or 'video'): only that modality's hinges, M = 1 (so
divided by N instead of 2N). The MSE term needs both modalities.

An anchor with no valid triplet left contributes 0 to the sum (the divisor stays
M N). Metrics: 'loss', 'mse', 'triplet', 'triplet_audio' / 'triplet_video',
'active_triplets' (fraction of mined triplets with a positive hinge) and
'no_triplet_anchors' (fraction of anchor-windows with no valid triplet).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from avjax import mining

_MODALITIES = {"av": ("audio", "video"), "audio": ("audio",), "video": ("video",)}


def triplet_hinges(embeddings: jax.Array, positives: jax.Array, negatives: jax.Array,
                   valid: jax.Array, margin: float) -> jax.Array:
  """[T, N, G] embeddings and [T, N] picks -> [T, N] hinges (0 where invalid)."""
  emb = embeddings.astype(jnp.float32)
  pos = jnp.take_along_axis(emb, positives[..., None], axis=1)
  neg = jnp.take_along_axis(emb, negatives[..., None], axis=1)
  d_ap = jnp.sum((emb - pos) ** 2, axis=-1)
  d_an = jnp.sum((emb - neg) ** 2, axis=-1)
  return jnp.where(valid, jax.nn.relu(d_ap - d_an + margin), 0.0)


def compute_loss(outputs: Mapping[str, jax.Array], labels: jax.Array, loss_config,
                 variant: str, modalities: str) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Loss and metrics for one batch.

  Args:
    outputs: model outputs, '{audio,video}_enc' [N, T, D] and '{audio,video}_gate'
      [N, T, G] for the modalities in use.
    labels: [N] int.
    loss_config: config.loss (margin, mse_weight, triplet_weight, exclude_used).
    variant: 'gating', 'lstm' or 'global'.
    modalities: 'av', 'audio' or 'video'.
  """
  if variant not in ("gating", "lstm", "global"):
    raise ValueError(f"unknown variant {variant!r}")
  mods = _MODALITIES[modalities]
  metrics: dict[str, jax.Array] = {}
  hinge_sums, mined, active, empty = [], 0, 0.0, 0.0
  n = labels.shape[0]
  windows = None
  for m in mods:
    gate = outputs[f"{m}_gate"]                      # [N, T, G]
    if variant == "lstm":
      gate = gate[:, -1:]
    emb = jnp.swapaxes(gate, 0, 1)                   # [T, N, G]
    windows = emb.shape[0]
    p, neg, valid = mining.mwtsm(emb, labels, exclude_used=loss_config.exclude_used)
    hinge = triplet_hinges(emb, p, neg, valid, loss_config.margin)   # [T, N]
    metrics[f"triplet_{m}"] = jnp.sum(hinge) / (windows * n)
    hinge_sums.append(jnp.sum(hinge))
    mined = mined + jnp.sum(valid)
    active = active + jnp.sum((hinge > 0) & valid)
    empty = empty + jnp.sum(~valid)
  triplet = sum(hinge_sums) / (windows * len(mods) * n)
  metrics["triplet"] = triplet
  metrics["active_triplets"] = active / jnp.maximum(mined, 1)
  metrics["no_triplet_anchors"] = empty / (windows * len(mods) * n)

  mse = jnp.zeros((), jnp.float32)
  if variant == "gating" and modalities == "av" and loss_config.mse_weight:
    diff = outputs["video_enc"].astype(jnp.float32) - outputs["audio_enc"].astype(jnp.float32)
    mse = jnp.mean(jnp.sum(diff ** 2, axis=-1))     # (1/T) sum_t (1/N) sum_i ||.||^2
  metrics["mse"] = mse
  loss = loss_config.mse_weight * mse + loss_config.triplet_weight * triplet
  metrics["loss"] = loss
  return loss, metrics
