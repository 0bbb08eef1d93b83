"""`python -m avjax.predict` on a tiny model trained on the synthetic set.

Reads the shared tiny workdir of `tests.helpers` (trained and evaluated once per
test process, and shared with tests/test_end_to_end.py), then runs inference on real CREMA-D FLVs, generated MP4 / MKV / WebM /
AVI clips (various fps, sizes, sample rates, channel counts), a truncated
file, a file without audio and a clip shorter than the windows, and checks
that a synthetic clip written losslessly to a file gives exactly what
evaluation gave for that clip.
"""

import contextlib
import fractions
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from unittest import mock

import av
import numpy as np
from absl.testing import absltest

from avjax import face_crop
from avjax import knn
from avjax import predict
from avjax import predictor as predictor_lib
from avjax import reference_bank
from avjax.data import registry
from avjax.data import tfds_access
from tests import helpers
from avjax import train_state
from avjax import workdir as workdir_lib
from avjax.data import media
from avjax.data import synthetic
from tests import dummy_media

REPO = pathlib.Path(__file__).resolve().parents[1]
F = fractions.Fraction
JSON_KEYS = {"file", "ok", "duration", "has_audio", "has_video", "modalities", "notes",
             "num_valid_gates", "gates", "prediction", "model", "class_names"}


def run_main(argv):
  """(exit status, stdout, stderr) of predict.main(argv) in this process."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    code = predict.main(argv)
  return code, out.getvalue(), err.getvalue()


def ramp_frame(i: int, height: int, width: int, n: int) -> np.ndarray:
  """Grey level rising with time (i / n); left half red-tinted, right half blue-tinted."""
  g = int(20 + 200 * i / max(1, n - 1))
  frame = np.full((height, width, 3), g, np.uint8)
  frame[:, : width // 2, 0] = 250
  frame[:, width // 2:, 2] = 250
  return frame


def dominant_hz(x: np.ndarray, rate: float) -> float:
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return float(np.argmax(spectrum) * rate / len(x))


class PredictTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.mkdtemp(prefix="avjax_predict_")
    # The shared tiny workdir (80 synthetic clips, folds 0 and 1 trained 2 steps and
    # evaluated); read-only here, the stale-bank test works on a copy.
    cls.workdir = helpers.tiny_workdir()
    cls.config = workdir_lib.load_config(cls.workdir)
    cls.fold_dir = workdir_lib.fold_dir(cls.workdir, 0)
    cls.predictor = predictor_lib.Predictor(cls.workdir)
    cls.media_dir = pathlib.Path(cls.tmp) / "media"
    cls.media_dir.mkdir()

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.tmp, ignore_errors=True)
    super().tearDownClass()

  def clip(self, name, *, seconds=2.2, fps=F(25), size=(96, 64), audio_rate=44100, channels=1,
           container_format="mp4", video_codec="libx264", audio_codec="aac", with_audio=True,
           tone_hz=440.0, video_options=None):
    n = int(round(seconds * fps))
    path = self.media_dir / name
    if video_options is None and video_codec == "libx264":
      video_options = {"crf": "0", "preset": "ultrafast"}
    return str(dummy_media.write_av(
        path, container_format=container_format, video_codec=video_codec, audio_codec=audio_codec,
        seconds=seconds, fps=fps, size=size, audio_rate=audio_rate, channels=channels,
        with_audio=with_audio, tone_hz=tone_hz, video_options=video_options,
        frame_fn=lambda i, h, w: ramp_frame(i, h, w, n)))

  # ------------------------------------------------------------------ the bank

  def test_reference_bank_is_what_evaluation_used(self):
    bank = reference_bank.load_bank(os.path.join(self.fold_dir, workdir_lib.REFERENCE_BANK))
    train_folds = registry.training_folds(self.config, 0)
    with np.load(os.path.join(self.fold_dir, workdir_lib.REFERENCE_BANK), allow_pickle=False) as z:
      self.assertEqual(list(z["clip_id"]), tfds_access.clip_ids(self.config, train_folds))
      self.assertEqual(z["meta"].dtype.kind, "U")           # JSON text, nothing pickled
    self.assertEqual(bank.step, train_state.checkpoint_manager(self.fold_dir, self.config).latest_step())
    self.assertEqual(bank.meta["window"], {"name": "w4_l1_ov", "num_windows": 4, "length": 1.0,
                                           "overlap": 0.5, "mode": "fixed"})
    self.assertEqual(bank.meta["video"]["frame_size"], synthetic.FRAME_SIZE)
    self.assertEqual(bank.meta["video"]["fps"], synthetic.FPS)
    self.assertEqual(bank.meta["audio"]["rate"], synthetic.AUDIO_RATE)
    self.assertEqual(bank.gates["audio_gate"].shape, (len(bank.labels), 4, 16))
    # The held-out fold's saved last-gate predictions follow from the bank's references.
    with np.load(os.path.join(self.fold_dir, "predictions.npz")) as preds:
      for m in ("AO", "VO", "AV"):
        again = knn.knn_predict(bank.modality_refs(m)[:, -1], bank.labels, preds[f"emb_{m}"],
                                k=3, num_classes=4)
        np.testing.assert_array_equal(again, preds[f"pred_{m}"][-1], err_msg=m)

  # ------------------------------------------------------------------ parity with evaluation

  def test_synthetic_clip_in_a_file_gives_the_evaluation_results(self):
    with np.load(os.path.join(self.fold_dir, "predictions.npz")) as z:
      saved = {k: z[k] for k in z.files}
    spec = self.predictor.window_spec()
    for q in (0, 5):
      actor, label, rep = map(int, re.match(r"synth-a(\d+)-c(\d)-r(\d+)", saved["clip_id"][q]).groups())
      # The clip's whole frames and waveform, as the builder generated them.
      params = synthetic.actor_params(actor, 0)
      rng = np.random.default_rng([0, actor, label, rep])
      duration = float(np.float32(synthetic.DURATION_S + rng.uniform(
          -synthetic.DURATION_JITTER_S, synthetic.DURATION_JITTER_S)))
      frames = synthetic.render_video(label, params, duration, rng)
      audio = synthetic.render_audio(label, params, duration, rng)
      path = self.media_dir / f"synthetic_{q}.mkv"
      dummy_media.write_lossless(path, frames, synthetic.FPS, audio, synthetic.AUDIO_RATE)

      inputs = self.predictor.preprocess(str(path))
      record = synthetic.generate_clip(label, actor, rep, spec)
      np.testing.assert_array_equal(inputs["video"], record["video"][:, :, 12:28, 12:28])
      np.testing.assert_array_equal(inputs["audio"], record["audio"])
      result = self.predictor.predict(str(path))
      gates = self.predictor.embed(inputs)
      np.testing.assert_allclose(np.concatenate([gates["audio_gate"][-1], gates["video_gate"][-1]]),
                                 saved["emb_AV"][q], rtol=1e-4, atol=1e-5)
      names = self.predictor.bank.class_names
      for m in ("AO", "VO", "AV"):
        got = [names.index(g[m]["emotion"]) for g in result["gates"]]
        self.assertEqual(got, saved[f"pred_{m}"][:, q].tolist(), f"clip {q} {m}")

  def test_video_only_decoder_matches_media_decode(self):
    path = self.clip("both.mp4", fps=F(30000, 1001), size=(120, 90))
    options = self.predictor.decode_options()
    video, duration = predictor_lib.decode_video(path, options)
    clip = media.decode(path, options=options)
    np.testing.assert_array_equal(video, clip.video)
    self.assertAlmostEqual(duration, clip.duration)

  # ------------------------------------------------------------------ containers and codecs

  def test_containers_rates_sizes_and_channels(self):
    cases = [
        ("c.mp4", dict(container_format="mp4", video_codec="libx264", audio_codec="aac",
                       fps=F(30000, 1001), size=(128, 72), audio_rate=44100, channels=2)),
        ("c.mkv", dict(container_format="matroska", video_codec="libvpx-vp9", audio_codec="flac",
                       fps=F(15), size=(80, 60), audio_rate=32000, channels=1)),
        ("c.webm", dict(container_format="webm", video_codec="libvpx", audio_codec="libopus",
                        fps=F(24), size=(96, 64), audio_rate=48000, channels=2)),
        ("c.avi", dict(container_format="avi", video_codec="mpeg4", audio_codec="libmp3lame",
                       fps=F(50), size=(64, 64), audio_rate=16000, channels=2,
                       video_options={"qscale": "1"})),
    ]
    for name, kwargs in cases:
      with self.subTest(name):
        path = self.clip(name, seconds=2.2, tone_hz=660.0, **kwargs)
        inputs = self.predictor.preprocess(path)
        self.assertAlmostEqual(inputs["duration"], 2.2, delta=0.1)
        self.assertEqual(inputs["video"].shape, (4, 8, 16, 16, 3))   # 16-pixel centre crop
        self.assertEqual(inputs["audio"].shape, (4, 22050))
        # Audio at the model's rate: the 660 Hz tone stays at 660 Hz.
        self.assertAlmostEqual(dominant_hz(inputs["audio"][0], 22050), 660.0, delta=3.0)
        # Video at the model's fps: window k's first frame shows time k * 0.5 s.
        for k, start in enumerate(inputs["starts"][:3]):
          expected = 20 + 200 * start / 2.2
          self.assertAlmostEqual(float(inputs["video"][k, 0, :, :, 1].mean()), expected, delta=12)
        # Whole frame resized, then the centre crop: red left, blue right.
        first = inputs["video"][0, 0].astype(int)
        self.assertGreater(first[:, 2, 0].mean() - first[:, 2, 2].mean(), 100)
        self.assertGreater(first[:, -3, 2].mean() - first[:, -3, 0].mean(), 100)
        result = self.predictor.predict(path)
        self.assertEqual(result["modalities"], ["AO", "VO", "AV"])
        self.assertEqual(result["num_valid_gates"], 4)
        for m in ("AO", "VO", "AV"):
          scores = result["prediction"][m]["scores"]
          self.assertAlmostEqual(sum(scores.values()), 1.0, places=5)
          self.assertEqual(max(scores, key=scores.get), result["prediction"][m]["emotion"])

  def test_real_crema_d_flvs(self):
    folder = helpers.require_samples("crema_d") / "VideoFlash"
    files = sorted(str(p) for p in folder.glob("*.flv"))
    self.assertNotEmpty(files)
    code, out, err = run_main(["--workdir", self.workdir, "--json", *files])
    self.assertEqual(code, predict.EXIT_OK, err)
    results = [json.loads(line) for line in out.splitlines()]
    self.assertLen(results, len(files))
    for path, result in zip(files, results):
      clip = media.decode(path, options=self.predictor.decode_options())
      self.assertEqual(result["file"], path)
      self.assertTrue(result["ok"] and result["has_audio"] and result["has_video"])
      self.assertAlmostEqual(result["duration"], clip.duration, places=3)
      expected_valid = int(np.sum(self.predictor.window_spec().valid_fraction(clip.duration) > 0))
      self.assertEqual(result["num_valid_gates"], expected_valid)

  # ------------------------------------------------------------------ degraded input

  def test_file_without_audio_gives_vo_only(self):
    path = self.clip("silent.mp4", with_audio=False)
    code, out, err = run_main(["--workdir", self.workdir, path])
    self.assertEqual(code, predict.EXIT_OK, err)
    self.assertIn("no audio stream: VO results only", out)
    self.assertNotRegex(out, r"\bAO\b|\bAV\b")
    result = self.predictor.predict(path)
    self.assertEqual(result["modalities"], ["VO"])
    self.assertFalse(result["has_audio"])
    self.assertEqual(set(result["prediction"]), {"VO"})
    # VO does not depend on the (absent) audio: the same video with a tone gives the same VO.
    with_audio = self.predictor.predict(self.clip("loud.mp4", with_audio=True))
    self.assertEqual([g["VO"] for g in result["gates"]], [g["VO"] for g in with_audio["gates"]])

  def test_audio_file_with_cover_art_gives_ao_only(self):
    # An MP3's attached picture is a video stream to FFmpeg, one still frame: it must not
    # be read as the clip's video (VO / AV from a still, gates 2..T without audio).
    path = self.media_dir / "cover.mp3"
    with av.open(str(path), "w") as out:
      audio = out.add_stream("mp3", rate=16000)
      audio.layout = "mono"
      cover = out.add_stream("mjpeg")
      cover.width = cover.height = 64
      cover.pix_fmt = "yuvj420p"
      cover.disposition = av.stream.Disposition.attached_pic
      image = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")
      for packet in [*cover.encode(image.reformat(format="yuvj420p")), *cover.encode()]:
        out.mux(packet)
      t = np.arange(3 * 16000) / 16000
      frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                         format="fltp", layout="mono")
      frame.sample_rate = 16000
      for packet in [*audio.encode(frame), *audio.encode()]:
        out.mux(packet)
    with av.open(str(path)) as container:    # FFmpeg does see a video stream
      self.assertLen(container.streams.video, 1)
      self.assertEqual(media.video_streams(container), [])
    with self.assertRaisesRegex(media.MediaError, "no video stream \\(only a still cover image\\)"):
      media.decode(path)
    result = self.predictor.predict(str(path))
    self.assertEqual(result["modalities"], ["AO"])
    self.assertFalse(result["has_video"])
    self.assertIn("no video stream: AO results only", result["notes"])
    self.assertAlmostEqual(result["duration"], 3.0, delta=0.1)
    expected_valid = int(np.sum(self.predictor.window_spec().valid_fraction(result["duration"]) > 0))
    self.assertEqual(result["num_valid_gates"], expected_valid)
    self.assertGreater(expected_valid, 1)

  def test_apex_window_without_audio_is_centred_and_says_so(self):
    # A one-window `_apex` model places its window at the loudest L s, found in the audio;
    # a file without audio gets the centred window, and a note.
    apex = predictor_lib.Predictor.__new__(predictor_lib.Predictor)
    apex.__dict__.update(self.predictor.__dict__)
    apex.meta = json.loads(json.dumps(self.predictor.meta))
    apex.meta["window"].update(num_windows=1, length=1.0, overlap=0.0, mode="apex")
    note = "no audio stream: the centred window, not the loudest"
    silent = apex.preprocess(self.clip("apex_silent.mp4", seconds=3.0, with_audio=False))
    self.assertIn(note, silent["notes"])
    self.assertAlmostEqual(float(silent["starts"][0]), 1.0, delta=0.05)   # (3 - 1) / 2
    loud = apex.preprocess(self.clip("apex_loud.mp4", seconds=3.0))
    self.assertNotIn(note, loud["notes"])

  def test_clip_shorter_than_the_windows(self):
    path = self.clip("short.webm", seconds=0.6, container_format="webm", video_codec="libvpx",
                     audio_codec="libopus", audio_rate=48000, fps=F(24))
    result = self.predictor.predict(path)
    valid = [g["valid"] for g in result["gates"]]
    self.assertEqual(valid, [True, True, False, False])      # windows start at 0, 0.5, 1, 1.5 s
    self.assertEqual(result["num_valid_gates"], 2)
    self.assertIsNone(result["gates"][2]["AV"])
    self.assertEqual(result["prediction"]["AV"]["gate"], 2)
    self.assertLess(result["gates"][1]["valid_fraction"], 0.2)
    self.assertIn("invalid", predict.format_table(result))

  def test_bad_files_fail_alone_with_one_line(self):
    good = self.clip("good.mp4")
    truncated = self.media_dir / "truncated.mp4"
    data = pathlib.Path(good).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = self.media_dir / "notes.mkv"
    text.write_text("not a video\n")
    missing = str(self.media_dir / "missing.flv")
    still = self.media_dir / "frame.png"           # a still image is not a 0.04 s clip
    with av.open(str(still), "w", format="image2") as c:
      s = c.add_stream("png")
      s.width, s.height, s.pix_fmt = 16, 16, "rgb24"
      for packet in list(s.encode(av.VideoFrame.from_ndarray(
          np.zeros((16, 16, 3), np.uint8), format="rgb24"))) + list(s.encode()):
        c.mux(packet)
    code, out, err = run_main(["--workdir", self.workdir, "--json", str(truncated), good, str(text),
                               missing, str(still)])
    self.assertEqual(code, predict.EXIT_FAILED)
    lines = err.strip().splitlines()
    self.assertLen(lines, 4, err)
    for line, name in zip(lines, (truncated, text, missing, still)):
      self.assertTrue(line.startswith(f"avjax.predict: {name}: "), line)
    self.assertIn("not a video: a still image", lines[3])
    self.assertNotIn("Traceback", err)
    results = [json.loads(line) for line in out.splitlines()]
    self.assertEqual([r["ok"] for r in results], [False, True, False, False, False])
    self.assertEqual(set(results[1]), JSON_KEYS)
    self.assertEqual(set(results[0]), {"file", "ok", "error"})

  # ------------------------------------------------------------------ command line

  def test_json_and_table_output(self):
    path = self.clip("table.mkv", container_format="matroska", video_codec="libvpx-vp9",
                     audio_codec="flac", audio_rate=22050)
    code, out, err = run_main(["--workdir", self.workdir, "--json", "--checkpoint=latest", path])
    self.assertEqual(code, predict.EXIT_OK, err)
    (result,) = [json.loads(line) for line in out.splitlines()]
    self.assertEqual(set(result), JSON_KEYS)
    self.assertEqual(result["model"]["fold"], 0)
    self.assertEqual(result["model"]["step"], 2)
    self.assertEqual(result["class_names"], list(self.config.dataset.class_names))
    self.assertEqual(set(result["gates"][0]), {"gate", "start", "valid_fraction", "valid",
                                               "AO", "VO", "AV"})
    self.assertEqual(set(result["gates"][0]["AV"]), {"emotion", "scores"})
    table = predict.format_table(result)
    self.assertEqual(len(table.splitlines()), 1 + 1 + 4 * 3 + 1)  # title, header, rows, verdict
    self.assertIn(result["prediction"]["AV"]["emotion"], table.splitlines()[-1])

  def test_usage_errors_exit_2(self):
    good = self.clip("usage.mp4")
    no_bank = os.path.join(self.tmp, "no_bank")
    os.makedirs(no_bank, exist_ok=True)
    shutil.copy(os.path.join(self.workdir, "config.json"), no_bank)
    cases = {
        "no files": ["--workdir", self.workdir],
        "bad flag": ["--workdir", self.workdir, "--frobnicate", good],
        "bad checkpoint": ["--workdir", self.workdir, "--checkpoint=oldest", good],
        "missing workdir": ["--workdir", os.path.join(self.tmp, "nowhere"), good],
        "no workdir flag": [good],
        "not a workdir": ["--workdir", self.media_dir.as_posix(), good],
        "no bank": ["--workdir", no_bank, good],
        "fold without bank": ["--workdir", self.workdir, "--fold=3", good],
        "fold that does not exist": ["--workdir", self.workdir, "--fold=99", good],
        "best without validation metrics": ["--workdir", self.workdir, "--checkpoint=best", good],
    }
    for name, argv in cases.items():
      with self.subTest(name):
        code, out, err = run_main(argv)
        self.assertEqual(code, predict.EXIT_USAGE, err)
        self.assertEqual(out, "")
        self.assertNotIn("Traceback", err)
        self.assertTrue(err.strip(), name)
        if name == "fold that does not exist":
          self.assertIn("the folds with a reference bank are [0, 1]", err)

  def test_evaluate_command_line_errors(self):
    # avjax.evaluate on the shared workdir: a fold without checkpoints and a malformed
    # fold list are one error line each, and nothing is created (the workdir is read-only).
    cases = {"--folds=5": (1, "fold(s) [5] have no checkpoints (trained folds: [0, 1])"),
             "--folds=0,x": (2, "--folds=0,x: expected comma-separated test folds")}
    procs = {flag: subprocess.Popen([sys.executable, "-m", "avjax.evaluate",
                                     f"--workdir={self.workdir}", flag],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for flag in cases}
    for flag, proc in procs.items():
      _, err = proc.communicate(timeout=300)
      status, message = cases[flag]
      self.assertEqual(proc.returncode, status, err)
      self.assertIn(message, err)
      self.assertNotIn("Traceback", err)
    self.assertFalse(os.path.exists(os.path.join(self.workdir, "fold_5")))

  def test_best_step_reads_the_saved_validation_accuracy(self):
    class Manager:
      def __init__(self, metrics):
        self._metrics = metrics
      def all_steps(self):
        return sorted(self._metrics)
      def metrics(self, step):
        return self._metrics[step]
    self.assertEqual(train_state.best_step(Manager({10: None, 20: {"validation_accuracy": 0.5},
                                                30: {"validation_accuracy": 0.7}, 40: None})), 30)
    self.assertEqual(train_state.best_step(Manager({20: {"validation_accuracy": 0.7},
                                                30: {"validation_accuracy": 0.7}})), 30)
    self.assertIsNone(train_state.best_step(Manager({10: None, 20: {}})))

  def test_bank_from_another_step_is_refused(self):
    workdir = os.path.join(self.tmp, "stale")
    shutil.copytree(self.workdir, workdir)
    bank_path = os.path.join(workdir_lib.fold_dir(workdir, 0), workdir_lib.REFERENCE_BANK)
    with np.load(bank_path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["step"] = 1
    arrays["step"], arrays["meta"] = np.asarray(1, np.int64), np.asarray(json.dumps(meta))
    workdir_lib.write_npz(bank_path, arrays)
    code, out, err = run_main(["--workdir", workdir, self.clip("stale.mp4")])
    self.assertEqual(code, predict.EXIT_USAGE)
    self.assertIn("step 1", err)
    self.assertIn("python -m avjax.evaluate", err)
    # A fold with a bank but no checkpoints: refused, and no empty checkpoints/ is left
    # behind (it would make the fold look trained to avjax.evaluate).
    checkpoints = workdir_lib.checkpoint_dir(workdir_lib.fold_dir(workdir, 0))
    shutil.move(checkpoints, checkpoints + ".away")
    code, out, err = run_main(["--workdir", workdir, self.clip("stale.mp4")])
    self.assertEqual(code, predict.EXIT_USAGE, err)
    self.assertIn("has not been trained", err)
    self.assertFalse(os.path.exists(checkpoints))
    shutil.move(checkpoints + ".away", checkpoints)
    # A truncated bank (a BadZipFile inside numpy) is a one-line usage error too.
    data = pathlib.Path(bank_path).read_bytes()
    pathlib.Path(bank_path).write_bytes(data[: len(data) // 3])
    code, out, err = run_main(["--workdir", workdir, self.clip("stale.mp4")])
    self.assertEqual(code, predict.EXIT_USAGE, err)
    self.assertIn("cannot read the reference bank", err)
    self.assertNotIn("Traceback", err)

  def test_face_crop(self):
    # Without OpenCV: a usage error with the pip command.
    with mock.patch.dict(sys.modules, {"cv2": None}):
      code, _, err = run_main(["--workdir", self.workdir, "--face-crop", self.clip("face.mp4")])
    self.assertEqual(code, predict.EXIT_USAGE)
    self.assertIn("pip install", err)
    # With it (the `face` extra, installed by `make`): the detector finds the face.
    folder = helpers.require_samples("crema_d") / "VideoFlash"
    path = str(sorted(folder.glob("*.flv"))[0])
    box = face_crop.face_box(path)
    self.assertIsNotNone(box)
    x, y, w, h = box
    self.assertEqual(w, h)
    self.assertLess(w, 360)                                      # a face, not the whole frame
    result = predictor_lib.Predictor(self.workdir, face_crop=True).predict(path)
    self.assertTrue(any(n.startswith("face crop") for n in result["notes"]))

  def test_command_line_exit_status(self):
    good = self.clip("cli.mp4")
    proc = subprocess.run(
        [sys.executable, "-m", "avjax.predict", f"--workdir={self.workdir}", good,
         str(self.media_dir / "absent.mp4")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    self.assertEqual(proc.returncode, predict.EXIT_FAILED, proc.stderr)
    self.assertIn(f"avjax.predict: {self.media_dir / 'absent.mp4'}: file not found", proc.stderr)
    self.assertNotIn("Traceback", proc.stderr)
    self.assertIn("prediction (gate 4", proc.stdout)


_GROUPS = """
import importlib.util, json
import numpy as np
spec = importlib.util.spec_from_file_location("speaker_clips", "scripts/speaker_clips.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
out = []
for n, k in ((60, 2), (60, 7), (60, 60), (5, 10), (61, 20)):
  cut = module.groups(list(range(n)), k, np.random.default_rng(0))
  out.append([sorted(len(g) for g in cut), sorted(i for g in cut for i in g) == list(range(n))])
print(json.dumps(out))
"""


class SpeakerClipsScriptTest(absltest.TestCase):

  def test_groups_cover_every_clip_once(self):
    # scripts/speaker_clips.py predicts each group of K clips of a speaker as one
    # --same_speaker call: every clip must be scored once, a remainder joining the last
    # group. In a child process: the script defines absl flags.
    out = subprocess.run([sys.executable, "-c", _GROUPS], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    self.assertEqual(got, [[[2] * 30, True], [[7] * 7 + [11], True], [[60], True], [[5], True],
                           [[20, 20, 21], True]])


if __name__ == "__main__":
  absltest.main()
