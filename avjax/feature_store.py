"""Cached encoder features: the input of `model.trunk` 'frozen' and 'finetune_from:<endpoint>'.

With the lower layers of the pretrained encoders held fixed, their output for a
clip's window never changes: it is computed once into a feature store, and
training, evaluation and validation read it through the same input pipeline
(`input_pipeline.make_reader`: same sampler, folds and iterator state) in place
of the media. The model takes the features in place of the media and builds only
the layers above the cut (`AVModel(video_input=..., audio_input=...)`), with the
same parameter names, so its variables are a subset of the whole network's.

Legend: n clips of a fold, V views, T windows, C channels.

What is cached, per modality (`run_spec.RunSpec.trunk_inputs`):
* 'pooled' (`model.trunk='frozen'`): SoundNet-8 conv7 averaged over time, I3D's
  last block (Mixed_5c) averaged over time and space: [C] = [1024] per window;
* a layer name ('finetune_from:conv4', 'finetune_from:Mixed_4f'): that layer's
  output map, e.g. [23, 128] for SoundNet conv4 on a 1 s window.
BatchNorm in inference mode (stored statistics), centre crop, no augmentation for
view 0; with `input.cached_views = K`, views 1..K each have one augmentation draw
(`augment.draw_augmentation(seed, VIEW_STEP + view)`: crop offset, flip,
speed, pitch, noise) for all clips, and training draws one of the 1 + K views per batch.
Extraction runs jitted on clip batches sharded over the mesh's devices, in
`model.dtype` (features stored as float32).

Store layout, one directory per (modality, key):

  <root>/<dataset>/<builder config>/<modality>-<endpoint>-<hash>/
    store.json            the key (below) and the feature shape
    fold_<k>/             a finished fold (renamed into place whole):
      features.npy        [n, V, T, ...] float32
      window_valid.npy    [n, T] float32
      label.npy actor.npy [n] int32
      clip_id.npy         [n] unicode (no pickle)
    fold_<k>.partial/     an unfinished fold: part_<first clip>.npz, each written
                          atomically; an interrupted extraction resumes from them,
                          on any device count (`_missing_pieces`)
A fold whose files do not read back as they should (a truncated array, a missing
file, the wrong shape) is extracted again, with a notice; the temporary files of a
killed or failed extraction (`fold_<k>.tmp-<pid>/`, `*.tmp-<pid>.npz`) are removed
by the next one; a write the file system refuses raises `errors.StorageError`.
(`avjax.data.feature_cache` names, keys and reads these files; this module writes them.)

`<root>` is `$AVJAX_CACHE/features` when AVJAX_CACHE is set, else
`<TFDS data_dir>/avjax_features`. The key holds everything the features depend
on: the dataset, builder config and version, each fold split's clip count, bytes
and shard lengths, and the records' sha256 that the real-data builders record
(`info.metadata['content']`; a rebuild from other files gets a new store even
when every size is the same), the modality and the cut,
the pretrained weights' sha256 (or the seed of random weights), the encoder's
width, last block and dtype, the crop size, and the views with their
augmentation fields. A change of any of them makes another directory, so a stale
store is never read.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import shutil
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from avjax import augment
from avjax import errors
from avjax import file_lock
from avjax import fixed_trunk
from avjax import parallel
from avjax import run_spec
from avjax.data import feature_cache

# Windows per jitted extraction call (rounded to whole clips and to the device count).
WINDOWS_PER_CALL = {"audio": 256, "video": 32}
# The augmentation of cached view v is that of "step" VIEW_STEP + v (no training run
# gets there), so views do not repeat the draws of training batches.
VIEW_STEP = 2 ** 40
FeatureStoreError = feature_cache.FeatureStoreError


# --------------------------------------------------------------------------- the fixed trunk


# --------------------------------------------------------------------------- extraction


@functools.lru_cache(maxsize=8)
def _extract_fn(enc, cut: str, mesh, modality: str, augmented: bool, max_semitones: float,
                mask_padded: bool):
  """Jitted [B, T, ...] media -> [B, T, ...] features, batch sharded on `data`."""
  repl, data = parallel.shardings(mesh)

  def run(variables, x, window_valid, aug):
    if augmented and modality == "audio":
      x = augment.augment_audio(x, aug["speed"], aug["semitones"], aug["noise"],
                                max_semitones=max_semitones,
                                window_valid=window_valid if mask_padded else None)
    b, t = x.shape[:2]
    out = fixed_trunk._features(enc, cut, variables, x.reshape((b * t,) + x.shape[2:]))
    return out.reshape((b, t) + out.shape[1:])

  return jax.jit(run, in_shardings=(repl, data, data, repl), out_shardings=data)


def extractor(config, modality: str, mesh, info: Mapping[str, Any], augmented: bool = False):
  """(fn, variables): the extraction's jitted function for `modality` and the fixed
  trunk's variables; fn(variables, media [B, T, ...], window_valid [B, T], aug) ->
  features [B, T, ...] (`aug`: the audio draws of `augment.augmentation_inputs`, read
  only when `augmented` and audio). `info`: num_windows, frames_per_window /
  samples_per_window of the windows."""
  enc, cut = fixed_trunk.encoder(config, modality), feature_cache.endpoint(config, modality)
  variables = fixed_trunk.trunk_variables(config, modality, fixed_trunk._window(config, modality, info))
  fn = _extract_fn(enc, cut, mesh, modality, augmented and modality == "audio",
                   float(config.input.pitch_shift_semitones),
                   bool(config.loss.mask_padded_windows))
  return fn, variables


def clips_per_call(modality: str, num_windows: int, largest_fold: int | None,
                   devices: int) -> int:
  """Clips per extraction call: WINDOWS_PER_CALL's worth, at most the largest fold's
  (when given), a multiple of the devices (one shape: one compilation for every fold)."""
  clips = max(1, WINDOWS_PER_CALL[modality] // num_windows)
  if largest_fold:
    clips = min(clips, largest_fold)
  return -(-clips // devices) * devices


def _views(config, info) -> list:
  """[None (the clean view)] + one `augment.Augmentation` per cached view."""
  out = [None]
  for view in range(1, int(config.input.cached_views) + 1):
    out.append(augment.draw_augmentation(
        int(config.seed), VIEW_STEP + view, frame_size=info.get("frame_size"),
        crop_size=int(config.input.crop_size), input_config=config.input,
        num_windows=info["num_windows"], samples_per_window=info["samples_per_window"]))
  return out


def _progress(total: int, desc: str):
  from tqdm import tqdm
  return tqdm(total=total, desc=desc, unit="clip", file=sys.stderr, mininterval=2.0,
              disable=jax.process_index() > 0)


def _extract_fold(config, modality: str, store: str, fold: int, mesh) -> None:
  """Extracts one fold into `fold_<k>.partial/` (resuming from its parts), then
  renames the assembled fold into place."""
  from avjax import input_pipeline
  from avjax.data import tfds_access
  builder = tfds_access.get_builder(config)
  info = tfds_access.dataset_info(config)
  n = tfds_access.num_clips(builder, [fold])
  t = info["num_windows"]
  clips = clips_per_call(modality, t, max(info["num_clips_per_fold"].values()),
                         mesh.devices.size)
  views = _views(config, info)
  read_video = modality == "video"
  reader = input_pipeline.Reader(builder, [fold], read_video)
  frame_size = info.get("frame_size")
  _, data_sharding = parallel.shardings(mesh)
  pid, nproc = jax.process_index(), jax.process_count()
  partial = feature_cache.fold_path(store, fold) + ".partial"
  write = pid == 0
  if write:
    os.makedirs(partial, exist_ok=True)
  bar = _progress(n, f"{modality} features, fold {fold}")
  pieces = _missing_pieces(partial, n, clips, remove=write)
  bar.update(n - sum(len(p) for p in pieces))
  t0, done_now = time.time(), 0
  for index in pieces:
    part = os.path.join(partial, f"part_{int(index[0]):06d}.npz")
    per_view = []
    meta = None
    for aug in views:
      crop = None
      if read_video:
        c = int(config.input.crop_size)
        off = (frame_size - c) // 2
        crop = (off, off, c, False) if aug is None else (aug.crop_y, aug.crop_x, c, aug.flip)
      batch = reader.read(index, crop)
      meta = meta or batch
      x = batch[modality]
      wv = batch["window_valid"]
      pad = clips - len(index)
      if pad:
        x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
        wv = np.concatenate([wv, np.repeat(wv[:1], pad, axis=0)])
      aug_in = None
      if aug is not None:
        aug_in = augment.augmentation_inputs(aug, t, info["samples_per_window"])
      fn, variables = extractor(config, modality, mesh, info, augmented=aug is not None)
      per_host = clips // nproc
      local = {modality: x[pid * per_host:(pid + 1) * per_host],
               "window_valid": wv[pid * per_host:(pid + 1) * per_host]}
      g = parallel.to_global(local, data_sharding)
      out = fn(variables, g[modality], g["window_valid"], aug_in if aug_in is not None else
               {"speed": np.float32(1), "semitones": np.float32(0),
                "noise": np.zeros((t, info["samples_per_window"]), np.float32)})
      out = (multihost_utils.process_allgather(out, tiled=True) if nproc > 1
             else jax.device_get(out))
      per_view.append(np.asarray(out, np.float32)[:len(index)])
    if write:
      ids = tfds_access.clip_ids(config, [fold])
      arrays = {"features": np.stack(per_view, axis=1),                      # [b, V, T, ...]
                "window_valid": np.asarray(meta["window_valid"], np.float32),
                "label": np.asarray(meta["label"], np.int32),
                "actor": np.asarray(meta["actor"], np.int32),
                "clip_id": np.asarray([ids[i] for i in index], dtype=str)}
      _write_npz(part, arrays)
    done_now += len(index)
    bar.update(len(index))
  bar.close()
  if done_now:
    rate = done_now / max(time.time() - t0, 1e-9)
    logging.info("%s features of fold %d: %d clips at %.1f clips/s", modality, fold, done_now, rate)
  if write:
    _assemble(partial, feature_cache.fold_path(store, fold), n,
              list(tfds_access.clip_ids(config, [fold])))


def _missing_pieces(partial: str, n: int, clips: int, remove: bool) -> list[np.ndarray]:
  """The clip indices of a fold of `n` clips that no part in `partial` holds yet, in
  pieces of at most `clips` consecutive clips. Parts from a run with another call size
  (another device count) are kept; one that does not read back or overlaps a kept one is
  left out (and removed when `remove`, the writing process)."""
  covered = np.zeros(n, bool)
  for name in _listdir(partial):
    if not (name.startswith("part_") and name.endswith(".npz") and ".tmp-" not in name):
      continue
    path = os.path.join(partial, name)
    try:
      start = int(name[len("part_"):-len(".npz")])
      with np.load(path, allow_pickle=False) as data:   # every array, as _assemble reads them
        lengths = {len(data[k]) for k in feature_cache.ARRAYS}
      stop = start + lengths.pop()
      if lengths:
        raise ValueError("its arrays hold different numbers of clips")
      problem = None if 0 <= start < stop <= n and not covered[start:stop].any() else (
          f"clips {start}-{stop - 1} overlap another part or lie past the fold's {n}")
    except Exception as e:  # noqa: BLE001  (a damaged zip raises many kinds)
      if errors.storage_errno(e) == errno.EIO:
        raise errors.StorageError(path, errno.EIO, "read") from e
      problem = f"{type(e).__name__}: {e}"
    if problem:
      logging.warning("feature store: %s left out (%s); its clips are extracted again",
                      path, problem)
      if remove:
        errors.remove_quietly(path)
      continue
    covered[start:stop] = True
  todo = np.flatnonzero(~covered)
  runs = np.split(todo, np.flatnonzero(np.diff(todo) != 1) + 1) if todo.size else []
  return [run[i:i + clips] for run in runs for i in range(0, len(run), clips)]


def _write_npz(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  try:
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
  except OSError as e:
    errors.remove_quietly(tmp)
    raise (errors.as_storage_error(e, path) or e) from e


def _assemble(partial: str, final: str, n: int, ids: list[str] | None = None) -> None:
  """Concatenates the parts of `partial` into `final` (written beside, renamed into place),
  checked to hold the fold's `n` clips (its clip `ids` in order, when given)."""
  parts = sorted(p for p in os.listdir(partial) if p.startswith("part_") and p.endswith(".npz")
                 and ".tmp-" not in p)
  loaded: dict[str, list] = {k: [] for k in feature_cache.ARRAYS}
  for p in parts:
    with np.load(os.path.join(partial, p), allow_pickle=False) as data:
      for k in feature_cache.ARRAYS:
        loaded[k].append(data[k])
  arrays = {k: np.concatenate(v) for k, v in loaded.items()}
  if ids is not None and list(arrays["clip_id"]) != list(ids) or len(arrays["label"]) != n:
    raise FeatureStoreError(f"{partial}: its parts hold {len(arrays['label'])} clips, not the "
                            f"fold's {n} in order; delete the directory to extract it again")
  tmp = f"{final}.tmp-{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  try:
    os.makedirs(tmp)
    for k, v in arrays.items():
      np.save(os.path.join(tmp, f"{k}.npy"), v, allow_pickle=False)
    os.replace(tmp, final)
  except OSError as e:
    shutil.rmtree(tmp, ignore_errors=True)
    raise (errors.as_storage_error(e, final) or e) from e
  shutil.rmtree(partial, ignore_errors=True)


def _fold_problem(store: str, fold: int, clips: int, num_views: int, num_windows: int,
                  shape: tuple[int, ...]) -> str | None:
  """Why the extracted fold `fold` of `store` cannot be used (a file missing or not
  reading back, arrays of the wrong length or shape), or None."""
  d = feature_cache.fold_path(store, fold)
  arrays = {}
  for k in feature_cache.ARRAYS:
    path = os.path.join(d, f"{k}.npy")
    try:
      arrays[k] = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
      if errors.storage_errno(e) == errno.EIO:
        raise errors.StorageError(path, errno.EIO, "read") from e
      return f"{k}.npy: {type(e).__name__}: {e}"
  want = (clips, num_views, num_windows) + tuple(shape)
  if arrays["features"].shape != want:
    return f"features.npy has shape {arrays['features'].shape}, expected {want}"
  wrong = [k for k in feature_cache.ARRAYS if len(arrays[k]) != clips]
  if wrong:
    return f"{wrong} do not hold the fold's {clips} clips"
  return None


def _clean_leftovers(store: str) -> None:
  """Removes what a killed or failed extraction left in `store` (hold the store's lock):
  `fold_<k>.tmp-<pid>/` folders and `*.tmp-<pid>` files, parts included."""
  for folder in (store, *[os.path.join(store, n) for n in _listdir(store)
                          if n.endswith(".partial")]):
    for name in _listdir(folder):
      if ".tmp-" in name:
        errors.remove_quietly(os.path.join(folder, name))


def _listdir(folder: str) -> list[str]:
  try:
    return sorted(os.listdir(folder))
  except OSError:
    return []


def _write_store_json(store: str, doc: dict) -> None:
  path = os.path.join(store, feature_cache.STORE_JSON)
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      json.dump(doc, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  except OSError as e:
    errors.remove_quietly(tmp)
    raise (errors.as_storage_error(e, path) or e) from e


def ensure(config, mesh=None) -> dict[str, str]:
  """{modality: store directory} for the cached modalities of `config`, extracting
  every fold with clips that the store lacks (resuming an interrupted one) or whose
  files do not read back (extracted again, with a notice)."""
  out = {}
  inputs = run_spec.of(config).cuts
  if not inputs:
    return out
  from avjax.data import tfds_access
  builder = tfds_access.get_builder(config)
  info = tfds_access.dataset_info(config)
  folds = [f for f, n in info["num_clips_per_fold"].items() if n > 0]
  for modality in inputs:
    key = feature_cache.store_key(config, builder, modality)
    store = feature_cache.store_path(config, builder, modality)
    out[modality] = store
    doc_path = os.path.join(store, feature_cache.STORE_JSON)
    doc = None
    if os.path.isfile(doc_path):
      try:
        doc = feature_cache.check_key(store, key)
      except errors.CorruptFileError as e:   # derived from the key: written again below
        if jax.process_index() == 0:
          print(f"{doc_path} cannot be read ({e.reason}): writing it again", flush=True)
    rewrite_doc = doc is None
    shape = (tuple(doc["feature_shape"]) if doc and "feature_shape" in doc
             else fixed_trunk.feature_shape(config, modality, info))
    check = functools.partial(_fold_problem, store, num_views=1 + key["views"],
                              num_windows=info["num_windows"], shape=shape)
    todo = []
    for f in folds:
      if not os.path.isdir(feature_cache.fold_path(store, f)):
        todo.append(f)
      elif (problem := check(f, info["num_clips_per_fold"][f])) is not None:
        if jax.process_index() == 0:
          print(f"the {modality} features of fold {f} in {store} cannot be read ({problem}): "
                "extracting them again", flush=True)
        todo.append(f)
    if not todo and not rewrite_doc:
      continue
    mesh = mesh or parallel.make_mesh()
    if jax.process_index() == 0:
      try:
        os.makedirs(store, exist_ok=True)
      except OSError as e:
        raise (errors.as_storage_error(e, store, "create") or e) from e
      if todo:
        print(f"Caching {modality} features ({key['endpoint']}, model.trunk="
              f"{config.model.trunk!r}) of folds {todo} into {store}", flush=True)
    t0 = time.time()
    with _lock(store):   # one extracting process per store; the others wait, then skip
      if jax.process_index() == 0:
        _clean_leftovers(store)
        doc = {"key": key, "feature_shape": list(shape), "num_views": 1 + key["views"],
               "num_windows": info["num_windows"]}
        _write_store_json(store, doc)
      for fold in todo:
        fold_dir = feature_cache.fold_path(store, fold)
        if os.path.isdir(fold_dir):
          if check(fold, info["num_clips_per_fold"][fold]) is None:
            continue   # extracted by another process meanwhile
          if jax.process_index() == 0:
            shutil.rmtree(fold_dir, ignore_errors=True)
        _extract_fold(config, modality, store, fold, mesh)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"feature_store {store}")
    if jax.process_index() == 0 and todo:
      clips = sum(info["num_clips_per_fold"][f] for f in todo)
      dt = time.time() - t0
      print(f"{modality} features: {clips} clips in {dt:.1f} s ({clips / max(dt, 1e-9):.1f} "
            f"clips/s), {_size(store) / 2**20:.1f} MiB", flush=True)
  return out


@contextlib.contextmanager
def _lock(store: str):
  """An exclusive lock on `store` (process 0 only: it alone writes) while extracting."""
  if jax.process_index() != 0:
    yield
    return
  with file_lock.exclusive(os.path.join(store, ".lock")):
    yield


def _size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


