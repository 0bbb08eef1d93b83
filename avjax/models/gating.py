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

LSTM: flax `OptimizedLSTMCell` (same parameters as `LSTMCell`), run in float32
whatever `dtype` (it is tiny), from a zero state. Gates
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
import jax
import jax.numpy as jnp
import numpy as np
from clu import parameter_overview

from avjax import choices
from avjax import trunks
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
  real gate exactly. None runs every window (the former behaviour)."""
  hidden: int

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:  # [B, T, D]
    x = x.astype(jnp.float32)
    cell = nn.OptimizedLSTMCell(self.hidden, dtype=jnp.float32, param_dtype=jnp.float32,
                                name="cell")
    carry = zero_carry(x.shape[0], self.hidden)
    if valid is None:
      body, xs = _lstm_step, x
    else:
      body, xs = _masked_lstm_step, (x, jnp.asarray(valid, bool))
    scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1)
    _, h = scan(cell, carry, xs)
    return h  # [B, T, G]


def _lstm_step(cell, carry, x):
  return cell(carry, x)


def _masked_lstm_step(cell, carry, inputs):
  x, valid = inputs                                    # [B, D], [B]
  new_carry, _ = cell(carry, x)
  keep = valid[:, None]
  new_carry = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_carry, carry)
  return new_carry, new_carry[1]                       # flax's carry is (c, h)


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
  video_bn_momentum: float = i3d.BN_MOMENTUM       # BatchNorm momentum of each encoder
  audio_bn_momentum: float = soundnet.BN_MOMENTUM
  center_audio_head: bool = False      # model.center_audio_head (conv.Centering)
  audio_head_layer: str = "conv7"      # model.audio_head_layer (SoundNet8.head_layer)
  audio_head_stats: str = "mean"       # model.audio_head_stats (SoundNet8.head_stats)
  center_video_head: bool = False      # model.center_video_head
  # Where each encoder starts (trunks.trunk_inputs): None (raw media), 'pooled'
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
    choices.check_model_choice(self.variant, self.modalities, "AVModel")
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
                       bn_momentum=self.video_bn_momentum,
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
                                  bn_momentum=self.audio_bn_momentum,
                                  input_endpoint=self.audio_input,
                                  center_head=self.center_audio_head,
                                  head_layer=self.audio_head_layer,
                                  head_stats=self.audio_head_stats,
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
  choices.check_model_choice(m.variant, m.modalities, "config.model")
  inputs = trunks.trunk_inputs(m)
  return AVModel(
      variant=m.variant, modalities=m.modalities, embed_dim=int(m.embed_dim),
      lstm_hidden=int(m.lstm_hidden), video_width=float(m.video_width),
      audio_width=float(m.audio_width), freeze_bn=bool(m.freeze_bn), dtype=_DTYPES[m.dtype],
      remat=bool(m.remat), video_last_block=str(m.video_last_block),
      conv_impl=str(m.conv_impl),
      video_bn_momentum=float(m.video_bn_momentum), audio_bn_momentum=float(m.audio_bn_momentum),
      video_input=inputs.get("video"), audio_input=inputs.get("audio"),
      center_audio_head=bool(m.center_audio_head), center_video_head=bool(m.center_video_head),
      audio_head_layer=str(m.audio_head_layer), audio_head_stats=str(m.audio_head_stats))


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
  # Non-partitionable threefry compiles the many initialisers faster on CPU
  # (docs/benchmark_history.md); it only changes which random numbers the initial
  # weights get.
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
