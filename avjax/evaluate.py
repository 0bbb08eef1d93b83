r"""Per-gate KNN evaluation of a trained model.

Legend: N clips, T windows (gates), H gate-embedding size, Q query clips.

For a held-out fold: embed the training folds (references) and the held-out
fold (queries) with centre crops and no audio augmentation, then at every gate
t classify each query by KNN (k = config.eval.k) among the references, for
  AO  the audio gate embedding h^a_t,
  VO  the video gate embedding h^v_t,
  AV  their concatenation [h^a_t, h^v_t],
for the modalities the model has. Written per fold (see docs/results_schema.md):
`predictions.npz` (labels, actor, clip_id, pred_{M} [T, Q], emb_{M} [Q, D] at
the last gate), `reference_bank.npz` (the references' gate embeddings [N, T, H]
and labels, and the preprocessing `avjax.predict` needs; unless
config.eval.reference_bank is False) and `fold_info.json` (written last: its
presence marks the fold done).

Command line (re-evaluates the folds of a finished or interrupted run):
  python -m avjax.evaluate --workdir=runs/ravdess [--folds=0,3] [--checkpoint=latest|best]
(default checkpoint: the one training reported, `train_state.result_checkpoint`)
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from typing import Any

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from avjax import __version__
from avjax import choices
from avjax import cli
from avjax import config_lib
from avjax import errors
from avjax import feature_store
from avjax import fixed_trunk
from avjax import fold_lock
from avjax import input_pipeline
from avjax import knn
from avjax import parallel
from avjax import protocol
from avjax import report
from avjax import results
from avjax import run_spec
from avjax import steps
from avjax import train_state as train_state_lib
from avjax import workdir as workdir_lib
from avjax.data import folds as folds_lib
from avjax.data import tfds_access
from avjax.models import gating


@functools.lru_cache(maxsize=8)
def _forward_fn(modalities: str, mask_padded_windows: bool, mesh: Mesh):
  """The jitted evaluation forward, built once per (modalities, masking, mesh): every
  fold, validation and evaluation reuse its compilation (one per batch shape)."""
  repl, data = parallel.shardings(mesh)

  def forward(state, batch):
    steps.TRACES["eval_forward"] += 1
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return gating.gate_embeddings(state.apply_fn, variables, batch, modalities,
                                  mask_padded_windows)

  return jax.jit(forward, in_shardings=(repl, data), out_shardings=data)


def embed(config, state, folds: list[int], mesh) -> dict[str, np.ndarray]:
  """Gate embeddings of every clip of `folds`, in eval order.

  Returns {'audio_gate'/'video_gate': [N, T, H] float32, 'label': [N], 'actor': [N]}.
  Any `config.input.eval_batch_size` works: each batch is padded with masked
  copies to a multiple of the mesh's devices (evaluation uses BatchNorm's running
  statistics, so the copies change nothing and are dropped from the output).
  """
  _, data_sharding = parallel.shardings(mesh)
  forward = _forward_fn(config.model.modalities, bool(config.loss.mask_padded_windows), mesh)
  chunks: dict[str, list[np.ndarray]] = {}
  pid, nproc = jax.process_index(), jax.process_count()
  for batch in input_pipeline.eval_batches(config, folds):
    batch = parallel.pad_batch(batch, mesh.devices.size)
    mask = np.asarray(batch["mask"], bool)
    per_host = len(mask) // nproc
    local = {k: np.asarray(v)[pid * per_host:(pid + 1) * per_host] for k, v in batch.items()}
    out = forward(state, parallel.to_global(local, data_sharding))
    out = multihost_utils.process_allgather(out, tiled=True) if nproc > 1 else jax.device_get(out)
    for key, value in out.items():
      chunks.setdefault(key, []).append(np.asarray(value, np.float32)[mask])
    chunks.setdefault("label", []).append(np.asarray(batch["label"])[mask])
    chunks.setdefault("actor", []).append(np.asarray(batch["actor"])[mask])
  return {k: np.concatenate(v) for k, v in chunks.items()}


def modality_embedding(emb: dict[str, np.ndarray], modality: str) -> np.ndarray:
  """[N, T, H*] embedding of AO, VO or AV from `embed`'s output."""
  return np.concatenate([emb[k] for k in choices.MODALITY_KEYS[modality]], axis=-1)


def predict_per_gate(config, references: dict, queries: dict) -> dict[str, np.ndarray]:
  """{'pred_M': [T, Q] int32, 'emb_M': [Q, D]} for each modality of the model."""
  num_classes = len(config.dataset.class_names)
  out = {}
  for m in run_spec.of(config).gate_modalities:
    ref, qry = modality_embedding(references, m), modality_embedding(queries, m)
    preds = [np.asarray(knn.knn_predict(ref[:, t], references["label"], qry[:, t], k=config.eval.k,
                                        num_classes=num_classes, chunk_size=config.eval.chunk_size))
             for t in range(qry.shape[1])]
    out[f"pred_{m}"] = np.stack(preds).astype(np.int32)
    out[f"emb_{m}"] = qry[:, -1].astype(np.float32)
  return out


def validation_accuracy(config, state, validation_fold: int, train_folds: list[int],
                        mesh) -> dict[str, float]:
  """KNN accuracy at the last gate on the VALIDATION fold (`config.train.validation_fold`),
  references the training folds: the metric that picks the best checkpoint. The
  test fold is never scored during training.

  Returns {'validation_accuracy_{M}' for each modality, 'validation_accuracy' (that
  of the last of AO / VO / AV the model has: AV for 'av'), 'validation_fold'}."""
  if validation_fold in train_folds:
    raise ValueError(f"validation fold {validation_fold} is among the training folds {train_folds}")
  refs = embed(config, state, train_folds, mesh)
  qrys = embed(config, state, [validation_fold], mesh)
  preds = predict_per_gate(config, refs, qrys)
  mods = run_spec.of(config).gate_modalities
  metrics = {f"validation_accuracy_{m}": float(np.mean(preds[f"pred_{m}"][-1] == qrys["label"]))
             for m in mods}
  metrics["validation_accuracy"] = metrics[f"validation_accuracy_{mods[-1]}"]
  metrics["validation_fold"] = int(validation_fold)
  return metrics


def recipe_info(config) -> dict[str, Any]:
  """The fold_info.json fields that `config` alone decides: the training recipe and the
  trunk (an old fold_info.json that lacks one is read with `compat.FOLD_INFO_BEFORE`)."""
  config = config_lib.complete(config)
  return {
      "exclude_used": bool(config.loss.exclude_used), "negatives": str(config.loss.negatives),
      "distance": str(config.loss.distance), "batch_all_epochs": run_spec.of(config).warmup_epochs,
      "margin": float(config.loss.margin), "mse_weight": float(config.loss.mse_weight),
      "optimizer": str(config.optim.name), "learning_rate": float(config.optim.learning_rate),
      "weight_decay": float(config.optim.weight_decay),
      "center_audio_head": bool(config.model.center_audio_head),
      "center_video_head": bool(config.model.center_video_head),
      "mask_padded_windows": bool(config.loss.mask_padded_windows),
      "trunk": str(config.model.trunk), "cached_views": int(config.input.cached_views),
      "speaker_centering": bool(config.input.speaker_centering),
      "speaker_scaling": bool(config.input.speaker_scaling),
      "audio_head_layer": str(config.model.audio_head_layer),
      "audio_head_stats": str(config.model.audio_head_stats),
      "trunk_lr_scale": float(config.optim.trunk_lr_scale),
  }


def _trained_beside(fold_dir: str) -> int:
  """The `parallel_folds` of the fold's fold_info.json (a re-evaluation keeps it), else 1."""
  try:
    with open(os.path.join(fold_dir, workdir_lib.FOLD_INFO)) as f:
      return int(json.load(f).get("parallel_folds", 1))
  except (OSError, ValueError, AttributeError, TypeError):
    return 1


def evaluate_fold(config, state, model, test_fold: int, fold_dir: str, mesh,
                  selected_by: str = "last", parallel_folds: int | None = None
                  ) -> dict[str, Any]:
  """Writes predictions.npz and fold_info.json for `test_fold`; returns the arrays.
  `selected_by` says how `state`'s checkpoint was chosen ('last' or
  'validation_fold:N'); fold_info.json records it with the checkpoint's step, and
  `parallel_folds`, the number of folds trained side by side with it, itself included
  (None: as the fold's fold_info.json said, else 1)."""
  del model
  train_folds = tfds_access.split_folds(config, test_fold)[0]
  refs = embed(config, state, train_folds, mesh)
  qrys = embed(config, state, [test_fold], mesh)
  arrays = predict_per_gate(config, refs, qrys)
  arrays["labels"] = qrys["label"].astype(np.int32)
  arrays["actor"] = qrys["actor"].astype(np.int32)
  arrays["clip_id"] = np.asarray(tfds_access.clip_ids(config, [test_fold]), dtype=str)
  if len(arrays["clip_id"]) != len(arrays["labels"]):
    raise RuntimeError(f"fold {test_fold}: {len(arrays['clip_id'])} clip ids for {len(arrays['labels'])} clips")
  info = {
      "dataset": config.dataset.name, "config": config.dataset.config,
      "variant": config.model.variant, "modalities": config.model.modalities,
      "fold": int(test_fold), "class_names": list(config.dataset.class_names),
      "num_windows": int(arrays[f"pred_{run_spec.of(config).gate_modalities[0]}"].shape[0]),
      "k": int(config.eval.k), "num_train_clips": int(len(refs["label"])),
      **recipe_info(config), "avjax_version": __version__,
      "checkpoint_step": int(jax.device_get(state.step)), "selected_by": selected_by,
      "config_hash": protocol.config_hash(config),
      "allow_missing_folds": bool(config.dataset.allow_missing_folds),
      "parallel_folds": _trained_beside(fold_dir) if parallel_folds is None else int(parallel_folds),
  }
  bank = None
  if config.eval.reference_bank:
    bank = reference_bank_arrays(config, state, refs, train_folds, test_fold)
  if jax.process_index() == 0:
    os.makedirs(fold_dir, exist_ok=True)
    # A re-evaluation interrupted below must not leave new predictions under the former
    # fold_info.json (its checkpoint and selection): the fold is undone until it is written.
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(fold_dir, workdir_lib.FOLD_INFO))
    workdir_lib.write_npz(os.path.join(fold_dir, workdir_lib.PREDICTIONS), arrays)
    if bank is not None:
      workdir_lib.write_npz(os.path.join(fold_dir, workdir_lib.REFERENCE_BANK), bank)
    # Written last: its presence marks the fold done (workdir.fold_is_done).
    workdir_lib.write_json(os.path.join(fold_dir, workdir_lib.FOLD_INFO), info, indent=2)
    for m in run_spec.of(config).gate_modalities:
      acc = np.mean(arrays[f"pred_{m}"] == arrays["labels"][None], axis=1)
      logging.info("Fold %d %s accuracy per gate: %s", test_fold, m, np.round(acc, 4).tolist())
      print(f"fold {test_fold} {m} accuracy per gate: " + " ".join(f"{a:.3f}" for a in acc), flush=True)
  return arrays


BANK_SCHEMA_VERSION = 1


def reference_bank_arrays(config, state, refs: dict, train_folds: list[int],
                          test_fold: int) -> dict[str, np.ndarray]:
  """The arrays of `fold_k/reference_bank.npz` (docs/results_schema.md): the training
  folds' gate embeddings [N, T, H] and labels, plus, as a JSON string `meta`,
  everything `avjax.predict` needs to preprocess a new clip without the dataset."""
  info = tfds_access.dataset_info(config)
  builder_meta = dict(tfds_access.get_builder(config).info.metadata or {})
  spec = run_spec.of(config).window
  step = int(jax.device_get(state.step))
  video = None
  if "video_gate" in refs:
    video = {"fps": float(info["fps"]), "frame_size": int(info["frame_size"]),
             "frames_per_window": int(info["frames_per_window"]),
             "crop_size": int(config.input.crop_size),
             "center_crop": bool(builder_meta.get("center_crop", False)),
             "interpolation": str(builder_meta.get("interpolation", "AREA"))}
  audio = None
  if "audio_gate" in refs:
    audio = {"rate": float(info["audio_rate"]),
             "samples_per_window": int(info["samples_per_window"])}
  meta = {
      "schema_version": BANK_SCHEMA_VERSION, "dataset": config.dataset.name,
      "config": config.dataset.config, "variant": config.model.variant,
      "modalities": config.model.modalities, "gate_modalities": list(run_spec.of(config).gate_modalities),
      "fold": int(test_fold), "train_folds": [int(f) for f in train_folds],
      "class_names": list(config.dataset.class_names), "k": int(config.eval.k),
      "step": step,
      "window": {"name": spec.name, "num_windows": spec.num_windows, "length": spec.length,
                 "overlap": spec.overlap, "mode": spec.mode},
      "video": video, "audio": audio, "avjax_version": __version__,
  }
  arrays = {k: np.asarray(refs[k], np.float32) for k in ("audio_gate", "video_gate") if k in refs}
  arrays["labels"] = np.asarray(refs["label"], np.int32)
  arrays["actor"] = np.asarray(refs["actor"], np.int32)
  arrays["clip_id"] = np.asarray(tfds_access.clip_ids(config, train_folds), dtype=str)
  if len(arrays["clip_id"]) != len(arrays["labels"]):
    raise RuntimeError(f"fold {test_fold}: {len(arrays['clip_id'])} reference clip ids for "
                       f"{len(arrays['labels'])} embeddings")
  arrays["step"] = np.asarray(step, np.int64)
  arrays["meta"] = np.asarray(json.dumps(meta, sort_keys=True))   # 0-d unicode, no pickle
  return arrays


def sample_batch(config) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of one evaluation clip as the model takes it (media, or the cached
  features of a frozen trunk), for building a state to restore into."""
  info = tfds_access.dataset_info(config)
  t, s = info["num_windows"], info["samples_per_window"]
  out = {"audio": jax.ShapeDtypeStruct((1, t, s), np.float32)}
  if tfds_access.reads_video(config, tfds_access.get_builder(config)):
    c = int(config.input.crop_size)
    out["video"] = jax.ShapeDtypeStruct((1, t, info["frames_per_window"], c, c, 3), np.uint8)
  return fixed_trunk.model_input_shapes(config, out)   # features for a cached trunk


def checkpoint_selection(config, test_fold: int, which: str) -> str:
  """fold_info's `selected_by` for the `latest` or `best` checkpoint: 'last' or
  'validation_fold:N'."""
  if which == "latest":
    return "last"
  return f"validation_fold:{tfds_access.split_folds(config, test_fold)[1]}"


def restore_for_eval(config, fold_dir: str, test_fold: int, mesh, which: str = "latest"):
  """Rebuilds the model and restores the fold's `latest` or `best` checkpoint ('best'
  only exists with a validation fold, and is chosen by it)."""
  if which == "best" and tfds_access.split_folds(config, test_fold)[1] is None:
    raise train_state_lib.CheckpointNotFound(
        f"fold {test_fold}: there is no best checkpoint: the run had no validation fold "
        "(config.train.validation_fold='none', so nothing was selected and the last checkpoint "
        "is the result); use --checkpoint=latest")
  repl, _ = parallel.shardings(mesh)
  state, model, step = train_state_lib.restore_for_inference(
      config, fold_dir, sample_batch(config), repl, which)
  logging.info("Fold %d: restored %s checkpoint, step %d", test_fold, which, step)
  return state, model


def _check_finished(config, fold: int, fold_dir: str) -> None:
  """UsageError unless the fold's training reached its last step: evaluating a fold marks
  it done, and avjax.main would then never finish its training."""
  total = tfds_access.total_steps(config, tfds_access.split_folds(config, fold)[0])
  latest = train_state_lib.saved_step(fold_dir, config, "latest")
  if latest < total:
    raise errors.UsageError(
        f"fold {fold}: its training stopped at step {latest} of {total} "
        f"({workdir_lib.checkpoint_dir(fold_dir)}); rerun the training command "
        "(python -m avjax.main with the same config and --workdir) to finish it first")


def reevaluate(workdir: str, folds=None, checkpoint: str | None = None) -> list[str]:
  """Evaluates saved checkpoints of `workdir` again and rewrites its results; returns
  the paths written (results.json, results.md, figures). `folds`: default the
  config's. `checkpoint`: 'latest' or 'best'; None: each fold's
  `train_state.result_checkpoint`, the one training reported."""
  workdir = os.path.abspath(workdir)
  config = workdir_lib.load_config(workdir)
  folds = list(config.folds) if folds is None else list(folds)
  done = [f for f in range(folds_lib.NUM_FOLDS) if os.path.isdir(
      workdir_lib.checkpoint_dir(workdir_lib.fold_dir(workdir, f)))]
  missing = [f for f in folds if f not in done]
  if missing:
    raise train_state_lib.CheckpointNotFound(
        f"{workdir}: fold(s) {missing} have no checkpoints (trained folds: {done})")
  mesh = parallel.make_mesh()
  for fold in folds:
    fold_dir = workdir_lib.fold_dir(workdir, fold)
    config = workdir_lib.load_fold_config(workdir, fold)   # the config it was trained with
    which = checkpoint or train_state_lib.result_checkpoint(config, fold)
    if workdir_lib.fold_is_done(fold_dir) and jax.process_index() == 0:
      try:
        results.check_fold_outputs(fold_dir)
      except errors.CorruptFileError as e:
        print(f"fold {fold}: {e.path} cannot be read ({e.reason}): writing it again",
              flush=True)
    feature_store.ensure(config, mesh)   # a cached trunk's features (nothing for 'finetune')
    lock = fold_lock.FoldLock(fold_dir)
    try:
      if jax.process_count() == 1:   # as training: multi-host runs take no lock
        lock.acquire()
    except fold_lock.FoldLocked as e:
      raise errors.Failure(f"fold {fold} is in use by another process: {e}") from None
    try:          # holding the fold's lock: not while another process trains it
      _check_finished(config, fold, fold_dir)
      state, model = restore_for_eval(config, fold_dir, fold, mesh, which)
      evaluate_fold(config, state, model, fold, fold_dir, mesh,
                    selected_by=checkpoint_selection(config, fold, which))
    finally:
      lock.release()
  written = []
  if jax.process_index() == 0:
    written.extend(report.write_results(workdir))
    if config.eval.figures:
      from avjax import figures  # matplotlib only when figures are wanted
      written.extend(figures.make_all(workdir, groups=config_lib.fig5_groups(config)))
  return written


FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  folds = list(cli.parse_folds(FLAGS.folds)) if FLAGS.folds else None
  written = reevaluate(FLAGS.workdir, folds, FLAGS.checkpoint)
  if written:
    print(f"results: {written[0]}\n         {written[1]}")
    for path in written[2:]:
      print(f"figure:  {path}")


if __name__ == "__main__":
  cli.define_workdir("A workdir written by avjax.main.")
  flags.DEFINE_string("folds", "", "Comma-separated folds (default: the config's).")
  flags.DEFINE_enum("checkpoint", None, ["latest", "best"],
                    "Which checkpoint to evaluate: 'latest', or 'best' by the validation fold "
                    "(only with config.train.validation_fold set). Default: the one training "
                    "reported, 'best' for a run with a validation fold, else 'latest'.")
  cli.run(main)
