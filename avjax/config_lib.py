"""Shared configuration: the base ConfigDict, its completion and validation.

Every file under `configs/` builds on `get_base_config()`, sets its dataset and applies
its `arg` tokens (`avjax.config_tokens`). `complete()` fills every derived default of a
config (also one recorded by an earlier build, `compat.RECORDED_BEFORE`); `validate()` refuses
unknown values and impossible combinations at start-up, naming the field. The model's
vocabulary is in `avjax.choices`, the trunk mini-language in `avjax.trunks`, the
datasets and the fold policy in `avjax.data.registry`, the recorded protocol's diff and
hash in `avjax.protocol`.
"""

from __future__ import annotations

import copy

import ml_collections

from avjax import __version__
from avjax import choices
from avjax import compat
from avjax import run_spec
from avjax import trunks
from avjax.data import folds as folds_lib
from avjax.data import registry
from avjax.data import windows


def fig5_groups(config) -> dict[str, tuple[str, ...]]:
  """The class-name groups of the paper's Fig. 5 (positive / negative emotions)."""
  return {"positive": tuple(config.eval.positive_classes),
          "negative": tuple(config.eval.negative_classes)}


def _cache_on_device(value) -> ml_collections.FieldReference:
  """`input.cache_on_device`'s field: a bool or 'auto' (a field of one type would refuse
  the other; a string from the command line, 'true' / 'false' / 'auto', is read as such)."""
  if isinstance(value, str) and value.strip().lower() in ("true", "false", "auto"):
    value = {"true": True, "false": False, "auto": "auto"}[value.strip().lower()]
  return ml_collections.FieldReference("auto" if value is None else value, field_type=object)


def _parallel_folds(value) -> ml_collections.FieldReference:
  """`train.parallel_folds`' field: a number of folds or 'all' (from the command line, a
  string of digits is read as the number)."""
  if isinstance(value, str) and value.strip().isdigit():
    value = int(value.strip())
  return ml_collections.FieldReference(value, field_type=object)


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
  c.dataset.class_names = registry.DATASETS["synthetic_av"]["class_names"]

  c.input = ml_collections.ConfigDict()
  c.input.clips_per_class = 5       # training batch = clips_per_class x num_classes, class-balanced
  c.input.crop_size = 96            # random crop in training, centre crop at test (paper: 96x96 of 112x112)
  c.input.random_flip = True        # one horizontal flip draw per batch
  # Gaussian noise std (audio in [-1, 1]), one draw per batch: about 28 dB under the median
  # RAVDESS clip's speech (0.005, the default before 2026-12-07, was 8 dB under it).
  c.input.audio_noise_std = 0.0005
  c.input.pitch_shift_semitones = 1.0  # max |pitch shift|, drawn once per batch (0 disables)
  c.input.speed_range = 0.1         # speed factor drawn from [1 - r, 1 + r] once per batch (0 disables)
  c.input.eval_batch_size = 32      # clips per evaluation batch (any size: padded and masked to the device count)
  c.input.num_workers = 0           # grain worker processes (0: in the main process)
  c.input.prefetch = 2              # batches prepared ahead of the device
  # Keep the whole training set in accelerator memory (`avjax.device_data`): True,
  # False, or 'auto' (a cached trunk's features when they take at most 2 GiB, media
  # never: decided at run time). Any of the three, from a config file or the command line.
  c.input.cache_on_device = _cache_on_device("auto")
  # model.trunk other than 'finetune': augmented views per clip computed into the
  # feature store besides the clean one (centre crop, no audio augmentation); each
  # view has one crop / flip / speed / pitch / noise draw for all clips, and
  # training draws one of the 1 + K views per batch for the whole batch.
  c.input.cached_views = 0
  # model.trunk other than 'finetune': subtract from every clip's cached features the
  # mean feature of its actor over all of that actor's clips (no label is read), and
  # with speaker_scaling divide them by the actor's std too (per-speaker
  # z-normalisation). A clip's features then depend on the other clips of its actor,
  # the test actor's included: NOT the paper's protocol, labelled wherever its numbers
  # appear; inference needs several clips of the speaker (avjax.predict).
  c.input.speaker_centering = False
  c.input.speaker_scaling = False

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
  # BatchNorm running-average momentum (flax's: the fraction kept per step) of each
  # encoder's BatchNorm when it trains with batch statistics (freeze_bn=False; the centred
  # heads keep 0.9): each network's own, I3D's 0.999 as its Sonnet checkpoint,
  # SoundNet's 0.9 as Torch's 0.1 (avjax.models.i3d / soundnet BN_MOMENTUM).
  c.model.video_bn_momentum = 0.999
  c.model.audio_bn_momentum = 0.9
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
  # SoundNet's fresh head: the layer it pools over time ('conv7', the paper's; above an
  # earlier one nothing is built) and how: 'mean', or 'mean_std' (the mean and the std
  # over time, concatenated; not the paper's).
  c.model.audio_head_layer = "conv7"
  c.model.audio_head_stats = "mean"
  # SoundNet's fresh head: subtract the mean of its input (the pooled layer; the batch mean
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
  c.loss.exclude_used = True        # MWTSM; False: no exclusion (batch-hard with 'hardest')
  # Windows wholly past a clip's end (window_valid == 0) take no part in the loss or
  # the miner, the LSTMs pass them unchanged (training, evaluation, predict) and the
  # training noise is not added to the audio padding. False: every window counts as
  # real data and the noise covers the padding (avjax before 2026-12-01; for ablation).
  c.loss.mask_padded_windows = True
  # The triplets' distance: 'squared' Euclidean (the paper's reading) or 'euclidean'
  # (non-squared, as Hermans et al. 2017), in the miner's score and the hinges.
  c.loss.distance = "squared"
  # Warm-up: for the first E epochs each modality's triplet term is batch-all (the mean
  # hinge over every valid triplet, `losses.batch_all_hinges`), then MWTSM. E is this
  # fraction of train.num_epochs rounded down to whole epochs (`run_spec.warmup_epochs`): the
  # default, half of training, follows the epochs. 0: MWTSM from the first step (the
  # paper's reading, `paper_literal`); 1: batch-all throughout. Not in the paper: it
  # keeps hardest-triplet mining from collapsing the embeddings on real audio
  # (docs/experiments.md).
  c.loss.batch_all_fraction = 0.5
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
  # Test folds trained side by side as one program (a number, or 'all'): each group's
  # train states stacked and one vmapped step for all (avjax.fold_group), on the data of
  # every fold held on the device (a cached trunk's features; with 'finetune' the media,
  # input.cache_on_device=True). Every fold's batches are those of the fold trained
  # alone, its result up to float reassociation. 1: one at a time.
  c.train.parallel_folds = _parallel_folds(1)

  c.eval = ml_collections.ConfigDict()
  c.eval.k = 15                     # KNN neighbours
  c.eval.chunk_size = 1024          # queries per distance block (bounds memory)
  c.eval.figures = True             # write the paper's figures at the end
  # Write fold_k/reference_bank.npz (training gate embeddings) for avjax.predict:
  # about 33 MB per fold on RAVDESS, 130 MB on CREMA-D (docs/results_schema.md).
  c.eval.reference_bank = True
  c.eval.positive_classes = registry.DATASETS["synthetic_av"]["fig5"][0]  # Fig. 5 groups (class names)
  c.eval.negative_classes = registry.DATASETS["synthetic_av"]["fig5"][1]
  return c


# config.json records the avjax version that wrote it (`workdir.save_config`); a config
# without one was written by 0.1.0 and is read with compat.RECORDED_BEFORE.
VERSION_FIELD = "avjax_version"


def _version_tuple(version: str) -> tuple[int, ...]:
  try:
    return tuple(int(x) for x in str(version).split(".")[:3])
  except ValueError:
    raise ValueError(f"{VERSION_FIELD}: {version!r} is not a version like 0.2.0") from None


def _merge(base: dict, over: dict) -> dict:
  out = dict(base)
  for key, value in over.items():
    if isinstance(value, dict) and isinstance(out.get(key), dict):
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out


def complete(config, recorded: bool = False) -> ml_collections.ConfigDict:
  """`config` (a ConfigDict or dict, possibly partial: a test's, or a config.json
  written by an older avjax) with every field it lacks taken from
  `get_base_config()`. Its own values, and fields the base does not know, are kept.
  The library reads fields directly (no `.get(field, default)`): run a partial
  config through here first. With `recorded` (a workdir's config.json) the fields
  of compat.RECORDED_BEFORE that it lacks get their former behaviour's value instead."""
  over = copy.deepcopy(config.to_dict() if isinstance(config, ml_collections.ConfigDict)
                       else dict(config))
  version = over.pop(VERSION_FIELD, None)
  if version is not None and _version_tuple(version) > _version_tuple(__version__):
    raise ValueError(f"a config recorded by avjax {version}, newer than this avjax "
                     f"{__version__}: upgrade avjax to read it")
  base = get_base_config().to_dict()
  # 0.1.0 set the warm-up by `batch_all_epochs` too: read as the fraction of its epochs.
  epochs = over.get("loss", {}).pop("batch_all_epochs", None)
  if epochs is not None:
    num_epochs = int(over.get("train", {}).get("num_epochs", base["train"]["num_epochs"]))
    over["loss"]["batch_all_fraction"] = min(1.0, int(epochs) / max(num_epochs, 1))
  # 0.1.0's one `model.bn_momentum` (None: each encoder's own) set both encoders'.
  momentum = over.get("model", {}).pop("bn_momentum", None)
  if momentum is not None:
    over["model"]["video_bn_momentum"] = over["model"]["audio_bn_momentum"] = float(momentum)
  if recorded and version is None:   # written by avjax 0.1.0, which did not say its version
    for (group, field), value in compat.RECORDED_BEFORE.items():
      over.setdefault(group, {}).setdefault(field, value)
  merged = _merge(base, over)
  if merged["optim"].get("trunk_lr_scale") is None:
    merged["optim"]["trunk_lr_scale"] = trunks.default_trunk_lr_scale(merged["model"]["trunk"],
                                                                merged["model"]["pretrained"])
  # 0.1.0 wrote 'auto' as None; either way one field that takes a bool or 'auto'.
  merged["input"]["cache_on_device"] = _cache_on_device(merged["input"]["cache_on_device"])
  merged["train"]["parallel_folds"] = _parallel_folds(merged["train"]["parallel_folds"])
  # The audio-video MSE term exists in the gating model only (`losses.compute_loss`).
  if merged["model"]["variant"] != "gating":
    merged["loss"]["mse_weight"] = 0.0
  # `dataset.num_folds` (configs of earlier versions) is gone: the builders fix 10 folds.
  old = merged.get("dataset", {}).pop("num_folds", folds_lib.NUM_FOLDS)
  if old != folds_lib.NUM_FOLDS:
    raise ValueError(f"config.dataset.num_folds = {old}: the field is gone and only "
                     f"{folds_lib.NUM_FOLDS} folds exist (the builders' splits fold0 ... fold9); "
                     "choose the test folds to run with config.folds")
  return ml_collections.ConfigDict(merged)


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
    "model.audio_width": "> 0", "model.video_bn_momentum": "[0, 1)",
    "model.audio_bn_momentum": "[0, 1)",
    "loss.margin": ">= 0", "loss.mse_weight": ">= 0", "loss.triplet_weight": ">= 0",
    "loss.batch_all_fraction": "[0, 1]",
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
    if value is None and field == "optim.trunk_lr_scale":   # complete() resolves it
      continue
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      fail(field, f"{value!r} is not a number")
    if not _in_range(value, spec):
      fail(field, f"{value} must be {spec}")
  cache = config.input.cache_on_device
  if not (isinstance(cache, bool) or cache == "auto"):
    fail("input.cache_on_device", f"{cache!r} is not True, False or 'auto'")
  group = config.train.parallel_folds
  if group != "all" and (isinstance(group, bool) or not isinstance(group, int) or group < 1):
    fail("train.parallel_folds", f"{group!r} is not a number of folds (>= 1) or 'all'")
  if config.dataset.name not in registry.DATASETS:
    fail("dataset.name", f"{config.dataset.name!r} is not one of {tuple(registry.DATASETS)}")
  try:
    spec = windows.parse_name(config.dataset.config)
  except ValueError as e:
    fail("dataset.config", str(e))
  records = config.dataset.records
  if records not in registry.RECORDS:
    fail("dataset.records", f"{records!r} is not one of {registry.RECORDS}")
  if records == "audio" and config.model.modalities != "audio":
    fail("dataset.records", f"audio-only records have no video; model.modalities is "
         f"{config.model.modalities!r} (use 'audio', or dataset.records='av')")
  if records == "audio" and not registry.DATASETS.get(config.dataset.name, {}).get("audio_records", False):
    fail("dataset.records", f"{config.dataset.name} has no audio-only builder configs")
  choices.check_model_choice(config.model.variant, config.model.modalities)
  try:
    derived = run_spec.of(config)
  except ValueError as e:   # the trunk mini-language's errors name model.trunk
    fail("model.trunk", str(e).split(": ", 1)[1])
  if derived.builder_config not in registry.builder_config_names(config.dataset.name):
    windowings = [n for n in registry.builder_config_names(config.dataset.name)
                  if not n.startswith(registry.AUDIO_CONFIG_PREFIX)]
    fail("dataset.config", f"{config.dataset.name} has no builder config "
         f"{derived.builder_config!r}; its windowings are {windowings}")
  if config.model.variant == "global" and spec.num_windows != 1:
    fail("dataset.config", f"the 'global' variant takes one window, one of "
         f"{registry.DATASETS[config.dataset.name]['global_windowings']}; got {config.dataset.config!r}")
  if config.model.variant != "global" and spec.num_windows == 1:
    fail("dataset.config", f"{config.dataset.config!r} is one window (a `global` windowing); "
         f"'{config.model.variant}' needs several: add the `global` token, or another windowing")
  for field, allowed in (("model.dtype", choices.DTYPES), ("model.conv_impl", choices.CONV_IMPLS),
                         ("model.audio_head_layer", trunks.SOUNDNET_CUTS),
                         ("model.audio_head_stats", choices.AUDIO_HEAD_STATS),
                         ("loss.distance", choices.DISTANCES), ("loss.negatives", choices.NEGATIVES)):
    value = config[field.split(".")[0]][field.split(".")[1]]
    if value not in allowed:
      fail(field, f"{value!r} is not one of {allowed}")
  if config.model.pretrained and (config.model.video_width != 1.0 or config.model.audio_width != 1.0):
    fail("model.pretrained", "pretrained weights need video_width = audio_width = 1.0")
  if config.model.pretrained and config.model.video_last_block != "Mixed_5c":
    fail("model.pretrained", "pretrained weights need model.video_last_block = 'Mixed_5c'")
  if group != 1 and config.input.cache_on_device is False:
    fail("train.parallel_folds", "trains folds side by side on data held on the device: "
         "input.cache_on_device must be True (or 'auto' for a cached trunk)")
  if group != 1 and not derived.cached and config.input.cache_on_device is not True:
    fail("train.parallel_folds", "with model.trunk='finetune' the media of every fold are "
         "held on the device: set input.cache_on_device=True (RAVDESS with video: about 12 GB)")
  if not derived.cached and config.input.cached_views:
    fail("input.cached_views", "is for the cached-feature trunks (model.trunk 'frozen' or "
         "'finetune_from:...'); with 'finetune' the media are augmented at every step")
  layers = trunks.SOUNDNET_CUTS
  cut = derived.trunk_inputs.get("audio")
  if cut in layers and layers.index(cut) > layers.index(config.model.audio_head_layer):
    fail("model.audio_head_layer", f"{config.model.audio_head_layer!r} is below the cut of "
         f"model.trunk={config.model.trunk!r}: the layers trained would not reach the head")
  if not derived.cached and config.input.speaker_centering:
    fail("input.speaker_centering", "centres cached features (model.trunk 'frozen' or "
         "'finetune_from:...'); with 'finetune' no feature is cached")
  if config.input.speaker_scaling and not config.input.speaker_centering:
    fail("input.speaker_scaling", "divides the speaker-centred features: it needs "
         "input.speaker_centering=True (or set input.speaker_scaling=False too)")
  if config.optim.name not in ("adam", "adamw"):
    fail("optim.name", f"{config.optim.name!r} is not 'adam' or 'adamw'")
  folds = tuple(config.folds)
  if not folds or any(type(f) is not int or not 0 <= f < folds_lib.NUM_FOLDS for f in folds):
    fail("folds", f"{folds} must be a non-empty subset of 0..{folds_lib.NUM_FOLDS - 1} (the "
         f"builders' {folds_lib.NUM_FOLDS} subject-independent folds, splits fold0 ... fold9)")
  if len(set(folds)) != len(folds):
    fail("folds", f"{folds} repeats a fold")
  choice = str(config.train.validation_fold).strip().lower()
  if choice not in ("none", "next"):
    fixed = registry._fold_number(config.train.validation_fold)   # raises naming the field
    if fixed in folds:
      fail("train.validation_fold", f"fold {fixed} is also a test fold in config.folds {folds}; "
           "a fixed validation fold cannot be tested (use 'next')")




# Names that config files written for earlier builds call here, and what replaced them.
_MOVED = {"apply_args": "avjax.config_tokens.apply_args",
          "set_dataset": "avjax.config_tokens.set_dataset",
          "RECIPES": "avjax.config_tokens.RECIPES", "PAPER_LITERAL": "avjax.config_tokens.PAPER_LITERAL",
          "DATASETS": "avjax.data.registry.DATASETS",
          "builder_config_name": "avjax.run_spec.of(config).builder_config",
          "warmup_epochs": "avjax.run_spec.of(config).warmup_epochs",
          "VARIANTS": "avjax.choices.VARIANTS", "MODALITIES": "avjax.choices.MODALITIES",
          "trunk_inputs": "avjax.trunks.trunk_inputs", "config_hash": "avjax.protocol.config_hash",
          "RECORDED_BEFORE": "avjax.compat.RECORDED_BEFORE"}


def __getattr__(name: str):
  if name in _MOVED:
    raise AttributeError(f"avjax.config_lib.{name} is gone: use {_MOVED[name]} "
                         "(CHANGELOG.md, 0.2.0)")
  raise AttributeError(f"module 'avjax.config_lib' has no attribute {name!r}")
