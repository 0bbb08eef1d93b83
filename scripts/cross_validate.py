r"""Subject-independent cross-validation: trains and evaluates folds, then aggregates.

  python scripts/cross_validate.py --config=configs/ravdess.py --workdir=runs/ravdess
  python scripts/cross_validate.py --config=configs/ravdess.py --workdir=runs/ravdess --folds=0,3

Folds run in turn in this process; to spread them over machines, start one
process per fold with --folds=k on a shared workdir (each process aggregates
the folds finished so far into results.json / results.md; the last one to
finish writes the complete table). Finished folds (fold_k/fold_info.json
present) are skipped and interrupted folds resume from their checkpoints, so
re-running the same command continues where it stopped.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from avjax import train  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:args]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (one fold_k/ per fold).")
flags.DEFINE_string("folds", "", "Comma-separated test folds to run (default: config.folds).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  config = FLAGS.config
  if FLAGS.folds:
    try:
      folds = tuple(int(f) for f in FLAGS.folds.split(","))
    except ValueError:
      raise app.UsageError(f"--folds must be comma-separated integers, got {FLAGS.folds!r}") from None
    with config.unlocked():
      config.folds = folds
  train.train_and_evaluate(config, FLAGS.workdir)


if __name__ == "__main__":
  app.run(main)
