"""How each convolution is computed: XLA's convolution or im2col + one matmul.

Both forms compute the same function with the same parameters (flax ``nn.Conv``'s
``kernel [K..., Cin, Cout]`` and ``bias``); only the HLO differs, so checkpoints
and the pretrained weights load unchanged whichever form runs, and a model may
be trained under one and evaluated under the other.

* ``'xla'``: ``lax.conv_general_dilated`` (XLA's convolution emitter).
* ``'matmul'``: the input is padded and unfolded (im2col: the K = prod(kernel)
  shifted, strided views side by side on the channel axis, built one spatial
  axis at a time) and contracted with the kernel reshaped to ``[K * Cin, Cout]``
  in one ``dot_general``; a 1x1 convolution is the matmul alone. The unfolded
  input takes K x the input's memory: on CPU 'auto' raises XLA's peak-memory
  estimate of a train step 1.8x (RAVDESS shape, B = 1) to 2.7x (demo), mostly
  I3D's 7x7x7 stem (K = 343); `jax.checkpoint` around the unfolding did not
  lower it. 'xla' is the memory-lean choice.
* ``'auto'`` (default): per layer and per backend, the form measured faster
  (`AUTO`, from ``scripts/benchmark.py --sections=layers``; the tables in
  BENCHMARKS.md). Backends without measurements (GPU, TPU) use ``'xla'``.

XLA:CPU is slow on convolutions with few output positions and many channels
(SoundNet's conv6 / conv7: 2-3 output steps, 256-1024 channels, at about 1-4
GFLOP/s) and on I3D's 7x7x7 stem, where the matmul form runs at the machine's
matmul speed; on SoundNet's long, thin early layers and on I3D's widest 3x3x3
unit XLA's own emitter is faster, so those stay on ``'xla'`` under 'auto'.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from avjax.choices import CONV_IMPLS as IMPLS

# backend -> network -> (the form of every layer not listed, the layers in the other
# form): each layer in the form measured faster, forward + backward, at the RAVDESS
# shape (scripts/benchmark.py --sections=layers; the figures are in
# docs/benchmark_history.md, "Convolution forms"). Backends not listed (GPU, TPU:
# unmeasured) use 'xla'.
AUTO: dict[str, dict[str, tuple[str, frozenset[str]]]] = {
    "cpu": {
        # SoundNet's short, wide conv6 / conv7 as matmuls, the other layers on XLA.
        "soundnet": ("xla", frozenset({"conv6", "conv7"})),
        # I3D as matmuls but for Mixed_3c's widest 3x3x3 unit.
        "i3d": ("matmul", frozenset({"Mixed_3c/Branch_1/Conv3d_0b_3x3"})),
    },
}


def check_impl(impl: str) -> str:
  if impl not in IMPLS:
    raise ValueError(f"model.conv_impl: {impl!r} is not one of {IMPLS}")
  return impl


def _pads(padding: str | Sequence[tuple[int, int]], in_shape: Sequence[int],
          window: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
  if isinstance(padding, str):
    return [tuple(p) for p in lax.padtype_to_pads(in_shape, window, strides, padding)]
  return [tuple(int(v) for v in p) for p in padding]


def matmul_conv(lhs: jax.Array, rhs: jax.Array, window_strides: Sequence[int],
                padding: str | Sequence[tuple[int, int]], lhs_dilation: Sequence[int] | None = None,
                rhs_dilation: Sequence[int] | None = None, dimension_numbers: Any = None,
                feature_group_count: int = 1, precision: Any = None,
                preferred_element_type: Any = None) -> jax.Array:
  """`lax.conv_general_dilated` for channels-last inputs, as im2col + one matmul.

  lhs [N, S..., Cin], rhs [K..., Cin, Cout] (flax's layout); supports strides,
  kernel dilation and explicit or 'SAME'/'VALID' padding; not input dilation or
  feature groups (the models use neither).
  """
  del dimension_numbers  # flax passes channels-last numbers; asserted by the shapes below
  if feature_group_count != 1 or (lhs_dilation is not None and any(d != 1 for d in lhs_dilation)):
    raise NotImplementedError("matmul_conv: feature groups and input dilation are not supported")
  spatial = lhs.ndim - 2
  kernel = tuple(rhs.shape[:spatial])
  if rhs.ndim != spatial + 2 or rhs.shape[-2] != lhs.shape[-1]:
    raise ValueError(f"matmul_conv: kernel {rhs.shape} does not fit input {lhs.shape} "
                     "(channels-last [N, S..., Cin] and [K..., Cin, Cout] expected)")
  strides = tuple(window_strides)
  dilation = tuple(rhs_dilation) if rhs_dilation is not None else (1,) * spatial
  window = tuple((k - 1) * d + 1 for k, d in zip(kernel, dilation))
  pads = _pads(padding, lhs.shape[1:-1], window, strides)
  padded = tuple(n + p[0] + p[1] for n, p in zip(lhs.shape[1:-1], pads))
  out = tuple((padded[i] - window[i]) // strides[i] + 1 for i in range(spatial))
  if any(o < 1 for o in out):
    raise ValueError(f"matmul_conv: input {lhs.shape} is smaller than the kernel {kernel}")

  # im2col one spatial axis at a time: sum(K_d) slices instead of prod(K_d) (7 + 7 + 7
  # for I3D's stem, not 343; 9 for a 3x3x3 unit, not 27), which keeps the HLO and
  # XLA's compile time small (I3D's train step compiles about as fast as with 'xla').
  # After axis d the channels are ordered (k_d, ..., k_0, Cin).
  cols = lhs
  if any(p != (0, 0) for p in pads):
    cols = jnp.pad(cols, [(0, 0), *pads, (0, 0)])
  for d in range(spatial):
    axis = 1 + d
    taps = []
    for k in range(kernel[d]):
      start = [0] * cols.ndim
      start[axis] = k * dilation[d]
      limit = list(cols.shape)
      limit[axis] = start[axis] + (out[d] - 1) * strides[d] + 1
      step = [1] * cols.ndim
      step[axis] = strides[d]
      taps.append(lax.slice(cols, start, limit, step))
    cols = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
  # The kernel [k_0, ..., k_{n-1}, Cin, Cout] in the columns' order.
  order = tuple(range(spatial - 1, -1, -1)) + (spatial, spatial + 1)
  weights = jnp.transpose(rhs, order).reshape(-1, rhs.shape[-1])  # [K * Cin, Cout]
  return lax.dot_general(cols, weights, (((cols.ndim - 1,), (0,)), ((), ())),
                         precision=precision, preferred_element_type=preferred_element_type)


def conv_fn(impl: str, network: str, layer: str,
            backend: str | None = None) -> Callable[..., jax.Array] | None:
  """The `conv_general_dilated` for flax's nn.Conv (None: lax's own, i.e. 'xla').

  network: 'soundnet' or 'i3d'; layer: the layer's name (SoundNet 'conv6'; I3D
  the Unit3D's path, e.g. 'Mixed_4b/Branch_1/Conv3d_0b_3x3' or 'Conv3d_1a_7x7').
  'auto' reads AUTO for `backend` (default: jax's default backend, at trace
  time).
  """
  check_impl(impl)
  if impl == "auto":
    default, others = AUTO.get(backend or jax.default_backend(), {}).get(network, ("xla", frozenset()))
    impl = default if layer not in others else ("xla" if default == "matmul" else "matmul")
  return matmul_conv if impl == "matmul" else None


def conv_layers(module: nn.Module, *args: Any, network: str, **kwargs: Any) -> list[dict]:
  """Every nn.Conv call of `module.init(key, *args, **kwargs)`, in call order.

  Abstract (`jax.eval_shape`: nothing is computed). Each entry: network, layer
  (the name `conv_fn` is given: the parent's `layer`, else its path), input_shape,
  kernel, strides, padding ('SAME' or explicit pairs), features, use_bias, and
  first (the network's first convolution, whose input needs no gradient).
  """
  specs: list[dict] = []

  def record(next_fun, call_args, call_kwargs, context):
    conv = context.module
    if isinstance(conv, nn.Conv) and context.method_name == "__call__":
      kernel = tuple(int(k) for k in conv.kernel_size)
      strides = conv.strides if isinstance(conv.strides, Sequence) else (conv.strides or 1,) * len(kernel)
      padding = conv.padding if isinstance(conv.padding, str) else tuple(
          tuple(int(v) for v in p) for p in conv.padding)
      specs.append(dict(network=network, layer=getattr(conv.parent, "layer", "/".join(conv.path[:-1])),
                        input_shape=tuple(int(d) for d in call_args[0].shape), kernel=kernel,
                        strides=tuple(int(v) for v in strides), padding=padding,
                        features=int(conv.features), use_bias=bool(conv.use_bias),
                        first=not specs))
    return next_fun(*call_args, **call_kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda *a: module.init(jax.random.key(0), *a, **kwargs), *args)
  return specs


class Centering(nn.Module):
  """x - mean over the batch: a BatchNorm without the variance, scale or offset.

  Training (`use_running_average=False`): the mean over the rows where `mask` [N] is
  True (every row without one), and the running mean in 'batch_stats' (`mean`, zeros
  at first) becomes momentum * mean_running + (1 - momentum) * that mean. Evaluation:
  the running mean. Always applied in training mode when the model trains, whatever
  `freeze_bn`: the layer belongs to the fresh head.

  Used before the fresh heads of SoundNet (`model.center_audio_head`) and I3D
  (`model.center_video_head`). Why: SoundNet's pooled conv7 output (as I3D's pooled
  Mixed_5c) is post-ReLU, almost all positive. The gradient
  of each weight in a row of the next Dense layer then has one sign, Adam moves the
  row together, and the layer's output drifts along a direction shared by every clip;
  the LSTM after it saturates and the gate embeddings collapse (docs/experiments.md). Centred inputs have both signs.

  Both heads keep this momentum whatever their encoder's BatchNorm momentum: the running
  mean starts at zero, and at I3D's 0.999 it would still be 6 % short of the mean after
  2,800 steps, so evaluation would not centre as training did."""
  momentum: float = 0.9

  @nn.compact
  def __call__(self, x: jax.Array, *, use_running_average: bool,
               mask: jax.Array | None = None) -> jax.Array:   # [N, C]
    running = self.variable("batch_stats", "mean", lambda: jnp.zeros(x.shape[-1:], jnp.float32))
    if use_running_average:
      return x - running.value
    x32 = x.astype(jnp.float32)
    if mask is None:
      mean = jnp.mean(x32, axis=0)
    else:
      w = jnp.asarray(mask, jnp.float32).reshape((-1, 1))
      mean = jnp.sum(x32 * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)
    if not self.is_initializing():
      running.value = self.momentum * running.value + (1.0 - self.momentum) * mean
    return (x32 - mean).astype(x.dtype)
