"""The paper's audio-visual model: encoders per window, an LSTM per modality over windows.

Shapes: B clips, T windows ("gates") per clip, F frames and S audio samples per
window, H x W pixels, D encoder embedding size (`embed_dim`), G gate embedding
size (`lstm_hidden`; `embed_dim` for the 'global' variant).

    video [B, T, F, H, W, 3] uint8 --reshape--> [B*T, F, H, W, 3] --I3D-------> [B, T, D]
    audio [B, T, S] float in [-1,1] --reshape--> [B*T, S]          --SoundNet8-> [B, T, D]
    per modality: [B, T, D] --LSTM scanned over T (nn.scan)--> [B, T, G]

The encoders run once on all B*T windows, outside the scan. Outputs (float32):
'video_enc' / 'audio_enc' [B, T, D] (the MSE term) and 'video_gate' / 'audio_gate'
[B, T, G] (the triplet term and the KNN evaluation), for the modalities in use.

Variants (config.model.variant), the Table II rows of docs/design.md:
* 'gating': both modalities, an LSTM each (the paper's method);
* 'lstm': the same network; only the loss differs (each modality's LSTM trained on
  its own, no MSE), so the model is identical to 'gating';
* 'global': no LSTM; the gate embedding is the encoder embedding (G = D), used
  with one window (T = 1) in the middle of the clip.
`modalities` 'audio' or 'video' builds only that branch (the other input is ignored).

LSTM: flax `OptimizedLSTMCell`'s parameters and equations (same parameters as
`LSTMCell`), computed by `lstm_scan` (a custom gradient: fewer, larger matrix
products), in float32 whatever `dtype` (it is tiny), from a zero state. Gates
  i = sigmoid(x Wii + h Whi + bhi), f = sigmoid(x Wif + h Whf + bhf),
  g = tanh(x Wig + h Whg + bhg),    o = sigmoid(x Wio + h Who + bho),
  c' = f c + i g,  h' = o tanh(c');
kernels 'ii' 'if' 'ig' 'io' [D, G] (LeCun normal, no bias), 'hi' 'hf' 'hg' 'ho'
[G, G] (orthogonal) with biases (zeros; no forget-gate bias of 1). PyTorch's
nn.LSTM uses the same equations and gate order (i, f, g, o) with weights [4G, D]
and two biases: `lstm_to_torch` converts (bias_ih = 0, bias_hh = ours). PyTorch's
own initialisation differs (uniform +-1/sqrt(G) everywhere).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Mapping

import flax.linen as nn
from flax.linen.recurrent import DenseParams
import jax
import jax.numpy as jnp
import numpy as np
from clu import parameter_overview

from avjax import config_lib
from avjax.models import i3d
from avjax.models import soundnet

# Top-level modules holding the pretrained encoders, and the heads inside them that
# project to D (new, or re-purposed Kinetics logits); used for per-group learning rates.
TRUNK_MODULES = ("video_encoder", "audio_encoder")
HEAD_MODULES = ("Logits", "Embedding")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class TemporalLSTM(nn.Module):
  """An LSTM scanned over windows: [B, T, D] -> hidden states [B, T, G].

  `valid` [B, T] bool (optional): where False (a window wholly past the clip's
  end) the cell's carry passes that window unchanged and its output repeats the
  last real hidden state, so gate t of a clip that ended earlier equals its last
  real gate exactly. None runs every window (the former behaviour).

  The parameters are flax `OptimizedLSTMCell`'s (module 'cell', same names, shapes
  and initialisers, so the same values from the same key); the computation is
  `lstm_scan`, which gives the cell's outputs and gradients with fewer, larger
  matrix products (see there)."""
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:  # [B, T, D]
    x = x.astype(jnp.float32)
    w_i, w_h, b = _LSTMParams(self.hidden, name="cell")(x.shape[-1])
    if valid is None:
      valid = jnp.ones(x.shape[:2], bool)
    h = lstm_scan(w_i, w_h, b, jnp.swapaxes(x, 0, 1), jnp.swapaxes(jnp.asarray(valid, bool), 0, 1))
    return jnp.swapaxes(h, 0, 1)  # [B, T, G]


class _LSTMParams(nn.Module):
  """flax `OptimizedLSTMCell`'s parameters, created as it creates them (its
  `DenseParams` per gate: 'i{i,f,g,o}' kernels [D, G], LeCun normal, no bias;
  'h{i,f,g,o}' kernels [G, G], orthogonal, bias zeros), returned concatenated in
  gate order: W_i [D, 4G], W_h [G, 4G], b [4G]."""
  hidden: int

  @nn.compact
  def __call__(self, in_features: int):
    x = jnp.zeros((1, in_features), jnp.float32)
    h = jnp.zeros((1, self.hidden), jnp.float32)
    w_i, w_h, b = [], [], []
    for gate in _GATES:
      kernel, _ = DenseParams(self.hidden, use_bias=False, kernel_init=nn.initializers.lecun_normal(),
                              name=f"i{gate}")(x)
      recurrent, bias = DenseParams(self.hidden, use_bias=True,
                                    kernel_init=nn.initializers.orthogonal(), name=f"h{gate}")(h)
      w_i.append(kernel)
      w_h.append(recurrent)
      b.append(bias)
    return jnp.concatenate(w_i, -1), jnp.concatenate(w_h, -1), jnp.concatenate(b, -1)


_GATES = ("i", "f", "g", "o")


def _gates(z: jax.Array):
  i, f, g, o = jnp.split(z, 4, axis=-1)
  return jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)


def _lstm_forward(w_i, w_h, b, x, valid):
  """x [T, B, D], valid [T, B] bool -> hidden states [T, B, G] and, for the gradient,
  the cells [T, B, G] and gates (i, f, g, o) [T, B, G] each."""
  xw = jnp.einsum("tbd,dk->tbk", x, w_i) + b                # every window at once

  def step(carry, inputs):
    c, h = carry
    xw_t, v = inputs
    i, f, g, o = _gates(xw_t + h @ w_h)
    c_new = f * c + i * g
    h_new = o * jnp.tanh(c_new)
    keep = v[:, None]
    c_new, h_new = jnp.where(keep, c_new, c), jnp.where(keep, h_new, h)
    return (c_new, h_new), (h_new, c_new, (i, f, g, o))

  zeros = jnp.zeros((x.shape[1], w_h.shape[0]), jnp.float32)
  _, (hs, cs, gates) = jax.lax.scan(step, (zeros, zeros), (xw, valid))
  return hs, cs, gates


@jax.custom_vjp
def lstm_scan(w_i, w_h, b, x, valid):
  """The LSTM of `TemporalLSTM` (flax `OptimizedLSTMCell`'s equations, zero initial
  state) over windows: x [T, B, D] float32, valid [T, B] bool -> h [T, B, G].
  Where `valid` is False the carry passes unchanged.

  A custom gradient: the input projection x W_i runs for all windows in one product
  before the scan, and the backward scan carries only dh and dc, so that the weight
  and input gradients (H_prev^T dZ, X^T dZ, dZ W_i^T) are three large products after it
  instead of small ones per window. Same values as differentiating the cell
  (tests/test_gating.py); about a fifth less time for the frozen-trunk A-LSTM's
  LSTM on a CPU (BENCHMARKS.md)."""
  return _lstm_forward(w_i, w_h, b, x, valid)[0]


def _lstm_scan_fwd(w_i, w_h, b, x, valid):
  hs, cs, gates = _lstm_forward(w_i, w_h, b, x, valid)
  return hs, (w_i, w_h, x, valid, hs, cs, gates)


def _lstm_scan_bwd(residuals, dhs):
  w_i, w_h, x, valid, hs, cs, gates = residuals
  zeros = jnp.zeros_like(hs[0])
  h_prev = jnp.concatenate([zeros[None], hs[:-1]])            # [T, B, G]
  c_prev = jnp.concatenate([zeros[None], cs[:-1]])

  def step(carry, inputs):
    dh_next, dc_next = carry
    dh_out, (i, f, g, o), c, c_before, v = inputs
    dh = dh_out + dh_next
    tanh_c = jnp.tanh(c)
    dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
    dz = jnp.concatenate([dc * g * i * (1.0 - i), dc * c_before * f * (1.0 - f),
                          dc * i * (1.0 - g * g), dh * tanh_c * o * (1.0 - o)], axis=-1)
    keep = v[:, None]                      # a passed window: the carry's gradient passes too
    dz = jnp.where(keep, dz, 0.0)
    return (jnp.where(keep, dz @ w_h.T, dh), jnp.where(keep, dc * f, dc_next)), dz

  _, dz = jax.lax.scan(step, (zeros, zeros), (dhs, gates, cs, c_prev, valid), reverse=True)
  dz_flat = dz.reshape(-1, dz.shape[-1])                       # [T B, 4G]
  d_w_h = h_prev.reshape(-1, h_prev.shape[-1]).T @ dz_flat
  d_w_i = x.reshape(-1, x.shape[-1]).T @ dz_flat
  d_x = jnp.einsum("tbk,dk->tbd", dz, w_i)
  return d_w_i, d_w_h, dz_flat.sum(0), d_x, None


lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd)


def zero_carry(batch: int, hidden: int) -> tuple[jax.Array, jax.Array]:
  """The LSTM's initial (c, h), zeros [B, G] each."""
  zeros = jnp.zeros((batch, hidden), jnp.float32)
  return zeros, zeros


def lstm_to_torch(cell_params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our cell's params ({'ii': {'kernel'}, ..., 'hi': {'kernel', 'bias'}, ...}) as
  torch.nn.LSTM's weight_ih_l0 [4G, D], weight_hh_l0 [4G, G], bias_ih_l0, bias_hh_l0."""
  gates = ("i", "f", "g", "o")
  w_ih = np.concatenate([np.asarray(cell_params[f"i{g}"]["kernel"]) for g in gates], axis=1).T
  w_hh = np.concatenate([np.asarray(cell_params[f"h{g}"]["kernel"]) for g in gates], axis=1).T
  b_hh = np.concatenate([np.asarray(cell_params[f"h{g}"]["bias"]) for g in gates])
  return {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh,
          "bias_ih_l0": np.zeros_like(b_hh), "bias_hh_l0": b_hh}


class AVModel(nn.Module):
  """Encoders + per-modality temporal LSTMs; see the module docstring."""
  variant: str = "gating"
  modalities: str = "av"
  embed_dim: int = 400
  lstm_hidden: int = 400
  video_width: float = 1.0
  audio_width: float = 1.0
  freeze_bn: bool = True
  dtype: Any = jnp.float32
  remat: bool = False
  video_last_block: str = "Mixed_5c"   # I3D's last layer before its head (tests: earlier)
  conv_impl: str = "auto"              # avjax.models.conv: 'auto', 'xla' or 'matmul'
  bn_momentum: float | None = None     # BatchNorm momentum of both encoders (None: each one's own)
  center_audio_head: bool = False      # model.center_audio_head (conv.Centering)
  center_video_head: bool = False      # model.center_video_head
  # Where each encoder starts (config_lib.trunk_inputs): None (raw media), 'pooled'
  # (the frozen trunk's cached pooled output: only the head is built) or a layer
  # whose cached output is the input (the layers above it are built).
  video_input: str | None = None
  audio_input: str | None = None

  @property
  def uses_video(self) -> bool:
    return self.modalities in ("av", "video")

  @property
  def uses_audio(self) -> bool:
    return self.modalities in ("av", "audio")

  @nn.compact
  def __call__(self, video: jax.Array | None, audio: jax.Array | None, *,
               train: bool, window_valid: jax.Array | None = None) -> dict[str, jax.Array]:
    """`window_valid` [B, T] (optional): the fraction of each window inside its clip;
    the LSTMs pass the windows where it is 0 unchanged (`TemporalLSTM`), and
    BatchNorm in training mode leaves them out of its batch statistics."""
    config_lib.check_model_choice(self.variant, self.modalities, "AVModel")
    outputs: dict[str, jax.Array] = {}
    valid = None if window_valid is None else jnp.asarray(window_valid) > 0   # [B, T]
    # BatchNorm's batch statistics (training, freeze_bn=False) over real windows only.
    sample_mask = None if valid is None else valid.reshape(-1)               # [B*T]
    bt = None
    if self.uses_video:
      want = _VIDEO_INPUT_RANK.get(self.video_input, 6)
      if video is None or video.ndim != want:
        raise ValueError(f"AVModel({self.modalities!r}) needs video "
                         f"{_input_doc('video', self.video_input)}, got "
                         f"{None if video is None else video.shape}")
      bt = video.shape[:2]
      frames = video.reshape((bt[0] * bt[1],) + video.shape[2:])  # [B*T, F, H, W, 3]
      emb, _ = i3d.I3D(embed_dim=self.embed_dim, width=self.video_width, freeze_bn=self.freeze_bn,
                       dtype=self.dtype, remat=self.remat, last_block=self.video_last_block,
                       conv_impl=self.conv_impl, name="video_encoder",
                       bn_momentum=_or(self.bn_momentum, i3d.BN_MOMENTUM),
                       input_endpoint=self.video_input, center_head=self.center_video_head)(
                           frames, train=train, sample_mask=sample_mask)
      outputs["video_enc"] = emb.astype(jnp.float32).reshape(bt + (self.embed_dim,))  # [B, T, D]
    if self.uses_audio:
      want = 3 if self.audio_input in (None, soundnet.POOLED) else 4
      if audio is None or audio.ndim != want:
        raise ValueError(f"AVModel({self.modalities!r}) needs audio "
                         f"{_input_doc('audio', self.audio_input)}, got "
                         f"{None if audio is None else audio.shape}")
      if bt is not None and tuple(audio.shape[:2]) != tuple(bt):
        raise ValueError(f"AVModel: video has [B, T] = {bt} but audio {audio.shape[:2]}")
      abt = audio.shape[:2]
      wave = audio.reshape((abt[0] * abt[1],) + audio.shape[2:])  # [B*T, S] (or features)
      emb, _ = soundnet.SoundNet8(embed_dim=self.embed_dim, width=self.audio_width,
                                  freeze_bn=self.freeze_bn, dtype=self.dtype,
                                  conv_impl=self.conv_impl, name="audio_encoder",
                                  bn_momentum=_or(self.bn_momentum, soundnet.BN_MOMENTUM),
                                  input_endpoint=self.audio_input,
                                  center_head=self.center_audio_head,
                                  )(wave, train=train, sample_mask=sample_mask)
      outputs["audio_enc"] = emb.astype(jnp.float32).reshape(tuple(abt) + (self.embed_dim,))
    for m in ("video", "audio"):
      if f"{m}_enc" not in outputs:
        continue
      enc = outputs[f"{m}_enc"]
      if self.variant == "global":
        outputs[f"{m}_gate"] = enc  # [B, T, D]
      else:
        outputs[f"{m}_gate"] = TemporalLSTM(self.lstm_hidden, name=f"{m}_lstm")(enc, valid)  # [B, T, G]
    return outputs


def _or(value, default):
  return default if value is None else value


_VIDEO_INPUT_RANK = {None: 6, i3d.POOLED: 3}     # any other input endpoint: a feature map, 6


def _input_doc(modality: str, endpoint: str | None) -> str:
  if endpoint is None:
    return "[B, T, F, H, W, 3]" if modality == "video" else "[B, T, S]"
  if endpoint == i3d.POOLED:
    return "features [B, T, C] (the trunk's pooled output)"
  return (f"features [B, T, F', H', W', C] ({endpoint}'s output)" if modality == "video" else
          f"features [B, T, L, C] ({endpoint}'s output)")


def create_model(model_config: Any) -> AVModel:
  """AVModel from a complete `config.model` (`config_lib.complete` fills a partial one)."""
  m = model_config
  if m.dtype not in _DTYPES:
    raise ValueError(f"config.model.dtype: {m.dtype!r} is not one of {tuple(_DTYPES)}")
  config_lib.check_model_choice(m.variant, m.modalities, "config.model")
  inputs = config_lib.trunk_inputs(m)
  return AVModel(
      variant=m.variant, modalities=m.modalities, embed_dim=int(m.embed_dim),
      lstm_hidden=int(m.lstm_hidden), video_width=float(m.video_width),
      audio_width=float(m.audio_width), freeze_bn=bool(m.freeze_bn), dtype=_DTYPES[m.dtype],
      remat=bool(m.remat), video_last_block=str(m.video_last_block),
      conv_impl=str(m.conv_impl),
      bn_momentum=None if m.bn_momentum is None else float(m.bn_momentum),
      video_input=inputs.get("video"), audio_input=inputs.get("audio"),
      center_audio_head=bool(m.center_audio_head), center_video_head=bool(m.center_video_head))


def model_inputs(batch: Mapping[str, Any], modalities: str) -> tuple[Any, Any]:
  """(video, audio) of a batch for a model of `modalities` (None for the one unused)."""
  video = batch.get("video") if modalities in ("av", "video") else None
  audio = batch.get("audio") if modalities in ("av", "audio") else None
  return video, audio


def window_valid(batch: Mapping[str, Any], mask_padded_windows: bool) -> Any:
  """The batch's 'window_valid' [B, T] when padded windows are masked
  (`config.loss.mask_padded_windows`), else None (every window runs)."""
  return batch["window_valid"] if mask_padded_windows else None


def gate_embeddings(apply_fn, variables: Mapping[str, Any], batch: Mapping[str, Any],
                    modalities: str, mask_padded_windows: bool = True) -> dict[str, jax.Array]:
  """The inference forward pass (BN running statistics, no dropout): the gate
  embeddings {'audio_gate' / 'video_gate': [B, T, G]} of `batch`. Evaluation and
  `avjax.predict` both jit this. With `mask_padded_windows` the LSTMs pass the
  windows past a clip's end (batch['window_valid'] == 0) unchanged."""
  video, audio = model_inputs(batch, modalities)
  outputs = apply_fn(dict(variables), video, audio, train=False,
                     window_valid=window_valid(batch, mask_padded_windows))
  return {k: v for k, v in outputs.items() if k.endswith("_gate")}


@functools.lru_cache(maxsize=16)
def apply_fn(model: AVModel):
  """`model.apply`, the same object for equal models. (Each `model.apply` is a new
  bound method that compares unequal to the last; stored in a TrainState, it would
  make every jitted function taking the state compile again for each new state.)"""
  return model.apply


@functools.lru_cache(maxsize=16)
def _jitted_init(model: AVModel):
  """model.init jitted once per model (flax modules are hashable dataclasses)."""
  return jax.jit(functools.partial(model.init, train=False))


def _dummy(spec: Any, dtype: Any, rank: int, what: str) -> np.ndarray | None:
  """A [1, 1, ...] zero input shaped like `spec` (an array, ShapeDtypeStruct or shape)."""
  if spec is None:
    return None
  shape = tuple(spec.shape) if hasattr(spec, "shape") else tuple(spec)
  if len(shape) != rank:
    raise ValueError(f"init_variables: {what} must have {rank} dimensions, got shape {shape}")
  return np.zeros((1, 1) + shape[2:], dtype)


def init_variables(model: AVModel, rng: jax.Array, video: Any = None, audio: Any = None, *,
                   pretrained: bool = False) -> dict:
  """Initialises `model` ({'params', 'batch_stats'}) and, when `pretrained`, loads the
  Kinetics-400 I3D and SoundNet-8 weights into the encoders in use.

  `video` / `audio` give the input shapes ([B, T, F, H, W, 3] / [B, T, S]): arrays,
  jax.ShapeDtypeStructs or plain shapes; B and T do not matter (one window is used).
  """
  video_rank = _VIDEO_INPUT_RANK.get(model.video_input, 6)
  audio_rank = 3 if model.audio_input in (None, soundnet.POOLED) else 4
  video = (_dummy(video, np.uint8 if model.video_input is None else np.float32, video_rank,
                  "video") if model.uses_video else None)
  audio = _dummy(audio, np.float32, audio_rank, "audio") if model.uses_audio else None
  if model.uses_video and video is None:
    raise ValueError(f"init_variables: modalities {model.modalities!r} needs a video shape")
  if model.uses_audio and audio is None:
    raise ValueError(f"init_variables: modalities {model.modalities!r} needs an audio shape")
  # Non-partitionable threefry compiles the many initialisers about 2.5x faster on
  # CPU (7 s instead of 17 s for the demo model); it only changes which random
  # numbers the initial weights get.
  with jax.threefry_partitionable(False):
    variables = _jitted_init(model)(rng, video, audio)
  variables = jax.tree_util.tree_map(lambda x: x, dict(variables))  # plain nested dicts
  if pretrained:
    loaders = {"video_encoder": i3d.load_pretrained, "audio_encoder": soundnet.load_pretrained}
    for name, load in loaders.items():
      if name not in variables["params"]:
        continue
      # (A head alone, as with a frozen trunk, has no batch_stats.)
      sub = {c: variables.get(c, {}).get(name, {}) for c in ("params", "batch_stats")}
      sub = load(sub)
      for c in ("params", "batch_stats"):
        if sub.get(c):
          variables.setdefault(c, {})[name] = sub[c]
  return variables


def log_parameter_overview(variables: Mapping[str, Any], msg: str | None = None) -> int:
  """Logs clu's table of parameters (name, shape, size, mean, std) and the count per
  top-level module; returns the total parameter count."""
  params = variables["params"] if "params" in variables else variables
  parameter_overview.log_parameter_overview(params, msg=msg or "Model parameters")
  counts = {name: parameter_overview.count_parameters(sub) for name, sub in params.items()}
  total = sum(counts.values())
  logging.info("Parameters: %s; total %s", ", ".join(f"{k} {v:,}" for k, v in counts.items()),
               f"{total:,}")
  return total
