"""The paper's per-gate loss: audio-video MSE plus MWTSM-mined triplet hinges.

Legend: N clips (batch, batch-major inputs), T windows (gates), D encoder
embedding size, G gate (LSTM) embedding size, M number of modalities in use.

'gating' (the paper's Eq. 2, docs/design.md):

  L = (1/T) sum_t [ w_mse MSE_t + w_tr (1/(2N)) sum_{m in {a, v}} sum_i h_{m,t,i} ]
  MSE_t     = (1/N) sum_i || f^v_{it} - f^a_{it} ||^2          encoder embeddings
  h_{m,t,i} = max(d(i, p) - d(i, n) + margin, 0)               gate embeddings h^m_t

d the squared Euclidean distance, (p, n) mined by MWTSM (`avjax.mining.mwtsm`)
separately for each modality m on that modality's gate embeddings. We average
over gates with 1/T; the paper writes 1/(2T) in front of the whole sum, a
constant factor 1/2 on the loss. Adam's update is invariant to it up to its
epsilon, but with the L2 weight decay added to the gradient (torch.optim.Adam
semantics) the decay weighs twice as much, relative to the loss, under the
paper's factor as under ours. w_mse = loss.mse_weight, w_tr =
loss.triplet_weight, margin = loss.margin, MWTSM on/off = loss.exclude_used.

Variants (config.model.variant):
* 'lstm': each modality's LSTM trained on its own: the triplet term at the LAST
  gate only, no MSE. With a single window MWTSM has no earlier window to
  exclude triplets from, so it reduces to batch-hard mining (with
  `negatives='semihard'`: the hardest semi-hard triplet of each anchor).
* 'global': one window (the dataset's global windowing), no LSTM: the triplet term on
  the gate embedding (= the encoder embedding), no MSE. If given several windows
  they are averaged as above (MWTSM across them); with one it is batch-hard (or
  semi-hard, as for 'lstm').
* Single modality ('audio' or 'video', only with 'lstm' / 'global'): only that
  modality's hinges, divided by N instead of 2N (generally by M N).

Anchors with no valid triplet left (a class alone in the batch, or all its
triplets used at earlier windows) contribute 0 to the sum and stay in the
divisor M N; they are counted in the metrics.

Padding: `mask` [N] bool (optional) drops clips entirely: they are neither
anchors, positives nor negatives, and N becomes the number of real clips.

Padded windows (`window_valid` [N, T], optional; given when
`loss.mask_padded_windows`): a window wholly past its clip's end
(`window_valid == 0`) takes no part in the loss. Its audio-video distance is
left out of the MSE, and at that window the clip is neither anchor, positive
nor negative for the miner. The divisors count the real (clip, window) pairs
instead of T N: MSE = sum over real pairs / their number, and the triplet term
of a modality = sum of its hinges / its real anchor slots. A window partly
inside the clip counts as a whole, as before, and a batch without padding
gives the unmasked loss. The 'lstm' variant's loss reads the last gate, which
the masked LSTM holds at each clip's last real gate (`gating.TemporalLSTM`), so
every clip counts there. Without `window_valid` every window counts (the
former behaviour; `loss.mask_padded_windows=False`).

Metrics (float32 scalars): 'loss'; 'mse' (the mean above, computed for
'gating' even when w_mse = 0, 0 otherwise); 'triplet' (the unweighted triplet
term, = mean of the per-modality terms); 'triplet_audio' / 'triplet_video'
((1/(T N)) sum_{t,i} h_{m,t,i} for the modalities in use); 'active_triplets'
(fraction of the mined, valid triplets with a positive hinge);
'no_triplet_anchors' (FRACTION of anchor slots, over modalities, gates and
real clips, that had no valid triplet). To watch for collapse, per modality m:
'distance_m' (the mean distance between the distinct real clips of a window, in
the loss's distance, over the windows the loss sees) and 'zero_hinge_m' (the
fraction of its mined triplets whose hinge is 0, i.e. already satisfy the margin).
During a batch-all warm-up 'active_triplets', 'zero_hinge_m' and
'no_triplet_anchors' describe the triplets the loss takes then, every valid one.
'distance_m' near 0 is a collapsed embedding (every clip at one point); the loss
then sits at the margin with every triplet active under 'hardest' negatives and
during the warm-up, while semi-hard mining finds no triplet at all
('no_triplet_anchors' near 1, the triplet term near 0).

Options beside the paper's reading (`config.loss`): `distance` 'euclidean'
(non-squared distances in the miner's score and the hinges, as Hermans et al.
2017) instead of 'squared'; a warm-up of E > 0 epochs (`batch_all_fraction` of the
epochs: `run_spec.RunSpec.warmup_epochs`): for the first E
epochs the triplet term of each modality is batch-all, the mean hinge over every
valid triplet of every window (`batch_all_hinges`), then MWTSM (or batch-hard) as
above; `negatives` 'semihard': the miner picks among the triplets whose negative is
farther than the positive (FaceNet's semi-hard negatives; `avjax.mining`). The
defaults are semi-hard after a warm-up over half of training; `paper_literal` is
hardest from the first step.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from avjax import choices
from avjax import mining

_BRANCHES = choices.BRANCHES


def mined_windows(variant: str, num_windows: int) -> int:
  """The windows the triplet term mines across: 'lstm' mines its last gate alone."""
  return 1 if variant == "lstm" else int(num_windows)


def mwtsm_notice(variant: str, num_windows: int, exclude_used: bool) -> str | None:
  """A line for the log when `loss.exclude_used=False` cannot change the run: with one
  mined window MWTSM has no earlier window to exclude triplets from."""
  if exclude_used or mined_windows(variant, num_windows) > 1:
    return None
  where = ("the 'lstm' variant mines its last gate alone" if variant == "lstm"
           else "the run has one window")
  return (f"notice: loss.exclude_used=False (no_mwtsm) changes nothing here: {where}, where "
          "MWTSM has no earlier window to exclude triplets from; only the gating model "
          "mines across windows")


def _distance(sq: jax.Array, distance: str) -> jax.Array:
  """Squared Euclidean distances -> `loss.distance` ('squared' or 'euclidean')."""
  return sq if distance == "squared" else jnp.sqrt(sq + 1e-12)


def triplet_hinges(embeddings: jax.Array, positives: jax.Array, negatives: jax.Array,
                   valid: jax.Array, margin: float, distance: str = "squared") -> jax.Array:
  """Hinges of mined triplets, with gradients.

  Args:
    embeddings: [T, N, G]; positives, negatives: [T, N] int; valid: [T, N] bool.
    margin: triplet margin (on the distances).
    distance: 'squared' Euclidean (the paper's) or 'euclidean' (`loss.distance`).

  Returns:
    [T, N] float32 max(d(i, p) - d(i, n) + margin, 0), 0 where not valid.
  """
  emb = embeddings.astype(jnp.float32)
  pos = jnp.take_along_axis(emb, positives[..., None], axis=1)   # [T, N, G]
  neg = jnp.take_along_axis(emb, negatives[..., None], axis=1)   # [T, N, G]
  d_ap = _distance(jnp.sum((emb - pos) ** 2, axis=-1), distance)  # [T, N]
  d_an = _distance(jnp.sum((emb - neg) ** 2, axis=-1), distance)
  return jnp.where(valid, jax.nn.relu(d_ap - d_an + margin), 0.0)


def batch_all_hinges(embeddings: jax.Array, labels: jax.Array, anchors: jax.Array,
                     margin: float, distance: str = "squared"
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Batch-all triplets (Hermans et al. 2017): every valid (i, p, n) at every window.

  Args:
    embeddings: [T, N, G]; labels: [N]; anchors: [T, N] float, 1 where the clip is
      real at that window (it is then anchor, positive or negative there).

  Returns:
    (sum of hinges, number of valid triplets with a positive hinge, number of valid
    triplets), scalars; the batch-all term is sum / max(valid, 1), the mean over every
    valid triplet. (The mean over the violating ones only, Hermans et al.'s BA≠0, made
    a collapsed embedding a fixed point on the development set: at collapse every
    hinge is the margin, and spreading leaves a mean of the harder ones above it.)
  """
  emb = embeddings.astype(jnp.float32)
  d = _distance(jax.vmap(mining.pairwise_sq_distances)(emb), distance)   # [T, N, N]
  hinge = jax.nn.relu(d[:, :, :, None] - d[:, :, None, :] + margin)     # [T, i, p, n]
  real = anchors > 0                                                     # [T, N]
  ok = jax.vmap(lambda m: mining.triplet_mask(labels, m))(real)         # [T, N, N, N]
  hinge = jnp.where(ok, hinge, 0.0)
  return jnp.sum(hinge), jnp.sum((hinge > 0) & ok), jnp.sum(ok)


def _anchors_without_triplet(labels: jax.Array, anchors: jax.Array) -> jax.Array:
  """The real anchor slots ([T, N] float `anchors`) with no valid triplet at all: no other
  real clip of their class, or none of another class, at that window."""
  real = anchors > 0
  same = labels[:, None] == labels[None, :]
  other = ~jnp.eye(labels.shape[0], dtype=bool)
  has_pos = jnp.any(real[:, None, :] & (same & other)[None], axis=-1)   # [T, N]
  has_neg = jnp.any(real[:, None, :] & ~same[None], axis=-1)
  return jnp.sum(real & ~(has_pos & has_neg))


def mean_pair_distance(embeddings: jax.Array, anchors: jax.Array, distance: str) -> jax.Array:
  """The mean distance between the distinct real clips of each window ([T, N, G], [T, N]):
  how spread the embeddings the loss sees are (0 when they have collapsed)."""
  emb = jax.lax.stop_gradient(embeddings.astype(jnp.float32))
  d = _distance(jax.vmap(mining.pairwise_sq_distances)(emb), distance)   # [T, N, N]
  real = anchors > 0
  pairs = real[:, :, None] & real[:, None, :] & ~jnp.eye(emb.shape[1], dtype=bool)
  return jnp.sum(jnp.where(pairs, d, 0.0)) / jnp.maximum(jnp.sum(pairs), 1)


def compute_loss(outputs: Mapping[str, jax.Array], labels: jax.Array, loss_config,
                 variant: str, modalities: str, mask: jax.Array | None = None,
                 window_valid: jax.Array | None = None, batch_all: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Loss and metrics for one (global) batch. Pure and jit-able.

  Args:
    outputs: model outputs, batch-major: '{audio,video}_enc' [N, T, D] and
      '{audio,video}_gate' [N, T, G] for the modalities in use ('*_enc' only
      needed by 'gating').
    labels: [N] int class labels.
    loss_config: config.loss (margin, mse_weight, triplet_weight, exclude_used).
    variant: 'gating', 'lstm' or 'global'.
    modalities: 'av', 'audio' or 'video'.
    mask: optional [N] bool, False for padding clips.
    window_valid: optional [N, T] float, the fraction of each window inside its
      clip; windows where it is 0 are left out (see the module docstring).
    batch_all: optional bool scalar (may be traced): True takes the batch-all
      triplet term instead of the mined one (the warm-up, `run_spec.RunSpec.warmup_epochs`).

  Returns:
    (loss scalar, metrics dict of scalars; see the module docstring).
  """
  choices.check_model_choice(variant, modalities, "losses.compute_loss")
  mods = _BRANCHES[modalities]
  needed = [f"{m}_gate" for m in mods] + (["audio_enc", "video_enc"] if variant == "gating" else [])
  missing = [k for k in needed if k not in outputs]
  if missing:
    raise ValueError(f"losses.compute_loss: outputs lack {missing} (have {sorted(outputs)}) "
                     f"for variant {variant!r}, modalities {modalities!r}")
  labels = jnp.asarray(labels)
  n = labels.shape[0]
  if mask is None:
    clip = jnp.ones((n,), jnp.float32)
  else:
    clip = jnp.asarray(mask, bool).astype(jnp.float32)             # [N]
  num_clips = jnp.maximum(jnp.sum(clip), 1.0)
  real = None                                                      # [N, T] float, real windows
  if window_valid is not None:
    real = (jnp.asarray(window_valid) > 0).astype(jnp.float32) * clip[:, None]

  margin = loss_config.margin
  exclude_used = bool(loss_config.exclude_used)
  distance = str(loss_config.distance)
  negatives = str(loss_config.negatives)
  metrics: dict[str, jax.Array] = {}
  per_modality, mined, active, empty, slots = [], 0.0, 0.0, 0.0, 0.0
  for m in mods:
    gate = outputs[f"{m}_gate"]                                    # [N, T, G]
    if gate.ndim != 3 or gate.shape[0] != n:
      raise ValueError(f"losses.compute_loss: outputs['{m}_gate'] must be [N={n}, T, G], "
                       f"got {gate.shape}")
    keep = mined_windows(variant, gate.shape[1])                   # 'lstm': its last gate
    gate = gate[:, gate.shape[1] - keep:]
    emb = jnp.swapaxes(gate, 0, 1)                                 # [T, N, G]
    windows = emb.shape[0]
    if real is None or variant == "lstm":
      anchors, num_slots = clip[None, :], windows * num_clips      # [1, N]
      miner_mask = mask
    else:
      if real.shape != (n, windows):
        raise ValueError(f"losses.compute_loss: window_valid must be [N={n}, T={windows}], "
                         f"got {real.shape}")
      anchors = real.T                                             # [T, N]
      num_slots = jnp.maximum(jnp.sum(anchors), 1.0)
      miner_mask = anchors > 0
    p, q, valid = mining.mwtsm(emb, labels, exclude_used=exclude_used, mask=miner_mask,
                               distance=distance, negatives=negatives)
    hinge = triplet_hinges(emb, p, q, valid, margin, distance)     # [T, N]
    term = jnp.sum(hinge) / num_slots                              # (1/T)(1/N) sum when unmasked
    slot_mask = jnp.broadcast_to(anchors, (windows, n))            # [T, N] real anchor slots
    n_valid, n_active = jnp.sum(valid), jnp.sum((hinge > 0) & valid)
    n_empty = jnp.sum(~valid * anchors)
    if batch_all is not None:   # the warm-up's metrics describe the batch-all triplets
      total, positive, count = batch_all_hinges(emb, labels, slot_mask, margin, distance)
      term = jnp.where(batch_all, total / jnp.maximum(count, 1), term)
      n_valid, n_active = jnp.where(batch_all, count, n_valid), jnp.where(batch_all, positive,
                                                                          n_active)
      n_empty = jnp.where(batch_all, _anchors_without_triplet(labels, slot_mask), n_empty)
    metrics[f"triplet_{m}"] = term
    metrics[f"distance_{m}"] = mean_pair_distance(emb, slot_mask, distance)
    metrics[f"zero_hinge_{m}"] = (n_valid - n_active) / jnp.maximum(n_valid, 1)
    per_modality.append(term)
    mined = mined + n_valid
    active = active + n_active
    empty = empty + n_empty
    slots = slots + num_slots
  triplet = sum(per_modality) / len(mods)                          # (1/(M N)) sum_m
  metrics["triplet"] = triplet
  metrics["active_triplets"] = active / jnp.maximum(mined, 1)
  metrics["no_triplet_anchors"] = empty / slots

  loss = loss_config.triplet_weight * triplet
  mse = jnp.zeros((), jnp.float32)
  if variant == "gating":
    video_enc, audio_enc = outputs["video_enc"], outputs["audio_enc"]
    if video_enc.shape != audio_enc.shape or video_enc.shape[0] != n:
      raise ValueError(f"losses.compute_loss: 'video_enc' {video_enc.shape} and 'audio_enc' "
                       f"{audio_enc.shape} must both be [N={n}, T, D]")
    diff = video_enc.astype(jnp.float32) - audio_enc.astype(jnp.float32)   # [N, T, D]
    sq = jnp.sum(diff * diff, axis=-1)                                      # [N, T]
    if real is None:
      mse = jnp.sum(sq * clip[:, None]) / (sq.shape[1] * num_clips)         # (1/T) sum_t MSE_t
    else:
      mse = jnp.sum(sq * real) / jnp.maximum(jnp.sum(real), 1.0)            # over real windows
    if loss_config.mse_weight:
      loss = loss + loss_config.mse_weight * mse
  metrics["mse"] = mse
  metrics["loss"] = loss
  return loss, metrics
