r"""The paper's Figures 3-6 as PNG from a cross-validation workdir.

  python scripts/make_figures.py --workdir=runs/ravdess
  python scripts/make_figures.py --workdir=runs/crema_d --positive=happy --negative=sad,anger,fear
  python scripts/make_figures.py --workdir=runs/ravdess --tsne_fold=3 --out_dir=/tmp/figs

Reads every finished `fold_k/` (predictions.npz + fold_info.json) of the workdir and
writes fig3_tsne.png, fig4_accuracy_per_gate.png, fig5_positive_negative.png and
fig6_confusion.png into --out_dir (default <workdir>/figures). See avjax/figures.py
for what each figure shows. Fig. 5 uses RAVDESS's groups (calm, happy / sad, angry,
fearful) unless --positive/--negative are given, and is skipped for datasets lacking
those classes.
"""

import os
import sys

from absl import app
from absl import flags

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from avjax import cli  # noqa: E402
from avjax import figures  # noqa: E402

FLAGS = flags.FLAGS
cli.define_workdir("Cross-validation workdir (with fold_k/ directories).")
flags.DEFINE_string("out_dir", "", "Where to write the PNGs (default: <workdir>/figures).")
flags.DEFINE_integer("tsne_fold", None, "Fold whose held-out clips Fig. 3 shows (default: the lowest run).")
flags.DEFINE_list("positive", [], "Fig. 5 positive class names (default: calm,happy).")
flags.DEFINE_list("negative", [], "Fig. 5 negative class names (default: sad,angry,fearful).")
flags.DEFINE_enum("fig5_modality", "AV", ["AO", "VO", "AV"], "Embedding whose accuracy Fig. 5 shows.")


def main(argv):
  del argv
  if bool(FLAGS.positive) != bool(FLAGS.negative):
    raise app.UsageError("give both --positive and --negative, or neither")
  groups = {"positive": FLAGS.positive, "negative": FLAGS.negative} if FLAGS.positive else None
  paths = figures.make_all(FLAGS.workdir, out_dir=FLAGS.out_dir or None, groups=groups,
                           tsne_fold=FLAGS.tsne_fold, fig5_modality=FLAGS.fig5_modality)
  for path in paths:
    print(path)
  if not any(p.endswith(figures.FILENAMES["positive_negative"]) for p in paths):
    print("Fig. 5 skipped: the dataset lacks the positive/negative classes "
          "(set --positive and --negative)")


if __name__ == "__main__":
  cli.run(main)
