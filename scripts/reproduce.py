r"""Reproduces the paper's Table I or II: runs (or reuses) every row, then writes our numbers beside the paper's.

  python scripts/reproduce.py --dataset=ravdess --table=1 --workdir=runs/table1
  python scripts/reproduce.py --dataset=crema_d --table=2 --workdir=runs/crema --folds=0,1
  python scripts/reproduce.py --dataset=ravdess --table=2 --workdir=runs/rav --dry_run
  python scripts/reproduce.py --dataset=ravdess --table=2 --workdir=runs/rav_frozen --trunk=frozen
  python scripts/reproduce.py --dataset=ravdess --table=2 --workdir=runs/rav_cpu --config_args=cpu --rows=AO-Global,A-LSTM

Each run is `scripts/cross_validate.py --config=configs/<dataset>.py:<arg>
--workdir=<workdir>/<run>` in a subprocess, in turn. A run is reused, not started,
when `<workdir>/<run>/results.json` exists and covers the requested folds (--folds, else
the config's, all 10); otherwise cross_validate is started, which itself skips the folds
already evaluated, so an interrupted reproduction continues where it stopped.
`--dry_run` prints the commands and runs nothing: to spread the runs over machines,
start the printed commands yourself on a shared workdir, then collect the table with
`--collect_only` (starts nothing; rows without results are marked missing).

Rows and runs:
* Table I: every windowing of `avjax.data.registry.DATASETS[<name>]['table1']` with the
  gating model (run `<windowing>`), and its `_fit` twin (windows spread over the clip,
  docs/design.md; one per T and L: `w2_l1_ov_fit` and `w2_l1_no_fit` cut the same
  windows, so the second is not run), AV accuracy at the last gate.
* Table II: AO-Global (`audio_global`), A-LSTM (`audio_lstm`), AO-/VO-/AV-Gating (the
  gating run of the dataset's default windowing, the same run as its Table I row, so
  both tables share it in one workdir), VO-Global (`video_global`), VO-LSTM
  (`video_lstm`), AV-Global (`global`), A-LSTM+V-LSTM (`lstm`), each at its last gate.

`--config_args=cpu` runs every row with the CPU recipe (frozen trunks, SoundNet's head on
conv4's mean and std, features centred per speaker: not the paper's protocol, and the
table says so); `--trunk=frozen` (or `finetune_from:<endpoint>`) passes `--config.model.trunk` to
every run. Tables of a trunk other than the paper's `finetune` say so in their title and
beside every number, since the paper fine-tunes the encoders. Keep one workdir per
setting: a run on disk with another trunk, cached views, speaker centring or scaling, or
audio head is refused.

Output: `<workdir>/table{1,2}.md` (ours beside the paper, with the conventions) and
`<workdir>/table{1,2}.json` (the same rows, machine-readable).
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from avjax import cli  # noqa: E402
from avjax import config_lib  # noqa: E402
from avjax import paper  # noqa: E402
from avjax import protocol  # noqa: E402
from avjax import run_spec  # noqa: E402
from avjax import report  # noqa: E402
from avjax import results  # noqa: E402
from avjax import workdir as workdir_lib  # noqa: E402
from avjax.data import registry  # noqa: E402
from avjax.data import windows  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", None, ["ravdess", "crema_d"], "Dataset (config file configs/<dataset>.py).")
flags.DEFINE_enum("table", None, ["1", "2"], "The paper's table to reproduce.")
cli.define_workdir("Root directory: one sub-directory per run.")
flags.DEFINE_string("folds", "", "Comma-separated test folds for every run (default: the config's, all 10).")
flags.DEFINE_list("config_args", [], "Extra config tokens appended to every run, e.g. no_mwtsm or runlocal.")
flags.DEFINE_multi_string("override", [], "Config field override passed to every run, e.g. "
                          "--override=train.num_epochs=50 (becomes --config.train.num_epochs=50).")
flags.DEFINE_list("rows", [], "Only these rows (names as in the table, e.g. AO-Global,A-LSTM: the "
                  "audio-only rows, which need only the audio archives). Default: all.")
flags.DEFINE_string("trunk", None, "config.model.trunk of every run: 'finetune' (the paper's "
                    "recipe), 'frozen' (cached encoder features, only the heads and LSTMs train; "
                    "minutes on a CPU) or 'finetune_from:<endpoint>'. Default: the configs' "
                    "('finetune'; 'frozen' under --config_args=cpu). Tables of another trunk than "
                    "'finetune' are labelled as such beside the paper's fine-tuned numbers.")
flags.DEFINE_bool("dry_run", False, "Print the commands, run nothing, write no table.")
flags.DEFINE_bool("collect_only", False, "Start no run: write the table from the runs on disk "
                  "(rows without results.json are marked missing).")
flags.mark_flags_as_required(["dataset", "table"])

_BUILDER = {"ravdess": "ravdess", "crema_d": "crema_d_av"}


def table_rows(dataset: str, table: int) -> list[dict]:
  """The rows of `table` for `dataset`: name, run (sub-directory), arg (config), modality, paper."""
  builder = _BUILDER[dataset]
  rows = []
  if table == 1:
    published = paper.PAPER_TABLE1[builder]
    windowings = list(registry.DATASETS[builder]["table1"])
    # In the paper's order where it has the row, the others after.
    windowings.sort(key=lambda w: list(published).index(w) if w in published else len(published))
    fitted = set()   # a `_fit` twin spreads T windows of L s whatever the overlap token
    for w in windowings:
      spec = windows.parse_name(w)
      twin = [] if (spec.num_windows, spec.length) in fitted else [f"{w}_fit"]
      fitted.add((spec.num_windows, spec.length))
      for run in [w] + twin:
        rows.append({"name": run, "run": run, "arg": run, "modality": "AV", "paper": published.get(w),
                     "describe": paper.describe_windowing(run)})
  elif table == 2:
    default = registry.DATASETS[builder]["table1"][0]
    for name, label, arg, modality in paper.TABLE2_ROWS:
      run = default if arg == "gating" else arg
      rows.append({"name": name, "run": run, "arg": run, "modality": modality,
                   "paper": paper.PAPER_TABLE2[builder][name], "describe": label})
  else:
    raise ValueError(f"table must be 1 or 2, got {table}")
  return rows


def config_arg(arg: str, extra: list[str]) -> str:
  return ",".join([arg] + [t for t in extra if t])


def load_config(dataset: str, arg: str):
  module = importlib.import_module(f"configs.{dataset}")
  return module.get_config(arg)


def command(dataset: str, arg: str, run_dir: str, folds: str, extra: list[str],
            overrides: list[str]) -> list[str]:
  """The cross_validate.py argument list of one run (no shell)."""
  cmd = [sys.executable, os.path.join(REPO, "scripts", "cross_validate.py"),
         f"--config={os.path.join(REPO, 'configs', dataset + '.py')}:{config_arg(arg, extra)}",
         f"--workdir={run_dir}"]
  if folds:
    cmd.append(f"--folds={folds}")
  for o in overrides:
    o = o[2:] if o.startswith("--") else o
    cmd.append(f"--{o}" if o.startswith("config.") else f"--config.{o}")
  return cmd


# The fields of a fold's results.json record that decide what a run computed beside its
# config file and tokens (the tokens `cpu` and --trunk / --override set them), with the
# value a record without the field had.
SETTING_FIELDS = {"trunk": ("model.trunk", "finetune"),
                  "cached_views": ("input.cached_views", 0),
                  "speaker_centering": ("input.speaker_centering", False),
                  "speaker_scaling": ("input.speaker_scaling", False),
                  "audio_head_layer": ("model.audio_head_layer", "conv7"),
                  "audio_head_stats": ("model.audio_head_stats", "mean")}


def apply_overrides(config, overrides: list[str]):
  """`config` with --override's 'field=value' strings set (as `command` passes them to
  the run), each value parsed as its field's type."""
  import ast
  for o in overrides:
    o = o[2:] if o.startswith("--") else o
    o = o[len("config."):] if o.startswith("config.") else o
    field, sep, text = o.partition("=")
    if not sep:
      raise app.UsageError(f"--override={o!r}: expected field=value")
    *groups, name = field.split(".")
    node = config
    try:
      for g in groups:
        node = node[g]
      current = node[name]
    except (KeyError, AttributeError, TypeError):
      raise app.UsageError(f"--override={o!r}: the config has no field {field!r}") from None
    if isinstance(current, bool):
      if text.lower() not in ("true", "false", "1", "0"):
        raise app.UsageError(f"--override={o!r}: {field} takes true or false")
      value = text.lower() in ("true", "1")
    elif isinstance(current, str):
      value = text
    else:
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
    try:
      node[name] = value
    except (TypeError, ValueError) as e:
      raise app.UsageError(f"--override={o!r}: {e}") from None
  return config


def reusable(run_dir: str, config, folds: tuple[int, ...]) -> bool:
  """True when run_dir/results.json covers `folds` of this configuration; raises on a mismatch."""
  path = os.path.join(run_dir, "results.json")
  if not os.path.isfile(path):
    return False
  doc = report.load_or_rebuild_results(run_dir)
  expected = {"dataset": config.dataset.name, "config": config.dataset.config,
              "variant": config.model.variant, "modalities": config.model.modalities,
              "exclude_used": config.loss.exclude_used}
  wrong = {k: (doc.get(k), v) for k, v in expected.items() if doc.get(k) != v}
  for key, (field, before) in SETTING_FIELDS.items():
    group, name = field.split(".")
    on_disk = sorted({str(f.get(key, before)) for f in doc["folds"]})
    if on_disk != [str(config[group][name])]:
      wrong[key] = (",".join(on_disk), str(config[group][name]))
  # A run written by avjax.main records the config of each fold: every protocol field must
  # be this row's (the recipe's too), not only those results.json carries.
  if os.path.isfile(os.path.join(run_dir, workdir_lib.CONFIG)):
    for fold in sorted({f["fold"] for f in doc["folds"]}):
      recorded = workdir_lib.load_fold_config(run_dir, fold)
      for field, before, now in protocol.config_diff(recorded, config):
        wrong.setdefault(field, (before, now))
  if wrong:
    raise ValueError(f"{path} belongs to another configuration: " +
                     ", ".join(f"{k} is {a!r}, this row needs {b!r}" for k, (a, b) in wrong.items()) +
                     "; use another --workdir for each setting")
  done = {f["fold"] for f in doc["folds"]}
  return set(folds) <= done


def row_result(row: dict, run_dir: str) -> dict:
  """Our last-gate numbers for `row` from run_dir/results.json (None fields when absent)."""
  out = dict(row, accuracy_mean=None, accuracy_std=None, uar_mean=None, uar_std=None,
             num_folds=0, folds=[], gate=None, status="missing")
  path = os.path.join(run_dir, "results.json")
  if not os.path.isfile(path):
    return out
  doc = report.load_or_rebuild_results(run_dir)
  last = results.summary_row(doc["summary"], row["modality"])
  if last is None:
    out["status"] = f"no {row['modality']} in results"
    return out
  out.update({k: last[k] for k in ("accuracy_mean", "accuracy_std", "uar_mean", "uar_std",
                                   "num_folds", "folds", "gate")}, status="ok")
  return out


def _pm(mean, std) -> str:
  if mean is None:
    return "–"
  return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def format_table(dataset: str, table: int, rows: list[dict], trunk: str = "finetune",
                 speaker_centering: bool = False, scaled_runs: tuple[str, ...] = ()) -> str:
  """The table's Markdown; `scaled_runs`: the runs that also divided the centred
  features by the speaker's std (`input.speaker_scaling`)."""
  title = {"ravdess": "RAVDESS", "crema_d": "CREMA-D"}[dataset]
  label = report.trunk_label(trunk)
  if speaker_centering:
    label = f"{label}, speaker-centred" if label else "speaker-centred"
  ours = f"Ours ({label})" if label else "Ours"
  lines = [f"# Table {'I' * table}, {title}: ours{f' ({label})' if label else ''} beside the paper",
           ""]
  if report.trunk_label(trunk):
    lines += [f"**{report.trunk_label(trunk).capitalize()}** (`model.trunk={trunk}`): the "
              "pretrained encoders' layers below the cut were not trained, only those above "
              "it, the heads and the LSTMs. The paper fine-tunes the whole encoders end to "
              "end: these rows are NOT its recipe.", ""]
  if speaker_centering:
    lines += ["**Speaker-centred** (`input.speaker_centering=True`): every clip's features "
              "minus its speaker's mean feature over all of that speaker's clips, the test "
              "speakers' included (no label is read). A clip's result depends on the other "
              "clips of its speaker: NOT the paper's protocol."
              + (" The runs " + ", ".join(f"`{r}`" for r in scaled_runs) + " also divided "
                 "them by the speaker's standard deviation (`input.speaker_scaling=True`)."
                 if scaled_runs else ""), ""]
  lines += [f"{ours}: accuracy % at the last gate, mean ± sample std (ddof = 1) over the folds "
            "run; UAR likewise. Paper: accuracy % over 10 subject-independent folds, "
            "fine-tuned encoders. A run with fewer than 10 folds is not yet comparable.", ""]
  col = f"Ours ({label})" if label else "Ours"
  if table == 1:
    lines += [f"| #Windows | Length s | Overlap | Window mode | {col} AV % | Paper % | Ours − paper "
              "| UAR % | Folds | Run |",
              "|---:|---:|---|---|---:|---:|---:|---:|---:|---|"]
  else:
    lines += [f"| Embeddings | Paper row | Modality | {col} % | Paper % | Ours − paper | UAR % "
              "| Folds | Run |",
              "|---|---|---|---:|---:|---:|---:|---:|---|"]
  for r in rows:
    paper_cell = "–" if r["paper"] is None else f"{r['paper']:.1f}"
    diff = ("–" if r["paper"] is None or r["accuracy_mean"] is None
            else f"{100 * r['accuracy_mean'] - r['paper']:+.1f}")
    folds = str(r["num_folds"]) if r["status"] == "ok" else r["status"]
    if table == 1:
      spec = windows.parse_name(r["run"])
      overlap = ("–" if spec.mode != "fixed" else f"{spec.overlap:g} s" if spec.overlap
                 else "no")
      lines.append(f"| {spec.num_windows} | {spec.length:g} | {overlap} | {spec.mode} | "
                   f"{_pm(r['accuracy_mean'], r['accuracy_std'])} | {paper_cell} | {diff} | "
                   f"{_pm(r['uar_mean'], r['uar_std'])} | {folds} | `{r['run']}` |")
    else:
      lines.append(f"| {r['name']} | {r['describe']} | {r['modality']} | "
                   f"{_pm(r['accuracy_mean'], r['accuracy_std'])} | {paper_cell} | {diff} | "
                   f"{_pm(r['uar_mean'], r['uar_std'])} | {folds} | `{r['run']}` |")
  lines += ["", paper.PAPER_NOTE, ""]
  return "\n".join(lines)


def main(argv):
  del argv
  table = int(FLAGS.table)
  workdir = os.path.abspath(FLAGS.workdir)
  folds_flag = FLAGS.folds.strip()
  if folds_flag:
    requested = cli.parse_folds(folds_flag)
  rows = table_rows(FLAGS.dataset, table)
  if FLAGS.rows:
    unknown = sorted(set(FLAGS.rows) - {r["name"] for r in rows})
    if unknown:
      raise app.UsageError(f"--rows: no row {', '.join(unknown)} in Table {'I' * table}; rows: "
                           + ", ".join(r["name"] for r in rows))
    rows = [r for r in rows if r["name"] in FLAGS.rows]
  runs = {}
  for r in rows:
    runs.setdefault(r["run"], r["arg"])
  # The configs' trunk (after the tokens and overrides: `cpu` freezes it), unless --trunk
  # names one.
  first = apply_overrides(load_config(FLAGS.dataset, config_arg(next(iter(runs.values())),
                                                                FLAGS.config_args)),
                          list(FLAGS.override))
  configured = str(first.model.trunk)
  trunk = (FLAGS.trunk or "").strip() or configured
  overrides = list(FLAGS.override)
  if trunk != configured:
    overrides.append(f"model.trunk={trunk}")
  failed = []
  scaled_runs = []
  for run, arg in runs.items():
    run_dir = os.path.join(workdir, run)
    cmd = command(FLAGS.dataset, arg, run_dir, folds_flag, FLAGS.config_args, overrides)
    config = apply_overrides(load_config(FLAGS.dataset, config_arg(arg, FLAGS.config_args)),
                             overrides)
    try:
      config_lib.validate(config)
    except ValueError as e:
      raise app.UsageError(f"--trunk={trunk}, run {run}: {e}") from None
    folds = requested if folds_flag else tuple(config.folds)
    if config.input.speaker_scaling:
      scaled_runs.append(run)
    if reusable(run_dir, config, folds):
      print(f"# reuse {os.path.join(run_dir, 'results.json')} (folds {list(folds)} done)", flush=True)
      continue
    if FLAGS.collect_only:
      print(f"# not run (--collect_only): {shlex.join(cmd)}", flush=True)
      continue
    print(f"# reads {config.dataset.name}/{run_spec.of(config).builder_config}", flush=True)
    print(shlex.join(cmd), flush=True)
    if FLAGS.dry_run:
      continue
    proc = subprocess.run(cmd, cwd=REPO, check=False)
    if proc.returncode != 0:
      print(f"# run {run} failed with exit status {proc.returncode}", file=sys.stderr, flush=True)
      failed.append(run)
  if FLAGS.dry_run:
    return
  done = [row_result(r, os.path.join(workdir, r["run"])) for r in rows]
  for r in done:     # what is on disk is not this invocation's result
    if r["run"] in failed:
      r["status"] = (f"{r['num_folds']}, of an earlier run: this one failed" if r["num_folds"]
                     else "run failed")
  os.makedirs(workdir, exist_ok=True)
  md_path = os.path.join(workdir, f"table{table}.md")
  workdir_lib.write_text(md_path, format_table(FLAGS.dataset, table, done, trunk,
                                              bool(first.input.speaker_centering),
                                              tuple(scaled_runs)))
  workdir_lib.write_text(os.path.join(workdir, f"table{table}.json"), json.dumps(
      {"dataset": FLAGS.dataset, "table": table, "trunk": trunk,
       "speaker_centering": bool(first.input.speaker_centering),
       "speaker_scaling_runs": scaled_runs, "rows": done}, indent=1))
  print(f"# table: {md_path}")
  if failed:
    raise SystemExit(f"runs failed: {', '.join(failed)}")


if __name__ == "__main__":
  cli.run(main)
