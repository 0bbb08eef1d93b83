"""The feature store's files: where a store lives, its key, and reading it.

A store holds the cached output of the encoders' fixed lower layers for
`model.trunk` 'frozen' / 'finetune_from:<endpoint>'; `avjax.feature_store`
computes it (extraction) and documents the layout. This module only names and
reads the files (NumPy, no JAX), so the input pipeline reads a store without
importing what extracts it.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping, Sequence

import numpy as np

from avjax import errors
from avjax import run_spec
from avjax.models import weights

STORE_VERSION = 1
STORE_JSON = "store.json"
ARRAYS = ("features", "window_valid", "label", "actor", "clip_id")


class FeatureStoreError(errors.Failure, RuntimeError):
  """A feature store that cannot be used as it is (exit status 1)."""


def endpoint(config, modality: str) -> str:
  """The cut of `modality`'s encoder: 'pooled' or a layer name."""
  cut = run_spec.of(config).trunk_inputs[modality]
  if cut is None:
    raise ValueError(f"model.trunk={config.model.trunk!r} caches no {modality} features")
  return cut


def weights_id(config, modality: str) -> str:
  """What the trunk's weights are: the pretrained file's sha256, or the seed of random ones."""
  if config.model.pretrained:
    source = weights.I3D_KINETICS400 if modality == "video" else weights.SOUNDNET8
    return f"sha256:{source.sha256}"
  return f"random:seed={int(config.seed)}"


def root_dir(builder) -> str:
  """$AVJAX_CACHE/features, else <the TFDS data_dir of `builder`>/avjax_features."""
  cache = os.environ.get("AVJAX_CACHE")
  if cache:
    return os.path.join(os.path.abspath(os.path.expanduser(cache)), "features")
  # The builder's data_dir is <root>/<dataset>/<config>/<version>.
  version_dir = os.path.abspath(builder.data_dir)
  return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(version_dir))),
                      "avjax_features")


def store_key(config, builder, modality: str) -> dict[str, Any]:
  """Everything the features of `modality` depend on (`builder`: the prepared TFDS builder
  of `config.dataset`); see avjax.feature_store's docstring."""
  splits = {}
  for name, split in sorted(builder.info.splits.items()):
    splits[name] = {"num_examples": int(split.num_examples), "num_bytes": int(split.num_bytes),
                    "shard_lengths": [int(n) for n in split.shard_lengths]}
  m = config.model
  key = {
      "version": STORE_VERSION, "dataset": config.dataset.name,
      "builder_config": run_spec.of(config).builder_config,
      "builder_version": str(builder.version), "splits": splits,
      "modality": modality, "endpoint": endpoint(config, modality),
      "weights": weights_id(config, modality), "dtype": str(m.dtype),
      "width": float(m.video_width if modality == "video" else m.audio_width),
      "views": int(config.input.cached_views),
  }
  content = (getattr(builder.info, "metadata", None) or {}).get("content")
  if content:   # the records' sha256 (builder_lib); builds before it have none
    key["content"] = str(content)
  if modality == "audio" and key["endpoint"] == "pooled" and (
      m.audio_head_layer, m.audio_head_stats) != ("conv7", "mean"):
    # Only when not the default, so that the stores written before it stay valid.
    key["pooled"] = f"{m.audio_head_layer}:{m.audio_head_stats}"
  if modality == "video":
    key["last_block"] = str(m.video_last_block)
    key["crop_size"] = int(config.input.crop_size)
  if key["views"]:
    key["augmentation"] = {"seed": int(config.seed), **{
        k: config.input[k] for k in ("random_flip", "speed_range", "pitch_shift_semitones",
                                     "audio_noise_std")}}
    if modality == "audio":
      key["augmentation"]["mask_padded_windows"] = bool(config.loss.mask_padded_windows)
  return key


def _digest(key: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def store_path(config, builder, modality: str) -> str:
  """<root>/<dataset>/<builder config>/<modality>-<endpoint>-<16 hex digits of the key>."""
  key = store_key(config, builder, modality)
  name = f"{modality}-{key['endpoint']}-{_digest(key)}"
  return os.path.join(root_dir(builder), config.dataset.name, key["builder_config"], name)


def store_paths(config, builder) -> dict[str, str]:
  """{modality: store directory} for the modalities `config.model.trunk` caches."""
  return {m: store_path(config, builder, m) for m in run_spec.of(config).cuts}


def fold_path(store: str, fold: int) -> str:
  return os.path.join(store, f"fold_{int(fold)}")


def check_key(store: str, key: Mapping[str, Any]) -> dict:
  """store.json of `store`, checked to hold `key`."""
  path = os.path.join(store, STORE_JSON)
  try:
    with open(path, "rb") as f:
      doc = json.loads(f.read())
  except (ValueError, UnicodeDecodeError) as e:
    raise errors.CorruptFileError(path, f"not valid JSON: {e}" if os.path.getsize(path)
                                  else "empty", "rerun: avjax.main writes it again") from e
  if not isinstance(doc, dict):
    raise errors.CorruptFileError(path, "not a JSON object", "rerun: avjax.main writes it again")
  if doc.get("key") != json.loads(json.dumps(key)):
    raise FeatureStoreError(f"{path}: its key does not match this config's (a hash collision "
                            "or an edited file); delete the directory to rebuild it")
  return doc


# --------------------------------------------------------------------------- reading


# Added to each actor's std before dividing by it (`input.speaker_scaling`): a channel
# that never varies for an actor (a dead ReLU) stays at 0 after centring.
SCALE_FLOOR = 1e-3


def _actor_average(features: Sequence[np.ndarray], actors: np.ndarray, window_valid: np.ndarray,
                   fn=None) -> dict[int, np.ndarray]:
  """{actor: [C] float64} the mean of `fn(features)` (identity when None) over the clean
  view (view 0) of each actor's clips, every window weighted by its valid fraction and
  every position of a feature map alike."""
  sums: dict[int, np.ndarray] = {}
  weights: dict[int, float] = {}
  start = 0
  for part in features:
    for i in range(len(part)):
      a, w = int(actors[start + i]), window_valid[start + i].astype(np.float64)   # [T]
      clean = np.asarray(part[i, 0], np.float64)                                  # [T, ..., C]
      if fn is not None:
        clean = fn(clean)
      per_window = clean.reshape(clean.shape[0], -1, clean.shape[-1]).mean(axis=1)  # [T, C]
      sums[a] = sums.get(a, 0.0) + w @ per_window
      weights[a] = weights.get(a, 0.0) + float(w.sum())
    start += len(part)
  for a, total in weights.items():
    if total <= 0:
      raise FeatureStoreError(f"actor {a} has no valid window to take a mean over")
  return {a: sums[a] / weights[a] for a in sums}


def actor_means(features: Sequence[np.ndarray], actors: np.ndarray,
                window_valid: np.ndarray) -> dict[int, np.ndarray]:
  """{actor: [C] float64} each actor's mean feature over the clean view (view 0) of all
  of its clips, every window weighted by its valid fraction and every position of a
  feature map alike: the speaker normalisation of speech emotion recognition (no label
  is read). `features`: per fold [n, V, T, ..., C] (memory-mapped); `actors` [N] and
  `window_valid` [N, T] of the folds concatenated in the same order."""
  return _actor_average(features, actors, window_valid)


def actor_scales(features: Sequence[np.ndarray], actors: np.ndarray, window_valid: np.ndarray,
                 means: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
  """{actor: [C] float64} each actor's standard deviation about `means` (`actor_means`),
  weighted alike, plus `SCALE_FLOOR`: what `input.speaker_scaling` divides by."""
  squares = _actor_average(features, actors, window_valid, np.square)
  return {a: np.sqrt(np.maximum(squares[a] - means[a] ** 2, 0.0)) + SCALE_FLOOR for a in squares}


class FeatureReader:
  """Reads batches of cached features of `folds` (concatenated in that order, as the
  data source 'fold_a+fold_b' orders them); `read` has `input_pipeline.Reader`'s form.
  `stores`: {modality: store directory}. A fold the store lacks is an error naming it.
  Picklable: the arrays are memory-mapped on first use.

  `center_actors` (`input.speaker_centering`): every clip's features minus its actor's
  mean feature (`actor_means`), in every batch read and in `read_all`; `scale_actors`
  (`input.speaker_scaling`, with `center_actors`) then divides them by the actor's
  standard deviation (`actor_scales`)."""
  is_features = True

  def __init__(self, stores: Mapping[str, str], folds: Sequence[int],
               center_actors: bool = False, scale_actors: bool = False):
    if scale_actors and not center_actors:
      raise ValueError("scale_actors divides centred features: it needs center_actors")
    self.stores = dict(stores)
    self.folds = [int(f) for f in folds]
    self.center_actors = bool(center_actors)
    self.scale_actors = bool(scale_actors)
    for modality, store in self.stores.items():
      for fold in self.folds:
        if not os.path.isdir(fold_path(store, fold)):
          raise FeatureStoreError(
              f"the {modality} feature store {store} has no split fold{fold} "
              f"({fold_path(store, fold)} is missing); run avjax.main (or avjax.evaluate) again to extract it")
    with open(os.path.join(next(iter(self.stores.values())), STORE_JSON)) as f:
      self.num_views = int(json.load(f)["num_views"])
    self._arrays: dict | None = None

  def __getstate__(self):
    return {"stores": self.stores, "folds": self.folds, "num_views": self.num_views,
            "center_actors": self.center_actors, "scale_actors": self.scale_actors,
            "_arrays": None}

  def _load(self) -> dict:
    if self._arrays is None:
      arrays: dict[str, list] = {}
      for modality, store in self.stores.items():
        for fold in self.folds:
          d = fold_path(store, fold)
          arrays.setdefault(modality, []).append(
              np.load(os.path.join(d, "features.npy"), mmap_mode="r", allow_pickle=False))
          if modality == next(iter(self.stores)):
            for k in ("window_valid", "label", "actor"):
              arrays.setdefault(k, []).append(np.load(os.path.join(d, f"{k}.npy"),
                                                      allow_pickle=False))
      sizes = [len(a) for a in arrays["label"]]
      for modality in self.stores:
        if [len(a) for a in arrays[modality]] != sizes:
          raise FeatureStoreError(f"feature stores {list(self.stores.values())} disagree on "
                                  f"the clips of folds {self.folds}")
      self._offsets = np.concatenate([[0], np.cumsum(sizes)])
      self._arrays = {k: (v if k in self.stores else np.concatenate(v)) for k, v in arrays.items()}
      if self.center_actors:
        actor, valid = self._arrays["actor"], self._arrays["window_valid"]
        self._means = {m: actor_means(arrays[m], actor, valid) for m in self.stores}
        if self.scale_actors:
          self._scales = {m: actor_scales(arrays[m], actor, valid, self._means[m])
                          for m in self.stores}
    return self._arrays

  def _normalise(self, modality: str, x: np.ndarray, actors: np.ndarray) -> None:
    """Centres (and scales) `x` [b, ..., C] in place by its clips' `actors` [b]."""
    def per_clip(stats):
      values = np.stack([stats[int(a)] for a in actors])                   # [b, C]
      return values.reshape(values.shape[:1] + (1,) * (x.ndim - 2) + values.shape[1:])
    x -= per_clip(self._means[modality])
    if self.scale_actors:
      x /= per_clip(self._scales[modality])

  @property
  def labels(self) -> np.ndarray:
    return self._load()["label"]

  def read_all(self) -> dict[str, np.ndarray]:
    """Every clip of the folds, every view: {modality: [n, V, T, ...] float32, 'label' [n]
    int32, 'window_valid' [n, T] float32} in memory (`avjax.device_data` puts them on the
    device)."""
    arrays = self._load()
    out = {m: np.concatenate([np.asarray(a, np.float32) for a in arrays[m]])
           for m in self.stores}
    if self.center_actors:
      for m in self.stores:
        self._normalise(m, out[m], arrays["actor"])
    out["label"] = arrays["label"].astype(np.int32)
    out["window_valid"] = arrays["window_valid"].astype(np.float32)
    return out

  def nbytes(self) -> int:
    """Bytes of `read_all`'s arrays (from the memory-mapped files' shapes)."""
    arrays = self._load()
    n = len(arrays["label"])
    per_clip = sum(int(np.prod(arrays[m][0].shape[1:])) * 4 for m in self.stores)   # V x T x ...
    return n * (per_clip + 4 + 4 * arrays["window_valid"].shape[1])

  def draw_view(self, seed: int, step: int) -> int:
    """The view of training batch `step`: 0 without cached views."""
    if self.num_views == 1:
      return 0
    return int(np.random.default_rng([int(seed), int(step), 3]).integers(self.num_views))

  def read(self, indices: Sequence[int], crop=None, view: int = 0) -> dict:
    """Stacked batch of `indices`: the cached modalities' features [b, T, ...] float32 of
    `view`, label, window_valid, actor. `crop` is ignored (fixed at extraction)."""
    del crop
    arrays = self._load()
    idx = np.asarray(indices, np.int64)
    batch = {k: arrays[k][idx] for k in ("label", "window_valid", "actor")}
    where = np.searchsorted(self._offsets, idx, side="right") - 1
    for modality in self.stores:
      parts = arrays[modality]
      rows = [parts[w][i - self._offsets[w], view] for w, i in zip(where, idx)]
      batch[modality] = np.stack(rows).astype(np.float32)
      if self.center_actors:
        self._normalise(modality, batch[modality], batch["actor"])
    batch["label"] = batch["label"].astype(np.int32)
    batch["actor"] = batch["actor"].astype(np.int32)
    batch["window_valid"] = batch["window_valid"].astype(np.float32)
    return batch
