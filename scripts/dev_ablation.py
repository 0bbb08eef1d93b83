r"""The learning ablation on the real-audio development set (../shared/samples/ravdess_dev).

  python scripts/dev_ablation.py --workdir=/tmp/dev_ablation
  python scripts/dev_ablation.py --workdir=/tmp/dev_ablation --settings=paper_literal,centered_semihard_warmup50 \
      --variants=audio_lstm --trunk=finetune_from:conv4
  python scripts/dev_ablation.py --workdir=/tmp/dev_ablation --settings=centered_semihard \
      --seeds=0,1,2

The development set is the real speech audio of twelve RAVDESS actors (720 clips),
folds 4 to 9 of the project's assignment, two actors each: every run tests each of the
six folds in turn and trains on the other five (`dataset.allow_missing_folds`;
`--folds` tests fewer). Nothing here reads any other RAVDESS clip. (Before 2026-12-05
the set was folds 4, 5 and 6 alone: docs/experiments.md.)

For each setting (a named set of config overrides, SETTINGS) and variant
(`audio_global`, `audio_lstm`) it trains `configs/ravdess.py:<variant>` with the
given `model.trunk` (pretrained SoundNet-8) for `--epochs` epochs, and reports the
last-gate AO accuracy, mean ± sample std over the test folds, the last logged
loss, and whether the embeddings collapsed (`collapsed` in metrics.jsonl). The
row `untrained` evaluates the initial network (pretrained trunk, fresh head and
LSTM) on the same folds without a step of training. Writes
`<workdir>/ablation.json` and prints a Markdown table.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from avjax import cli  # noqa: E402
from avjax import config_tokens  # noqa: E402
from avjax import workdir as workdir_lib  # noqa: E402

DEV_FOLDS = (4, 5, 6, 7, 8, 9)
# Every setting is a set of overrides on top of the paper's literal reading
# (`config_tokens.PAPER_LITERAL`, trunk layers at the full learning rate), so that a name
# keeps its meaning whatever the defaults: the defaults (`warmup_semihard`) at 100
# epochs are `centered_semihard_warmup50_adamw` with frozen trunks and
# `centered_semihard_warmup50_adamw_trunk0.01` with `finetune_from`. Rows of
# ablation.json are keyed by these names.
_PAPER = {**config_tokens.PAPER_LITERAL, "optim.trunk_lr_scale": 1.0}
_CENTERED_SEMIHARD = {**_PAPER, "model.center_audio_head": True, "loss.negatives": "semihard"}
# The `cpu` token's parts, alone and together: SoundNet's head on conv<k>'s mean and std
# (model.audio_head_layer / audio_head_stats) and speaker centring (input.speaker_centering).
_SPEAKER = {"input.speaker_centering": True}


def _conv_ms(k: int) -> dict:
  return {"model.audio_head_layer": f"conv{k}", "model.audio_head_stats": "mean_std"}


_HEAD_SPEAKER = (
    ("_speaker", _SPEAKER),
    ("_conv4ms", _conv_ms(4)),
    *((f"_conv{k}ms_speaker", {**_conv_ms(k), **_SPEAKER}) for k in (3, 4, 5)),
    ("_conv4m_speaker", {"model.audio_head_layer": "conv4", **_SPEAKER}),
    ("_conv4ms_views4_speaker", {**_conv_ms(4), **_SPEAKER, "input.cached_views": 4}),
    ("_views4_speaker", {"input.cached_views": 4, **_SPEAKER}),
    # Divided by the speaker's std too (input.speaker_scaling).
    ("_conv4ms_speaker_scaled", {**_conv_ms(4), **_SPEAKER, "input.speaker_scaling": True}),
)
# name -> config overrides (field -> value) on top of configs/ravdess.py.
SETTINGS = {
    "defaults": {},
    # Four augmented views of every clip cached below the cut (input.cached_views).
    "views4": {"input.cached_views": 4},
    # The batch-all warm-up over 70 % / all of training (default 50 %).
    "warmup70": {"loss.batch_all_fraction": 0.7},
    "batch_all": {"loss.batch_all_fraction": 1.0},
    # Speaker normalisation (`input.speaker_centering`) and the conv4 head, alone, together
    # and around them (A-LSTM).
    **{suffix[1:]: extra for suffix, extra in _HEAD_SPEAKER},
    **{f"conv4ms_speaker{suffix}": {**_conv_ms(4), **_SPEAKER, **extra}
       for suffix, extra in (("_batch_all", {"loss.batch_all_fraction": 1.0}),
                             ("_warmup30", {"loss.batch_all_fraction": 0.3}),
                             ("_margin0.2", {"loss.margin": 0.2}),
                             ("_lr3e-4", {"optim.learning_rate": 3e-4}),
                             ("_euclidean", {"loss.distance": "euclidean"}))},
    # Around the A-LSTM `cpu` recipe (conv4 head, centred and scaled per speaker).
    **{f"conv4ms_speaker_scaled{suffix}": {**_conv_ms(4), **_SPEAKER,
                                          "input.speaker_scaling": True, **extra}
       for suffix, extra in (("_wd5e-2", {"optim.weight_decay": 5e-2}),
                             ("_wd5e-1", {"optim.weight_decay": 5e-1}),
                             ("_hidden128", {"model.lstm_hidden": 128}),
                             ("_hidden800", {"model.lstm_hidden": 800}),
                             # The 8 windows spread over the whole clip (`fit`).
                             ("_fit", {"dataset.config": "w8_l1_ov_fit"}),
                             ("_embed128", {"model.embed_dim": 128}),
                             # Semi-hard mining from the first step; the hardest negatives.
                             # (No `exclude_used` row: A-LSTM mines its last gate alone.)
                             ("_warmup0", {"loss.batch_all_fraction": 0.0}),
                             ("_hardest", {"loss.negatives": "hardest"}),
                             # The paper's Table I windowings besides the default w8_l1_ov.
                             *((f"_{w}", {"dataset.config": w}) for w in (
                                 "w2_l1_ov", "w2_l2_ov", "w4_l1_ov", "w6_l1_ov", "w2_l1_no",
                                 "w4_l1_no")))},
    **{f"global_l{n}_conv4ms_speaker": {"dataset.config": f"w1_l{n}_no_fit", **_conv_ms(4),
                                        **_SPEAKER} for n in ("2", "4")},
    # The `global` variant's window: one centred window of L seconds (builder config
    # w1_l{L}_no_fit), under the defaults.
    **{f"global_l{n}": {"dataset.config": f"w1_l{n}_no_fit"} for n in ("1", "2", "3", "4")},
    # The L seconds of most audio energy (builder config w1_l{L}_no_apex).
    **{f"global_apex_l{n}": {"dataset.config": f"w1_l{n}_no_apex"} for n in ("1", "3")},
    **{f"global_l3{suffix}": {"dataset.config": "w1_l3_no_fit", **extra} for suffix, extra in (
        ("_trunk0.1", {"optim.trunk_lr_scale": 0.1}),
        ("_trunk0.01", {"optim.trunk_lr_scale": 0.01}),
        # Under `finetune`: the trunk held at its pretrained weights (the media still
        # augmented at every step), and the trunk trained without audio augmentation.
        ("_trunk0", {"optim.trunk_lr_scale": 0.0}),
        ("_noaug", {"input.audio_noise_std": 0.0, "input.pitch_shift_semitones": 0.0,
                    "input.speed_range": 0.0}),
        # The noise at a tenth of the former default std, and the default since 2026-12-07
        # (0.0005: about 28 dB SNR on the median RAVDESS clip's middle 3 s, against 8 dB at
        # 0.005); pitch and speed kept. Named so that its rows keep their meaning.
        ("_noise0.0005", {"input.audio_noise_std": 0.0005}),
        ("_views4", {"input.cached_views": 4}),
        *_HEAD_SPEAKER,
        ("_conv4ms_speaker_warmup30", {**_conv_ms(4), **_SPEAKER, "loss.batch_all_fraction": 0.3}),
        ("_conv4ms_speaker_warmup0", {**_conv_ms(4), **_SPEAKER, "loss.batch_all_fraction": 0.0}),
        ("_conv4ms_speaker_hardest", {**_conv_ms(4), **_SPEAKER, "loss.negatives": "hardest"}),
        ("_trunk0.1_views4", {"optim.trunk_lr_scale": 0.1, "input.cached_views": 4}),
        ("_batch_all", {"loss.batch_all_fraction": 1.0}),
        ("_lr3e-4", {"optim.learning_rate": 3e-4}),
        ("_margin0.2", {"loss.margin": 0.2}),
        ("_euclidean", {"loss.distance": "euclidean"}),
        ("_wd0", {"optim.weight_decay": 0.0}),
        ("_wd5e-3", {"optim.weight_decay": 5e-3}),
        ("_lr3e-3", {"optim.learning_rate": 3e-3}),
        ("_batch10", {"input.clips_per_class": 10}),
        ("_embed128", {"model.embed_dim": 128}))},
    "paper_literal": _PAPER,
    "semihard": {**_PAPER, "loss.negatives": "semihard"},
    "adamw": {**_PAPER, "optim.name": "adamw"},
    "centered": {**_PAPER, "model.center_audio_head": True},
    "centered_semihard": _CENTERED_SEMIHARD,
    "centered_batch_all": {**_PAPER, "model.center_audio_head": True,
                           "loss.batch_all_fraction": 1.0},
    **{f"centered_semihard{suffix}": {**_CENTERED_SEMIHARD, **extra} for suffix, extra in (
        ("_trunk0.1", {"optim.trunk_lr_scale": 0.1}),
        ("_trunk0.01", {"optim.trunk_lr_scale": 0.01}),
        # Under `finetune`: the trunk held at its pretrained weights (the media still
        # augmented at every step), and the trunk trained without audio augmentation.
        ("_trunk0", {"optim.trunk_lr_scale": 0.0}),
        ("_noaug", {"input.audio_noise_std": 0.0, "input.pitch_shift_semitones": 0.0,
                    "input.speed_range": 0.0}),
        ("_trunk0.01_views4", {"optim.trunk_lr_scale": 0.01, "input.cached_views": 4}),
        ("_views4", {"input.cached_views": 4}),
        *_HEAD_SPEAKER,
        # Batch-all for the first E % of the epochs (E of the default 100), then semi-hard
        # MWTSM.
        ("_warmup30", {"loss.batch_all_fraction": 0.3}),
        ("_warmup50", {"loss.batch_all_fraction": 0.5}),
        ("_warmup50_trunk0.01", {"loss.batch_all_fraction": 0.5, "optim.trunk_lr_scale": 0.01}),
        ("_warmup50_wd0", {"loss.batch_all_fraction": 0.5, "optim.weight_decay": 0.0}),
        ("_warmup50_wd5e-3", {"loss.batch_all_fraction": 0.5, "optim.weight_decay": 5e-3}),
        ("_warmup50_lr3e-4", {"loss.batch_all_fraction": 0.5, "optim.learning_rate": 3e-4}),
        # Decoupled decay (AdamW: 5e-4 x the learning rate per step) instead of L2.
        ("_warmup50_adamw", {"loss.batch_all_fraction": 0.5, "optim.name": "adamw"}),
        ("_warmup50_adamw_trunk0.01", {"loss.batch_all_fraction": 0.5, "optim.name": "adamw",
                                       "optim.trunk_lr_scale": 0.01}),
        ("_warmup70", {"loss.batch_all_fraction": 0.7}),
        ("_warmup90", {"loss.batch_all_fraction": 0.9}),
        ("_lr1e-4", {"optim.learning_rate": 1e-4}))},
    "semihard_adamw": {**_PAPER, "loss.negatives": "semihard", "optim.name": "adamw"},
    "semihard_euclidean": {**_PAPER, "loss.negatives": "semihard", "loss.distance": "euclidean"},
    "euclidean": {**_PAPER, "loss.distance": "euclidean"},
    "batch_all_warmup10": {**_PAPER, "loss.batch_all_fraction": 0.1},
    "euclidean_warmup10": {**_PAPER, "loss.distance": "euclidean", "loss.batch_all_fraction": 0.1},
    "batch_all_only": {**_PAPER, "loss.batch_all_fraction": 1.0},
    "lr1e-4": {**_PAPER, "optim.learning_rate": 1e-4},
    "euclidean_margin0.2": {**_PAPER, "loss.distance": "euclidean", "loss.margin": 0.2},
}

FLAGS = flags.FLAGS
cli.define_workdir("Scratch directory (data, features, runs).")
flags.DEFINE_string("samples", os.path.join(os.path.dirname(REPO), "shared", "samples", "ravdess_dev"),
                    "The ravdess_dev folder (FLAC + to_wav.py).")
flags.DEFINE_list("settings", list(SETTINGS), "Settings to run (names in SETTINGS).")
flags.DEFINE_list("variants", ["audio_global", "audio_lstm"], "configs/ravdess.py variants.")
flags.DEFINE_string("trunk", "frozen", "config.model.trunk.")
flags.DEFINE_integer("epochs", 100, "Epochs per fold.")
flags.DEFINE_bool("untrained", True, "Also evaluate the untrained network.")
flags.DEFINE_string("validation_fold", "none", "config.train.validation_fold (learning curves: "
                    "'next', with --eval_every_epochs).")
flags.DEFINE_integer("eval_every_epochs", 10, "config.train.eval_every_epochs.")
flags.DEFINE_list("folds", [str(f) for f in DEV_FOLDS], "Test folds (of the development set's).")
flags.DEFINE_list("seeds", ["0"], "config.seed values: each setting (and the untrained row) "
                  "runs once per seed; the summary pools folds x seeds.")


def dev_config(variant: str, trunk: str, work: str, epochs: int, overrides: dict,
               seed: int = 0):
  from configs import ravdess
  config = ravdess.get_config(variant)
  config.seed = seed
  config.model.trunk = trunk
  config.dataset.data_dir = os.path.join(work, "tfds")
  config.dataset.manual_dir = os.path.join(work, "manual")
  config.dataset.allow_missing_folds = True
  config.folds = tuple(int(f) for f in FLAGS.folds)
  config.train.num_epochs = epochs
  config.train.validation_fold = FLAGS.validation_fold
  config.train.eval_every_epochs = FLAGS.eval_every_epochs
  config.train.checkpoint_every_steps = 10 ** 6        # the last step only
  config.eval.figures = False
  config.eval.reference_bank = False
  for field, value in overrides.items():
    group, name = field.split(".")
    config[group][name] = value
  return config


def untrained_accuracy(config) -> list[float]:
  """Last-gate AO accuracy of the initial network on each dev fold."""
  import jax
  from avjax import config_lib, evaluate, feature_store, parallel
  from avjax import train_state as train_state_lib
  from avjax.data import tfds_access
  from avjax.models import gating
  config = config_lib.complete(config)
  mesh = parallel.make_mesh()
  repl, _ = parallel.shardings(mesh)
  feature_store.ensure(config, mesh)
  accs = []
  for fold in config.folds:
    train_on, _ = tfds_access.split_folds(config, fold)
    model = gating.create_model(config.model)
    sample = {k: np.zeros(v.shape, v.dtype) for k, v in evaluate.sample_batch(config).items()}
    rng = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(config.seed), fold))[0]
    state = train_state_lib.create_train_state(config, model, sample, rng, repl)
    refs = evaluate.embed(config, state, train_on, mesh)
    qrys = evaluate.embed(config, state, [fold], mesh)
    preds = evaluate.predict_per_gate(config, refs, qrys)
    accs.append(float(np.mean(preds["pred_AO"][-1] == qrys["label"])))
  return accs


def run_summary(run_dir: str) -> dict:
  doc = json.load(open(os.path.join(run_dir, "results.json")))
  per_fold = [r["accuracy"] for r in doc["rows"] if r["modality"] == "AO"
              and r["gate"] == doc["num_windows"]]
  last, first, curves = {}, {}, []
  for path in sorted(glob.glob(os.path.join(glob.escape(run_dir), "fold_*", "metrics.jsonl"))):
    records = [json.loads(l) for l in open(path)]
    lines = [r for r in records if "loss" in r]
    curves.append([[r["step"], round(r["validation_accuracy"], 4)] for r in records
                   if "validation_accuracy" in r])
    if lines:
      last[path.split(os.sep)[-2]] = lines[-1]
      first[path.split(os.sep)[-2]] = lines[0]
  return {"accuracy": per_fold,
          "param_norm": [[round(v.get("param_norm", float("nan")), 4) for v in (first[k], last[k])]
                         for k in last],
          "final_loss": [round(v["loss"], 4) for v in last.values()],
          "initial_distance": [round(v.get("distance_audio", float("nan")), 6)
                               for v in first.values()],
          "final_distance": [round(v.get("distance_audio", float("nan")), 4) for v in last.values()],
          "collapsed": [bool(v.get("collapsed", 0)) for v in last.values()],
          # With a validation fold: [step, its last-gate accuracy] per fold, and the
          # accuracies above are the best checkpoint's by it.
          **({"validation_curve": curves} if any(curves) else {})}


def _pm(values) -> str:
  values = 100 * np.asarray(values, float)
  std = values.std(ddof=1) if len(values) > 1 else float("nan")
  return f"{values.mean():.1f} ± {std:.1f}"


def main(argv):
  del argv
  from avjax import train
  unknown = sorted(set(FLAGS.settings) - set(SETTINGS))
  if unknown:
    raise app.UsageError(f"--settings: no setting {', '.join(unknown)} (the names are "
                         "SETTINGS in scripts/dev_ablation.py, e.g. defaults)")
  cli.parse_folds(FLAGS.folds)
  work = os.path.abspath(FLAGS.workdir)
  manual = os.path.join(work, "manual")
  if not os.path.isdir(manual) and not os.path.isfile(os.path.join(FLAGS.samples, "to_wav.py")):
    raise app.UsageError(f"--samples={FLAGS.samples}: no to_wav.py there (the development "
                         "set's folder)")
  os.makedirs(work, exist_ok=True)
  if not os.path.isdir(manual):   # converted aside, then renamed: never half a folder
    shutil.rmtree(manual + ".partial", ignore_errors=True)
    subprocess.run([sys.executable, os.path.join(FLAGS.samples, "to_wav.py"),
                    manual + ".partial"], check=True)
    os.replace(manual + ".partial", manual)
  out_path = os.path.join(work, "ablation.json")
  rows = json.load(open(out_path)) if os.path.isfile(out_path) else {}
  trunk_tag = FLAGS.trunk.replace(":", "_").replace("+", "_")
  seeds = [int(x) for x in FLAGS.seeds]
  folds = tuple(int(f) for f in FLAGS.folds)
  folds_tag = "" if folds == DEV_FOLDS else "/folds" + "".join(map(str, folds))
  val = FLAGS.validation_fold.strip().lower()
  folds_tag += "" if val == "none" else f"/val_{val}"
  tag = lambda seed: folds_tag + ("" if seed == 0 else f"/seed{seed}")
  for variant, seed in [(v, sd) for v in FLAGS.variants for sd in seeds]:
    if FLAGS.untrained:
      key = f"{variant}/{trunk_tag}/untrained{tag(seed)}"
      if key not in rows:
        accs = untrained_accuracy(dev_config(variant, FLAGS.trunk, work, 1, {}, seed))
        rows[key] = {"accuracy": accs, "seconds": 0.0}
        workdir_lib.write_text(out_path, json.dumps(rows, indent=1))
    for name in FLAGS.settings:
      key = f"{variant}/{trunk_tag}/{name}/e{FLAGS.epochs}{tag(seed)}"
      if key in rows:
        continue
      config = dev_config(variant, FLAGS.trunk, work, FLAGS.epochs, SETTINGS[name], seed)
      run_dir = os.path.join(work, "runs", key.replace("/", "__"))
      shutil.rmtree(run_dir, ignore_errors=True)   # not in ablation.json: a fresh run
      t0 = time.time()
      train.train_and_evaluate(config, run_dir)
      rows[key] = dict(run_summary(run_dir), seconds=round(time.time() - t0, 1),
                       overrides=SETTINGS[name])
      workdir_lib.write_text(out_path, json.dumps(rows, indent=1))
  print(f"\n| run | AO last gate % (test folds {', '.join(FLAGS.folds)}) | per fold | final loss "
        "| collapsed | s |")
  print("|---|---:|---|---|---|---:|")
  for key, r in rows.items():
    print(f"| {key} | {_pm(r['accuracy'])} | {', '.join(f'{100 * a:.1f}' for a in r['accuracy'])} "
          f"| {', '.join(map(str, r.get('final_loss', [])))} | "
          f"{sum(r.get('collapsed', []))}/{len(r.get('collapsed', []))} | {r['seconds']} |")
  pooled = {}
  for key, r in rows.items():
    base = key.split("/seed")[0]
    pooled.setdefault(base, []).append(r)
  if any(len(v) > 1 for v in pooled.values()):
    print("\nPooled over seeds (folds x seeds; std over the seeds' means over the test folds):")
    print("| run | seeds | AO last gate %, mean | std of seed means | collapsed |")
    print("|---|---:|---:|---:|---|")
    for base, runs in pooled.items():
      means = [100 * np.mean(r["accuracy"]) for r in runs]
      std = np.std(means, ddof=1) if len(means) > 1 else float("nan")
      collapsed = sum(sum(r.get("collapsed", [])) for r in runs)
      folds = sum(len(r.get("collapsed", [])) for r in runs)
      print(f"| {base} | {len(runs)} | {np.mean(means):.1f} | {std:.1f} | {collapsed}/{folds} |")


if __name__ == "__main__":
  cli.run(main)
