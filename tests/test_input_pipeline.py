"""Input pipeline: builders, class-balanced sampler, batch-consistent augmentation,
evaluation order and padding, resumable iterator state, multi-host slices."""

import copy
import json
import tempfile

import grain.python as grain
import jax
import numpy as np
from absl.testing import absltest
from absl.testing import parameterized

from avjax import augment
from avjax import input_pipeline as ip
from avjax.data import sampler
from avjax.data import tfds_access
from tests import helpers
from avjax.data import synthetic
from configs import demo
from avjax.tfds_builders.synthetic_av import synthetic_av_dataset_builder as synthetic_builder

_WINDOWING = "w2_l1_ov"
_TRAIN_FOLDS = list(range(1, 10))


def _config(data_dir: str, **input_overrides):
  config = demo.get_config()
  config.dataset.config = _WINDOWING
  config.dataset.data_dir = data_dir
  config.dataset.build = False
  config.input.clips_per_class = 2      # batch 8
  config.input.eval_batch_size = 5
  config.input.prefetch = 1
  for key, value in input_overrides.items():
    config.input[key] = value
  return config


def _tone(freq: float, n: int = 22050, rate: int = 22050) -> np.ndarray:
  return np.sin(2 * np.pi * freq * np.arange(n) / rate).astype(np.float32)


class _FakeSource:
  """Records whose pixels encode their coordinates: channel 0 = row, 1 = column,
  2 = 16 * window + frame; audio = the same 440 Hz tone in every clip."""

  def __init__(self, n=16, t=2, f=3, size=12, s=4096):
    y, x = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    video = np.zeros((t, f, size, size, 3), np.uint8)
    for w in range(t):
      for k in range(f):
        video[w, k] = np.stack([y, x, np.full_like(y, 16 * w + k)], -1)
    self.records = [dict(video=video, audio=np.stack([_tone(440, s)] * t), label=i % 4, actor=100 + i,
                         window_valid=np.ones(t, np.float32)) for i in range(n)]

  def __getitems__(self, keys):
    return [self.records[k] for k in keys]


def _fake_batches(seed=0, shard=(0, 1), **input_config):
  cfg = dict(random_flip=True, speed_range=0.1, pitch_shift_semitones=1.0, audio_noise_std=0.005)
  cfg.update(input_config)
  reader = ip.Reader(None, [0], read_video=True)
  reader._source = _FakeSource()
  labels = np.array([r["label"] for r in reader._source.records])
  return ip.TrainBatches(
      reader, labels, clips_per_class=2, num_classes=4, seed=seed, shard_index=shard[0],
      shard_count=shard[1], crop_size=8, frame_size=12, input_config=cfg, num_windows=2,
      samples_per_window=4096, audio_rate=22050.0)


class InputPipelineTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = helpers.synthetic_data_dir(_WINDOWING)   # shared, 80 clips, 8 per fold
    builder = synthetic_builder.Builder(config=_WINDOWING, data_dir=cls.data_dir)
    cls.config = _config(cls.data_dir)
    cls.raw = builder.as_data_source("fold0+fold3")

  # ------------------------------------------------------------------ builders and info

  def test_missing_dataset_says_how_to_build(self):
    config = _config(tempfile.mkdtemp())
    with self.assertRaisesRegex(FileNotFoundError, "scripts/build_datasets.py synthetic_av/w2_l1_ov"):
      tfds_access.get_builder(config)
    config.dataset.name = "no_such_dataset"
    with self.assertRaisesRegex(ValueError, "config.dataset.name"):
      tfds_access.get_builder(config)

  def test_builds_when_allowed(self):
    config = _config(tempfile.mkdtemp())
    config.dataset.config = "w1_l1_no_fit"
    config.dataset.build = True
    builder = tfds_access.get_builder(config)
    self.assertTrue(builder.is_prepared())
    info = tfds_access.dataset_info(config)
    self.assertEqual(info["num_clips"], synthetic.NUM_ACTORS * 4 * synthetic.CLIPS_PER_ACTOR_CLASS)
    self.assertEqual(info["num_windows"], 1)

  def test_dataset_info_and_sizes(self):
    info = tfds_access.dataset_info(self.config)
    self.assertEqual(
        {k: info[k] for k in ("num_windows", "frames_per_window", "frame_size", "samples_per_window",
                              "fps", "audio_rate", "has_video", "num_clips")},
        dict(num_windows=2, frames_per_window=8, frame_size=40, samples_per_window=22050,
             fps=8.0, audio_rate=22050.0, has_video=True, num_clips=80))
    self.assertEqual(info["num_clips_per_fold"], {k: 8 for k in range(10)})
    self.assertEqual(tfds_access.num_classes(self.config), 4)
    self.assertEqual(tfds_access.steps_per_epoch(self.config, _TRAIN_FOLDS), 72 // 8)

  # ------------------------------------------------------------------ sampler

  @parameterized.parameters((0,), (1,), (2,))
  def test_class_balanced_epoch_with_small_classes(self, seed):
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([0, 1, 2], [10, 3, 7]))
    table = sampler.class_balanced_epoch(labels, clips_per_class=2, num_classes=3, seed=seed, epoch=0)
    self.assertEqual(table.shape, (20 // 6, 6))
    for row in table:
      np.testing.assert_array_equal(np.bincount(labels[row], minlength=3), [2, 2, 2])
      self.assertLen(set(row.tolist()), 6)          # no clip twice in a batch
    counts = np.bincount(table.ravel(), minlength=len(labels))
    need = table.shape[0] * 2
    for c in range(3):
      n = (labels == c).sum()
      per_clip = counts[labels == c]
      # each clip of the class drawn floor or ceil(need / n) times
      self.assertLessEqual(per_clip.max() - per_clip.min(), 1)
      self.assertEqual(per_clip.sum(), need)
      self.assertEqual((per_clip > 0).sum(), min(n, need))
    again = sampler.class_balanced_epoch(labels, 2, 3, seed=seed, epoch=0)
    np.testing.assert_array_equal(table, again)
    other = sampler.class_balanced_epoch(labels, 2, 3, seed=seed, epoch=1)
    self.assertFalse(np.array_equal(table, other))

  def test_training_batches_balanced_and_exclude_test_fold(self):
    it = ip.create_train_iterator(self.config, _TRAIN_FOLDS, seed=3)
    test_actors = {a for a, f in synthetic.actor_folds().items() if f == 0}
    meta = tfds_access._metadata(tfds_access.get_builder(self.config), _TRAIN_FOLDS)
    seen = []
    for step in range(it.steps_per_epoch):
      batch = next(it)
      np.testing.assert_array_equal(np.bincount(batch["label"], minlength=4), [2, 2, 2, 2])
      self.assertFalse(set(batch["actor"].tolist()) & test_actors)
      idx = it.global_indices(step)
      np.testing.assert_array_equal(batch["label"], meta["label"][idx])   # read what was sampled
      np.testing.assert_array_equal(batch["actor"], meta["actor"][idx])
      seen.extend(idx.tolist())
      self.assertEqual(batch["video"].shape, (8, 2, 8, 32, 32, 3))
      self.assertEqual(batch["video"].dtype, np.uint8)
      self.assertEqual(batch["audio"].shape, (8, 2, 22050))
      self.assertEqual(batch["audio"].dtype, np.float32)
      self.assertEqual(batch["window_valid"].shape, (8, 2))
      self.assertEqual(batch["label"].dtype, np.int32)
    # 18 clips per class, 9 steps x 2 per class: the epoch covers every clip once
    self.assertEqual(sorted(seen), list(range(72)))
    next_epoch = [it.global_indices(it.steps_per_epoch + s).tolist() for s in range(3)]
    self.assertNotEqual(next_epoch, [it.global_indices(s).tolist() for s in range(3)])

  # ------------------------------------------------------------------ augmentation

  def test_crop_and_flip_same_for_every_clip_and_window(self):
    batches = _fake_batches(seed=7)
    offsets = set()
    for step in range(24):
      v = batches(step)["video"].astype(int)          # [b, T, F, 8, 8, 3]
      self.assertEqual(v.shape, (8, 2, 3, 8, 8, 3))
      oy, x0 = v[0, 0, 0, 0, 0, 0], v[0, 0, 0, 0, 0, 1]
      flip = v[0, 0, 0, 0, 1, 1] < x0
      ox = x0 - 7 if flip else x0
      rows = oy + np.arange(8)[:, None] * np.ones(8, int)
      cols = ox + (np.arange(8)[::-1] if flip else np.arange(8))[None, :] * np.ones((8, 1), int)
      np.testing.assert_array_equal(v[..., 0], np.broadcast_to(rows, v.shape[:-1]))
      np.testing.assert_array_equal(v[..., 1], np.broadcast_to(cols, v.shape[:-1]))
      # windows and frames stay in place
      np.testing.assert_array_equal(v[:, :, :, 0, 0, 2], np.broadcast_to(
          16 * np.arange(2)[:, None] + np.arange(3)[None, :], (8, 2, 3)))
      self.assertTrue(0 <= oy <= 4 and 0 <= ox <= 4)
      offsets.add((int(oy), int(ox), bool(flip)))
    self.assertGreater(len(offsets), 8)                 # varies across batches
    self.assertEqual({f for _, _, f in offsets}, {True, False})
    # reproducible from (seed, step)
    np.testing.assert_array_equal(_fake_batches(seed=7)(5)["video"], batches(5)["video"])
    self.assertFalse(all(np.array_equal(_fake_batches(seed=8)(s)["video"], batches(s)["video"])
                         for s in range(4)))

  def test_no_flip_when_disabled(self):
    batches = _fake_batches(random_flip=False)
    for step in range(12):
      v = batches(step)["video"].astype(int)
      self.assertTrue(np.all(np.diff(v[..., 1], axis=-1) == 1))

  def test_audio_is_raw_and_its_draws_are_one_per_batch(self):
    """The host ships raw audio plus the batch's draws; the step augments in-graph
    (`avjax.augment`, tested in tests/test_augment.py: speed, pitch, noise, tolerance)."""
    batches = _fake_batches(seed=1)
    raw = batches.reader.source.records[0]["audio"]       # every clip holds the same tone
    draws = []
    for step in range(6):
      batch = batches(step)
      a = batch["audio"]
      self.assertEqual(a.shape, (8, 2, 4096))
      np.testing.assert_array_equal(a, np.broadcast_to(raw, a.shape))
      aug = batch["aug"]
      self.assertEqual(aug["noise"].shape, (2, 4096))
      self.assertEqual(aug["speed"].dtype, np.float32)
      self.assertTrue(0.9 <= float(aug["speed"]) <= 1.1)
      self.assertTrue(-1.0 <= float(aug["semitones"]) <= 1.0)
      draws.append((float(aug["speed"]), float(aug["semitones"])))
      # Applied in-graph, the same augmentation for every clip of the batch.
      out = np.asarray(augment.augment_audio(a, aug["speed"], aug["semitones"], aug["noise"],
                                             max_semitones=1.0))
      for i in range(1, 8):
        np.testing.assert_array_equal(out[i], out[0])
      if step == 0:
        first = out[0, 0]
    self.assertFalse(np.allclose(first, out[0, 0], atol=1e-3))       # differs across batches
    self.assertLen(set(draws), 6)
    np.testing.assert_array_equal(batches(3)["aug"]["noise"], _fake_batches(seed=1)(3)["aug"]["noise"])

  def test_noise_is_one_draw_of_the_configured_std(self):
    batches = _fake_batches(speed_range=0.0, pitch_shift_semitones=0.0, audio_noise_std=0.05)
    aug = batches(3)["aug"]
    self.assertEqual(float(aug["speed"]), 1.0)
    self.assertEqual(float(aug["semitones"]), 0.0)
    noise = aug["noise"]
    self.assertBetween(float(noise.std()), 0.045, 0.055)
    self.assertLess(abs(float(noise.mean())), 0.005)
    off = _fake_batches(audio_noise_std=0.0)(3)["aug"]["noise"]
    np.testing.assert_array_equal(off, np.zeros_like(off))   # zeros, not None: one jit signature

  # ------------------------------------------------------------------ evaluation

  def test_eval_covers_every_clip_once_in_order(self):
    batches = list(ip.eval_batches(self.config, [0, 3]))
    self.assertLen(batches, 4)                           # 16 clips in batches of 5
    for b in batches:
      self.assertEqual(b["mask"].shape, (5,))
      self.assertEqual(b["video"].shape, (5, 2, 8, 32, 32, 3))
      self.assertEqual(b["mask"].dtype, bool)
      self.assertFalse(any(v.dtype.kind in "USO" for v in b.values()))
    np.testing.assert_array_equal(batches[-1]["mask"], [True, False, False, False, False])
    np.testing.assert_array_equal(batches[-1]["index"], [15, -1, -1, -1, -1])
    index = np.concatenate([b["index"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(index, np.arange(16))
    ids = tfds_access.clip_ids(self.config, [0, 3])
    self.assertLen(ids, 16)
    for b in batches:
      for row in np.flatnonzero(b["mask"]):
        raw = self.raw[int(b["index"][row])]
        self.assertEqual(ids[b["index"][row]], raw["clip_id"].decode())
        self.assertEqual(b["label"][row], raw["label"])
        self.assertEqual(b["actor"][row], raw["actor"])
        np.testing.assert_array_equal(b["video"][row], raw["video"][:, :, 4:36, 4:36])  # centre crop
        np.testing.assert_array_equal(b["audio"][row], raw["audio"])              # no augmentation
        np.testing.assert_array_equal(b["window_valid"][row], raw["window_valid"])
    self.assertEqual({synthetic.actor_folds()[a] for a in
                      np.concatenate([b["actor"][b["mask"]] for b in batches])}, {0, 3})

  # ------------------------------------------------------------------ state and hosts

  def test_resume_yields_the_same_batches(self):
    it = ip.create_train_iterator(self.config, _TRAIN_FOLDS, seed=11)
    for _ in range(7):
      next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(4)]              # crosses the epoch end (9 steps)
    restored = ip.create_train_iterator(self.config, _TRAIN_FOLDS, seed=11)
    next(restored)                                       # a started iterator is reset too
    restored.set_state(state)
    for want in expected:
      got = next(restored)
      self.assertEqual(got.keys(), want.keys())
      for key in want:
        if key == "aug":                                 # the batch's draws
          for k in want[key]:
            np.testing.assert_array_equal(got[key][k], want[key][k], err_msg=k)
        else:
          np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    self.assertEqual(restored.get_state()["step"], 11)
    with self.assertRaisesRegex(ValueError, "seed"):
      ip.create_train_iterator(self.config, _TRAIN_FOLDS, seed=12).set_state(state)

  def test_worker_processes_give_the_same_batches(self):
    # input.num_workers > 0: grain's worker processes, whose shared-memory batches are
    # copied out, the batch's augmentation draws (a dict) included.
    from absl import flags
    if not flags.FLAGS.is_parsed():   # grain's workers read its absl flags (main parses them)
      flags.FLAGS.mark_as_parsed()
    config = copy.deepcopy(self.config)
    config.input.num_workers = 1
    inline = ip.create_train_iterator(self.config, _TRAIN_FOLDS, seed=4)
    workers = ip.create_train_iterator(config, _TRAIN_FOLDS, seed=4)
    try:
      for _ in range(2):
        want, got = next(inline), next(workers)
        self.assertEqual(jax.tree.structure(got), jax.tree.structure(want))
        for path, value in jax.tree_util.tree_leaves_with_path(got):
          self.assertIsInstance(value, np.ndarray, path)
          self.assertNotEqual(value.dtype, object, path)
        jax.tree.map(np.testing.assert_array_equal, got, want)
    finally:
      workers.close()

  def test_host_slices_concatenate_to_the_global_batch(self):
    single = ip.create_train_iterator(self.config, _TRAIN_FOLDS, seed=5,
                                      shard_options=grain.ShardOptions(0, 1))
    hosts = [ip.create_train_iterator(self.config, _TRAIN_FOLDS, seed=5,
                                      shard_options=grain.ShardOptions(i, 2)) for i in range(2)]
    for _ in range(2):
      whole = next(single)
      parts = [next(h) for h in hosts]
      self.assertEqual(len(parts[0]["label"]), 4)
      for key in whole:
        if key == "aug":   # the batch's draws: the same on every host
          for p in parts:
            for k in whole[key]:
              np.testing.assert_array_equal(p[key][k], whole[key][k], err_msg=k)
          continue
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key], err_msg=key)
    with self.assertRaisesRegex(ValueError, "divisible"):
      ip.create_train_iterator(self.config, _TRAIN_FOLDS, seed=5,
                               shard_options=grain.ShardOptions(0, 3))

  def test_audio_only_model_reads_no_video(self):
    config = _config(self.data_dir)
    config.model.modalities = "audio"
    batch = next(ip.create_train_iterator(config, _TRAIN_FOLDS, seed=0))
    self.assertNotIn("video", batch)
    self.assertEqual(batch["audio"].shape, (8, 2, 22050))

  def test_crop_larger_than_frames_fails(self):
    config = _config(self.data_dir, crop_size=48)
    with self.assertRaisesRegex(ValueError, "crop_size"):
      ip.create_train_iterator(config, _TRAIN_FOLDS, seed=0)


if __name__ == "__main__":
  absltest.main()
