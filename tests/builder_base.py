"""The base of the dataset builder tests (tests/test_builder_*.py).

`BuilderTestCase` builds one builder config once per test class from the manual_dir that
the subclass writes (`make_manual_dir`), reads every fold's records by clip id, removes
the directory afterwards, and checks a builder's manual_dir errors the same way for every
dataset (`assert_manual_dir_errors`).
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile

import numpy as np
import tensorflow_datasets as tfds
from absl.testing import absltest

from avjax.data import builder_lib
from avjax.data import folds as folds_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def prepare(builder, manual_dir=None, **download_config):
  """`builder.download_and_prepare` from `manual_dir`; returns the builder."""
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, **download_config))
  return builder


def records_by_clip(builder, num_folds: int = 10) -> dict:
  """Every record of the builder's folds, keyed by its decoded clip id."""
  records = {}
  for k in range(num_folds):
    src = builder.as_data_source(f"fold{k}")
    for i in range(len(src)):
      r = src[i]
      records[r["clip_id"].decode()] = r
  return records


def dominant_hz(x: np.ndarray, rate: int) -> float:
  """The frequency of the largest bin of the Hann-windowed spectrum of `x`."""
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return float(np.argmax(spectrum) * rate / len(x))


class BuilderTestCase(absltest.TestCase):
  """One prepared builder per test class: `cls.builder`, `cls.records`, `cls.root`,
  `cls.manual`, `cls.data_dir`. Subclasses set `lib` (the builder module) and `CONFIG`,
  and write their manual_dir in `make_manual_dir`."""

  lib = None            # the dataset's builder module (its Builder, genders())
  CONFIG = ""           # the builder config prepared once per class
  NUM_WORKERS = 1
  SAMPLES = None        # a folder of the real samples that the manual_dir needs, or None
  HOMEPAGE = ""         # what every manual_dir error names (where to get the data)

  @classmethod
  def make_manual_dir(cls, root: pathlib.Path) -> pathlib.Path:
    raise NotImplementedError

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    if cls.SAMPLES is not None:
      from tests import helpers
      cls.samples = pathlib.Path(helpers.require_samples(cls.SAMPLES))
    cls.root = pathlib.Path(tempfile.mkdtemp())
    cls.manual = cls.make_manual_dir(cls.root)
    cls.data_dir = cls.root / "data"
    cls.builder = prepare(cls.lib.Builder(config=cls.CONFIG, data_dir=cls.data_dir,
                                          num_workers=cls.NUM_WORKERS), cls.manual)
    cls.records = records_by_clip(cls.builder)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def assert_manual_dir_errors(self, cases, config: str):
    """Each (manual_dir, message) fails before anything is written, with a ManualDirError
    holding the message and the dataset's homepage."""
    for manual, message in cases:
      data_dir = pathlib.Path(tempfile.mkdtemp()) / ("data_" + pathlib.Path(manual).name)
      builder = self.lib.Builder(config=config, data_dir=data_dir, num_workers=1)
      with self.assertRaises(builder_lib.ManualDirError, msg=str(manual)) as cm:
        prepare(builder, manual)
      self.assertIn(message, str(cm.exception))
      self.assertIn(self.HOMEPAGE, str(cm.exception))
      self.assertFalse(data_dir.exists(), "nothing is written before the manual_dir is checked")

  def assert_readme_fold_table(self):
    """The dataset's README prints the fold table that the builder assigns."""
    folder = pathlib.Path(self.lib.__file__).parent
    self.assertIn(folds_lib.fold_table(self.lib.genders()), (folder / "README.md").read_text())
