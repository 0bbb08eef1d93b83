"""The datasets avjax knows, their builder configs, and the fold policy of a run.

`DATASETS` holds each dataset's facts (class names, the paper's Table I windowings, the
one-window readings of `global`, whether audio-only records exist); `reads_audio_records` says whether a config reads the
audio-only builder configs (`avjax.run_spec` prefixes the windowing); `validation_fold` and `training_folds` say
which folds train and which one selects the checkpoint when a fold is tested.
"""

from __future__ import annotations

from avjax.data import folds as folds_lib


# The readings of the paper's "global" window (one window, no LSTM; builder configs
# w1_l{L}_no_fit: L seconds at the clip's middle, w1_l{L}_no_apex: the L seconds of
# most audio energy). The first, one centred 3 s window (about the whole spoken
# sentence of a RAVDESS clip), is the default: on the development folds it beats the
# 1 s window by 8 points (docs/design.md, docs/experiments.md).
GLOBAL_READINGS = ("w1_l3_no_fit", "w1_l1_no_fit", "w1_l2_no_fit", "w1_l4_no_fit",
                   "w1_l1_no_apex", "w1_l3_no_apex")


# Dataset facts. `table1` lists the windowings of the paper's Table I; the
# first is each dataset's default (its best row). `global_windowings`: the one-window
# builder configs (the `global` variant's); the first is its default.
DATASETS = {
    "ravdess": dict(
        class_names=("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"),
        fig5=(("calm", "happy"), ("sad", "angry", "fearful")),  # the paper's Fig. 5
        table1=("w8_l1_ov", "w2_l1_ov", "w2_l2_ov", "w4_l1_ov", "w6_l1_ov", "w2_l1_no", "w4_l1_no"),
        audio_records=True,  # `audio_<windowing>` configs from Audio_Speech_Actors_01-24.zip
        global_windowings=GLOBAL_READINGS,
    ),
    "crema_d_av": dict(
        class_names=("anger", "disgust", "fear", "happy", "neutral", "sad"),
        fig5=(("happy",), ("sad", "anger", "fear")),
        table1=("w6_l1_ov", "w2_l1_ov", "w4_l1_ov"),
        audio_records=True,  # `audio_<windowing>` configs from AudioWAV/
        global_windowings=GLOBAL_READINGS,
    ),
    "synthetic_av": dict(
        class_names=("class0", "class1", "class2", "class3"),
        fig5=(("class0", "class1"), ("class2", "class3")),
        table1=("w4_l1_ov", "w2_l1_ov"),
        audio_records=False,
        # Its 2 s clips: the 1 s centred window keeps the tests and the demo small.
        global_windowings=("w1_l1_no_fit",),
    ),
}


def validation_fold(config, test_fold: int, nonempty=None) -> int | None:
  """The fold held out for model selection when `test_fold` is tested, or None.

  `config.train.validation_fold`: 'none' (no selection: the last checkpoint is the
  result), 'next' (the first fold after `test_fold`, modulo the fold count, that
  has clips: in `nonempty` when given) or a fold number (as an int or a string).
  Never the test fold."""
  choice = str(config.train.validation_fold).strip().lower()
  if choice == "none":
    return None
  if choice == "next":
    for step in range(1, folds_lib.NUM_FOLDS):
      fold = (test_fold + step) % folds_lib.NUM_FOLDS
      if nonempty is None or fold in nonempty:
        return fold
    raise ValueError(f"config.train.validation_fold='next': no fold other than the test fold "
                     f"{test_fold} has clips")
  fold = _fold_number(config.train.validation_fold)
  if fold == test_fold:
    raise ValueError(f"config.train.validation_fold={fold} is the test fold")
  return fold


def _fold_number(value) -> int:
  try:
    fold = int(str(value).strip())
  except ValueError:
    fold = -1
  if not 0 <= fold < folds_lib.NUM_FOLDS:
    raise ValueError(f"config.train.validation_fold: {value!r} is not 'none', 'next' or a fold "
                     f"number 0..{folds_lib.NUM_FOLDS - 1}")
  return fold


def training_folds(config, test_fold: int, nonempty=None) -> list[int]:
  """Every fold (with clips: in `nonempty` when given) but the held-out `test_fold` and
  its validation fold (if any)."""
  held = {test_fold, validation_fold(config, test_fold, nonempty)}
  return [f for f in range(folds_lib.NUM_FOLDS)
          if f not in held and (nonempty is None or f in nonempty)]


def global_windowing(dataset: str) -> str:
  """The default window of the `global` variant on `dataset`."""
  return DATASETS[dataset]["global_windowings"][0]


RECORDS = ("auto", "av", "audio")


AUDIO_CONFIG_PREFIX = "audio_"


def reads_audio_records(dataset: str, records: str, modalities: str) -> bool:
  """Whether a config of `dataset` with `dataset.records` = `records` and
  `model.modalities` = `modalities` reads the audio-only builder configs ('auto': an
  audio-only model of a dataset that has them). `avjax.run_spec` asks it."""
  if records == "auto":
    return modalities == "audio" and DATASETS.get(dataset, {}).get("audio_records", False)
  return records == "audio"


def builder_config_names(dataset: str) -> list[str]:
  """The builder configs of `dataset`: its Table I windowings, each followed by its `_fit`
  twin, then the one-window (`global`) ones; then all again with the `audio_` prefix when the dataset
  has audio-only records."""
  names = []
  for name in DATASETS[dataset]["table1"]:
    names += [name, name + "_fit"]
  names += list(DATASETS[dataset]["global_windowings"])
  if DATASETS[dataset].get("audio_records", False):
    names += [AUDIO_CONFIG_PREFIX + n for n in names]
  return names
