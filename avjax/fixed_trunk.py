"""The fixed layers of a cut encoder (`model.trunk` 'frozen' or 'finetune_from:<endpoint>'):
their pretrained variables, the features they give a window, the shapes the model above
the cut takes, and the whole network rebuilt from a trained state for inference.

Legend: T windows, C channels.
"""

from __future__ import annotations

import functools
import json
from typing import Any, Mapping

import jax
import jax.numpy as jnp

from avjax import config_lib
from avjax import run_spec
from avjax import trunks
from avjax.data import feature_cache
from avjax.models import gating
from avjax.models import i3d
from avjax.models import soundnet


ENCODERS = {"video": "video_encoder", "audio": "audio_encoder"}


def encoder(config, modality: str):
  """The fixed lower part of `modality`'s encoder: the network up to its cut (the last
  trunk layer for 'pooled'); apply returns (feature map, endpoints)."""
  m, cut = config.model, feature_cache.endpoint(config, modality)
  dtype = gating._DTYPES[m.dtype]
  if modality == "video":
    last = str(m.video_last_block) if cut == trunks.POOLED else cut
    return i3d.I3D(final_endpoint=last, last_block=str(m.video_last_block),
                   width=float(m.video_width), dtype=dtype, conv_impl=str(m.conv_impl))
  last = str(m.audio_head_layer) if cut == trunks.POOLED else cut
  return soundnet.SoundNet8(final_endpoint=last, width=float(m.audio_width), dtype=dtype,
                            conv_impl=str(m.conv_impl), head_layer=str(m.audio_head_layer),
                            head_stats=str(m.audio_head_stats))


def _window(config, modality: str, info: Mapping[str, Any]) -> jax.ShapeDtypeStruct:
  """One window of media as `encoder` takes it: [1, F, X, X, 3] uint8 or [1, S] float32."""
  if modality == "video":
    c = int(config.input.crop_size)
    return jax.ShapeDtypeStruct((1, int(info["frames_per_window"]), c, c, 3), jnp.uint8)
  return jax.ShapeDtypeStruct((1, int(info["samples_per_window"])), jnp.float32)


_TRUNK_VARIABLES: dict[str, dict] = {}


def trunk_variables(config, modality: str, window: jax.ShapeDtypeStruct) -> dict:
  """{'params', 'batch_stats'} of `encoder(config, modality)`: the pretrained weights
  (`model.pretrained`), else random ones from `config.seed` (the same for every fold,
  as the store is shared by all folds). `window`: one window's media shape (the
  values do not depend on it). Cached per process."""
  enc = encoder(config, modality)
  key = json.dumps([repr(enc), feature_cache.weights_id(config, modality)], default=str)
  if key not in _TRUNK_VARIABLES:
    if config.model.pretrained:
      # Every variable comes from the checkpoint: shapes only, no initialiser runs.
      abstract = jax.eval_shape(functools.partial(enc.init, train=False),
                                jax.random.PRNGKey(0), window)
      abstract = jax.tree_util.tree_map(lambda x: x, dict(abstract))
      load = i3d.load_pretrained if modality == "video" else soundnet.load_pretrained
      variables = load({c: abstract.get(c, {}) for c in ("params", "batch_stats")})
    else:
      with jax.threefry_partitionable(False):
        variables = jax.jit(functools.partial(enc.init, train=False))(
            jax.random.PRNGKey(int(config.seed)), jnp.zeros(window.shape, window.dtype))
      variables = jax.tree_util.tree_map(lambda x: x, dict(variables))
    _TRUNK_VARIABLES[key] = {c: variables.get(c, {}) for c in ("params", "batch_stats")}
  return _TRUNK_VARIABLES[key]


def _features(enc, cut: str, variables, x):
  """[N, ...] media -> [N, ...] float32 features at the cut (pooled when 'pooled': as the
  model's head pools, SoundNet's by its `head_stats`)."""
  out, _ = enc.apply(variables, x, train=False)
  out = out.astype(jnp.float32)
  if cut == trunks.POOLED:
    if isinstance(enc, soundnet.SoundNet8):
      return soundnet.pool_time(out, enc.head_stats)
    out = jnp.mean(out, axis=tuple(range(1, out.ndim - 1)))     # over time and space
  return out


def feature_shape(config, modality: str, info: Mapping[str, Any]) -> tuple[int, ...]:
  """The features of one window: (C,) pooled or a layer's map, e.g. (23, 128)."""
  enc, window = encoder(config, modality), _window(config, modality, info)
  variables = jax.eval_shape(functools.partial(enc.init, train=False), jax.random.PRNGKey(0),
                             window)
  out = jax.eval_shape(functools.partial(_features, enc, feature_cache.endpoint(config, modality)),
                       variables, window)
  return tuple(int(d) for d in out.shape[1:])


def model_input_shapes(config, media_batch: Mapping[str, Any]) -> dict[str, Any]:
  """`media_batch` (arrays or ShapeDtypeStructs, video [B, T, F, X, X, 3] / audio
  [B, T, S]) as the model of `config` takes it: unchanged for 'finetune', the
  cached modalities replaced by ShapeDtypeStructs of their features [B, T, ...]."""
  inputs = run_spec.of(config).trunk_inputs
  out = dict(media_batch)
  for modality, cut in inputs.items():
    if cut is None or modality not in media_batch:
      continue
    media = media_batch[modality]
    b, t = media.shape[:2]
    info = ({"frames_per_window": media.shape[2]} if modality == "video"
            else {"samples_per_window": media.shape[2]})
    if modality == "video" and int(media.shape[3]) != int(config.input.crop_size):
      raise ValueError(f"video of {media.shape[3]} pixels, config.input.crop_size is "
                       f"{config.input.crop_size}")
    out[modality] = jax.ShapeDtypeStruct((b, t) + feature_shape(config, modality, info),
                                         jnp.float32)
  return out


def inference_model(config, state, media_batch: Mapping[str, Any]) -> tuple[Any, dict]:
  """(apply_fn, variables) of the whole network for raw media, from a train state.
  'finetune': the state's own. A cached trunk: the full model with the fixed
  lower layers' weights (`trunk_variables`) merged with the state's (used by
  `avjax.predict`, which runs the trunk on a new clip). `media_batch` gives the
  media shapes (video [B, T, F, X, X, 3], audio [B, T, S]); no dataset is read."""
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  inputs = run_spec.of(config).trunk_inputs
  if all(cut is None for cut in inputs.values()):
    return state.apply_fn, variables
  full = config_lib.complete(config)
  full.model.trunk = "finetune"
  model = gating.create_model(full.model)
  merged = {c: dict(variables[c]) for c in ("params", "batch_stats")}
  for modality, cut in inputs.items():
    if cut is None:
      continue
    media = media_batch[modality]
    window = jax.ShapeDtypeStruct((1,) + tuple(media.shape[2:]), media.dtype)
    trunk = trunk_variables(config, modality, window)
    name = ENCODERS[modality]
    for c in ("params", "batch_stats"):
      upper = dict(merged[c].get(name, {}))
      both = set(upper) & set(trunk[c])
      if both:
        raise ValueError(f"{name}: {sorted(both)} are both in the fixed trunk and the state")
      merged[c][name] = {**trunk[c], **upper}
  return gating.apply_fn(model), merged
