"""Every config file loads, validates, and rejects what it should."""

import dataclasses
import importlib
import importlib.util
import pathlib

import ml_collections
from absl.testing import absltest
from absl.testing import parameterized

from avjax import config_lib
from avjax import run_spec
from avjax.data import registry

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config_module(name):
  spec = importlib.util.spec_from_file_location(name, CONFIG_DIR / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


class ConfigsTest(parameterized.TestCase):

  @parameterized.parameters("demo", "ravdess", "crema_d")
  def test_default_config_validates(self, name):
    config = load_config_module(name).get_config()
    config_lib.validate(config)
    self.assertEqual(len(config.dataset.class_names),
                     len(registry.DATASETS[config.dataset.name]["class_names"]))

  def test_paper_defaults(self):
    c = load_config_module("ravdess").get_config()
    self.assertEqual(c.dataset.config, "w8_l1_ov")   # best row of Table I
    self.assertEqual(c.optim.learning_rate, 1e-3)
    self.assertEqual(c.optim.weight_decay, 5e-4)
    self.assertEqual(c.loss.margin, 1.0)
    self.assertEqual(c.eval.k, 15)
    self.assertEqual(c.train.num_epochs, 100)
    self.assertEqual(c.input.clips_per_class * len(c.dataset.class_names), 40)
    self.assertEqual(load_config_module("crema_d").get_config().dataset.config, "w6_l1_ov")

  @parameterized.parameters(*registry.DATASETS["ravdess"]["table1"])
  def test_table1_rows(self, windowing):
    c = load_config_module("ravdess").get_config(windowing)
    config_lib.validate(c)
    self.assertEqual(c.dataset.config, windowing)

  def test_variants(self):
    mod = load_config_module("ravdess")
    c = mod.get_config("global")
    config_lib.validate(c)
    self.assertEqual(c.dataset.config, "w1_l3_no_fit")
    # Another reading of the global window by token, in either order; not a T > 1 one.
    for arg in ("audio_global,w1_l1_no_apex", "w1_l1_no_apex,audio_global"):
      c = mod.get_config(arg)
      config_lib.validate(c)
      self.assertEqual(c.dataset.config, "w1_l1_no_apex")
    with self.assertRaisesRegex(ValueError, "'global' variant takes one window"):
      mod.get_config("global,w4_l1_ov")
    c = mod.get_config("global")
    c.dataset.config = "w4_l1_ov"                  # the same by override
    with self.assertRaisesRegex(ValueError, "config.dataset.config: the 'global' variant"):
      config_lib.validate(c)
    self.assertEqual(c.loss.mse_weight, 1.0)                  # the base config's
    self.assertEqual(config_lib.complete(c).loss.mse_weight, 0.0)   # no MSE term outside gating
    c = mod.get_config("w4_l1_no,audio_lstm")
    config_lib.validate(c)
    self.assertEqual((c.model.modalities, c.model.variant, c.dataset.config), ("audio", "lstm", "w4_l1_no"))
    c = mod.get_config("video_global")
    self.assertEqual((c.model.modalities, c.model.variant), ("video", "global"))
    self.assertFalse(mod.get_config("no_mwtsm").loss.exclude_used)
    # `cpu`: frozen trunks, the conv4 mean-and-std head, speaker centring, no cached
    # views, for every dataset and variant, and speaker scaling for the variants with an
    # LSTM, whatever the tokens' order; the paper's defaults without it.
    cpu_fields = lambda c: (c.model.trunk, c.model.audio_head_layer, c.model.audio_head_stats,
                            c.input.speaker_centering, c.input.cached_views)
    for name in ("ravdess", "crema_d"):
      for arg, scaling in (("audio_global,cpu", False), ("cpu,audio_lstm", True),
                           ("audio_lstm,cpu", True), ("cpu", True), ("cpu,global", False)):
        c = load_config_module(name).get_config(arg)
        config_lib.validate(c)
        self.assertEqual(cpu_fields(c), ("frozen", "conv4", "mean_std", True, 0), (name, arg))
        self.assertEqual(c.input.speaker_scaling, scaling, (name, arg))
    self.assertEqual(cpu_fields(mod.get_config()), ("finetune", "conv7", "mean", False, 0))
    self.assertFalse(mod.get_config("audio_lstm").input.speaker_scaling)
    # The normalisation turned off after the token: a config that validates; the scaling
    # alone left on names the field to turn off too.
    c = mod.get_config("audio_lstm,cpu")
    c.input.speaker_centering = False
    with self.assertRaisesRegex(ValueError, "input.speaker_scaling=False"):
      config_lib.validate(c)
    c.input.speaker_scaling = False
    config_lib.validate(c)
    self.assertEqual(tuple(mod.get_config("runlocal").folds), (0,))
    literal = mod.get_config("audio_lstm,centered_semihard,paper_literal")
    config_lib.validate(literal)
    self.assertEqual((literal.loss.distance, run_spec.of(literal).warmup_epochs,
                      literal.loss.negatives, literal.model.center_audio_head,
                      literal.optim.name), ("squared", 0, "hardest", False, "adam"))
    # The recipe tokens set all of their fields: the last one wins, whatever came before.
    learns = mod.get_config("audio_lstm,paper_literal,centered_semihard")
    config_lib.validate(learns)
    self.assertEqual((learns.loss.negatives, learns.model.center_audio_head,
                      run_spec.of(learns).warmup_epochs), ("semihard", True, 0))
    semihard = mod.get_config("warmup_semihard,semihard")
    self.assertEqual((semihard.loss.negatives, semihard.model.center_audio_head,
                      run_spec.of(semihard).warmup_epochs), ("semihard", False, 0))
    # The defaults are `warmup_semihard`: semi-hard MWTSM, the centred audio head and a
    # batch-all warm-up over half of the epochs, which follows the epochs set later.
    default, warm = mod.get_config("audio_lstm"), mod.get_config("audio_lstm,warmup_semihard")
    for c in (default, warm):
      config_lib.validate(c)
      self.assertEqual((c.loss.negatives, c.model.center_audio_head, c.loss.distance,
                        run_spec.of(c).warmup_epochs, c.optim.name, c.optim.weight_decay),
                       ("semihard", True, "squared", 50, "adamw", 5e-4))
      c.train.num_epochs = 7
      self.assertEqual(run_spec.of(c).warmup_epochs, 3)
    self.assertEqual(run_spec.of(mod.get_config("runlocal")).warmup_epochs, 0)   # 1 epoch
    # 0.1.0's batch_all_epochs is read as the fraction of the recorded epochs.
    old = mod.get_config().to_dict()
    old["loss"].pop("batch_all_fraction")
    old["loss"]["batch_all_epochs"], old["train"]["num_epochs"] = 30, 80
    recorded = config_lib.complete(old, recorded=True)
    self.assertEqual(run_spec.of(recorded).warmup_epochs, 30)
    self.assertNotIn("batch_all_epochs", recorded.loss)
    # The trunks' learning-rate factor follows model.trunk unless set.
    for trunk, scale in (("finetune", 0.01), ("frozen", 1.0), ("finetune_from:conv4", 0.01)):
      c = mod.get_config("audio_lstm")
      c.model.trunk = trunk
      self.assertIsNone(c.optim.trunk_lr_scale)
      self.assertEqual(config_lib.complete(c).optim.trunk_lr_scale, scale)
      c.optim.trunk_lr_scale = 0.1
      self.assertEqual(config_lib.complete(c).optim.trunk_lr_scale, 0.1)
      # Randomly initialised encoders (the demo's) train at the full rate.
      c.optim.trunk_lr_scale = None
      c.model.pretrained = False
      self.assertEqual(config_lib.complete(c).optim.trunk_lr_scale, 1.0)
    self.assertEqual(config_lib.complete(load_config_module("demo").get_config()).optim.trunk_lr_scale,
                     1.0)
    for field, value in (("batch_all_fraction", 1.5), ("batch_all_fraction", -0.1)):
      bad = mod.get_config()
      bad.loss[field] = value
      with self.assertRaisesRegex(ValueError, f"config.loss.{field}"):
        config_lib.validate(bad)

  @parameterized.parameters(
      # (config file, arg, records, expected builder config)
      ("ravdess", "audio_lstm", "auto", "audio_w8_l1_ov"),
      ("ravdess", "audio_global", "auto", "audio_w1_l3_no_fit"),
      ("ravdess", "w4_l1_no,audio_lstm", "auto", "audio_w4_l1_no"),
      ("ravdess", "audio_lstm", "av", "w8_l1_ov"),          # audio model on the AV records
      ("ravdess", "video_lstm", "auto", "w8_l1_ov"),
      ("ravdess", None, "auto", "w8_l1_ov"),
      ("crema_d", "audio_lstm", "auto", "audio_w6_l1_ov"),
      ("crema_d", "audio_global", "audio", "audio_w1_l3_no_fit"),
      ("demo", "audio_lstm", "auto", "w4_l1_ov"),           # the synthetic set has no audio-only configs
  )
  def test_builder_config_name(self, name, arg, records, expected):
    c = load_config_module(name).get_config(arg)
    c.dataset.records = records
    config_lib.validate(c)
    self.assertEqual(run_spec.of(c).builder_config, expected)

  def test_unknown_argument_fails_naming_it(self):
    with self.assertRaisesRegex(ValueError, "'bogus'"):
      load_config_module("ravdess").get_config("bogus")
    with self.assertRaisesRegex(ValueError, "w8_l1_x"):
      load_config_module("ravdess").get_config("w8_l1_x")
    # Two tokens that each choose the model: the result would depend on their order.
    for arg in ("audio_lstm,global", "lstm,audio_global", "audio_lstm,video_lstm"):
      with self.assertRaisesRegex(ValueError, "each choose the model; give one"):
        load_config_module("ravdess").get_config(arg)
    self.assertEqual(load_config_module("ravdess").get_config("audio_lstm,audio_lstm").model.variant,
                     "lstm")

  @parameterized.named_parameters(
      ("gating_audio", "model.modalities", lambda c: setattr(c.model, "modalities", "audio")),
      ("bad_variant", "model.variant", lambda c: setattr(c.model, "variant", "transformer")),
      ("bad_dtype", "model.dtype", lambda c: setattr(c.model, "dtype", "float16")),
      ("narrow_pretrained", "model.pretrained", lambda c: setattr(c.model, "video_width", 0.5)),
      ("one_clip", "input.clips_per_class", lambda c: setattr(c.input, "clips_per_class", 1)),
      ("bad_fold", "folds", lambda c: setattr(c, "folds", (0, 10))),
      ("bool_fold", "folds", lambda c: setattr(c, "folds", (True,))),     # `--config.folds=True`
      ("text_fold", "folds", lambda c: setattr(c, "folds", ("a",))),
      ("bad_dataset", "dataset.name", lambda c: setattr(c.dataset, "name", "iemocap")),
      ("bad_windowing", "dataset.config", lambda c: setattr(c.dataset, "config", "eight")),
      ("bad_records", "dataset.records", lambda c: setattr(c.dataset, "records", "wav")),
      ("audio_records_with_video", "dataset.records",
       lambda c: setattr(c.dataset, "records", "audio")),
      ("global_many_windows", "dataset.config",
       lambda c: (setattr(c.model, "variant", "global"), setattr(c.dataset, "config", "w8_l1_ov"))),
      ("lstm_one_window", "dataset.config",
       lambda c: (setattr(c.model, "variant", "lstm"), setattr(c.dataset, "config", "w1_l3_no_fit"))),
      ("gating_one_window", "dataset.config", lambda c: setattr(c.dataset, "config", "w1_l1_no_apex")),
      ("bad_validation_fold", "train.validation_fold",
       lambda c: setattr(c.train, "validation_fold", "first")),
      ("validation_fold_is_tested", "train.validation_fold",
       lambda c: setattr(c.train, "validation_fold", "3")),
      ("bn_momentum_one", "model.audio_bn_momentum",
       lambda c: setattr(c.model, "audio_bn_momentum", 1.0)),
      ("windowing_not_built", "dataset.config",
       lambda c: setattr(c.dataset, "config", "w3_l1_ov")),   # valid name, no builder config
  )
  def test_impossible_combination_names_field(self, field, mutate):
    c = load_config_module("ravdess").get_config()
    mutate(c)
    with self.assertRaisesRegex(ValueError, f"config.{field}"):
      config_lib.validate(c)



class MovedNamesTest(absltest.TestCase):

  def test_a_moved_name_says_where_it_is(self):
    """A config file written for an earlier build (config_lib.apply_args) is told where
    the name went; an unknown name is a plain AttributeError."""
    from avjax import config_tokens
    with self.assertRaisesRegex(AttributeError, r"config_lib\.apply_args is gone: use "
                                r"avjax\.config_tokens\.apply_args"):
      config_lib.apply_args  # noqa: B018
    fields = {f.name for f in dataclasses.fields(run_spec.RunSpec)}
    for name, where in config_lib._MOVED.items():
      if "(config)." in where:   # a fact of the RunSpec
        call, field = where.split("(config).")
        module, fn = call.rsplit(".", 1)
        self.assertTrue(callable(getattr(importlib.import_module(module), fn)), where)
        self.assertIn(field, fields, where)
      else:
        module, attr = where.rsplit(".", 1)
        self.assertTrue(hasattr(importlib.import_module(module), attr), where)
    self.assertTrue(callable(config_tokens.apply_args))
    with self.assertRaisesRegex(AttributeError, "has no attribute 'no_such_name'"):
      config_lib.no_such_name  # noqa: B018


class RangesTest(absltest.TestCase):

  def test_every_numeric_field_has_a_range_that_validate_checks(self):
    base = config_lib.get_base_config()
    placeholders = {"optim.trunk_lr_scale": float}   # None by default: complete() resolves it
    numeric = [f"{g}.{k}" for g, sub in base.items() if isinstance(sub, ml_collections.ConfigDict)
               for k, v in sub.items()
               if (isinstance(v, (int, float)) and not isinstance(v, bool))
               or f"{g}.{k}" in placeholders]
    # A number or 'all': validate checks it apart (tests/test_fold_group.py).
    numeric.remove("train.parallel_folds")
    self.assertEqual(sorted(numeric), sorted(config_lib.RANGES))
    for field, spec in config_lib.RANGES.items():
      group, name = field.split(".")
      if spec.startswith("["):
        hi = float(spec.strip("[)]").split(",")[1])
        bad = [-0.5, hi + 0.5 if spec.endswith("]") else hi]
      else:
        bound = float(spec.split()[1])
        bad = [bound if spec.startswith(">") and not spec.startswith(">=") else bound - 1]
      for value in bad:
        c = config_lib.get_base_config()
        c[group][name] = placeholders.get(field, type(base[group][name]))(value)
        with self.assertRaisesRegex(ValueError, f"config.{field}"):
          config_lib.validate(c)
    config_lib.validate(config_lib.get_base_config())

  def test_zero_checkpoint_interval_is_refused(self):   # formerly a ZeroDivisionError
    c = config_lib.get_base_config()
    c.train.checkpoint_every_steps = 0
    with self.assertRaisesRegex(ValueError, "config.train.checkpoint_every_steps: 0 must be >= 1"):
      config_lib.validate(c)


class FoldsTest(absltest.TestCase):

  def test_validation_fold_choices(self):
    c = config_lib.get_base_config()
    self.assertIsNone(registry.validation_fold(c, 4))
    self.assertEqual(registry.training_folds(c, 4), [0, 1, 2, 3, 5, 6, 7, 8, 9])
    c.train.validation_fold = "next"
    self.assertEqual(registry.validation_fold(c, 4), 5)
    self.assertEqual(registry.validation_fold(c, 9), 0)                 # modulo the folds
    self.assertEqual(registry.validation_fold(c, 9, nonempty={3, 5, 9}), 3)  # with clips
    self.assertEqual(registry.training_folds(c, 9), [1, 2, 3, 4, 5, 6, 7, 8])
    with self.assertRaisesRegex(ValueError, "no fold other than"):
      registry.validation_fold(c, 2, nonempty={2})
    c.train.validation_fold = "7"
    self.assertEqual(registry.validation_fold(c, 0), 7)
    self.assertEqual(registry.training_folds(c, 0), [1, 2, 3, 4, 5, 6, 8, 9])
    with self.assertRaisesRegex(ValueError, "is the test fold"):
      registry.validation_fold(c, 7)
    c.folds = (0, 1)
    config_lib.validate(c)
    recorded = config_lib.complete(dict(c.to_dict(), train=dict(c.train.to_dict(), validation_fold=7)))
    self.assertEqual(registry.validation_fold(recorded, 0), 7)      # an int (from JSON) too

  def test_num_folds_is_gone(self):
    old = config_lib.get_base_config().to_dict()
    old["dataset"]["num_folds"] = 10                 # a config.json of an earlier version
    self.assertNotIn("num_folds", config_lib.complete(old).dataset)
    old["dataset"]["num_folds"] = 5
    with self.assertRaisesRegex(ValueError, "num_folds = 5"):
      config_lib.complete(old)


class CompleteTest(absltest.TestCase):

  def test_a_completed_shipped_config_holds_no_placeholder(self):
    """complete() resolves every placeholder of every shipped config file and token."""
    from avjax import protocol
    for name in ("demo", "ravdess", "crema_d"):
      mod = load_config_module(name)
      for arg in ("", "lstm", "global", "audio_lstm", "audio_global", "video_lstm",
                  "video_global", "cpu", "paper_literal", "runlocal", "no_mwtsm",
                  "audio_global,cpu", "semihard"):
        flat = protocol._flatten(config_lib.complete(mod.get_config(arg or None)).to_dict())
        nones = sorted(k for k, v in flat.items() if v is None)
        self.assertEqual(nones, [], f"{name}:{arg}")

  def test_cache_on_device_takes_a_bool_or_auto_from_anywhere(self):
    """True, False or 'auto' by assignment or from the command line's strings; 0.1.0's
    None ('auto') reads as 'auto'; anything else stops validation."""
    c = config_lib.get_base_config()
    c.dataset.data_dir = "/tmp"
    self.assertEqual(c.input.cache_on_device, "auto")
    for value, expected in ((True, True), (False, False), ("auto", "auto"), ("True", True),
                            ("false", False), (None, "auto")):
      c.input.cache_on_device = value
      done = config_lib.complete(c)
      self.assertEqual(done.input.cache_on_device, expected, value)
      config_lib.validate(done)
      done.input.cache_on_device = not bool(expected)   # still assignable after complete()
    for bad in ("yes", 1):
      c.input.cache_on_device = bad
      with self.assertRaisesRegex(ValueError, "config.input.cache_on_device"):
        config_lib.validate(config_lib.complete(c))

  def test_encoder_momenta_match_the_models_and_read_0_1_0s_one_field(self):
    from avjax.models import i3d, soundnet
    base = config_lib.get_base_config()
    self.assertEqual((base.model.video_bn_momentum, base.model.audio_bn_momentum),
                     (i3d.BN_MOMENTUM, soundnet.BN_MOMENTUM))
    for old, expected in ((None, (0.999, 0.9)), (0.5, (0.5, 0.5))):
      recorded = base.to_dict()
      del recorded["model"]["video_bn_momentum"], recorded["model"]["audio_bn_momentum"]
      recorded["model"]["bn_momentum"] = old
      m = config_lib.complete(recorded, recorded=True).model
      self.assertEqual((m.video_bn_momentum, m.audio_bn_momentum), expected)
      self.assertNotIn("bn_momentum", m)

  def test_fills_missing_fields_and_keeps_the_given_ones(self):
    partial = {"model": {"variant": "lstm", "embed_dim": 16}, "train": {"max_steps": 3},
               "tiny": {"windows": 2}}   # a test-only field the base does not know
    c = config_lib.complete(partial)
    base = config_lib.get_base_config()
    self.assertEqual((c.model.variant, c.model.embed_dim, c.train.max_steps), ("lstm", 16, 3))
    self.assertEqual(c.tiny.windows, 2)
    self.assertEqual(c.model.lstm_hidden, base.model.lstm_hidden)   # from the base
    self.assertEqual(c.dataset.records, base.dataset.records)
    self.assertEqual(c.eval.reference_bank, base.eval.reference_bank)
    self.assertEqual(set(c.to_dict()) - {"tiny"}, set(base.to_dict()))
    config_lib.validate(c)

  def test_workdir_records_a_complete_config(self):
    import json
    import tempfile
    from avjax import workdir
    partial = config_lib.get_base_config()
    del partial.eval["reference_bank"]          # as a config written before the field existed
    with partial.unlocked():
      del partial.input["cache_on_device"]
    self.assertNotIn("reference_bank", partial.eval)
    root = tempfile.mkdtemp()
    path = workdir.save_config(partial, root)
    recorded = json.load(open(path))
    self.assertIn("reference_bank", recorded["eval"])
    self.assertIn("cache_on_device", recorded["input"])
    # An older config.json (avjax 0.1.0: no version) without the fields is read back complete.
    del recorded["eval"]["reference_bank"], recorded["avjax_version"]
    json.dump(recorded, open(path, "w"))
    loaded = workdir.load_config(root)
    self.assertTrue(loaded.eval.reference_bank)
    # A field whose default changed behaviour: a recorded run that lacks it keeps its
    # former meaning; a partial config (not recorded) gets the new default.
    self.assertTrue(loaded.loss.mask_padded_windows)        # recorded above, complete
    del recorded["loss"]["mask_padded_windows"]
    json.dump(recorded, open(path, "w"))
    self.assertFalse(workdir.load_config(root).loss.mask_padded_windows)
    self.assertTrue(config_lib.complete(recorded).loss.mask_padded_windows)
    with self.assertRaisesRegex(FileNotFoundError, "avjax workdir"):
      workdir.load_config(tempfile.mkdtemp())


# Run in a child process: scripts/dev_ablation.py defines absl flags (--workdir, ...) that
# other test modules' imports define too.
_CHECK_SETTINGS = """
import importlib.util, json, sys
sys.path.insert(0, ".")
from avjax import config_lib
from configs import ravdess
spec = importlib.util.spec_from_file_location("dev_ablation", "scripts/dev_ablation.py")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
problems = []
for name, overrides in module.SETTINGS.items():
  for variant in ("audio_global", "audio_lstm"):
    one_window = overrides.get("dataset.config", "w1_" if variant == "audio_global" else "w8_")
    if (variant == "audio_global") != one_window.startswith("w1_"):
      continue        # an LSTM windowing: an audio_lstm setting; one window: audio_global's
    config = ravdess.get_config(variant)
    config.model.trunk = "frozen"        # the script's default --trunk
    for field, value in overrides.items():
      group, key = field.split(".")
      if key not in config[group]:
        problems.append([name, field, "no such field"])
        continue
      config[group][key] = value
    try:
      config_lib.validate(config_lib.complete(config))
    except ValueError as e:
      problems.append([name, variant, str(e)])
print(json.dumps({"settings": len(module.SETTINGS), "problems": problems}))
"""


class DevAblationSettingsTest(absltest.TestCase):

  def test_every_setting_names_real_fields_and_validates(self):
    # A misspelt field would otherwise add a new key that nothing reads, and the row
    # would silently repeat the defaults.
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", _CHECK_SETTINGS], cwd=CONFIG_DIR.parent,
                         capture_output=True, text=True, check=True).stdout
    report = json.loads(out.strip().splitlines()[-1])
    self.assertGreater(report["settings"], 50)
    self.assertEqual(report["problems"], [])


if __name__ == "__main__":
  absltest.main()
