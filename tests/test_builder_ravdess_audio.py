"""ravdess audio-only configs: built from RAVDESS-named WAVs alone.

The manual_dir holds the real speech WAVs of ../shared/samples/ravdess (one of
them stereo; every one with the FLLR/LIST/bext/_PMX chunks) in extracted
`Actor_XX/` folders, plus generated WAVs written byte by byte with the same
extra chunks, some inside an `Audio_Speech_Actors_01-24.zip` laid out like the
official one, so that every fold has clips.
"""

import contextlib
import io
import pathlib
import shutil
import tempfile
import zipfile

import numpy as np
import soundfile
import soxr
import tensorflow_datasets as tfds
from absl.testing import absltest

from avjax.data import builder_lib
from avjax.data import clip_records
from avjax.data import folds as folds_lib
from avjax.data import media
from tests import builder_base
from tests import dummy_media
from avjax.tfds_builders.ravdess import ravdess_dataset_builder as lib

RATE = 22050          # generated WAVs at SoundNet's rate: no resampling, exact comparisons
S = 22050             # samples per 1 s window
ZIPPED = range(1, 13)  # actors 1-12 in the zip, 13-24 extracted


def _wav_name(emotion, actor, **kw):
  return dummy_media.ravdess_name(emotion=emotion, actor=actor, modality=3, **kw)[:-4] + ".wav"


def _generated(actor: int, emotion: int, seconds: float = 1.3) -> np.ndarray:
  """[M] int16 tone, distinct per actor and emotion."""
  t = np.arange(int(seconds * RATE)) / RATE
  return np.round(8000 * np.sin(2 * np.pi * (100 + 10 * emotion + actor) * t)).astype(np.int16)


# Each actor a gets emotions 1 + a % 8 and 1 + (a + 3) % 8 (see _make_manual_dir).
STEREO = _wav_name(5, 4)                    # generated stereo file: L and R differ
FULL_SCALE = _wav_name(7, 6)                # generated file with full-scale samples
SILENT = _wav_name(4, 7, repetition=2)      # all zeros: skipped
EMPTY = _wav_name(5, 9, repetition=2)       # no samples: skipped


def _make_manual_dir(root: pathlib.Path, samples: pathlib.Path) -> tuple[pathlib.Path, dict]:
  manual, staging = root / "manual", root / "staging"
  written = {}
  for actor in range(1, 25):
    for emotion in (1 + actor % 8, 1 + (actor + 3) % 8):
      name = _wav_name(emotion, actor)
      x = _generated(actor, emotion)
      if name == STEREO:
        x = np.stack([x, (x // 2).astype(np.int16)], axis=1)
      if name == FULL_SCALE:
        x = x.copy()
        x[100:110] = -32768
        x[200:210] = 32767
      written[name[:-4]] = x
      dummy_media.write_riff_wav(staging / f"Actor_{actor:02d}" / name, x, RATE)
  for name, x in ((SILENT, np.zeros(RATE, np.int16)), (EMPTY, np.zeros(0, np.int16))):
    dummy_media.write_riff_wav(staging / f"Actor_{int(name[-6:-4]):02d}" / name, x, RATE)
  # An audio-visual MP4 name and a video-only twin would be other modalities: ignored here.
  (staging / "Actor_13" / "01-01-01-01-01-01-13.mp4").write_bytes(b"not read")
  manual.mkdir(parents=True)
  zipped = root / "zipped"
  for folder in sorted(staging.iterdir()):
    actor = int(folder.name[-2:])
    if actor in ZIPPED:
      shutil.move(str(folder), zipped / folder.name)
    else:
      folder.rename(manual / folder.name)
  archive = manual / "Audio_Speech_Actors_01-24.zip"
  import zipfile
  with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
    for p in sorted(zipped.rglob("*.wav")):
      z.write(p, f"{p.parent.name}/{p.name}")
  # The real files, extracted, replacing nothing (their names differ from the generated ones).
  real = {}
  for wav in sorted(samples.glob("03-01-*.wav")):
    actor = int(wav.stem.split("-")[-1])
    folder = manual / f"Actor_{actor:02d}"
    if actor in ZIPPED:
      folder.mkdir(exist_ok=True)
    shutil.copy(wav, folder / wav.name)
    real[wav.stem] = wav
  return manual, {"generated": written, "real": real}


class RavdessAudioOnlyTest(builder_base.BuilderTestCase):
  lib = lib
  CONFIG = "audio_w2_l1_ov"
  SAMPLES = "ravdess"

  @classmethod
  def make_manual_dir(cls, root):
    manual, cls.files = _make_manual_dir(root, cls.samples)
    return manual

  def test_records_have_no_video_and_all_fields(self):
    self.assertNotIn("video", self.builder.info.features)
    self.assertTrue(self.builder.info.metadata["audio_only"])
    expected = set(self.files["generated"]) | set(self.files["real"])
    self.assertEqual(set(self.records), expected)
    folds = folds_lib.assign_folds(lib.genders())
    for clip_id, r in self.records.items():
      f = lib.parse_name(clip_id)
      self.assertEqual(f["modality"], 3)
      self.assertEqual(r["label"], f["emotion"] - 1)
      self.assertEqual(r["actor"], f["actor"])
      self.assertEqual(r["fold"], folds[f["actor"]])
      self.assertEqual(r["audio"].shape, (2, S))
      self.assertEqual(r["audio"].dtype, np.float32)
      self.assertEqual(r["window_valid"].shape, (2,))

  def test_extra_chunks_skipped_samples_exact(self):
    # Generated at 22050 Hz: the stored windows are the data chunk's samples / 32768,
    # exactly; an FLLR chunk read as audio would shift or corrupt them.
    for clip_id, x in self.files["generated"].items():
      r = self.records[clip_id]
      mono = x.astype(np.float32).mean(axis=1) if x.ndim == 2 else x.astype(np.float32)
      mono /= 32768.0
      np.testing.assert_array_equal(r["audio"][0], mono[:S], err_msg=clip_id)
      # Window 1 starts at 0.5 s and passes the 1.3 s clip's end: zero padding.
      np.testing.assert_array_equal(r["audio"][1][:len(mono) - S // 2], mono[S // 2:])
      np.testing.assert_array_equal(r["audio"][1][len(mono) - S // 2:], 0.0)
      np.testing.assert_allclose(r["window_valid"], [1.0, 0.8], atol=1e-6)
      self.assertAlmostEqual(float(r["duration"]), len(mono) / RATE, places=5)

  def test_stereo_downmixed_and_full_scale_kept(self):
    x = self.files["generated"][STEREO[:-4]].astype(np.float32) / 32768.0
    np.testing.assert_array_equal(self.records[STEREO[:-4]]["audio"][0], (x[:S, 0] + x[:S, 1]) / 2)
    full = self.records[FULL_SCALE[:-4]]["audio"][0]
    np.testing.assert_array_equal(full[100:110], -1.0)
    np.testing.assert_array_equal(full[200:210], 32767 / 32768)

  def test_real_wavs_including_stereo(self):
    self.assertIn("03-01-03-01-02-01-20", self.files["real"])   # the stereo sample
    for clip_id, path in self.files["real"].items():
      data, rate = soundfile.read(path, dtype="float32", always_2d=True)
      self.assertEqual(rate, 48000)
      # Independent reference: channel mean, soxr to 22050 Hz, the windows of w2_l1_ov.
      mono = soxr.resample(data.mean(axis=1), rate, RATE, quality="HQ").astype(np.float32)
      r = self.records[clip_id]
      np.testing.assert_allclose(r["audio"][0], mono[:S], atol=1e-6, err_msg=clip_id)
      np.testing.assert_allclose(r["audio"][1], mono[S // 2:S // 2 + S], atol=1e-6, err_msg=clip_id)
      self.assertAlmostEqual(float(r["duration"]), data.shape[0] / rate, places=4)
      np.testing.assert_array_equal(r["window_valid"], [1.0, 1.0])
    stereo = soundfile.info(self.files["real"]["03-01-03-01-02-01-20"])
    self.assertEqual(stereo.channels, 2)

  def test_defective_files_skipped_with_reasons(self):
    skipped = {s["file"]: s["reason"] for s in self.builder.info.metadata["skipped"]}
    self.assertIn("no audio (all", skipped[SILENT])
    self.assertIn("no audio samples", skipped[EMPTY])
    self.assertNotIn(SILENT[:-4], self.records)
    self.assertIn(SILENT, self.builder.summary())

  def test_ids_match_the_audio_visual_records(self):
    # An audio-only record's id is its audio-visual twin's with modality 03 for 01.
    for clip_id in self.records:
      av = "01" + clip_id[2:]
      self.assertEqual(lib.parse_name(av)["modality"], 1)

  def test_audio_visual_config_refuses_wavs_and_names_audio_config(self):
    manual = self.root / "only_wav"
    manual.mkdir()
    shutil.copy(self.manual / "Audio_Speech_Actors_01-24.zip", manual)
    builder = lib.Builder(config="w2_l1_ov", data_dir=self.root / "data_av", num_workers=1)
    with self.assertRaisesRegex(builder_lib.ManualDirError, "audio_w2_l1_ov config reads the WAVs"):
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))

  def test_zip_with_windows_separators(self):
    # Older Windows zip tools store `Actor_01\x.wav`: the clip's name is still x.
    manual = self.root / "backslashes"
    manual.mkdir()
    with zipfile.ZipFile(manual / "Audio_Speech_Actors_01-24.zip", "w") as z:
      z.writestr("Actor_01\\03-01-05-01-02-01-01.wav", b"RIFF")
    self.assertEqual([stem for stem, _ in lib._candidates(manual, ".wav")],
                     ["03-01-05-01-02-01-01"])

  def test_audio_config_without_wavs_says_what_it_needs(self):
    manual = self.root / "only_mp4"
    (manual / "Actor_01").mkdir(parents=True)
    (manual / "Actor_01" / "01-01-01-01-01-01-01.mp4").write_bytes(b"x")
    builder = lib.Builder(config="audio_w2_l1_ov", data_dir=self.root / "data_none", num_workers=1)
    with self.assertRaisesRegex(builder_lib.ManualDirError, "Audio_Speech_Actors_01-24.zip"):
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))


class ContentDigestTest(absltest.TestCase):

  def test_record_digest_sees_values_dtypes_and_shapes(self):
    x = np.arange(6, dtype=np.float32)
    base = {"audio": x, "label": 3, "clip_id": "a", "video": clip_records.ZlibVideo(b"zz")}
    digest = clip_records.record_digest(base)
    self.assertEqual(clip_records.record_digest(dict(reversed(list(base.items())))), digest)
    changed = x.copy()
    changed[2] += 1
    for what, other in [("one sample", {**base, "audio": changed}),
                        ("shape", {**base, "audio": x.reshape(2, 3)}),
                        ("dtype, same bytes", {**base, "audio": x.view(np.int32)}),
                        ("label", {**base, "label": 4}), ("text", {**base, "clip_id": "b"}),
                        ("compressed video", {**base, "video": clip_records.ZlibVideo(b"zy")}),
                        ("field name", {("audio2" if k == "audio" else k): v
                                        for k, v in base.items()})]:
      self.assertNotEqual(clip_records.record_digest(other), digest, what)
    digests = {"a": "1", "b": "2"}
    self.assertEqual(clip_records.content_digest(digests),
                     clip_records.content_digest(dict(reversed(list(digests.items())))))
    self.assertNotEqual(clip_records.content_digest(digests),
                        clip_records.content_digest({"a": "2", "b": "1"}))

  def test_same_size_rebuild_from_other_files_gets_another_feature_store(self):
    # One WAV replaced by another of the same length and format: every split's size,
    # bytes and shard lengths stay, so only the records' digest tells the builds apart.
    from avjax import config_lib
    from avjax import config_tokens
    from avjax.data import feature_cache
    root = pathlib.Path(tempfile.mkdtemp())
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)
    wav = root / "manual" / "Actor_01" / _wav_name(3, 1)
    config = config_tokens.apply_args(config_lib.get_base_config(), "audio_global")
    config_tokens.set_dataset(config, "ravdess")
    config.dataset.config, config.model.trunk = "w2_l1_ov", "frozen"
    download = tfds.download.DownloadConfig(
        manual_dir=root / "manual", download_mode=tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS)
    splits, contents, keys, paths = [], [], [], []
    for emotion in (3, 4):
      dummy_media.write_riff_wav(wav, _generated(1, emotion), RATE)
      with contextlib.redirect_stdout(io.StringIO()):
        builder_lib.prepare(lib.Builder(config="audio_w2_l1_ov", data_dir=root / "data",
                                        num_workers=1, allow_missing_folds=True),
                            download, overwrite=True)
      builder = lib.Builder(config="audio_w2_l1_ov", data_dir=root / "data")   # as read back
      splits.append({k: (v.num_examples, v.num_bytes, list(v.shard_lengths))
                     for k, v in builder.info.splits.items()})
      contents.append(builder.info.metadata["content"])
      keys.append(feature_cache.store_key(config, builder, "audio"))
      paths.append(feature_cache.store_path(config, builder, "audio"))
    self.assertEqual(splits[0], splits[1])
    self.assertRegex(contents[0], "^[0-9a-f]{64}$")
    self.assertNotEqual(contents[0], contents[1])
    self.assertEqual(keys[0]["content"], contents[0])
    self.assertNotEqual(paths[0], paths[1])


class MediaAudioOnlyTest(absltest.TestCase):

  def test_audio_windows_equal_the_audio_visual_path(self):
    # Same audio in a WAV and as the separate audio of an audio-visual clip: same windows.
    root = pathlib.Path(tempfile.mkdtemp())
    x = _generated(3, 5, seconds=2.0)
    wav = dummy_media.write_riff_wav(root / "a.wav", x, 16000)
    flv = dummy_media.write_flv(root / "a.flv", seconds=2.0)
    spec = builder_lib.split_name("audio_w4_l1_ov")[1]
    audio_only = clip_records.make_record(wav, spec, with_video=False)
    av = clip_records.make_record(flv, spec, audio_path=wav)
    np.testing.assert_array_equal(audio_only["audio"], av["audio"])
    self.assertNotIn("video", audio_only)
    # Zip members are read too.
    import zipfile
    with zipfile.ZipFile(root / "a.zip", "w") as z:
      z.write(wav, "Actor_01/a.wav")
    zipped = clip_records.make_record(media.ZipMember(str(root / "a.zip"), "Actor_01/a.wav"), spec,
                               with_video=False)
    np.testing.assert_array_equal(zipped["audio"], audio_only["audio"])
    shutil.rmtree(root)

  def test_wav_windows_match_an_mp4_holding_the_same_signal(self):
    # The same tone as a 16-bit WAV and as the AAC track of an MP4: the windows agree within
    # AAC's error (about 0.03 RMS on this tone); a shift of even 1 ms (0.44 cycle) would not.
    root = pathlib.Path(tempfile.mkdtemp())
    mp4 = dummy_media.write_mp4(root / "a.mp4", seconds=2.0, tone_hz=440.0)
    x = dummy_media.sine(2.0, 48000, 440.0)   # the signal write_mp4 encodes
    wav = dummy_media.write_riff_wav(root / "a.wav", np.round(x * 32767).astype(np.int16), 48000)
    spec = builder_lib.split_name("audio_w4_l1_ov")[1]
    from_wav = clip_records.make_record(wav, spec, with_video=False)
    from_mp4 = clip_records.make_record(mp4, spec)
    np.testing.assert_allclose(from_wav["window_valid"], from_mp4["window_valid"], atol=0.01)
    for k in range(spec.num_windows):
      a, b = from_wav["audio"][k], from_mp4["audio"][k]   # [S]
      valid = int(round(float(from_wav["window_valid"][k]) * len(a)))
      rms = lambda v: float(np.sqrt(np.mean(v[:valid] ** 2)))
      self.assertLess(rms(a - b), 0.15 * rms(a), msg=f"window {k}")
      # Zero padding past the clip's end; AAC decodes 256 samples (48 kHz) past it, 118 here.
      np.testing.assert_array_equal(a[valid + 50:], 0.0)
      np.testing.assert_allclose(b[valid + 200:], 0.0, atol=1e-3)
    shutil.rmtree(root)


if __name__ == "__main__":
  absltest.main()
