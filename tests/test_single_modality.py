"""Single-modality paths (Table II's AO and VO rows), trained and evaluated end to end.

* `audio_lstm` / `audio_global` on RAVDESS read the audio-only builder configs
  (`audio_<windowing>`), built here from RAVDESS-named WAVs alone: the real
  ones in ../shared/samples/ravdess (stereo one included) plus generated ones.
* `audio_lstm` with `model.trunk='frozen'` on the same WAVs (cached SoundNet
  features, avjax.feature_store);
* `video_lstm` / `video_global` on the shared synthetic set (`tests.helpers`)
  read the audio-visual records and skip the audio.

Each config trains a tiny model for a few steps on fold 0's training folds and
is evaluated on fold 0; the checks are on what single-modality training must
do (no MSE term, triplets active, only that modality's encoder trained and
reported), not on accuracy.
"""

import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import soundfile
from absl.testing import absltest
from absl.testing import parameterized

from avjax import config_lib
from avjax import config_tokens
from avjax import evaluate
from avjax import parallel
from avjax.data import tfds_access
from tests import helpers
from avjax import train
from avjax import workdir as workdir_lib

_TMP = None


def setUpModule():
  global _TMP
  _TMP = tempfile.mkdtemp(prefix="avjax_single_")


def tearDownModule():
  shutil.rmtree(_TMP, ignore_errors=True)


def _ravdess_audio_manual_dir() -> pathlib.Path:
  """Actor_XX/03-01-EE-II-SS-RR-AA.wav for all 24 actors and 8 emotions, 1.6 s each."""
  root = pathlib.Path(_TMP) / "ravdess_audio"
  if root.exists():
    return root
  rng = np.random.default_rng(0)
  rate = 16000
  t = np.arange(int(1.6 * rate)) / rate
  for actor in range(1, 25):
    folder = root / f"Actor_{actor:02d}"
    folder.mkdir(parents=True)
    for emotion in (1 + actor % 8, 1 + (actor + 4) % 8):
      tone = 0.3 * np.sin(2 * np.pi * (150 * emotion) * t) + 0.01 * rng.normal(size=t.shape)
      soundfile.write(folder / f"03-01-{emotion:02d}-01-01-01-{actor:02d}.wav",
                      tone.astype(np.float32), rate, subtype="PCM_16")
  # The real files where present (their actors' generated twins are replaced).
  try:
    samples = helpers.require_samples("ravdess")
  except absltest.SkipTest:
    return root
  for wav in sorted(pathlib.Path(samples).glob("03-01-*.wav")):
    actor = int(wav.stem.split("-")[-1])
    shutil.copy(wav, root / f"Actor_{actor:02d}" / wav.name)
  return root


def _audio_config(variant: str):
  c = helpers.tiny_synthetic_config(max_steps=2)
  config_tokens.set_dataset(c, "ravdess")
  # The 1 s global window (not the 3 s default) keeps the build and the step small.
  windowing = "w1_l1_no_fit" if variant == "global" else "w2_l1_ov"
  config_tokens.apply_args(c, f"{windowing},audio_{variant}")
  c.dataset.data_dir = os.path.join(_TMP, "tfds")
  c.dataset.manual_dir = str(_ravdess_audio_manual_dir())
  c.input.clips_per_class = 2
  c.eval.figures = False
  return c


def _video_config(variant: str):
  c = helpers.tiny_synthetic_config(max_steps=2)
  config_tokens.apply_args(c, f"video_{variant}")
  c.dataset.data_dir = helpers.synthetic_data_dir(c.dataset.config)   # shared, 80 clips
  c.input.crop_size = 16   # the smallest crop I3D takes: the video encoder's compile dominates
  c.eval.figures = False
  return c


class SingleModalityTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("audio_lstm", "audio", "lstm"), ("audio_global", "audio", "global"),
      ("video_lstm", "video", "lstm"), ("video_global", "video", "global"),
      ("audio_lstm_frozen_trunk", "audio", "lstm", "frozen"))
  def test_trains_and_evaluates_one_modality(self, modality, variant, trunk="finetune"):
    config = _audio_config(variant) if modality == "audio" else _video_config(variant)
    config.model.trunk = trunk     # 'frozen': cached SoundNet features of the real WAVs
    config_lib.validate(config)
    workdir = tempfile.mkdtemp(dir=_TMP)
    fold_dir = workdir_lib.fold_dir(workdir, 0)
    state, model = train.train_fold(config, fold_dir, test_fold=0)
    self.assertEqual(int(state.step), 2)

    builder = tfds_access.get_builder(config)
    if modality == "audio":
      # Read from the audio-only records, which have no video at all.
      self.assertEqual(builder.builder_config.name, "audio_" + config.dataset.config)
      self.assertNotIn("video", builder.info.features)
    if trunk == "frozen":   # only the head (and the LSTM) trained
      self.assertEqual(set(state.params["audio_encoder"]), {"Embedding"})
    # Only this modality's encoder (and LSTM) exists.
    top = set(state.params)
    self.assertTrue(top, "no parameters")
    other = "video" if modality == "audio" else "audio"
    self.assertFalse([k for k in top if k.lower().startswith(other)], top)

    # The log: triplet loss only (no MSE), with active triplets.
    logs = [json.loads(l) for l in open(os.path.join(fold_dir, "metrics.jsonl"))]
    train_logs = [l for l in logs if "loss" in l]
    self.assertNotEmpty(train_logs)
    for line in train_logs:
      self.assertEqual(line["mse"], 0.0)
      self.assertAlmostEqual(line["loss"], line["triplet"], places=5)
    self.assertGreater(max(l["active_triplets"] for l in train_logs), 0)

    arrays = evaluate.evaluate_fold(config, state, model, 0, fold_dir, parallel.make_mesh())
    key = {"audio": "AO", "video": "VO"}[modality]
    self.assertEqual(sorted(k for k in arrays if k.startswith("pred_")), [f"pred_{key}"])
    num_windows = 1 if variant == "global" else 2 if modality == "audio" else 4
    self.assertEqual(arrays[f"pred_{key}"].shape, (num_windows, len(arrays["labels"])))
    info = json.load(open(os.path.join(fold_dir, "fold_info.json")))
    self.assertEqual((info["modalities"], info["variant"]), (modality, variant))
    ids = tfds_access.clip_ids(config, [0])
    self.assertEqual(list(arrays["clip_id"]), ids)


if __name__ == "__main__":
  absltest.main()
