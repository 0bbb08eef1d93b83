"""Shared configuration: the base ConfigDict, variant parsing and validation.

Every file under `configs/` builds on `get_base_config()` and accepts an `arg`
string (`--config=configs/ravdess.py:w4_l1_ov,audio_lstm`) parsed by
`apply_args()`. Tokens, comma-separated:

* a windowing name, ``w{T}_l{L}_{ov|no}[_fit]`` (a row of the paper's Table I),
  sets ``dataset.config``;
* a model variant: ``gating`` (the paper), ``lstm``, ``global``, or a
  single-modality one, ``audio_lstm``, ``audio_global``, ``video_lstm``,
  ``video_global``. ``global`` models take one window: the dataset's first
  ``global_windowings`` unless a one-window windowing token names another;
  Audio-only models (``audio_lstm``, ``audio_global``) read the dataset's
  audio-only records (builder config ``audio_<windowing>``, built from the
  audio archives alone) unless ``dataset.records`` says otherwise
  (`builder_config_name`);
* ``runlocal``: tiny batches and few epochs, for a smoke run on a laptop;
* ``cpu``: the recipe for a 2-core CPU (`CPU`: frozen trunks with four cached
  augmented views of each clip), instead of the paper's end-to-end fine-tuning;
* ``no_mwtsm``: ``loss.exclude_used=False``, the miner may pick a triplet already
  used at an earlier window. With ``paper_literal`` it is the paper's batch-hard
  ablation; under the default recipe it gives semi-hard mining after the batch-all
  warm-up;
* the training recipe, each token setting all of its fields (`RECIPES`):
  ``paper_literal``: the paper's recipe read literally (`PAPER_LITERAL`: squared
  distances, MWTSM's hardest triplets from the first step, the paper's audio head,
  the weight decay as L2 in Adam's gradient);
  ``semihard``: that with MWTSM restricted to semi-hard triplets (``loss.negatives``);
  ``centered_semihard``: ``semihard`` plus ``model.center_audio_head``;
  ``warmup_semihard``: ``centered_semihard`` after a batch-all warm-up over the first
  half of training (``loss.batch_all_fraction`` = 0.5 of ``train.num_epochs``), with
  decoupled weight decay (``optim.name='adamw'``). This is the default: the reading
  that learns on the real-audio development set, where ``paper_literal`` collapses
  (docs/experiments.md).

Unknown tokens and impossible combinations raise ``ValueError`` naming the
field, at start-up (`validate`).
"""

from __future__ import annotations

import copy
import hashlib
import json

import ml_collections

from avjax.data import folds as folds_lib
from avjax.data import windows

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

# The one owner of the model's choices (models, losses and evaluation read them here).
VARIANTS = ("gating", "lstm", "global")
MODALITIES = ("av", "audio", "video")
DTYPES = ("float32", "bfloat16")
# How the encoders' convolutions are computed (avjax.models.conv): 'auto' picks per
# layer and backend the form measured fastest; 'xla' / 'matmul' force one form.
CONV_IMPLS = ("auto", "xla", "matmul")
DISTANCES = ("squared", "euclidean")   # loss.distance
NEGATIVES = ("hardest", "semihard")    # loss.negatives (avjax.mining checks it too)
# What evaluation reports per `model.modalities`, and the gate embeddings of each.
GATE_MODALITIES = {"av": ("AO", "VO", "AV"), "audio": ("AO",), "video": ("VO",)}
# The encoder branches of each `model.modalities` value.
BRANCHES = {"av": ("audio", "video"), "audio": ("audio",), "video": ("video",)}
MODALITY_KEYS = {"AO": ("audio_gate",), "VO": ("video_gate",), "AV": ("audio_gate", "video_gate")}


def check_model_choice(variant: str, modalities: str, where: str = "config.model") -> None:
  """Raises ValueError for an unknown variant or modalities, or `gating` without both."""
  if variant not in VARIANTS:
    raise ValueError(f"{where}.variant: {variant!r} is not one of {VARIANTS}")
  if modalities not in MODALITIES:
    raise ValueError(f"{where}.modalities: {modalities!r} is not one of {MODALITIES}")
  if variant == "gating" and modalities != "av":
    raise ValueError(f"{where}.modalities: the 'gating' variant needs both modalities ('av'), "
                     f"got {modalities!r}; use 'lstm' or 'global' for one modality")


def gate_modalities(config) -> tuple[str, ...]:
  """AO / VO / AV: the embeddings evaluation reports for this model."""
  return GATE_MODALITIES[config.model.modalities]


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


def fig5_groups(config) -> dict[str, tuple[str, ...]]:
  """The class-name groups of the paper's Fig. 5 (positive / negative emotions)."""
  return {"positive": tuple(config.eval.positive_classes),
          "negative": tuple(config.eval.negative_classes)}


def global_windowing(dataset: str) -> str:
  """The default window of the `global` variant on `dataset`."""
  return DATASETS[dataset]["global_windowings"][0]


def get_base_config() -> ml_collections.ConfigDict:
  """The default settings: the paper's network, data, protocol and optimiser values, with
  the default recipe `warmup_semihard`, which departs from the paper in four named ways
  (batch-all warm-up, semi-hard MWTSM, centred audio head, decoupled weight decay;
  `paper_literal` restores the literal reading; docs/design.md). Dataset files override
  the dataset block."""
  c = ml_collections.ConfigDict()
  c.seed = 0                      # one seed; init, data order and augmentation derive from it
  # Test folds to run, each trained on the other nine and written to
  # `workdir/fold_{k}`; results are aggregated over those run.
  c.folds = tuple(range(10))

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "synthetic_av"   # TFDS builder: 'ravdess', 'crema_d_av' or 'synthetic_av'
  c.dataset.config = "w4_l1_ov"     # builder config = windowing (see avjax/data/windows.py)
  c.dataset.data_dir = ""           # TFDS data_dir; '' means $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.dataset.manual_dir = ""         # official files (real datasets only); '' means <data_dir>/downloads/manual
  # Which records to read: 'av' (the audio-visual builder configs), 'audio' (the
  # audio-only `audio_<windowing>` configs, built from the audio archives alone),
  # or 'auto': audio-only records for audio-only models where the dataset has them.
  c.dataset.records = "auto"
  c.dataset.build = True            # build the dataset first if it is missing (needs manual_dir for real data)
  # Build and use only the folds whose actors' files are present (e.g. two actor zips
  # of 24), the others left out. NOT the paper's protocol: for a first try.
  c.dataset.allow_missing_folds = False
  c.dataset.class_names = DATASETS["synthetic_av"]["class_names"]

  c.input = ml_collections.ConfigDict()
  c.input.clips_per_class = 5       # training batch = clips_per_class x num_classes, class-balanced
  c.input.crop_size = 96            # random crop in training, centre crop at test (paper: 96x96 of 112x112)
  c.input.random_flip = True        # one horizontal flip draw per batch
  c.input.audio_noise_std = 0.005   # Gaussian noise std (audio in [-1, 1]), one draw per batch
  c.input.pitch_shift_semitones = 1.0  # max |pitch shift|, drawn once per batch (0 disables)
  c.input.speed_range = 0.1         # speed factor drawn from [1 - r, 1 + r] once per batch (0 disables)
  c.input.eval_batch_size = 32      # clips per evaluation batch (any size: padded and masked to the device count)
  c.input.num_workers = 0           # grain worker processes (0: in the main process)
  c.input.prefetch = 2              # batches prepared ahead of the device
  # Keep the whole training set in accelerator memory (`avjax.device_data`): True,
  # False, or None ('auto': a cached trunk's features when they take at most 2 GiB,
  # media never).
  c.input.cache_on_device = ml_collections.config_dict.placeholder(bool)
  # model.trunk other than 'finetune': augmented views per clip computed into the
  # feature store besides the clean one (centre crop, no audio augmentation); each
  # view has one crop / flip / speed / pitch / noise draw for all clips, and
  # training draws one of the 1 + K views per batch for the whole batch.
  c.input.cached_views = 0

  c.model = ml_collections.ConfigDict()
  c.model.variant = "gating"        # 'gating' (paper), 'lstm' (per-modality LSTMs), 'global' (one window)
  c.model.modalities = "av"         # 'av', 'audio' or 'video'
  c.model.embed_dim = 400           # encoder output size (Kinetics class space for I3D)
  c.model.lstm_hidden = 400         # LSTM hidden units per modality
  c.model.pretrained = True         # load Kinetics-400 I3D and SoundNet-8 weights
  c.model.freeze_bn = True          # use stored BN statistics in training (small batches)
  c.model.dtype = "float32"         # compute dtype, 'float32' or 'bfloat16' (parameters stay float32)
  c.model.remat = False             # rematerialise I3D blocks in the backward pass
  c.model.video_width = 1.0         # channel multiplier of I3D (1.0 for pretrained weights)
  c.model.audio_width = 1.0         # channel multiplier of SoundNet-8 (1.0 for pretrained weights)
  # I3D's last layer before its head: 'Mixed_5c' (the paper's network). An earlier
  # endpoint ('Mixed_3b', ...) makes a shallow random-weight I3D that compiles fast,
  # for tests only.
  c.model.video_last_block = "Mixed_5c"
  # Convolution form (avjax.models.conv): 'auto' (per layer and backend, the form
  # measured fastest; on CPU im2col + matmul for I3D and SoundNet's conv6/conv7),
  # 'xla' or 'matmul'. Same parameters and results: checkpoints work under any.
  c.model.conv_impl = "auto"
  # BatchNorm running-average momentum (flax's: the fraction kept per step) of both
  # encoders when they train with batch statistics (freeze_bn=False). None: each
  # network's own (I3D 0.999 as its Sonnet checkpoint, SoundNet 0.9 as Torch's 0.1).
  c.model.bn_momentum = ml_collections.config_dict.placeholder(float)
  # What of the pretrained encoders trains. 'finetune' (the paper's recipe: every
  # layer, end to end, from the raw media). 'frozen': the trunks (SoundNet conv1-conv7,
  # I3D up to Mixed_5c) are fixed; their pooled outputs are computed once per clip and
  # window into a feature store (avjax.feature_store) and only the heads and LSTMs
  # train: NOT the paper's recipe, labelled 'frozen trunks' wherever its numbers
  # appear. 'finetune_from:<endpoint>[+<endpoint>]' (e.g. 'finetune_from:conv4'):
  # the layers up to that endpoint (one per encoder in use: a SoundNet layer
  # conv1-conv7, an I3D endpoint before Mixed_5c) are fixed and cached, the layers
  # above it train from their pretrained weights.
  c.model.trunk = "finetune"
  # SoundNet's fresh head: subtract the mean of its input (pooled conv7; the batch mean
  # in training, a running mean in evaluation) before the Embedding layer. Not in the
  # paper. Post-ReLU features are almost all positive, which makes Adam move the head's
  # output along one direction shared by every clip until the LSTM saturates (docs/experiments.md). Part of the default recipe that learns on real audio;
  # False: the paper's head (`paper_literal`).
  c.model.center_audio_head = True
  # The same for I3D's Logits head (pooled Mixed_5c, post-ReLU too). With pretrained
  # weights the Kinetics logits layer then sees centred inputs: its bias no longer
  # matches them (the embeddings shift by a constant, which distances ignore).
  c.model.center_video_head = False

  c.loss = ml_collections.ConfigDict()
  c.loss.margin = 1.0               # triplet margin on squared Euclidean distances
  c.loss.mse_weight = 1.0           # weight of the audio-video MSE term (gating only)
  c.loss.triplet_weight = 1.0       # weight of the triplet term
  c.loss.exclude_used = True        # MWTSM; False = plain batch-hard mining (ablation)
  # Windows wholly past a clip's end (window_valid == 0) take no part in the loss or
  # the miner, the LSTMs pass them unchanged (training, evaluation, predict) and the
  # training noise is not added to the audio padding. False: every window counts as
  # real data and the noise covers the padding (avjax 0.1.0; for ablation).
  c.loss.mask_padded_windows = True
  # The triplets' distance: 'squared' Euclidean (the paper's reading) or 'euclidean'
  # (non-squared, as Hermans et al. 2017), in the miner's score and the hinges.
  c.loss.distance = "squared"
  # Warm-up: for the first E epochs each modality's triplet term is batch-all (the mean
  # hinge over every valid triplet, `losses.batch_all_hinges`), then MWTSM. E is
  # `batch_all_epochs` when set, else `batch_all_fraction` x train.num_epochs rounded
  # down to whole epochs (`warmup_epochs`): the default, half of training, follows the
  # epochs. 0 (either field): MWTSM from the first step (the paper's reading,
  # `paper_literal`). Not in the paper: it keeps hardest-triplet mining from
  # collapsing the embeddings on real audio (docs/experiments.md).
  c.loss.batch_all_fraction = 0.5
  c.loss.batch_all_epochs = ml_collections.config_dict.placeholder(int)
  # Which triplets the miner may pick: 'hardest' (the paper's reading: the largest
  # d(i,p) - d(i,n)) or 'semihard' (the default, FaceNet [26] §3.2: only triplets
  # whose negative is farther from the anchor than the positive, d(i,p) < d(i,n); the
  # hardest of them).
  c.loss.negatives = "semihard"

  c.optim = ml_collections.ConfigDict()
  # The paper's "Adam optimizer with a 0.001 learning rate, and 0.0005 weight decay", read
  # two ways: 'adamw' (the default: decoupled weight decay, torch.optim.AdamW, each step
  # shrinks the weights by learning_rate x weight_decay) or 'adam' (torch.optim.Adam:
  # the decay added to the gradient as L2, which Adam's normalisation turns into a
  # shrink of about the learning rate per step wherever the loss's gradient is weak:
  # it empties the fresh head and LSTM on real audio; `paper_literal`).
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 5e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  # Learning-rate factor for the pretrained trunks' trainable layers (0 freezes them).
  # None: by model.trunk (`trunk_lr_scale`, resolved by `complete`): 0.01 wherever
  # pretrained trunk layers train ('finetune', 'finetune_from:<endpoint>'; the paper trains
  # every layer at the same rate, 1.0, which memorises the training clips:
  # docs/experiments.md); 1.0 for randomly initialised encoders (model.pretrained=False)
  # and (unused) under 'frozen'.
  c.optim.trunk_lr_scale = ml_collections.config_dict.placeholder(float)

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 100
  c.train.max_steps = 0             # stop after this many steps per fold (0: no limit)
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 200
  c.train.keep_checkpoints = 3      # latest checkpoints kept (the best is kept as well)
  # Model selection. 'none' (the paper: no selection, the last checkpoint is the
  # result, the test fold is never scored during training), 'next' (for test fold
  # k, the next fold with clips is left out of training and scored by KNN against
  # the training folds; the best checkpoint by it is the result) or a fold number
  # (the same validation fold for every test fold; it cannot be one of `folds`).
  c.train.validation_fold = "none"
  c.train.eval_every_epochs = 10    # with a validation fold: score it every n epochs and at the end

  c.eval = ml_collections.ConfigDict()
  c.eval.k = 15                     # KNN neighbours
  c.eval.chunk_size = 1024          # queries per distance block (bounds memory)
  c.eval.figures = True             # write the paper's figures at the end
  # Write fold_k/reference_bank.npz (training gate embeddings) for avjax.predict:
  # about 33 MB per fold on RAVDESS, 130 MB on CREMA-D (docs/results_schema.md).
  c.eval.reference_bank = True
  c.eval.positive_classes = DATASETS["synthetic_av"]["fig5"][0]  # Fig. 5 groups (class names)
  c.eval.negative_classes = DATASETS["synthetic_av"]["fig5"][1]
  return c


def _merge(base: dict, over: dict) -> dict:
  out = dict(base)
  for key, value in over.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out


# Fields added after the first release whose default changed what a run does: a
# recorded config.json that lacks one was trained with the value here.
RECORDED_BEFORE = {("loss", "mask_padded_windows"): False, ("loss", "distance"): "squared",
                   ("loss", "batch_all_epochs"): 0, ("loss", "batch_all_fraction"): 0.0,
                   ("model", "trunk"): "finetune",
                   ("input", "cached_views"): 0, ("loss", "negatives"): "hardest",
                   ("model", "center_audio_head"): False, ("model", "center_video_head"): False,
                   ("optim", "trunk_lr_scale"): 1.0}


def complete(config, recorded: bool = False) -> ml_collections.ConfigDict:
  """`config` (a ConfigDict or dict, possibly partial: a test's, or a config.json
  written by an older avjax) with every field it lacks taken from
  `get_base_config()`. Its own values, and fields the base does not know, are kept.
  The library reads fields directly (no `.get(field, default)`): run a partial
  config through here first. With `recorded` (a workdir's config.json) the fields
  of RECORDED_BEFORE that it lacks get their former behaviour's value instead."""
  over = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  if recorded:
    over = copy.deepcopy(over)
    for (group, field), value in RECORDED_BEFORE.items():
      over.setdefault(group, {}).setdefault(field, value)
  merged = _merge(get_base_config().to_dict(), over)
  if merged["optim"].get("trunk_lr_scale") is None:
    merged["optim"]["trunk_lr_scale"] = _default_trunk_lr_scale(merged["model"]["trunk"],
                                                                merged["model"]["pretrained"])
  # `dataset.num_folds` (configs of earlier versions) is gone: the builders fix 10 folds.
  old = merged.get("dataset", {}).pop("num_folds", folds_lib.NUM_FOLDS)
  if old != folds_lib.NUM_FOLDS:
    raise ValueError(f"config.dataset.num_folds = {old}: the field is gone and only "
                     f"{folds_lib.NUM_FOLDS} folds exist (the builders' splits fold0 ... fold9); "
                     "choose the test folds to run with config.folds")
  return ml_collections.ConfigDict(merged)


# Fields a rerun on an existing workdir may change: they decide how a run executes
# (which test folds, logging, checkpoint cadence, input workers, convolution form,
# where the files are) but not the model, the data or the protocol. Any other
# difference from the recorded config stops the run (`workdir.record_config`).
RUN_ONLY_FIELDS = (
    "folds", "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "input.num_workers", "input.prefetch", "input.eval_batch_size", "input.cache_on_device",
    "model.conv_impl", "model.remat", "eval.figures", "eval.reference_bank", "eval.chunk_size",
    "dataset.data_dir", "dataset.manual_dir", "dataset.build",
)


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def protocol_fields(config) -> dict:
  """The complete config, flattened ('model.variant': ...), without RUN_ONLY_FIELDS."""
  flat = _flatten(complete(config).to_dict())
  return {k: v for k, v in flat.items() if k not in RUN_ONLY_FIELDS}


def config_diff(recorded, config) -> list[tuple[str, object, object]]:
  """[(field, recorded value, new value)] for the protocol fields that differ."""
  a, b = protocol_fields(recorded), protocol_fields(config)
  missing = object()
  return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
          if a.get(k, missing) != b.get(k, missing)]


def config_hash(config) -> str:
  """16 hex digits of the sha256 of the protocol fields (fold_info.json's `config_hash`)."""
  text = json.dumps(protocol_fields(config), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


# The paper's recipe read literally (`paper_literal` config token): squared Euclidean
# distances, MWTSM's hardest triplets from the first step, the paper's heads, and the
# weight decay added to Adam's gradient (torch.optim.Adam).
PAPER_LITERAL = {"loss.distance": "squared", "loss.batch_all_epochs": 0,
                 "loss.batch_all_fraction": 0.0, "loss.negatives": "hardest",
                 "model.center_audio_head": False, "model.center_video_head": False,
                 "optim.name": "adam"}
# The tokens that choose the training recipe, each setting all of its fields (the last
# one wins): the paper's reading plus, cumulatively, semi-hard triplets, the centred
# audio head, and the warm-up over the first half of training with decoupled weight
# decay (= the defaults).
RECIPES = {
    "paper_literal": PAPER_LITERAL,
    "semihard": {**PAPER_LITERAL, "loss.negatives": "semihard"},
    "centered_semihard": {**PAPER_LITERAL, "loss.negatives": "semihard",
                          "model.center_audio_head": True},
    "warmup_semihard": {**PAPER_LITERAL, "loss.negatives": "semihard",
                        "model.center_audio_head": True, "loss.batch_all_epochs": None,
                        "loss.batch_all_fraction": 0.5, "optim.name": "adamw"},
}


# The pretrained layers' learning-rate factor when they train ('finetune' and
# 'finetune_from:<endpoint>'): at the head's full rate they memorise the training
# clips and end below the frozen trunk (docs/experiments.md).
TRUNK_LR_SCALE = 0.01


def _default_trunk_lr_scale(trunk: str, pretrained: bool = True) -> float:
  return TRUNK_LR_SCALE if pretrained and str(trunk) != "frozen" else 1.0


def trunk_lr_scale(config) -> float:
  """`optim.trunk_lr_scale`, or when None its default: 0.01 when pretrained trunk layers
  train ('finetune', 'finetune_from:<endpoint>' with `model.pretrained`), else 1.0
  (randomly initialised encoders, as the demo's, train at the full rate; unused when
  'frozen')."""
  if config.optim.trunk_lr_scale is not None:
    return float(config.optim.trunk_lr_scale)
  return _default_trunk_lr_scale(config.model.trunk, config.model.pretrained)


def warmup_epochs(config) -> int:
  """The batch-all warm-up's length in epochs: `loss.batch_all_epochs` when set,
  else `loss.batch_all_fraction` x `train.num_epochs`, rounded down (a 1-epoch
  `runlocal` run has no warm-up)."""
  if config.loss.batch_all_epochs is not None:
    return int(config.loss.batch_all_epochs)
  return int(float(config.loss.batch_all_fraction) * int(config.train.num_epochs) + 1e-9)


def set_dataset(config: ml_collections.ConfigDict, name: str) -> None:
  info = DATASETS[name]
  config.dataset.name = name
  config.dataset.config = info["table1"][0]
  config.dataset.class_names = info["class_names"]
  config.eval.positive_classes, config.eval.negative_classes = info["fig5"]


def apply_args(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the comma-separated tokens of `arg` (see module docstring)."""
  tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
  windowing = None
  for tok in tokens:
    if tok.startswith("w") and tok[1:2].isdigit():
      windows.parse_name(tok)  # raises with the expected form
      config.dataset.config = windowing = tok
    elif tok in VARIANTS:
      config.model.variant = tok
    elif "_" in tok and tok.split("_", 1)[0] in ("audio", "video") and tok.split("_", 1)[1] in ("lstm", "global"):
      modality, variant = tok.split("_", 1)
      config.model.modalities, config.model.variant = modality, variant
    elif tok == "runlocal":
      config.input.clips_per_class = 2
      config.train.num_epochs = 1
      config.train.max_steps = 5
      config.folds = (0,)
    elif tok == "no_mwtsm":
      config.loss.exclude_used = False
    elif tok == "cpu":
      for field, value in CPU.items():
        group, name = field.split(".")
        config[group][name] = value
    elif tok in RECIPES:
      for field, value in RECIPES[tok].items():
        group, name = field.split(".")
        config[group][name] = value
    else:
      raise ValueError(
          f"Unknown config argument {tok!r}. Expected a windowing (e.g. "
          f"{DATASETS[config.dataset.name]['table1'][0]}), a variant {VARIANTS}, "
          "audio_lstm/audio_global/video_lstm/video_global, 'runlocal', 'no_mwtsm', 'cpu', "
          "'paper_literal', 'semihard', 'centered_semihard' or 'warmup_semihard'.")
  if config.model.variant == "global":
    if windowing is None:
      config.dataset.config = global_windowing(config.dataset.name)
    elif windowing not in DATASETS[config.dataset.name]["global_windowings"]:
      raise ValueError(f"Config argument {windowing!r}: the 'global' variant takes one window, "
                       f"one of {DATASETS[config.dataset.name]['global_windowings']}")
  if config.model.variant != "gating":
    config.loss.mse_weight = 0.0
  return config


TRUNKS = ("finetune", "frozen", "finetune_from:<endpoint>")
FINETUNE_FROM = "finetune_from:"
# The `cpu` token: the recipe for a 2-core CPU (the 10 x 100 protocol of an audio row in
# minutes, not hours). The trunks frozen, with four augmented views of every clip cached
# (`input.cached_views`): on the development folds it is as good as the end-to-end
# fine-tuning tried and as fine-tuning from conv4, at a fraction of their cost
# (docs/experiments.md).
CPU = {"model.trunk": "frozen", "input.cached_views": 4}
POOLED = "pooled"   # the input endpoint of a frozen trunk (the encoders' POOLED)
# Where each encoder can be cut (its layers up to there fixed and cached): SoundNet-8's
# layers, and I3D's endpoints before Mixed_5c (avjax.models.soundnet / i3d).
SOUNDNET_CUTS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7")
I3D_CUTS = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3",
            "MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b",
            "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b")


def trunk_inputs(model) -> dict[str, str | None]:
  """{'audio' / 'video': the encoder's input endpoint} for the modalities of `model`
  (a config's `model` block): None (raw media, 'finetune'), 'pooled' ('frozen') or
  the layer a 'finetune_from:' trunk is cut at. Raises ValueError naming the field."""
  trunk = str(model.trunk)
  mods = BRANCHES[model.modalities]
  if trunk == "finetune":
    return {m: None for m in mods}
  if trunk == "frozen":
    return {m: POOLED for m in mods}
  if not trunk.startswith(FINETUNE_FROM):
    raise ValueError(f"config.model.trunk: {trunk!r} is not one of {TRUNKS}")
  names = [n.strip() for n in trunk[len(FINETUNE_FROM):].replace(",", "+").split("+") if n.strip()]
  out: dict[str, str | None] = {}
  for name in names:
    modality = "audio" if name in SOUNDNET_CUTS else "video" if name in I3D_CUTS else None
    if modality is None:
      raise ValueError(f"config.model.trunk: {name!r} is not a SoundNet-8 layer {SOUNDNET_CUTS} "
                       f"nor an I3D endpoint {I3D_CUTS}")
    if modality not in mods:
      raise ValueError(f"config.model.trunk: {name!r} cuts the {modality} encoder, which "
                       f"model.modalities={model.modalities!r} does not use")
    if modality in out:
      raise ValueError(f"config.model.trunk: two cuts of the {modality} encoder in {trunk!r}")
    out[modality] = name
  missing = [m for m in mods if m not in out]
  if missing:
    raise ValueError(f"config.model.trunk: {trunk!r} names no cut of the {missing[0]} encoder "
                     f"(model.modalities={model.modalities!r}); e.g. 'finetune_from:conv4' "
                     "(SoundNet-8) or 'finetune_from:Mixed_4f' (I3D), joined by '+'")
  return {m: out[m] for m in mods}


def cached(config) -> bool:
  """Whether the encoders' lower layers are cached (model.trunk is not 'finetune')."""
  return str(config.model.trunk) != "finetune"


RECORDS = ("auto", "av", "audio")
AUDIO_CONFIG_PREFIX = "audio_"


def reads_audio_records(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` reads the audio-only builder configs (see `dataset.records`)."""
  records = config.dataset.records
  if records == "auto":
    return (config.model.modalities == "audio"
            and DATASETS.get(config.dataset.name, {}).get("audio_records", False))
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


def builder_config_name(config: ml_collections.ConfigDict) -> str:
  """The TFDS builder config to read: the windowing, prefixed `audio_` for audio-only records."""
  prefix = AUDIO_CONFIG_PREFIX if reads_audio_records(config) else ""
  return prefix + config.dataset.config


# The allowed range of every numeric field ('seed' takes any integer; clips_per_class >= 2
# so that every anchor has a positive): "> 0", ">= 1",
# or an interval "[0, 1)". `validate` checks them all; tests/test_configs.py checks
# that every numeric field of the base config is listed here.
RANGES = {
    "input.clips_per_class": ">= 2", "input.crop_size": ">= 1", "input.audio_noise_std": ">= 0",
    "input.pitch_shift_semitones": ">= 0", "input.speed_range": "[0, 1)",
    "input.eval_batch_size": ">= 1", "input.num_workers": ">= 0", "input.prefetch": ">= 1",
    "input.cached_views": ">= 0",
    "model.embed_dim": ">= 1", "model.lstm_hidden": ">= 1", "model.video_width": "> 0",
    "model.audio_width": "> 0", "model.bn_momentum": "[0, 1)",
    "loss.margin": ">= 0", "loss.mse_weight": ">= 0", "loss.triplet_weight": ">= 0",
    "loss.batch_all_epochs": ">= 0", "loss.batch_all_fraction": "[0, 1]",
    "optim.learning_rate": "> 0", "optim.weight_decay": ">= 0", "optim.b1": "[0, 1)",
    "optim.b2": "[0, 1)", "optim.eps": "> 0", "optim.trunk_lr_scale": ">= 0",
    "train.num_epochs": ">= 1", "train.max_steps": ">= 0", "train.log_every_steps": ">= 1",
    "train.checkpoint_every_steps": ">= 1", "train.keep_checkpoints": ">= 1",
    "train.eval_every_epochs": ">= 0", "eval.k": ">= 1", "eval.chunk_size": ">= 1",
}


def _in_range(value, spec: str) -> bool:
  if spec.startswith("["):
    lo, hi = (float(x) for x in spec.strip("[)]").split(","))
    return lo <= value <= hi if spec.endswith("]") else lo <= value < hi
  op, bound = spec.split()
  return value > float(bound) if op == ">" else value >= float(bound)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the field for unknown values or impossible combinations."""
  def fail(field, msg):
    raise ValueError(f"config.{field}: {msg}")

  for field, spec in RANGES.items():
    group, name = field.split(".")
    value = config[group][name]
    if value is None and field in ("model.bn_momentum", "loss.batch_all_epochs",
                                   "optim.trunk_lr_scale"):
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      fail(field, f"{value!r} is not a number")
    if not _in_range(value, spec):
      fail(field, f"{value} must be {spec}")
  if config.dataset.name not in DATASETS:
    fail("dataset.name", f"{config.dataset.name!r} is not one of {tuple(DATASETS)}")
  try:
    spec = windows.parse_name(config.dataset.config)
  except ValueError as e:
    fail("dataset.config", str(e))
  records = config.dataset.records
  if records not in RECORDS:
    fail("dataset.records", f"{records!r} is not one of {RECORDS}")
  if records == "audio" and config.model.modalities != "audio":
    fail("dataset.records", f"audio-only records have no video; model.modalities is "
         f"{config.model.modalities!r} (use 'audio', or dataset.records='av')")
  if records == "audio" and not DATASETS.get(config.dataset.name, {}).get("audio_records", False):
    fail("dataset.records", f"{config.dataset.name} has no audio-only builder configs")
  if builder_config_name(config) not in builder_config_names(config.dataset.name):
    windowings = [n for n in builder_config_names(config.dataset.name)
                  if not n.startswith(AUDIO_CONFIG_PREFIX)]
    fail("dataset.config", f"{config.dataset.name} has no builder config "
         f"{builder_config_name(config)!r}; its windowings are {windowings}")
  check_model_choice(config.model.variant, config.model.modalities)
  if config.model.variant == "global" and spec.num_windows != 1:
    fail("dataset.config", f"the 'global' variant takes one window, one of "
         f"{DATASETS[config.dataset.name]['global_windowings']}; got {config.dataset.config!r}")
  if config.model.dtype not in DTYPES:
    fail("model.dtype", f"{config.model.dtype!r} is not one of {DTYPES}")
  if config.model.conv_impl not in CONV_IMPLS:
    fail("model.conv_impl", f"{config.model.conv_impl!r} is not one of {CONV_IMPLS}")
  if config.model.pretrained and (config.model.video_width != 1.0 or config.model.audio_width != 1.0):
    fail("model.pretrained", "pretrained weights need video_width = audio_width = 1.0")
  if config.model.pretrained and config.model.video_last_block != "Mixed_5c":
    fail("model.pretrained", "pretrained weights need model.video_last_block = 'Mixed_5c'")
  try:
    trunk_inputs(config.model)
  except ValueError as e:
    fail("model.trunk", str(e).split(": ", 1)[1])
  if not cached(config) and config.input.cached_views:
    fail("input.cached_views", "is for the cached-feature trunks (model.trunk 'frozen' or "
         "'finetune_from:...'); with 'finetune' the media are augmented at every step")
  if config.loss.distance not in DISTANCES:
    fail("loss.distance", f"{config.loss.distance!r} is not one of {DISTANCES}")
  if config.loss.negatives not in NEGATIVES:
    fail("loss.negatives", f"{config.loss.negatives!r} is not one of {NEGATIVES}")
  if config.optim.name not in ("adam", "adamw"):
    fail("optim.name", f"{config.optim.name!r} is not 'adam' or 'adamw'")
  folds = tuple(config.folds)
  if not folds or any(not 0 <= f < folds_lib.NUM_FOLDS for f in folds):
    fail("folds", f"{folds} must be a non-empty subset of 0..{folds_lib.NUM_FOLDS - 1} (the "
         f"builders' {folds_lib.NUM_FOLDS} subject-independent folds, splits fold0 ... fold9)")
  if len(set(folds)) != len(folds):
    fail("folds", f"{folds} repeats a fold")
  choice = str(config.train.validation_fold).strip().lower()
  if choice not in ("none", "next"):
    fixed = _fold_number(config.train.validation_fold)   # raises naming the field
    if fixed in folds:
      fail("train.validation_fold", f"fold {fixed} is also a test fold in config.folds {folds}; "
           "a fixed validation fold cannot be tested (use 'next')")


