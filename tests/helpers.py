"""Helpers for the test suite: tiny configs and batches, one shared synthetic dataset and
one shared tiny trained workdir per process, and the real-format samples in ../shared/samples.

The shared objects are built on first use, once per test run (session-scoped; with
pytest-xdist, once for all workers, under a file lock): the synthetic set is built
once (80 clips, one per actor and class) instead of once per module, and the tiny
workdir is trained once and read by the end-to-end, evaluation and predict tests.
Tests must not modify them: copy first (`shutil.copytree`).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import io
import itertools
import json
import os
import pathlib
import shutil
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLES = pathlib.Path(os.environ.get("AVJAX_SAMPLES", REPO.parent / "shared" / "samples"))
SYNTHETIC_WINDOWING = "w4_l1_ov"


def require_samples(sub: str = "") -> pathlib.Path:
  """Path of ../shared/samples[/sub]; skips the test when absent, fails it when CI=true."""
  import pytest

  path = SAMPLES / sub if sub else SAMPLES
  if not path.is_dir():
    msg = f"real-format samples not found at {path} (expected ../shared/samples beside the repo)"
    if os.environ.get("CI") == "true":
      pytest.fail(msg + "; CI=true requires them")
    pytest.skip(msg)
  return path


RUN_ENV = "AVJAX_TEST_RUN"   # set by conftest.py for a pytest run, shared by its xdist workers


@functools.cache
def _session_dir() -> str:
  """The directory of this test run's shared data: one for all pytest-xdist workers of a
  run (conftest.py sets AVJAX_TEST_RUN and removes the directory at the end), else a
  temporary directory removed at exit."""
  run = os.environ.get(RUN_ENV)
  if run:
    path = session_path(run)
    os.makedirs(path, exist_ok=True)
    return path
  path = tempfile.mkdtemp(prefix="avjax_tests_")
  atexit.register(shutil.rmtree, path, ignore_errors=True)
  return path


def session_path(run: str) -> str:
  return os.path.join(tempfile.gettempdir(), f"avjax_tests_{run}")


@contextlib.contextmanager
def _exclusive(name: str):
  """Holds an exclusive file lock in the session directory (one builder at a time
  across xdist workers; the others wait and then find the result)."""
  with open(os.path.join(_session_dir(), name + ".lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def release_compiled() -> None:
  """Drops every compiled program this process holds (the package's caches of jitted
  functions and jax's own). Run after each test module (conftest.py): each compiled
  tiny train step maps about 5,600 memory regions on XLA:CPU, and a process that keeps
  a dozen of them alive passes Linux's default vm.max_map_count (65530) and crashes
  in the next compilation."""
  import gc
  import sys
  steps = sys.modules.get("avjax.steps")
  if steps is not None:
    steps._STEPS.clear()
  for module, name in (("avjax.models.gating", "_jitted_init"), ("avjax.models.gating", "apply_fn"),
                       ("avjax.evaluate", "_forward_fn"), ("avjax.train_state", "_placer")):
    mod = sys.modules.get(module)
    if mod is not None:
      getattr(mod, name).cache_clear()
  jax.clear_caches()
  gc.collect()


# --------------------------------------------------------------------------- configs


def tiny_config(num_classes=4, clips_per_class=2, windows=2, frames=4, crop=16, samples=5000):
  """The base config with a tiny random-weight model (I3D x0.125 up to Mixed_3b,
  SoundNet x0.25, D = G = 16); `config.tiny` holds the shapes of `tiny_batch`.
  The shallow I3D compiles several times faster than the whole one; the whole
  network is trained in tests/test_gating.py and tests/test_benchmark.py."""
  from avjax import config_lib
  c = config_lib.get_base_config()
  c.model.pretrained = False
  c.model.freeze_bn = False
  c.model.video_width = 0.125
  c.model.audio_width = 0.25
  c.model.video_last_block = "Mixed_3b"
  # XLA's convolutions: they compile faster at the tests' optimisation level; the
  # forms are checked in tests/test_conv.py and the model parity tests, and 'auto'
  # runs end to end in tests/test_benchmark.py's train step and in `make demo`.
  c.model.conv_impl = "xla"
  c.model.embed_dim = 16
  c.model.lstm_hidden = 16
  c.input.clips_per_class = clips_per_class
  c.input.crop_size = crop
  c.dataset.class_names = tuple(f"c{i}" for i in range(num_classes))
  c.tiny = dict(windows=windows, frames=frames, samples=samples)  # test-only shapes
  return c


def parity_config(**kwargs):
  """`tiny_config` for comparing two ways of running the same steps (sharding,
  padding, processes). Adam's first update is lr g / (|g| + eps): with the
  default eps = 1e-8 every weight moves by about +-lr whatever its gradient's
  size, so weights whose gradient is float32 rounding noise move in opposite
  directions in the two runs. On an AVX2-only CPU, 4 devices against 1 then
  differed by 1.4e-3 in the step-2 loss and 3.2e-2 in its gradient norm. With
  eps = 1 the update is smooth in g (and still lowers the loss from 16.0 to
  13.2): 2.3e-5 and 5.1e-4 there, against 1.8e-4 and 4.5e-3 with eps = 1e-3."""
  c = tiny_config(**kwargs)
  c.optim.eps = 1.0
  return c


def tiny_batch(config, seed=0):
  """A random class-balanced host batch of `config.tiny`'s shapes."""
  n = config.input.clips_per_class * len(config.dataset.class_names)
  t, f, s = config.tiny.windows, config.tiny.frames, config.tiny.samples
  rng = np.random.default_rng(seed)
  crop = config.input.crop_size
  return {
      "video": rng.integers(0, 256, size=(n, t, f, crop, crop, 3), dtype=np.uint8),
      "audio": rng.normal(scale=0.1, size=(n, t, s)).astype(np.float32),
      "label": np.repeat(np.arange(len(config.dataset.class_names)),
                         config.input.clips_per_class).astype(np.int32),
      "window_valid": np.ones((n, t), np.float32),
  }


def tiny_synthetic_config(data_dir: str | None = None, **train_overrides):
  """`tiny_config` on the synthetic set (the shared one unless `data_dir`): 2 clips per
  class, 16-pixel crops, k = 3, one epoch, a log line and a checkpoint every 1-2 steps."""
  from avjax import config_tokens
  c = tiny_config(clips_per_class=2, crop=16)
  config_tokens.set_dataset(c, "synthetic_av")
  del c.tiny
  c.dataset.data_dir = data_dir or synthetic_data_dir()
  c.input.eval_batch_size = 32
  c.eval.k = 3
  c.train.num_epochs = 1
  c.train.log_every_steps = 1
  c.train.checkpoint_every_steps = 2
  c.train.eval_every_epochs = 0
  for k, v in train_overrides.items():
    setattr(c.train, k, v)
  return c


# --------------------------------------------------------------------------- shared data


@functools.cache
def synthetic_data_dir(windowing: str = SYNTHETIC_WINDOWING) -> str:
  """A TFDS data_dir holding synthetic_av/`windowing` with one clip per actor and class
  (80 clips, 8 per fold), built once per test run (shared by xdist workers); every
  windowing asked for is built into the same directory."""
  from avjax.tfds_builders.synthetic_av import synthetic_av_dataset_builder as synthetic_builder
  data_dir = os.path.join(_session_dir(), "tfds")
  with _exclusive("tfds"):
    builder = synthetic_builder.Builder(config=windowing, data_dir=data_dir,
                                        clips_per_actor_class=1)
    if not builder.is_prepared():
      builder.download_and_prepare()
  return data_dir


@functools.cache
def tiny_workdir() -> str:
  """A workdir trained and evaluated once per test run (shared by xdist workers):
  `tiny_synthetic_config` on the shared synthetic set, folds 0 and 1, 2 steps each,
  results and figures written. Read-only for tests (copy it to change it)."""
  from avjax import train
  from avjax import workdir as workdir_lib
  config = tiny_synthetic_config(max_steps=2)
  config.folds = (0, 1)
  workdir = os.path.join(_session_dir(), "tiny_workdir")
  done = os.path.join(workdir, "tiny_workdir.done")
  with _exclusive("tiny_workdir"):
    if not os.path.isfile(done):
      with contextlib.redirect_stdout(io.StringIO()):
        train.train_and_evaluate(config, workdir)
      workdir_lib.write_text(done, "")
  return workdir


# --------------------------------------------------------------------------- fakes


def random_variables(shapes, seed: int = 0):
  """Random variables shaped like `shapes` (from jax.eval_shape of init), without
  compiling flax's initialisers: kernels ~ N(0, 1/fan_in), BN statistics near (0, 1)."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape), s.dtype)
    if "var" in name:
      return jnp.asarray(rng.uniform(0.5, 1.5, s.shape), s.dtype)
    return jnp.asarray(rng.normal(0, 0.1, s.shape), s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


RAVDESS_CLASSES = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")


def predictions_with_correct(labels, num_correct, num_classes):
  """[T, Q] predictions whose gate t has exactly num_correct[t] right answers (the last ones)."""
  labels = np.asarray(labels)
  pred = np.tile(labels, (len(num_correct), 1))
  for t, c in enumerate(num_correct):
    wrong = len(labels) - c
    pred[t, :wrong] = (labels[:wrong] + 1) % num_classes
  return pred.astype(np.int32)


def write_fake_fold(workdir, fold, labels, correct, *, dataset="synthetic_av", config="w3_l1_ov",
                    variant="gating", modalities="av", class_names=("a", "b", "c", "d"), dim=6,
                    seed=0, **info_overrides):
  """Writes workdir/fold_{fold}/predictions.npz + fold_info.json.

  `correct` maps modality -> number of correct queries per gate (its length is T).
  Embeddings are class means plus noise, so t-SNE has clusters to show.
  """
  rng = np.random.default_rng(seed + fold)
  labels = np.asarray(labels, np.int32)
  q, c = len(labels), len(class_names)
  centres = rng.normal(size=(c, dim)) * 4
  arrays = {"labels": labels, "actor": np.full(q, 100 + fold, np.int32),
            "clip_id": np.array([f"f{fold}_clip{i:03d}" for i in range(q)])}
  num_windows = None
  for m, per_gate in correct.items():
    arrays[f"pred_{m}"] = predictions_with_correct(labels, per_gate, c)
    d = 2 * dim if m == "AV" else dim
    arrays[f"emb_{m}"] = (np.tile(centres[labels], (1, d // dim)) + rng.normal(size=(q, d))).astype(np.float32)
    num_windows = len(per_gate)
  fold_dir = os.path.join(workdir, f"fold_{fold}")
  os.makedirs(fold_dir, exist_ok=True)
  np.savez(os.path.join(fold_dir, "predictions.npz"), **arrays)
  info = {"dataset": dataset, "config": config, "variant": variant, "modalities": modalities,
          "fold": fold, "class_names": list(class_names), "num_windows": num_windows, "k": 15,
          "num_train_clips": 100, "exclude_used": True, "avjax_version": "test"}
  info.update(info_overrides)
  with open(os.path.join(fold_dir, "fold_info.json"), "w") as f:
    json.dump(info, f)
  return fold_dir


def brute_force(emb, labels, exclude_used=True, mask=None, distance="squared",
                negatives="hardest"):
  """The definition of docs/design.md with explicit loops over windows, anchors, p and n.

  float64 distances; the joint argmax over (p, n) in flat order p*N + n with a
  strict '>' so the first maximum (lowest flat index) wins. `mask`: [N] (clips)
  or [T, N] (per window: a clip masked at window t takes no part in it).
  `negatives='semihard'`: only triplets with d(i, p) < d(i, n) are candidates.
  """
  t_count, n, _ = emb.shape
  masks = np.ones((t_count, n), bool) if mask is None else np.broadcast_to(
      np.asarray(mask, bool), (t_count, n))
  pos = np.zeros((t_count, n), np.int32)
  neg = np.zeros((t_count, n), np.int32)
  valid = np.zeros((t_count, n), bool)
  used = set()
  for t in range(t_count):
    mask = masks[t]
    e = emb[t].astype(np.float64)
    d = ((e[:, None, :] - e[None, :, :]) ** 2).sum(-1)
    if distance == "euclidean":
      d = np.sqrt(d)
    picked_now = []
    for i in range(n):
      if not mask[i]:
        continue
      best, best_score = None, -np.inf
      for p, q in itertools.product(range(n), range(n)):   # flat order p*N + q
        if not (mask[p] and mask[q]):
          continue
        if p == i or labels[p] != labels[i] or labels[q] == labels[i]:
          continue
        if exclude_used and (i, p, q) in used:
          continue
        if negatives == "semihard" and not d[i, p] < d[i, q]:
          continue
        score = d[i, p] - d[i, q]
        if score > best_score:
          best, best_score = (p, q), score
      if best is not None:
        pos[t, i], neg[t, i], valid[t, i] = best[0], best[1], True
        picked_now.append((i,) + best)
    used.update(picked_now)
  return pos, neg, valid
