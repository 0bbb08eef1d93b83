"""ravdess builder: built from generated MP4s named like RAVDESS (zipped and extracted)."""

import contextlib
import io
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import textwrap
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from absl.testing import absltest

from avjax.data import clip_records
from avjax.data import folds as folds_lib
from avjax.data import windows
from tests import builder_base
from tests import dummy_media
from avjax.tfds_builders.ravdess import ravdess_dataset_builder as lib

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = (32, 24)   # tiny frames: decoding cost is not what is tested


def _clip(emotion, actor, **kw):
  return dummy_media.ravdess_name(emotion=emotion, actor=actor, **kw)


# (file name, seconds): the ten male actors 1-19 cover the ten folds; actor 2 is female.
GOOD = [(_clip(e, a, intensity=1 + a % 2, statement=1 + (a // 2) % 2), 2.0)
        for a, e in zip(range(1, 21, 2), (1, 2, 3, 4, 5, 6, 7, 8, 1, 2))]
GOOD += [(_clip(8, 2, intensity=2, statement=2, repetition=2), 1.2)]   # short: windows past its end
ZIPPED_ACTORS = (1, 2, 3)   # as Video_Speech_Actor_XX.zip, the others extracted


def _make_manual_dir(root: pathlib.Path) -> pathlib.Path:
  manual = root / "manual"
  staging = root / "staging"
  for name, seconds in GOOD:
    actor = int(name[-6:-4])
    dummy_media.write_mp4(staging / f"Actor_{actor:02d}" / name, seconds=seconds, size=SIZE)
  # video-only twin (modality 02): ignored
  dummy_media.write_mp4(staging / "Actor_01" / _clip(1, 1, modality=2), seconds=1.0, size=SIZE,
                        with_audio=False)
  # defective files
  dummy_media.write_mp4(staging / "Actor_02" / _clip(3, 2), seconds=1.0, size=SIZE, with_audio=False)
  (staging / "Actor_05" / _clip(4, 5, repetition=2)).write_bytes(b"not an mp4" * 100)
  dummy_media.write_mp4(staging / "Actor_03" / "01-01-09-01-01-01-03.mp4", seconds=1.0, size=SIZE)
  (staging / "Actor_03" / ("._" + _clip(1, 3))).write_bytes(b"\x00\x05\x16\x07")   # macOS metadata: ignored
  manual.mkdir(parents=True)
  for folder in sorted(staging.iterdir()):
    actor = int(folder.name[-2:])
    if actor in ZIPPED_ACTORS:
      dummy_media.zip_dir(folder, manual / f"Video_Speech_Actor_{actor:02d}.zip", folder.name)
    else:
      folder.rename(manual / folder.name)
  return manual


EXPECTED_SKIPPED = [
    {"file": "01-01-03-01-01-01-02.mp4", "reason": "no audio stream"},
    {"file": "01-01-04-01-01-02-05.mp4", "reason": "cannot open"},
    {"file": "01-01-09-01-01-01-03.mp4", "reason": "unexpected file name: emotion 09 is outside 01-08"},
]


class RavdessBuilderTest(builder_base.BuilderTestCase):
  lib = lib
  CONFIG = "w4_l1_ov"
  NUM_WORKERS = 2
  HOMEPAGE = "zenodo.org/record/1188976"

  @classmethod
  def make_manual_dir(cls, root):
    return _make_manual_dir(root)

  def test_configs(self):
    names = [c.name for c in lib.Builder.BUILDER_CONFIGS]
    self.assertEqual(names[:4], ["w8_l1_ov", "w8_l1_ov_fit", "w2_l1_ov", "w2_l1_ov_fit"])
    # 7 Table I rows, their fit twins, the 6 one-window (global) readings; audio-only twins.
    self.assertLen(names, 40)
    self.assertEqual(names[14:20], ["w1_l3_no_fit", "w1_l1_no_fit", "w1_l2_no_fit",
                                    "w1_l4_no_fit", "w1_l1_no_apex", "w1_l3_no_apex"])
    self.assertEqual(names[20:], ["audio_" + n for n in names[:20]])
    self.assertEqual(lib.Builder.DEFAULT_CONFIG_NAME, "w8_l1_ov")
    self.assertIn("Livingstone", self.builder.info.citation)
    self.assertIn("CC BY-NC-SA 4.0", self.builder.info.description)

  def test_clips_labels_actors_folds(self):
    self.assertEqual(sorted(self.records), sorted(n[:-4] for n, _ in GOOD))
    folds = folds_lib.assign_folds(lib.genders())
    gender_names = self.builder.info.features["gender"].names
    for clip_id, r in self.records.items():
      m, ch, e, inten, st, rep, a = map(int, clip_id.split("-"))
      self.assertEqual((r["label"], r["intensity"], r["statement"], r["actor"]), (e - 1, inten, st, a))
      self.assertEqual(gender_names[r["gender"]], "male" if a % 2 else "female")
      self.assertEqual(r["fold"], folds[a])
    counts = [self.builder.info.splits[f"fold{k}"].num_examples for k in range(10)]
    expected = [sum(folds[int(n[-6:-4])] == k for n, _ in GOOD) for k in range(10)]
    self.assertEqual(counts, expected)
    self.assertEqual(self.builder.info.features["label"].names[7], "surprised")

  def test_shapes_and_record_matches_direct_decoding(self):
    name = _clip(5, 9, intensity=2, statement=1)
    r = self.records[name[:-4]]
    self.assertEqual(r["video"].shape, (4, 25, 112, 112, 3))
    self.assertEqual(r["video"].dtype, np.uint8)
    self.assertEqual(r["audio"].shape, (4, 22050))
    self.assertEqual(r["audio"].dtype, np.float32)
    direct = clip_records.make_record(self.manual / "Actor_09" / name, windows.parse_name("w4_l1_ov"))
    np.testing.assert_array_equal(r["video"], direct["video"])
    np.testing.assert_array_equal(r["audio"], direct["audio"])
    np.testing.assert_allclose(r["window_valid"], direct["window_valid"])

  def test_zipped_clip_and_padding_past_the_end(self):
    r = self.records[_clip(8, 2, intensity=2, statement=2, repetition=2)[:-4]]   # 1.2 s, from a zip
    duration = 36 * 1001 / 30000
    self.assertAlmostEqual(float(r["duration"]), duration, places=4)
    # windows start at 0, 0.5, 1.0, 1.5 s
    np.testing.assert_allclose(r["window_valid"], [1, (duration - 0.5), duration - 1.0, 0], atol=1e-4)
    last = r["video"][2, 5]   # frame index 25 + 5 = 30 = ceil(1.2012 * 25) - 1: the clip's last
    for k, j in [(2, 6), (2, 24), (3, 0), (3, 24)]:
      np.testing.assert_array_equal(r["video"][k, j], last)
    self.assertFalse(np.array_equal(r["video"][2, 4], last))
    self.assertTrue(np.all(r["audio"][3] == 0))   # audio past the end is zero
    self.assertGreater(np.abs(r["audio"][2, :2000]).max(), 0.1)
    self.assertTrue(np.all(r["audio"][2, 6000:] == 0))

  def test_skipped_files_with_reasons(self):
    skipped = self.builder.info.metadata["skipped"]
    self.assertLen(skipped, len(EXPECTED_SKIPPED))
    for got, want in zip(skipped, EXPECTED_SKIPPED):
      self.assertEqual(got["file"], want["file"])
      self.assertIn(want["reason"], got["reason"])
    self.assertNotIn("02-01-01-01-01-01-01", self.records)   # video-only twin ignored
    self.assertIn("01-01-03-01-01-01-02.mp4: no audio stream", self.builder.summary())

  def test_metadata_survives_reload(self):
    reloaded = lib.Builder(config="w4_l1_ov", data_dir=self.data_dir)
    self.assertTrue(reloaded.is_prepared())
    meta = reloaded.info.metadata
    self.assertEqual((meta["fps"], meta["frame_size"], meta["audio_rate"], meta["window"]),
                     (25.0, 112, 22050, "w4_l1_ov"))
    self.assertEqual(meta["skipped"], self.builder.info.metadata["skipped"])
    self.assertIn(24, meta["missing_actors"])
    source = tfds.data_source("ravdess/w4_l1_ov", data_dir=self.data_dir, split="fold0")
    self.assertEqual(len(source), self.builder.info.splits["fold0"].num_examples)

  def test_readme_fold_table(self):
    self.assert_readme_fold_table()

  def test_bad_manual_dir_fails_at_once(self):
    root = pathlib.Path(tempfile.mkdtemp())
    audio_only = root / "audio_only" / "Actor_01"
    audio_only.mkdir(parents=True)
    (audio_only / "03-01-01-01-01-01-01.wav").write_bytes(b"RIFF")
    few = root / "few" / "Actor_01"
    dummy_media.write_mp4(few / _clip(1, 1), seconds=0.5, size=SIZE)
    (root / "empty").mkdir()
    bad_zip = root / "bad_zip"
    bad_zip.mkdir()
    (bad_zip / "Video_Speech_Actor_01.zip").write_bytes(b"PK not really")
    (root / "Video_Speech_Actor_01.zip").write_bytes(b"PK")       # the zip, not its folder
    misnamed = root / "misnamed" / "Actor_01"
    dummy_media.write_mp4(misnamed / "clip_one.mp4", seconds=0.5, size=SIZE)
    cases = [(root / "missing", "does not exist"), (root / "empty", "No ravdess clips"),
             (root / "Video_Speech_Actor_01.zip", "is a file: give the folder that holds it"),
             (root / "misnamed", "Files rejected (1), e.g.:\n  clip_one.mp4: "),
             (root / "audio_only", "no audio-visual speech MP4s"),
             (root / "few", "has no clips for fold1: actors [3, 20, 23]"),
             (bad_zip, "not a readable zip archive")]
    self.assert_manual_dir_errors(cases, "w2_l1_ov")

  def test_allow_missing_folds_builds_the_folds_present(self):
    # One actor's files (fold of actor 1): refused by default (above), built with the opt-in.
    root = pathlib.Path(tempfile.mkdtemp())
    manual = root / "few" / "Actor_01"
    dummy_media.write_mp4(manual / _clip(1, 1), seconds=1.2, size=SIZE)
    folds = folds_lib.assign_folds(lib.genders())
    builder = lib.Builder(config="w2_l1_ov", data_dir=root / "data", num_workers=1,
                          allow_missing_folds=True)
    with contextlib.redirect_stdout(io.StringIO()) as out:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=root / "few"))
    self.assertIn("NOT the paper's 10-fold protocol", out.getvalue())
    self.assertEqual(sorted(builder.info.splits.keys()), [f"fold{folds[1]}"])
    missing = [f for f in range(10) if f != folds[1]]
    self.assertEqual(builder.info.metadata["missing_folds"], missing)
    self.assertEqual(builder.info.splits[f"fold{folds[1]}"].num_examples, 1)
    # Training reads it only with the opt-in, and refuses a test fold without clips.
    from avjax import config_lib
    from avjax import config_tokens
    from avjax.data import tfds_access
    config = config_lib.get_base_config()
    config_tokens.set_dataset(config, "ravdess")
    config.dataset.config, config.dataset.data_dir = "w2_l1_ov", str(root / "data")
    config.dataset.build = False
    with self.assertRaisesRegex(ValueError, re.escape(f"has no fold(s) {missing}")):
      tfds_access.get_builder(config)
    config.dataset.allow_missing_folds = True
    self.assertEqual(tfds_access.split_folds(config, folds[1]), ([], None))
    with self.assertRaisesRegex(ValueError, f"test fold {missing[0]} has no clips.*"
                                            rf"\[{folds[1]}\]"):
      tfds_access.split_folds(config, missing[0])

  def test_symlinked_actor_folders_are_followed(self):
    root = pathlib.Path(tempfile.mkdtemp())
    dummy_media.write_mp4(root / "elsewhere" / "Actor_01" / _clip(1, 1), seconds=0.5, size=SIZE)
    (root / "manual").mkdir()
    os.symlink(root / "elsewhere" / "Actor_01", root / "manual" / "Actor_01")
    os.symlink(root / "manual", root / "manual" / "Actor_01" / "loop")   # a cycle: visited once
    builder = lib.Builder(config="w2_l1_ov", data_dir=root / "data", num_workers=1,
                          allow_missing_folds=True)
    with contextlib.redirect_stdout(io.StringIO()):
      clips = builder.scan(root / "manual")
    self.assertEqual([c.clip_id for c in clips], [_clip(1, 1)[:-4]])

  def test_max_examples_per_split_with_a_pool(self):
    # TFDS stops reading a split early: the pool's other results are dropped, later folds still come
    data_dir = self.root / "capped"
    builder = lib.Builder(config="w2_l1_ov", data_dir=data_dir, num_workers=2)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=self.manual, max_examples_per_split=1))
    counts = [builder.info.splits[f"fold{k}"].num_examples for k in range(10)]
    self.assertEqual(counts, [1] * 10)
    folds = folds_lib.assign_folds(lib.genders())
    for k in range(10):
      r = builder.as_data_source(f"fold{k}")[0]
      self.assertEqual(folds[int(r["actor"])], k)

  def test_build_script(self):
    data_dir = self.root / "script"
    cmd = [sys.executable, str(REPO / "scripts/build_datasets.py"), "ravdess/w2_l1_no",
           f"--manual_dir={self.manual}", f"--data_dir={data_dir}", "--num_workers=1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    self.assertEqual(proc.returncode, 0, proc.stderr[-2000:])
    self.assertIn(f"ravdess/w2_l1_no: {len(GOOD)} clips", proc.stdout)
    self.assertIn("3 file(s) skipped", proc.stdout)
    self.assertTrue(lib.Builder(config="w2_l1_no", data_dir=data_dir).is_prepared())
    proc = subprocess.run(cmd[:3] + [f"--manual_dir={self.root / 'nowhere'}", f"--data_dir={self.root / 'x'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    self.assertEqual(proc.returncode, 1)
    self.assertIn("does not exist", proc.stderr)

  def test_interrupted_build_is_not_prepared(self):
    data_dir = self.root / "interrupted"
    real = clip_records.run_job
    calls = []

    def flaky(job):
      calls.append(job.key)
      if len(calls) == 4:
        raise KeyboardInterrupt
      return real(job)

    builder = lib.Builder(config="w2_l1_ov", data_dir=data_dir, num_workers=1)
    with mock.patch.object(clip_records, "run_job", flaky):
      with self.assertRaises(KeyboardInterrupt):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=self.manual))
    self.assertFalse(lib.Builder(config="w2_l1_ov", data_dir=data_dir).is_prepared())
    self.assertEqual([p.name for p in (data_dir / "ravdess" / "w2_l1_ov").iterdir()], [])

  def test_killed_build_leaves_only_an_incomplete_dir(self):
    data_dir = self.root / "killed"
    script = textwrap.dedent(f"""
        import os, tensorflow_datasets as tfds
        from avjax.data import clip_records
        from avjax.tfds_builders.ravdess import ravdess_dataset_builder as lib
        real, n = clip_records.run_job, []
        def dying(job):
          n.append(1)
          if len(n) == 5:
            os._exit(3)   # like SIGKILL: no cleanup runs
          return real(job)
        clip_records.run_job = dying
        lib.Builder(config="w2_l1_ov", data_dir={str(data_dir)!r}, num_workers=1).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir={str(self.manual)!r}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    self.assertEqual(proc.returncode, 3, proc.stderr[-2000:])
    left = [p.name for p in (data_dir / "ravdess" / "w2_l1_ov").iterdir()]
    self.assertLen(left, 1)
    self.assertTrue(left[0].startswith("incomplete."), left)
    builder = lib.Builder(config="w2_l1_ov", data_dir=data_dir, num_workers=1)
    self.assertFalse(builder.is_prepared())
    with self.assertRaises(Exception):
      builder.as_data_source("fold0")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=self.manual))
    self.assertTrue(builder.is_prepared())
    self.assertEqual(sum(builder.info.splits[f"fold{k}"].num_examples for k in range(10)), len(GOOD))


if __name__ == "__main__":
  absltest.main()
