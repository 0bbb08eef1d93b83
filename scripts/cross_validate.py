r"""Subject-independent cross-validation: trains and evaluates folds, then aggregates.

  python scripts/cross_validate.py --config=configs/ravdess.py --workdir=runs/ravdess
  python scripts/cross_validate.py --config=configs/ravdess.py --workdir=runs/ravdess --folds=0,3

Folds run in turn in this process; to spread them over machines, start one
process per fold with --folds=k on a shared workdir (each process aggregates
the folds finished so far into results.json / results.md; the last one to
finish writes the complete table). Finished folds (fold_k/fold_info.json
present) are skipped and interrupted folds resume from their checkpoints, so
re-running the same command continues where it stopped. A run that finds every
fold it was asked for held by other processes exits with status 1 and lists them;
`--take_over_locks` takes over the locks of another host's processes (a job
requeued elsewhere after its host died).
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from avjax import cli  # noqa: E402
from avjax import train  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).", lock_config=True)
cli.define_workdir("Output directory (one fold_k/ per fold).")
flags.DEFINE_string("folds", "", "Comma-separated test folds to run (default: config.folds).")
flags.DEFINE_enum("config_mismatch", "error", ["error", "ok"],
                  "A workdir trained with another config: 'error' stops before touching "
                  "anything; 'ok' trains the remaining folds with the new config (as avjax.main).")
flags.DEFINE_bool("take_over_locks", False,
                  "Also take over the folds whose lock.json names a process of another host "
                  "(for a job requeued elsewhere after its first host died).")
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = cli.loaded_config()
  if FLAGS.folds:
    folds = cli.parse_folds(FLAGS.folds)
    with config.unlocked():
      config.folds = folds
  train.train_and_evaluate(config, FLAGS.workdir, config_mismatch=FLAGS.config_mismatch,
                           take_over_locks=FLAGS.take_over_locks)


if __name__ == "__main__":
  cli.run(main)   # one error: line, exit status 2 or 1 (avjax.cli)
