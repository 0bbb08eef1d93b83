"""The trunk mini-language of `config.model.trunk`: 'finetune', 'frozen' or
'finetune_from:<endpoint>[+<endpoint>]', where each encoder is cut, and the learning-rate
factor of the pretrained layers that train."""

from __future__ import annotations

from avjax import choices


# The pretrained layers' learning-rate factor when they train ('finetune' and
# 'finetune_from:<endpoint>'): at the head's full rate they memorise the training
# clips and end below the frozen trunk (docs/experiments.md).
TRUNK_LR_SCALE = 0.01


def default_trunk_lr_scale(trunk: str, pretrained: bool = True) -> float:
  """`optim.trunk_lr_scale` when the config leaves it None (`config_lib.complete` resolves
  it): 0.01 when pretrained trunk layers train ('finetune', 'finetune_from:<endpoint>'
  with `model.pretrained`), else 1.0 (randomly initialised encoders, as the demo's, train
  at the full rate; unused when 'frozen')."""
  return TRUNK_LR_SCALE if pretrained and str(trunk) != "frozen" else 1.0


TRUNKS = ("finetune", "frozen", "finetune_from:<endpoint>")


FINETUNE_FROM = "finetune_from:"


POOLED = "pooled"   # the input endpoint of a frozen trunk (the encoders' POOLED)


# Where each encoder can be cut (its layers up to there fixed and cached): SoundNet-8's
# layers, and I3D's endpoints before Mixed_5c (avjax.models.soundnet / i3d).
SOUNDNET_CUTS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7")


I3D_CUTS = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
            "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b",
            "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b")


def trunk_inputs(model) -> dict[str, str | None]:
  """{'audio' / 'video': the encoder's input endpoint} for the modalities of `model`
  (a config's `model` block): None (raw media, 'finetune'), 'pooled' ('frozen') or
  the layer a 'finetune_from:' trunk is cut at. Raises ValueError naming the field."""
  trunk = str(model.trunk)
  mods = choices.BRANCHES[model.modalities]
  if trunk == "finetune":
    return {m: None for m in mods}
  if trunk == "frozen":
    return {m: POOLED for m in mods}
  if not trunk.startswith(FINETUNE_FROM):
    raise ValueError(f"config.model.trunk: {trunk!r} is not one of {TRUNKS}")
  names = [n.strip() for n in trunk[len(FINETUNE_FROM):].replace(",", "+").split("+") if n.strip()]
  out: dict[str, str | None] = {}
  for name in names:
    modality = "audio" if name in SOUNDNET_CUTS else "video" if name in I3D_CUTS else None
    if modality is None:
      raise ValueError(f"config.model.trunk: {name!r} is not a SoundNet-8 layer {SOUNDNET_CUTS} "
                       f"nor an I3D endpoint {I3D_CUTS}")
    if modality not in mods:
      raise ValueError(f"config.model.trunk: {name!r} cuts the {modality} encoder, which "
                       f"model.modalities={model.modalities!r} does not use")
    if modality in out:
      raise ValueError(f"config.model.trunk: two cuts of the {modality} encoder in {trunk!r}")
    out[modality] = name
  missing = [m for m in mods if m not in out]
  if missing:
    raise ValueError(f"config.model.trunk: {trunk!r} names no cut of the {missing[0]} encoder "
                     f"(model.modalities={model.modalities!r}); e.g. 'finetune_from:conv4' "
                     "(SoundNet-8) or 'finetune_from:Mixed_4f' (I3D), joined by '+'")
  return {m: out[m] for m in mods}
