"""avjax.data.media: real RAVDESS / CREMA-D samples, generated files, window arithmetic."""

import functools
import math
import os
import pathlib
import pickle
import shutil
import tempfile
import wave
import zipfile

import av
import numpy as np
import soundfile
from absl.testing import absltest
from absl.testing import parameterized

from tests import helpers
from avjax.data import clip_records
from avjax.data import features
from avjax.data import media
from avjax.data import windows
from tests import dummy_media


def _wave_reference(path) -> tuple[np.ndarray, int]:
  """Independent WAV reader (stdlib `wave`, which skips unknown RIFF chunks): mono float [M]."""
  with wave.open(str(path), "rb") as w:
    assert w.getsampwidth() == 2
    x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64) / 32768.0
    return x.reshape(-1, w.getnchannels()).mean(axis=1), w.getframerate()


def _native_frames(path):
  """All source frames, resized by FFmpeg the same way, with their times relative to the first."""
  with av.open(str(path)) as c:
    frames = [(f.time, f.reformat(width=112, height=112, format="rgb24",
                                  interpolation="AREA").to_ndarray())
              for f in c.decode(video=0)]
  t0 = frames[0][0]
  return np.array([t - t0 for t, _ in frames]), np.stack([f for _, f in frames])


class RealSamplesTest(parameterized.TestCase):

  def test_ravdess_wavs_rate_length_and_downmix(self):
    folder = helpers.require_samples("ravdess")
    paths = sorted(folder.glob("*.wav"))
    self.assertLen(paths, 9)
    stereo = 0
    for path in paths:
      x, rate = media.read_wav(path)
      ref, ref_rate = _wave_reference(path)
      self.assertEqual(rate, 48000)
      self.assertEqual(ref_rate, 48000)
      np.testing.assert_allclose(x, ref, atol=1e-7, err_msg=path.name)   # extra chunks skipped, channels averaged
      stereo += soundfile.info(str(path)).channels == 2
      y = media.resample(x, rate, media.AUDIO_RATE)
      self.assertEqual(y.dtype, np.float32)
      self.assertAlmostEqual(len(y), len(x) * 22050 / 48000, delta=2, msg=path.name)
    self.assertEqual(stereo, 1)  # 03-01-03-01-02-01-20.wav

  def test_stereo_ravdess_is_channel_mean(self):
    path = helpers.require_samples("ravdess") / "03-01-03-01-02-01-20.wav"
    data, _ = soundfile.read(str(path), dtype="float32")   # [M, 2] (both channels hold the same signal)
    self.assertEqual(data.shape[1], 2)
    x, rate = media.read_wav(path)
    self.assertEqual(x.shape, (data.shape[0],))
    np.testing.assert_allclose(x, data.mean(axis=1), atol=1e-7)
    self.assertAlmostEqual(len(media.resample(x, rate, 22050)), 3.47 * 22050, delta=0.01 * 22050)

  def test_crema_d_wavs_16k_to_22050(self):
    folder = helpers.require_samples("crema_d/AudioWAV")
    paths = sorted(folder.glob("*.wav"))
    self.assertLen(paths, 10)
    full_scale = 0
    for path in paths:
      x, rate = media.read_wav(path)
      ref, _ = _wave_reference(path)
      self.assertEqual(rate, 16000)
      np.testing.assert_allclose(x, ref, atol=1e-7)
      full_scale += x.min() == -1.0
      y = media.resample(x, rate, media.AUDIO_RATE)
      self.assertAlmostEqual(len(y), len(x) * 22050 / 16000, delta=2, msg=path.name)
    self.assertEqual(full_scale, 5)   # the samples README: five reach -32768

  @parameterized.parameters(25.0, 30000 / 1001, 12.0)
  def test_crema_d_flv_frames_follow_timestamps(self, fps):
    folder = helpers.require_samples("crema_d/VideoFlash")
    expected_frames = {"1001_DFA_ANG_XX": 67, "1001_DFA_HAP_XX": 56, "1001_DFA_SAD_XX": 60}
    for path in sorted(folder.glob("*.flv")):
      times, native = _native_frames(path)
      self.assertLen(native, expected_frames[path.stem])
      clip = media.decode(path, options=media.DecodeOptions(fps=fps))
      # Duration: the video span, len / 29.97 fps (the samples README's seconds).
      self.assertAlmostEqual(clip.duration, len(native) * 1001 / 30000, delta=2e-3)
      self.assertLen(clip.video, math.ceil(clip.duration * fps - 1e-6))
      for n, frame in enumerate(clip.video):
        i = np.searchsorted(times, n / fps + 1e-3, side="right") - 1   # on screen at n / fps
        np.testing.assert_array_equal(frame, native[i], err_msg=f"{path.name} frame {n}")
      if abs(fps - 30000 / 1001) < 1e-9:   # at the native rate every source frame once
        np.testing.assert_array_equal(clip.video, native)

  def test_crema_d_flv_audio_longer_than_container(self):
    path = helpers.require_samples("crema_d/VideoFlash") / "1001_DFA_ANG_XX.flv"
    with av.open(str(path)) as c:
      container_seconds = c.duration / 1e6
      samples = sum(f.samples for f in c.decode(audio=0))
    clip = media.decode(path)
    self.assertEqual(samples, 100224)
    self.assertAlmostEqual(clip.audio_duration, samples / 44100, places=6)
    self.assertBetween(clip.audio_duration - container_seconds, 0.02, 0.06)   # the ~40 ms quirk
    self.assertAlmostEqual(len(clip.audio), samples * 22050 / 44100, delta=2)
    self.assertAlmostEqual(clip.duration, container_seconds, delta=2e-3)

  def test_crema_d_flv_with_its_wav(self):
    root = helpers.require_samples("crema_d")
    clip = media.decode(root / "VideoFlash/1001_DFA_ANG_XX.flv",
                        audio_path=root / "AudioWAV/1001_DFA_ANG_XX.wav")
    x, _ = media.read_wav(root / "AudioWAV/1001_DFA_ANG_XX.wav")
    np.testing.assert_array_equal(clip.audio, media.resample(x, 16000, 22050))
    self.assertAlmostEqual(clip.audio_duration, len(x) / 16000)
    rec = clip_records.make_record(root / "VideoFlash/1001_DFA_ANG_XX.flv", windows.parse_name("w6_l1_ov"),
                            audio_path=root / "AudioWAV/1001_DFA_ANG_XX.wav")
    self.assertEqual(rec["video"].shape, (6, 25, 112, 112, 3))
    self.assertEqual(rec["audio"].shape, (6, 22050))
    # 2.235 s clip, windows at 0, 0.5, ..., 2.5 s.
    np.testing.assert_allclose(rec["window_valid"], [1, 1, 1, 0.735, 0.235, 0], atol=2e-3)


class WindowArithmeticTest(parameterized.TestCase):
  """cut_windows against hand-computed indices: 4 fps, 8 Hz audio, a 1.75 s clip."""

  def setUp(self):
    super().setUp()
    video = np.arange(7, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    self.clip = media.Clip(video=video, audio=np.arange(1, 15, dtype=np.float32), duration=1.75,
                           video_duration=1.75, audio_duration=1.75)
    self.options = media.DecodeOptions(fps=4, audio_rate=8)

  def _cut(self, name):
    out = clip_records.cut_windows(self.clip, windows.parse_name(name), self.options)
    return out["video"][..., 0, 0, 0], out["audio"], out["window_valid"]

  def test_fixed_overlap_pads_past_the_end(self):
    frames, audio, valid = self._cut("w4_l1_ov")   # starts 0, 0.5, 1, 1.5
    np.testing.assert_array_equal(frames, [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 6], [6, 6, 6, 6]])
    np.testing.assert_array_equal(audio, [[1, 2, 3, 4, 5, 6, 7, 8],
                                          [5, 6, 7, 8, 9, 10, 11, 12],
                                          [9, 10, 11, 12, 13, 14, 0, 0],
                                          [13, 14, 0, 0, 0, 0, 0, 0]])
    np.testing.assert_allclose(valid, [1, 1, 0.75, 0.25])

  def test_fixed_no_overlap(self):
    frames, audio, valid = self._cut("w2_l1_no")   # starts 0, 1
    np.testing.assert_array_equal(frames, [[0, 1, 2, 3], [4, 5, 6, 6]])
    np.testing.assert_array_equal(audio[1], [9, 10, 11, 12, 13, 14, 0, 0])
    np.testing.assert_allclose(valid, [1, 0.75])

  def test_fit_spreads_without_padding(self):
    frames, audio, valid = self._cut("w4_l1_ov_fit")   # hop (1.75 - 1) / 3 = 0.25 s
    np.testing.assert_array_equal(frames, [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 6]])
    np.testing.assert_array_equal(audio[3], np.arange(7, 15))   # starts at 0.75 s = sample 6
    np.testing.assert_allclose(valid, [1, 1, 1, 1])

  def test_clip_shorter_than_one_window(self):
    short = media.Clip(video=self.clip.video[:2], audio=self.clip.audio[:4], duration=0.5,
                       video_duration=0.5, audio_duration=0.5)
    out = clip_records.cut_windows(short, windows.parse_name("w1_l1_no_fit"), self.options)
    np.testing.assert_array_equal(out["video"][0, :, 0, 0, 0], [0, 1, 1, 1])
    np.testing.assert_array_equal(out["audio"][0], [1, 2, 3, 4, 0, 0, 0, 0])
    np.testing.assert_allclose(out["window_valid"], [0.5])


class GeneratedFilesTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = pathlib.Path(tempfile.mkdtemp())
    cls.mp4 = dummy_media.write_mp4(cls.dir / "01-01-03-01-02-01-05.mp4", seconds=2.0)

  def test_audio_rate_matches_features(self):
    self.assertEqual(media.AUDIO_RATE, features.AUDIO_RATE)

  def test_mp4_frames_and_tone(self):
    clip = media.decode(self.mp4)
    times, native = _native_frames(self.mp4)
    self.assertLen(native, 60)
    self.assertAlmostEqual(clip.duration, 60 * 1001 / 30000, places=4)
    self.assertLen(clip.video, 51)   # ceil(2.002 * 25)
    for n, frame in enumerate(clip.video):
      i = np.searchsorted(times, n / 25 + 1e-3, side="right") - 1
      np.testing.assert_array_equal(frame, native[i])
    # frame n shows source frame floor((n / 25 + 1 ms) * 29.97): the one on screen then,
    # with media's 1 ms tolerance for millisecond timestamps
    means = clip.video.mean(axis=(1, 2, 3))
    expected = [dummy_media.level(int((n / 25 + 1e-3) * 30000 / 1001 + 1e-9)) for n in range(51)]
    np.testing.assert_allclose(means, expected, atol=2.9)   # levels are 6 apart
    # 440 Hz sine at 48 kHz through AAC and soxr to 22050 Hz
    x = clip.audio[4410:4410 + 11025]
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    self.assertAlmostEqual(np.argmax(spectrum) * 22050 / len(x), 440, delta=3)
    t = np.arange(len(x)) / 22050
    basis = np.stack([np.sin(2 * np.pi * 440 * t), np.cos(2 * np.pi * 440 * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    self.assertAlmostEqual(np.hypot(*coef), 0.5, delta=0.02)   # amplitude kept
    self.assertLess(np.sqrt(np.mean((x - basis @ coef) ** 2)), 0.05)   # a sine (AAC noise ~0.03)

  def test_zip_member_decodes_like_the_file(self):
    archive = self.dir / "Video_Speech_Actor_05.zip"
    with zipfile.ZipFile(archive, "w") as z:
      z.write(self.mp4, "Actor_05/" + self.mp4.name)
    a = media.decode(self.mp4)
    b = media.decode(media.ZipMember(str(archive), "Actor_05/" + self.mp4.name))
    np.testing.assert_array_equal(a.video, b.video)
    np.testing.assert_array_equal(a.audio, b.audio)
    with self.assertRaisesRegex(media.MediaError, "not in the archive"):
      media.decode(media.ZipMember(str(archive), "Actor_05/missing.mp4"))

  def test_center_crop_before_resize(self):
    def bands(i, h, w):   # white left quarter, black right quarter, grey centre
      img = np.full((h, w, 3), 128, np.uint8)
      img[:, : w // 4] = 255
      img[:, 3 * w // 4:] = 0
      return img
    path = dummy_media.write_mp4(self.dir / "bands.mp4", seconds=0.5, size=(64, 32), frame_fn=bands)
    whole = media.decode(path).video[0]
    crop = media.decode(path, options=media.DecodeOptions(center_crop=True)).video[0]
    self.assertEqual(crop.shape, (112, 112, 3))
    self.assertGreater(whole[:, :20].mean(), 240)   # the bands are in the whole frame
    self.assertLess(whole[:, -20:].mean(), 15)
    self.assertLess(np.abs(crop.astype(int) - 128).max(), 4)   # the centre square only

  def test_video_alone_decodes_like_both_streams(self):
    both = media.decode(self.mp4)
    alone = media.decode(self.mp4, with_audio=False)
    np.testing.assert_array_equal(alone.video, both.video)
    self.assertAlmostEqual(alone.duration, both.duration)
    self.assertEqual((alone.audio, alone.audio_duration), (None, None))
    # no audio stream needed, and no audio/video length check
    path = dummy_media.write_mp4(self.dir / "silent_video.mp4", seconds=0.5, with_audio=False)
    self.assertLen(media.decode(path, with_audio=False).video, 13)   # ceil(0.5005 * 25)
    out = clip_records.cut_windows(alone, windows.parse_name("w2_l1_ov"), media.DecodeOptions())
    self.assertEqual(set(out), {"video", "window_valid", "duration"})
    for kwargs in ({"with_video": False, "with_audio": False},
                   {"with_audio": False, "audio_path": self.mp4},
                   {"with_video": False, "box": (0, 0, 8, 8)}):
      with self.assertRaises(ValueError, msg=str(kwargs)):
        media.decode(self.mp4, **kwargs)

  def test_box_crop_before_resize(self):
    def quadrants(i, h, w):   # white top-left quarter, black elsewhere
      img = np.zeros((h, w, 3), np.uint8)
      img[: h // 2, : w // 2] = 255
      return img
    path = dummy_media.write_mp4(self.dir / "quadrants.mp4", seconds=0.5, size=(64, 32),
                                 frame_fn=quadrants)
    white = media.decode(path, with_audio=False, box=(0, 0, 32, 16)).video
    black = media.decode(path, with_audio=False, box=(32, 16, 32, 16)).video
    self.assertEqual(white.shape[1:], (112, 112, 3))
    self.assertGreater(white.mean(), 240)
    self.assertLess(black.mean(), 15)
    # the box is used with the audio too, and equals the video-only decode
    np.testing.assert_array_equal(media.decode(path, box=(0, 0, 32, 16)).video, white)

  def test_stereo_audio_is_downmixed(self):
    # left 440 Hz, right 660 Hz: the mono mix holds both at half amplitude (0.25)
    path = dummy_media.write_mp4(self.dir / "stereo.mp4", seconds=1.0, channels=2,
                                 tone_hz=(440.0, 660.0))
    with av.open(str(path)) as c:
      planes = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)   # [2, M]
    self.assertEqual(planes.shape[0], 2)
    clip = media.decode(path)
    self.assertEqual(clip.audio.ndim, 1)
    np.testing.assert_allclose(clip.audio, media.resample(planes.mean(axis=0), 48000, 22050), atol=1e-6)
    x = clip.audio[2205:2205 + 11025]
    spectrum = np.abs(np.fft.rfft(x)) * 2 / len(x)
    for hz in (440, 660):
      self.assertAlmostEqual(spectrum[round(hz * len(x) / 22050)], 0.25, delta=0.03)

  def test_errors_name_the_file_and_reason(self):
    d = self.dir
    (d / "garbage.mp4").write_bytes(b"\x00" * 2000)
    dummy_media.write_mp4(d / "noaudio.mp4", seconds=0.5, with_audio=False)
    dummy_media.write_av(d / "noframes.mkv", container_format="matroska", video_codec="libx264",
                         audio_codec="aac", num_frames=0, seconds=0.5)
    dummy_media.write_flv(d / "audio_only.flv", num_frames=0, seconds=0.5)
    dummy_media.write_wav(d / "empty.wav", seconds=0)
    soundfile.write(str(d / "silent.wav"), np.zeros(8000, np.int16), 16000, subtype="PCM_16")
    dummy_media.write_wav(d / "long.wav", seconds=3.0)
    nan = np.full(8000, 0.1, np.float32)
    nan[[5, 700]] = np.nan, np.inf
    soundfile.write(str(d / "nan.wav"), nan, 16000, subtype="FLOAT")
    cases = [
        (d / "missing.mp4", {}, "file not found"),
        (d / "garbage.mp4", {}, "cannot open"),
        (d / "noaudio.mp4", {}, "no audio stream"),
        (d / "noframes.mkv", {}, "no video frames"),
        (d / "audio_only.flv", {}, "no video stream"),
        (self.mp4, {"audio_path": d / "empty.wav"}, "no audio samples"),
        (self.mp4, {"audio_path": d / "silent.wav"}, "all 8000 samples are 0"),
        (self.mp4, {"audio_path": d / "nowhere.wav"}, "file not found"),
        (self.mp4, {"audio_path": d / "nan.wav"}, "2 of 8000 audio samples are NaN or inf"),
        (d / "noaudio.mp4", {"audio_path": d / "long.wav"}, "video lasts 0.50 s but audio 3.00 s"),
    ]
    for path, kwargs, reason in cases:
      with self.assertRaises(media.MediaError, msg=str(path)) as cm:
        media.decode(path, **kwargs)
      self.assertIn(reason, cm.exception.reason)
      self.assertIn(pathlib.Path(cm.exception.path).name, str(cm.exception))
    with self.assertRaisesRegex(media.MediaError, "nan.wav.*2 of 8000 audio samples"):
      media.decode_audio(d / "nan.wav")   # the audio-only records' path
    # MediaError crosses process boundaries intact (the builders' worker pool).
    e = pickle.loads(pickle.dumps(media.MediaError("a.flv", "no video frames")))
    self.assertEqual((e.path, e.reason), ("a.flv", "no video frames"))

  def test_damaged_tiny_and_oddly_named_audio(self):
    d = self.dir / "odd"
    d.mkdir()
    wav = dummy_media.write_wav(d / "tone.wav", seconds=1.0)
    # A zip member whose compressed data is damaged at its start (zlib, not CRC, fails).
    archive = d / "damaged.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
      z.write(wav, "Actor_01/tone.wav")
    with zipfile.ZipFile(archive) as z:
      start = z.getinfo("Actor_01/tone.wav").header_offset + 30 + len("Actor_01/tone.wav")
    data = bytearray(archive.read_bytes())
    data[start:start + 4] = bytes(b ^ 0xFF for b in data[start:start + 4])
    archive.write_bytes(bytes(data))
    member = media.ZipMember(str(archive), "Actor_01/tone.wav")
    for decode in (media.decode_audio, functools.partial(media.decode, with_video=False)):
      with self.assertRaisesRegex(media.MediaError, "cannot (read audio|open)"):
        decode(member)
    # One sample at 48 kHz resamples to none: too short, named, not an IndexError later.
    soundfile.write(str(d / "one.wav"), np.array([1000], np.int16), 48000, subtype="PCM_16")
    with self.assertRaisesRegex(media.MediaError, r"too short \(0.02 ms"):
      media.decode_audio(d / "one.wav")
    with self.assertRaisesRegex(media.MediaError, r"one.wav.*too short"):
      media.decode(self.mp4, audio_path=d / "one.wav")
    # A file name that is not UTF-8 (surrogate-escaped by Python) reads like any other.
    odd_dir = os.path.join(os.fsencode(d), b"n\xe9")
    os.makedirs(odd_dir)
    shutil.copy(wav, os.path.join(odd_dir, b"tone.wav"))
    odd = os.path.join(os.fsdecode(odd_dir), "tone.wav")
    np.testing.assert_array_equal(media.decode_audio(odd).audio, media.decode_audio(wav).audio)

  def test_worker_compression_equals_tfds_encoding(self):
    spec = windows.parse_name("w2_l1_ov")
    job = clip_records.ClipJob(key="k", src=self.mp4, spec=spec, options=media.DecodeOptions(), fields={},
                        compress_video=True)
    _, record, reason = clip_records.run_job(job)
    self.assertIsNone(reason)
    self.assertIsInstance(record["video"], clip_records.ZlibVideo)
    video = clip_records.make_record(self.mp4, spec)["video"]
    feature = features.features_dict(num_windows=2, frames_per_window=25, frame_size=112,
                                      samples_per_window=22050, class_names=("a", "b"))["video"]
    self.assertEqual(bytes(record["video"]), feature.encode_example(video))
    np.testing.assert_array_equal(feature.decode_example_np(bytes(record["video"])), video)

  def test_run_job_reports_instead_of_raising(self):
    job = clip_records.ClipJob(key="k", src=str(self.dir / "nothing.mp4"), spec=windows.parse_name("w2_l1_ov"),
                        options=media.DecodeOptions(), fields={})
    self.assertEqual(clip_records.run_job(job), ("k", None, "file not found"))
    job = clip_records.ClipJob(key="k", src=self.mp4, spec=windows.parse_name("w2_l1_ov"),
                        options=media.DecodeOptions(), fields={"label": 2},
                        audio_path=str(self.dir / "nowhere.wav"))
    self.assertEqual(clip_records.run_job(job), ("k", None, "nowhere.wav: file not found"))


if __name__ == "__main__":
  absltest.main()
