"""The model's vocabulary, one owner for the config, the models, the losses and evaluation:
variants, modalities, dtypes, convolution implementations, distances, negatives, and the
gate embeddings (AO / VO / AV) and encoder branches of each modality choice."""

from __future__ import annotations


# The one owner of the model's choices (models, losses and evaluation read them here).
VARIANTS = ("gating", "lstm", "global")


MODALITIES = ("av", "audio", "video")


DTYPES = ("float32", "bfloat16")


# How the encoders' convolutions are computed (avjax.models.conv): 'auto' picks per
# layer and backend the form measured fastest; 'xla' / 'matmul' force one form.
CONV_IMPLS = ("auto", "xla", "matmul")


DISTANCES = ("squared", "euclidean")   # loss.distance


NEGATIVES = ("hardest", "semihard")    # loss.negatives (avjax.mining checks it too)

# model.audio_head_stats: how SoundNet's head pools its layer over time (the mean, or the
# mean and the standard deviation; avjax.models.soundnet.pool_time).
AUDIO_HEAD_STATS = ("mean", "mean_std")


# What evaluation reports per `model.modalities`, and the gate embeddings of each.
GATE_MODALITIES = {"av": ("AO", "VO", "AV"), "audio": ("AO",), "video": ("VO",)}


# The encoder branches of each `model.modalities` value.
BRANCHES = {"av": ("audio", "video"), "audio": ("audio",), "video": ("video",)}


MODALITY_KEYS = {"AO": ("audio_gate",), "VO": ("video_gate",), "AV": ("audio_gate", "video_gate")}


def check_model_choice(variant: str, modalities: str, where: str = "config.model") -> None:
  """Raises ValueError for an unknown variant or modalities, or `gating` without both."""
  if variant not in VARIANTS:
    raise ValueError(f"{where}.variant: {variant!r} is not one of {VARIANTS}")
  if modalities not in MODALITIES:
    raise ValueError(f"{where}.modalities: {modalities!r} is not one of {MODALITIES}")
  if variant == "gating" and modalities != "av":
    raise ValueError(f"{where}.modalities: the 'gating' variant needs both modalities ('av'), "
                     f"got {modalities!r}; use 'lstm' or 'global' for one modality")
