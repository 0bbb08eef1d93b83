"""The cached-feature trunks (`model.trunk='frozen'` / 'finetune_from:...', avjax.feature_store).

On the shared synthetic set with the tiny random-weight model:
* equivalence: on the same clips, the loss and the head / LSTM gradients of the
  frozen model on cached features equal those of the whole network on the media
  with its trunks held (frozen BN, centre crop, no augmentation), and so do the
  gate embeddings and the KNN predictions of evaluation; the same for a
  'finetune_from:' cut (the layers above it included);
* the store: keyed so that a stale one is never read, an interrupted extraction
  leaves nothing that looks complete and resumes, a missing split is an error
  naming it, cached views are the clean view plus augmented ones;
* a frozen workdir trains, evaluates (results say 'frozen trunks') and predicts
  on a media file exactly what evaluation gave for that clip.
"""

import copy
import functools
import dataclasses
import io
import json
import os
import re
import shutil
import tempfile
import types
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from avjax import augment
from avjax import config_lib
from avjax import device_data
from avjax import errors
from avjax import evaluate
from avjax import feature_store
from avjax import fixed_trunk
from avjax import input_pipeline
from avjax import losses
from avjax import parallel
from avjax import run_spec
from avjax import predictor as predictor_lib
from avjax import steps
from avjax import trunks
from avjax.data import tfds_access
from tests import helpers
from avjax import train
from avjax import train_state
from avjax import workdir as workdir_lib
from avjax.data import feature_cache
from avjax.data import synthetic
from avjax.models import gating
from avjax.models import i3d
from avjax.models import soundnet
from avjax.models import weights

FOLDS = [0, 1, 2]          # 24 clips, 6 per class: one batch for the loss, queries + references


def frozen_config(trunk="frozen", modalities="av"):
  c = helpers.tiny_synthetic_config(max_steps=2)
  c.model.trunk = trunk
  c.model.modalities = modalities
  c.model.variant = "gating" if modalities == "av" else "lstm"
  c.model.freeze_bn = True                 # the full model's BN as the extraction's
  c.input.crop_size = 16                   # the smallest crop I3D takes (suite time: README)
  c.eval.figures = False
  return c


def store_path(config, modality):
  return feature_cache.store_path(config, tfds_access.get_builder(config), modality)


def full_config(config):
  """The whole network with its trunks held and no augmentation (the reference)."""
  c = copy.deepcopy(config)
  c.model.trunk = "finetune"
  c.optim.trunk_lr_scale = 0.0
  c.input.random_flip = False
  c.input.audio_noise_std = 0.0
  c.input.pitch_shift_semitones = 0.0
  c.input.speed_range = 0.0
  return c


def media_batch(config, folds):
  """The clips of `folds` as the full model reads them at evaluation: centre crop."""
  builder = tfds_access.get_builder(config)
  info = tfds_access.dataset_info(config)
  reader = input_pipeline.Reader(builder, folds, tfds_access.reads_video(config, builder))
  n = tfds_access.num_clips(builder, folds)
  c = int(config.input.crop_size)
  off = (info["frame_size"] - c) // 2
  return reader.read(np.arange(n), (off, off, c, False))


def loss_and_grads(config, apply_fn, variables, batch):
  """((the train step's loss, its gate embeddings), gradients), as `steps.train_step`
  computes them before the optimiser (`losses.compute_loss` on the training forward)."""
  m = config.model

  def fn(params, batch_stats, batch):
    video, audio = gating.model_inputs(batch, m.modalities)
    wv = batch["window_valid"]

    def loss_fn(p):
      out, _ = apply_fn({"params": p, "batch_stats": batch_stats}, video, audio, train=True,
                        window_valid=wv, mutable=["batch_stats"])
      gates = {k: v for k, v in out.items() if k.endswith("_gate")}
      return losses.compute_loss(out, batch["label"], config.loss, m.variant, m.modalities,
                                 window_valid=wv)[0], gates
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  inputs = {k: v for k, v in batch.items() if k in ("video", "audio", "label", "window_valid")}
  return jax.jit(fn)(variables["params"], variables["batch_stats"], inputs)


def assert_trees_close(test, got, want, rtol=1e-4):
  """Each leaf within `rtol` of its own largest value. The cached features come from
  extraction calls of another shape than the whole network's forward, and float32
  reassociation there reaches about 2e-5 of a leaf's scale in the gradients on some
  CPUs (an AMD EPYC); a wrong layer, statistic or pooling differs by the leaf's scale."""
  flat_got = dict(jax.tree_util.tree_flatten_with_path(got)[0])
  flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
  test.assertEqual(set(flat_got), set(flat_want))
  for path, g in flat_got.items():
    w = np.asarray(flat_want[path])
    scale = max(float(np.max(np.abs(w))), 1e-12)
    np.testing.assert_allclose(np.asarray(g), w, rtol=rtol, atol=rtol * scale,
                               err_msg=jax.tree_util.keystr(path))


class EquivalenceTest(absltest.TestCase):

  def check(self, config):
    """Loss, gradients, gate embeddings and KNN predictions: cached vs whole network."""
    feature_store.ensure(config)
    builder = tfds_access.get_builder(config)
    feats = input_pipeline.make_reader(config, builder, FOLDS, True).read(
        np.arange(tfds_access.num_clips(builder, FOLDS)))
    media = media_batch(config, FOLDS)
    np.testing.assert_array_equal(feats["label"], media["label"])
    np.testing.assert_array_equal(feats["window_valid"], media["window_valid"])

    model = gating.create_model(config.model)
    variables = gating.init_variables(model, jax.random.PRNGKey(1), video=feats.get("video"),
                                      audio=feats.get("audio"), pretrained=False)
    state = types.SimpleNamespace(params=variables["params"],
                                  batch_stats=variables.get("batch_stats", {}),
                                  apply_fn=gating.apply_fn(model))
    media_shapes = {k: media[k] for k in ("video", "audio") if k in feats}
    full_apply, full_vars = fixed_trunk.inference_model(config, state, media_shapes)
    # The whole network has every parameter: the cached model's ones are among them.
    for enc in fixed_trunk.ENCODERS.values():
      if enc in variables["params"]:
        self.assertLess(set(variables["params"][enc]), set(full_vars["params"][enc]))

    full = full_config(config)
    frozen_vars = {"params": state.params, "batch_stats": state.batch_stats}
    (loss, got), grads = loss_and_grads(config, state.apply_fn, frozen_vars, feats)
    (full_loss, full_gates), full_grads = loss_and_grads(full, full_apply, full_vars, media)
    self.assertGreater(float(loss), 0.0)
    np.testing.assert_allclose(float(loss), float(full_loss), rtol=1e-5)
    # The gradients of every trained parameter (heads, LSTMs, layers above a cut).
    sub = jax.tree_util.tree_map(lambda x: x, {k: {kk: full_grads[k][kk] for kk in v}
                                               for k, v in grads.items()})
    assert_trees_close(self, grads, sub)

    # The gate embeddings of both training forwards (with a centred head, training
    # centres on the batch and evaluation on the running mean, so the two modes differ;
    # evaluation runs the same heads on the same inputs).
    got, want = jax.device_get(got), jax.device_get(full_gates)
    assert_trees_close(self, got, want)
    n_ref = tfds_access.num_clips(builder, FOLDS[1:])
    n_q = len(feats["label"]) - n_ref
    split = lambda e: ({**{k: v[n_q:] for k, v in e.items()}, "label": feats["label"][n_q:]},
                       {**{k: v[:n_q] for k, v in e.items()}, "label": feats["label"][:n_q]})
    p_got = evaluate.predict_per_gate(config, *split(got))
    p_want = evaluate.predict_per_gate(config, *split(want))
    for m in run_spec.of(config).gate_modalities:
      np.testing.assert_array_equal(p_got[f"pred_{m}"], p_want[f"pred_{m}"], err_msg=m)

  def test_frozen_trunk_equals_the_whole_network_with_its_trunks_held(self):
    self.check(frozen_config())

  def test_a_head_on_conv4_statistics_equals_the_whole_network(self):
    """`model.audio_head_layer='conv4'`, `audio_head_stats='mean_std'`: the store pools
    conv4 as the whole network's head does, and nothing above conv4 is built."""
    config = frozen_config(modalities="audio")
    config.model.audio_head_layer, config.model.audio_head_stats = "conv4", "mean_std"
    self.check(config)
    model = gating.create_model(config.model)
    audio = jax.ShapeDtypeStruct((2, 1, 2 * int(config.model.audio_width * 128)), jnp.float32)
    params = jax.eval_shape(functools.partial(model.init, train=False),
                            jax.random.PRNGKey(0), None, audio)["params"]
    self.assertEqual(params["audio_encoder"]["Embedding"]["kernel"].shape[0], audio.shape[-1])
    config.model.trunk = "finetune"
    full = gating.create_model(config.model)
    wave = jax.ShapeDtypeStruct((2, 1, 22050), jnp.float32)
    names = set(jax.eval_shape(functools.partial(full.init, train=False), jax.random.PRNGKey(0),
                               None, wave)["params"]["audio_encoder"])
    self.assertEqual(names, {"conv1", "conv2", "conv3", "conv4", "Embedding"})

  def test_finetune_from_a_cut_equals_the_whole_network_above_it(self):
    """SoundNet-8 cached up to conv5 (the store's maps): conv6, conv7 and the head give the
    whole network's embeddings and gradients. (The heads, LSTMs and loss above the
    encoders are the frozen test's.)"""
    config = frozen_config("finetune_from:conv5", modalities="audio")
    media = media_batch(config, [1])
    wave = media["audio"].reshape(-1, media["audio"].shape[-1])        # [N T, S]
    trunk = fixed_trunk.trunk_variables(config, "audio", jax.ShapeDtypeStruct(
        (1, wave.shape[1]), np.float32))
    # What the extraction stores for this cut: conv5's output map.
    maps = jax.jit(lambda v, x: fixed_trunk._features(
        fixed_trunk.encoder(config, "audio"), "conv5", v, x))(trunk, wave)  # [N T, L, C]
    self.assertEqual(maps.shape[1:], fixed_trunk.feature_shape(
        config, "audio", {"samples_per_window": wave.shape[1]}))
    kw = dict(embed_dim=8, width=float(config.model.audio_width), conv_impl="xla")
    whole = soundnet.SoundNet8(**kw)
    upper = soundnet.SoundNet8(input_endpoint="conv5", **kw)
    top = upper.init(jax.random.PRNGKey(3), maps)
    self.assertEqual(set(top["params"]), {"conv6", "conv7", "Embedding"})
    variables = {c: {**trunk[c], **top.get(c, {})} for c in ("params", "batch_stats")}

    def value_and_grad(model, x, params_of):
      # x and the variables are arguments: closed over, XLA would constant-fold the
      # layers below the cut on them (25 s a call).
      def f(params, variables, x):
        v = {"params": {**variables["params"], **params}, "batch_stats": variables["batch_stats"]}
        return jnp.sum(model.apply(v, x, train=False)[0] ** 2)
      return jax.jit(jax.value_and_grad(f))(params_of, variables, x)

    mine = {k: top["params"][k] for k in top["params"]}
    value, grads = value_and_grad(upper, maps, mine)
    full_value, full_grads = value_and_grad(whole, wave, mine)
    np.testing.assert_allclose(float(value), float(full_value), rtol=1e-5)
    assert_trees_close(self, grads, full_grads)

  def test_i3d_from_a_cut_equals_the_whole_i3d(self):
    kw = dict(width=0.125, last_block="Mixed_3b", embed_dim=8)
    x = np.random.default_rng(0).integers(0, 256, (2, 4, 16, 16, 3), dtype=np.uint8)
    whole = i3d.I3D(**kw)
    variables = helpers.random_variables(jax.eval_shape(whole.init, jax.random.PRNGKey(0), x))
    want, _ = jax.jit(whole.apply)(variables, x)
    cut = "MaxPool3d_2a_3x3"
    lower, _ = jax.jit(i3d.I3D(final_endpoint=cut, **kw).apply)(variables, x)
    upper = i3d.I3D(input_endpoint=cut, **kw)
    names = set(jax.eval_shape(upper.init, jax.random.PRNGKey(0), lower)["params"])
    self.assertEqual(names, {"Conv3d_2b_1x1", "Conv3d_2c_3x3", "Mixed_3b", "Logits"})
    got, _ = jax.jit(upper.apply)(variables, lower)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class StoreTest(absltest.TestCase):
  """Audio-only stores in a cache of this class ($AVJAX_CACHE), extracted once."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix="avjax_fs_")
    cls.env = mock.patch.dict(os.environ, {"AVJAX_CACHE": cls.tmp})
    cls.env.start()
    cls.config = frozen_config(modalities="audio")
    cls.store = feature_store.ensure(cls.config)["audio"]

  @classmethod
  def tearDownClass(cls):
    cls.env.stop()
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_a_change_of_what_the_features_depend_on_makes_another_store(self):
    c = frozen_config()
    base = {m: store_path(c, m) for m in ("audio", "video")}
    self.assertTrue(base["audio"].startswith(os.path.join(self.tmp, "features")))
    changes = {
        "crop": lambda c: setattr(c.input, "crop_size", 28),
        "seed of random weights": lambda c: setattr(c, "seed", 1),
        "views": lambda c: setattr(c.input, "cached_views", 2),
        "dtype": lambda c: setattr(c.model, "dtype", "bfloat16"),
        "cut": lambda c: setattr(c.model, "trunk", "finetune_from:conv4+Mixed_3b"),
    }
    for what, change in changes.items():
      other = copy.deepcopy(c)
      change(other)
      self.assertNotEqual(store_path(other, "video"), base["video"], what)
    # The crop is video's only: the audio store is shared.
    other = copy.deepcopy(c)
    other.input.crop_size = 28
    self.assertEqual(store_path(other, "audio"), base["audio"])
    # Another pretrained weights file (its sha256), and pretrained against random.
    pre = copy.deepcopy(c)
    pre.model.pretrained = True
    path = store_path(pre, "audio")
    self.assertNotEqual(path, base["audio"])
    with mock.patch.object(weights, "SOUNDNET8",
                           dataclasses.replace(weights.SOUNDNET8, sha256="0" * 64)):
      self.assertNotEqual(store_path(pre, "audio"), path)
    # Settings that do not change the features share the store.
    same = copy.deepcopy(c)
    same.optim.learning_rate = 0.5
    same.model.lstm_hidden = 8
    same.train.num_epochs = 7
    self.assertEqual(store_path(same, "video"), base["video"])

  def test_a_store_whose_key_differs_is_refused(self):
    doc_path = os.path.join(self.store, feature_cache.STORE_JSON)
    text = open(doc_path).read()
    self.addCleanup(lambda: open(doc_path, "w").write(text))
    doc = json.loads(text)
    doc["key"]["weights"] = "random:seed=99"
    json.dump(doc, open(doc_path, "w"))
    with self.assertRaisesRegex(feature_cache.FeatureStoreError, "does not match"):
      feature_store.ensure(self.config)

  def test_an_interrupted_extraction_resumes_and_a_missing_split_is_named(self):
    reference = {f: np.load(os.path.join(feature_cache.fold_path(self.store, f), "features.npy"))
                 for f in (0, 3)}
    tmp = tempfile.mkdtemp(prefix="avjax_fs_", dir=self.tmp)
    env = mock.patch.dict(os.environ, {"AVJAX_CACHE": tmp})
    env.start()
    self.addCleanup(env.stop)

    # Parts of 8 windows (2 clips of 4 windows, rounded up to the device count; 8 clips
    # a fold), killed after the first part of fold 0.
    real_write = feature_store._write_npz
    calls = []

    def write_then_die(path, arrays):
      real_write(path, arrays)
      calls.append(path)
      raise KeyboardInterrupt

    with mock.patch.dict(feature_store.WINDOWS_PER_CALL, {"audio": 8}), \
         mock.patch.object(feature_store, "_write_npz", write_then_die):
      with self.assertRaises(KeyboardInterrupt):
        feature_store.ensure(self.config)
    store = store_path(self.config, "audio")
    self.assertEqual(os.path.relpath(store, tmp), os.path.relpath(self.store, self.tmp))
    self.assertFalse(os.path.isdir(feature_cache.fold_path(store, 0)))   # nothing looks done
    self.assertLen(os.listdir(feature_cache.fold_path(store, 0) + ".partial"), 1)
    with self.assertRaisesRegex(feature_cache.FeatureStoreError, "no split fold0"):
      feature_cache.FeatureReader({"audio": store}, [0])
    # Resumed with another call size (8 clips, as on another device count): the first
    # part is kept and the fold's other clips extracted as one part.
    partial = feature_cache.fold_path(store, 0) + ".partial"
    kept = os.path.join(partial, "part_000000.npz")
    self.assertEqual(os.listdir(partial), ["part_000000.npz"])
    with np.load(kept) as data:
      first = len(data["label"])
    self.assertLess(first, 8)
    self.assertEqual([list(p) for p in feature_store._missing_pieces(partial, 8, 8, False)],
                     [list(range(first, 8))])
    stamp = os.stat(kept).st_mtime_ns
    real_assemble, assembled = feature_store._assemble, []

    def assemble(folder, final, n, ids=None):
      if folder == partial:
        assembled.append((sorted(os.listdir(folder)), os.stat(kept).st_mtime_ns))
      return real_assemble(folder, final, n, ids)

    with mock.patch.dict(feature_store.WINDOWS_PER_CALL, {"audio": 32}), \
         mock.patch.object(feature_store, "_assemble", assemble):
      feature_store.ensure(self.config)       # resumes: the first part is kept
    self.assertEqual(assembled, [(["part_000000.npz", f"part_{first:06d}.npz"], stamp)])
    self.assertFalse(os.path.exists(feature_cache.fold_path(store, 0) + ".partial"))
    # Fold 0 resumed after its first part, fold 3 extracted afresh: the values of the
    # class's store, which was extracted in larger calls. A differently shaped call may
    # round differently on some CPUs (seen on an AMD EPYC), so equal up to float32
    # rounding; a lost, repeated or misplaced part would differ by the features' scale.
    for fold, want in reference.items():
      got = np.load(os.path.join(feature_cache.fold_path(store, fold), "features.npy"))
      self.assertEqual(got.shape, want.shape)
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                 err_msg=f"fold {fold}")
    reader = feature_cache.FeatureReader({"audio": store}, [3, 0])
    self.assertEqual(reader.read([0])["audio"].shape, (1, 4, 256))    # SoundNet x0.25: 256
    # A split deleted by hand is an error naming it, not a silent gap.
    shutil.rmtree(feature_cache.fold_path(store, 3))
    with self.assertRaisesRegex(feature_cache.FeatureStoreError, "no split fold3"):
      feature_cache.FeatureReader({"audio": store}, [3])

  def test_parts_that_overlap_or_do_not_read_back_are_extracted_again(self):
    partial = tempfile.mkdtemp(prefix="avjax_parts_", dir=self.tmp)
    part = lambda start, k: np.savez(os.path.join(partial, f"part_{start:06d}.npz"),
                                     **{a: np.zeros(k, np.int32) for a in feature_cache.ARRAYS})
    part(0, 4)
    part(2, 4)                                   # overlaps the first: left out, removed
    part(9, 1)                                   # past the fold's 8 clips
    open(os.path.join(partial, "part_000006.npz"), "wb").write(b"PK not a zip")
    part(7, 1)
    np.savez(os.path.join(partial, "part_000005.npz"),   # its features cut short
             **{a: np.zeros(2 if a == "features" else 1, np.int32) for a in feature_cache.ARRAYS})
    with self.assertLogs(level="WARNING") as logs:
      pieces = feature_store._missing_pieces(partial, 8, 3, remove=True)
    self.assertEqual([list(p) for p in pieces], [[4, 5, 6]])
    self.assertEqual(sorted(os.listdir(partial)), ["part_000000.npz", "part_000007.npz"])
    self.assertLen(logs.records, 4)

  def test_unreadable_files_are_extracted_again_and_leftovers_removed(self):
    tmp = tempfile.mkdtemp(prefix="avjax_fs_", dir=self.tmp)
    shutil.copytree(os.path.join(self.tmp, "features"), os.path.join(tmp, "features"))
    env = mock.patch.dict(os.environ, {"AVJAX_CACHE": tmp})
    env.start()
    self.addCleanup(env.stop)
    store = store_path(self.config, "audio")
    features = os.path.join(feature_cache.fold_path(store, 3), "features.npy")
    want = np.load(features)
    data = open(features, "rb").read()
    open(features, "wb").write(data[: len(data) // 2])           # a truncated array
    open(os.path.join(store, feature_cache.STORE_JSON), "w").write("")
    os.makedirs(feature_cache.fold_path(store, 0) + ".tmp-999999")   # a killed assembly's
    with mock.patch("sys.stdout", new_callable=io.StringIO) as out:
      feature_store.ensure(self.config)
    self.assertIn(f"{store}/store.json cannot be read (empty): writing it again", out.getvalue())
    self.assertIn(f"the audio features of fold 3 in {store} cannot be read (features.npy: "
                  "ValueError", out.getvalue())
    self.assertIn("extracting them again", out.getvalue())
    np.testing.assert_allclose(np.load(features), want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max())
    self.assertFalse(os.path.exists(feature_cache.fold_path(store, 0) + ".tmp-999999"))
    self.assertEqual(feature_cache.check_key(store, feature_cache.store_key(
        self.config, tfds_access.get_builder(self.config), "audio"))["num_views"], 1)

  def test_cached_views_are_the_clean_view_plus_augmented_ones(self):
    c = copy.deepcopy(self.config)
    c.input.pitch_shift_semitones = 0.0       # (the phase vocoder compiles slowly)
    clean = input_pipeline.make_reader(c, tfds_access.get_builder(c), [1], False)
    c.input.cached_views = 1
    feature_store.ensure(c)
    views = input_pipeline.make_reader(c, tfds_access.get_builder(c), [1], False)
    self.assertEqual((clean.num_views, views.num_views), (1, 2))
    np.testing.assert_array_equal(views.read(range(8), view=0)["audio"],
                                  clean.read(range(8))["audio"])
    self.assertGreater(np.abs(views.read(range(8), view=1)["audio"]
                              - clean.read(range(8))["audio"]).max(), 1e-4)
    # Training draws one view per batch, a pure function of (seed, step), both views used.
    drawn = [views.draw_view(5, s) for s in range(40)]
    self.assertEqual(drawn, [views.draw_view(5, s) for s in range(40)])
    self.assertEqual(set(drawn), {0, 1})
    self.assertEqual({clean.draw_view(5, s) for s in range(10)}, {0})

  def test_speaker_centring_subtracts_each_actors_clean_mean(self):
    c = copy.deepcopy(self.config)
    c.input.pitch_shift_semitones = 0.0       # the views store of the tests above
    c.input.cached_views = 1
    feature_store.ensure(c)
    builder = tfds_access.get_builder(c)
    raw = input_pipeline.make_reader(c, builder, [1, 2], False)
    c.input.speaker_centering = True
    centred = input_pipeline.make_reader(c, builder, [1, 2], False)
    n = len(raw.labels)
    clean = raw.read(range(n), view=0)
    # The reference: each actor's window_valid-weighted mean of its clean features.
    w = clean["window_valid"][..., None]                            # [n, T, 1]
    means = {a: (w[clean["actor"] == a] * clean["audio"][clean["actor"] == a]).sum((0, 1))
             / w[clean["actor"] == a].sum() for a in np.unique(clean["actor"])}
    self.assertGreater(len(means), 1)
    want_shift = np.stack([means[a] for a in clean["actor"]])[:, None]   # [n, 1, C]
    for view in (0, 1):
      np.testing.assert_allclose(centred.read(range(n), view=view)["audio"],
                                 raw.read(range(n), view=view)["audio"] - want_shift,
                                 rtol=1e-5, atol=1e-5)
    # read_all (the device path) centres every view alike.
    everything = centred.read_all()["audio"]                         # [n, V, T, C]
    np.testing.assert_allclose(everything[:, 1], raw.read(range(n), view=1)["audio"] - want_shift,
                               rtol=1e-5, atol=1e-5)
    # An actor's centring uses its own clips only: fold 1 read alone is centred alike.
    alone = input_pipeline.make_reader(c, builder, [1], False)
    k = len(alone.labels)
    np.testing.assert_allclose(alone.read(range(k))["audio"], centred.read(range(k))["audio"],
                               rtol=1e-5, atol=1e-5)
    # input.speaker_scaling: the centred features divided by the actor's weighted std
    # (computed here about the mean, not as E[x^2] - mean^2) plus the floor.
    c.input.speaker_scaling = True
    scaled = input_pipeline.make_reader(c, builder, [1, 2], False)
    stds = {a: np.sqrt((w[clean["actor"] == a]
                        * (clean["audio"][clean["actor"] == a] - means[a]) ** 2).sum((0, 1))
                       / w[clean["actor"] == a].sum()) for a in means}
    want_scale = np.stack([stds[a] for a in clean["actor"]])[:, None] + feature_cache.SCALE_FLOOR
    self.assertGreater(np.abs(want_scale - 1).max(), 0.1)     # the division changes something
    for view in (0, 1):
      np.testing.assert_allclose(scaled.read(range(n), view=view)["audio"],
                                 (raw.read(range(n), view=view)["audio"] - want_shift) / want_scale,
                                 rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scaled.read_all()["audio"][:, 0],
                               (clean["audio"] - want_shift) / want_scale, rtol=1e-4, atol=1e-4)
    c.input.speaker_centering = False
    with self.assertRaisesRegex(ValueError, "input.speaker_scaling.*needs input.speaker_centering"):
      config_lib.validate(c)
    c.input.speaker_centering, c.input.speaker_scaling = True, False
    c.model.trunk = "finetune"
    c.input.cached_views = 0
    with self.assertRaisesRegex(ValueError, "input.speaker_centering"):
      config_lib.validate(c)

  def test_the_sampler_is_the_media_pipelines(self):
    c = self.config
    media = copy.deepcopy(c)
    media.model.trunk = "finetune"
    a = input_pipeline.create_train_iterator(c, [1, 2, 3], seed=7)
    b = input_pipeline.create_train_iterator(media, [1, 2, 3], seed=7)
    for step in (0, 3, 11):
      np.testing.assert_array_equal(a.global_indices(step), b.global_indices(step))
    batch = next(a)
    self.assertEqual(batch["audio"].shape, (8, 4, 256))
    self.assertNotIn("aug", batch)             # nothing left to augment in the step
    self.assertEqual(a.get_state(), dict(b.get_state(), step=1))
    a.close()
    b.close()

  def test_the_device_path_gathers_the_host_batches_and_steps_alike(self):
    c = copy.deepcopy(self.config)
    c.input.pitch_shift_semitones = 0.0       # the views store of the test above
    c.input.cached_views = 1
    feature_store.ensure(c)
    folds = [1, 2, 3]
    # 'auto' keeps a cached trunk's small features on the device, never media.
    self.assertEqual(c.input.cache_on_device, "auto")
    self.assertTrue(device_data.use_device(c, folds))
    media = copy.deepcopy(c)
    media.model.trunk, media.input.cached_views = "finetune", 0
    self.assertFalse(device_data.use_device(media, folds))
    explicit = copy.deepcopy(c)
    explicit.input.cache_on_device = False
    self.assertFalse(device_data.use_device(explicit, folds))

    mesh = parallel.make_mesh()
    repl, data = parallel.shardings(mesh)
    host = input_pipeline.create_train_iterator(c, folds, seed=7)
    self.addCleanup(host.close)
    dev = device_data.create_device_iterator(c, folds, seed=7, mesh=mesh)
    self.assertEqual(dev.dataset.features, ("audio",))
    self.assertEqual(dev.dataset.arrays["audio"].shape[:2], (24, 2))   # [N, views, T, C]
    gather = jax.jit(augment.gather_features, static_argnums=2)
    views = set()
    for _ in range(6):
      batch = next(host)
      inputs = parallel.to_global_step_input(next(dev), data_sharding=data, replicated=repl)
      views.add(int(inputs["view"]))
      got = jax.device_get(gather(dev.dataset.arrays, inputs, ("audio",)))
      for key in ("audio", "label", "window_valid"):
        np.testing.assert_array_equal(got[key], batch[key], err_msg=key)
    self.assertEqual(views, {0, 1})             # both views drawn, as the host path draws them
    self.assertEqual(dev.get_state(), host.get_state())

    # One step of each path from the same state: the same loss and weights.
    model = gating.create_model(c.model)
    state = train_state.create_train_state(c, model, dev.sample_batch(), jax.random.PRNGKey(0),
                                           repl)
    copy_state = lambda: jax.tree.map(jnp.copy, state)   # noqa: E731 (the steps donate it)
    step = 2
    host_batch = parallel.to_global(parallel.pad_batch(
        host.batches(step), jax.local_device_count()), data)
    dev_inputs = parallel.to_global_step_input(dev.inputs(step), data_sharding=data,
                                               replicated=repl)
    want_state, want = steps.make_train_step(c, mesh)(copy_state(), host_batch)
    got_state, got = steps.make_device_train_step(c, mesh, dev.dataset)(copy_state(), dev_inputs)
    self.assertGreater(float(want["loss"]), 0.0)
    np.testing.assert_allclose(float(got["loss"]), float(want["loss"]), rtol=1e-6)
    assert_trees_close(self, got_state.params, want_state.params, rtol=1e-5)

  def test_cached_views_and_trunks_are_checked(self):
    c = frozen_config()
    c.model.trunk = "finetune"
    c.input.cached_views = 2
    with self.assertRaisesRegex(ValueError, "input.cached_views"):
      config_lib.validate(c)
    for trunk, message in (("finetune_from:conv9", "conv9"), ("thawed", "thawed"),
                           ("finetune_from:conv4", "no cut of the video encoder")):
      c = frozen_config(trunk)
      with self.assertRaisesRegex(ValueError, "model.trunk.*" + message):
        config_lib.validate(c)

  def test_cut_names_are_the_networks(self):
    self.assertEqual(trunks.SOUNDNET_CUTS, tuple(n for n, *_ in soundnet.LAYERS))
    self.assertEqual(trunks.I3D_CUTS, i3d.ENDPOINTS[:i3d.ENDPOINTS.index("Mixed_5c")])
    self.assertEqual(trunks.POOLED, soundnet.POOLED)
    self.assertEqual(trunks.POOLED, i3d.POOLED)


class FrozenWorkdirTest(absltest.TestCase):
  """Trains, evaluates and predicts with model.trunk='frozen' (AV, synthetic set)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix="avjax_frozen_")
    cls.config = frozen_config()
    cls.config.folds = (0,)
    cls.workdir = os.path.join(cls.tmp, "workdir")
    train.train_and_evaluate(cls.config, cls.workdir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def test_results_say_frozen_trunks(self):
    info = json.load(open(os.path.join(workdir_lib.fold_dir(self.workdir, 0), "fold_info.json")))
    self.assertEqual((info["trunk"], info["cached_views"]), ("frozen", 0))
    doc = json.load(open(os.path.join(self.workdir, "results.json")))
    self.assertEqual(doc["folds"][0]["trunk"], "frozen")
    md = open(os.path.join(self.workdir, "results.md")).read()
    self.assertIn("**frozen trunks**", md)
    self.assertIn("NOT the paper's recipe", md)
    # Only the heads and LSTMs were trained: the checkpoint has no trunk layer.
    predictor = predictor_lib.Predictor(self.workdir)
    self.assertEqual(set(predictor.state.params["audio_encoder"]), {"Embedding"})
    self.assertEqual(set(predictor.state.params["video_encoder"]), {"Logits"})

  def _saved(self) -> dict[str, np.ndarray]:
    with np.load(os.path.join(workdir_lib.fold_dir(self.workdir, 0), "predictions.npz")) as z:
      return {k: z[k] for k in z.files}

  def _render(self, clip_id: str) -> str:
    """The synthetic clip `clip_id` written as a lossless file, as the builder made it."""
    from tests import dummy_media
    actor, label, rep = map(int, re.match(r"synth-a(\d+)-c(\d)-r(\d+)", clip_id).groups())
    params = synthetic.actor_params(actor, 0)
    rng = np.random.default_rng([0, actor, label, rep])
    duration = float(np.float32(synthetic.DURATION_S + rng.uniform(
        -synthetic.DURATION_JITTER_S, synthetic.DURATION_JITTER_S)))
    path = os.path.join(self.tmp, f"{clip_id}.mkv")
    dummy_media.write_lossless(path, synthetic.render_video(label, params, duration, rng),
                                synthetic.FPS, synthetic.render_audio(label, params, duration, rng),
                                synthetic.AUDIO_RATE)
    return path

  def test_predict_centres_one_speakers_clips_as_training_does(self):
    """A speaker-centred model (`input.speaker_centering`) needs --same_speaker; given
    every clip of one test actor, predict's embeddings are evaluation's, which reads the
    feature store centred by that actor's mean."""
    from avjax import predict
    config = workdir_lib.load_fold_config(self.workdir, 0)
    config.input.speaker_centering = True
    with mock.patch.object(workdir_lib, "load_fold_config", return_value=config):
      with self.assertRaisesRegex(errors.UsageError, "input.speaker_centering=True.*--same_speaker"):
        predictor_lib.Predictor(self.workdir)
      predictor = predictor_lib.Predictor(self.workdir, same_speaker=True)
    with self.assertRaisesRegex(errors.UsageError, "--same_speaker: .* not trained with"):
      predictor_lib.Predictor(self.workdir, same_speaker=True)
    with mock.patch("sys.stderr", new_callable=io.StringIO) as err:
      self.assertEqual(predict.main([f"--workdir={self.workdir}", "--same_speaker", "x.wav"]),
                       predict.EXIT_USAGE)
    self.assertIn("not trained with input.speaker_centering", err.getvalue())
    # The same weights; evaluation of the test fold with the centring on.
    want = evaluate.embed(config, predictor.state, [0], parallel.make_mesh())
    saved = self._saved()
    actor = want["actor"][0]
    rows = np.flatnonzero(want["actor"] == actor)
    self.assertGreaterEqual(len(rows), 2)
    paths = [self._render(str(saved["clip_id"][q])) for q in rows]
    clips = []
    for path in paths:
      inputs = predictor.preprocess(path)
      inputs["features"] = predictor.trunk_features(inputs)
      clips.append(inputs)
    # The last window's valid fraction: the builder's comes from the clip's exact length,
    # predict's from the decoded video stream's (whole frames), e.g. 0.731 against 0.75;
    # the mean weights windows by it, so give predict the builder's for exact parity.
    stored_valid = np.load(os.path.join(feature_cache.fold_path(store_path(config, "audio"), 0),
                                        "window_valid.npy"))
    for q, inputs in zip(rows, clips):
      np.testing.assert_allclose(inputs["window_valid"], stored_valid[q], atol=0.03)
      inputs["window_valid"] = stored_valid[q]
    speaker = predictor.speaker_stats(clips)
    self.assertEqual(set(speaker), {"audio", "video"})
    self.assertIsNone(speaker["audio"][1])
    for q, inputs in zip(rows, clips):
      got = predictor.embed(inputs, speaker)
      for key in ("audio_gate", "video_gate"):
        np.testing.assert_allclose(got[key], want[key][q], rtol=1e-4, atol=1e-5, err_msg=key)
    # With input.speaker_scaling the features are divided by the speaker's std as well.
    scaled = copy.deepcopy(config)
    scaled.input.speaker_scaling = True
    want_scaled = evaluate.embed(scaled, predictor.state, [0], parallel.make_mesh())
    self.assertGreater(np.abs(want_scaled["audio_gate"][rows] - want["audio_gate"][rows]).max(), 1e-3)
    with mock.patch.object(predictor, "speaker_scaled", True):   # as if trained so
      speaker_z = predictor.speaker_stats(clips)
      for q, inputs in zip(rows, clips):
        got = predictor.embed(inputs, speaker_z)
        for key in ("audio_gate", "video_gate"):
          np.testing.assert_allclose(got[key], want_scaled[key][q], rtol=1e-4, atol=1e-5,
                                     err_msg=key)
      self.assertIn(f"centred and scaled by the speaker's mean and std over {len(rows)} clips",
                    predictor.predict_speaker(paths)[0][1]["notes"])
    # The command's path: a missing file fails alone and takes no part in the mean.
    missing = os.path.join(self.tmp, "missing.mkv")
    outcomes = predictor.predict_speaker([paths[0], missing] + paths[1:])
    self.assertEqual([o[0] for o in outcomes], [paths[0], missing] + paths[1:])
    self.assertEqual((outcomes[1][1], outcomes[1][2]), (None, "file not found"))
    first = outcomes[0][1]
    self.assertEqual(first["speaker_clips"], len(rows))
    self.assertIn(f"centred by the speaker's mean over {len(rows)} clips", first["notes"])
    names = predictor.bank.class_names
    want_pred = predictor.classify(predictor.embed(clips[0], speaker), ["AV"])["AV"][-1]
    self.assertEqual(first["prediction"]["AV"]["emotion"], names[int(np.argmax(want_pred))])
    # One readable clip gives no speaker mean: every file fails, none is classified.
    alone = predictor.predict_speaker([paths[0], missing])
    self.assertEqual([r for _, r, _ in alone], [None, None])
    self.assertIn("needs at least 2", alone[0][2])
    with self.assertRaisesRegex(errors.UsageError, "predict_speaker"):
      predictor.predict(paths[0])

  def test_predict_runs_the_trunk_on_a_new_clip(self):
    predictor = predictor_lib.Predictor(self.workdir)
    saved = self._saved()
    q = 3
    path = self._render(str(saved["clip_id"][q]))
    inputs = predictor.preprocess(path)
    embedded = predictor.embed(inputs)
    np.testing.assert_allclose(
        np.concatenate([embedded["audio_gate"][-1], embedded["video_gate"][-1]]),
        saved["emb_AV"][q], rtol=1e-4, atol=1e-5)
    result = predictor.predict(path)
    names = predictor.bank.class_names
    for m in ("AO", "VO", "AV"):
      got = [names.index(g[m]["emotion"]) for g in result["gates"]]
      self.assertEqual(got, saved[f"pred_{m}"][:, q].tolist(), m)

if __name__ == "__main__":
  absltest.main()
