"""One-line user errors: which errors get which exit status, and the line they print."""

import errno

import ml_collections
from absl import app
from absl import flags
from absl.testing import absltest

from avjax import cli
from avjax import train_state
from avjax import workdir
from avjax.data import builder_lib


class ExitStatusTest(absltest.TestCase):

  def test_usage_errors_failures_and_bugs(self):
    usage = [ValueError("config.train.log_every_steps: 0 must be >= 1"),
             workdir.ConfigMismatchError("model.variant differs")]
    failures = [FileNotFoundError("dataset not prepared"),
                PermissionError(errno.EACCES, "Permission denied", "/data/tfds"),
                OSError(errno.EROFS, "Read-only file system", "/data/tfds"),   # read-only data dir
                NotADirectoryError("--workdir x is a file"),
                builder_lib.ManualDirError("manual_dir /m does not exist"),
                train_state.CheckpointNotFound("no checkpoints in fold_5"),
                train_state.CheckpointRestoreError("no checkpoint restores"),
                FloatingPointError("non-finite loss")]
    for e in usage:
      self.assertEqual(cli.exit_status(e), cli.USAGE, repr(e))
    for e in failures:
      self.assertEqual(cli.exit_status(e), cli.FAILURE, repr(e))
    for e in (RuntimeError("a bug"), TypeError("a bug"), KeyError("a bug")):
      self.assertIsNone(cli.exit_status(e), repr(e))          # keeps its traceback

  def test_root_message_is_the_config_files_own_error(self):
    # config_dict's own AttributeError (from a KeyError), wrapped by absl's flag error.
    c = ml_collections.ConfigDict({"num_epochs": 1})
    try:
      try:
        c.num_epoch  # noqa: B018
      except AttributeError as a:
        raise flags.IllegalFlagValueError("flag --config.train.num_epoch: ...") from a
    except flags.Error as e:
      self.assertEqual(cli._root_message(e), "unknown config field 'num_epoch'. Did you mean "
                                             "\"num_epochs\" instead of \"num_epoch\"?")
    # config_flags embeds the config file's traceback in its message.
    embedded = ValueError("Error whilst parsing config file: Traceback (most recent call "
                          "last):\n  File \"configs/demo.py\", line 34\nValueError: Unknown "
                          "config argument 'bogus'.")
    self.assertEqual(cli._root_message(embedded), "Unknown config argument 'bogus'.")
    try:   # as absl wraps it
      raise flags.IllegalFlagValueError(f"flag --config=configs/demo.py:bogus: {embedded}") \
          from embedded
    except flags.Error as e:
      self.assertEqual(cli._root_message(e), "Unknown config argument 'bogus'.")
    self.assertEqual(cli._root_message(OSError(errno.EROFS, "Read-only file system", "/d")),
                     "[Errno 30] Read-only file system: '/d'")
    # A bad value: absl's line names the flag, the ValueError under it does not.
    fv = flags.FlagValues()
    flags.DEFINE_enum("checkpoint", None, ["latest", "best"], "", flag_values=fv)
    flags.DEFINE_integer("epochs", 1, "", flag_values=fv)
    for arg, want in (("--checkpoint=bset", "flag --checkpoint=bset: value should be one of "
                                            "<latest|best>"),
                      ("--epochs=abc", "flag --epochs=abc: invalid literal for int() with base "
                                       "10: 'abc'")):
      with self.assertRaises(flags.Error) as cm:
        fv(["prog", arg])
      self.assertEqual(cli._root_message(cm.exception), want)

  def test_config_file_without_get_config(self):
    e = AttributeError("module 'config_config' has no attribute 'get_config'")
    self.assertEqual(cli._root_message(e),
                     "the --config file defines no get_config() (see configs/ravdess.py)")

  def test_parse_folds(self):
    self.assertEqual(cli.parse_folds("3,0"), (3, 0))
    self.assertEqual(cli.parse_folds(["4", "9"], "--folds"), (4, 9))
    for bad in ("a", "10", "-1", "1,1", "", "1,"):
      with self.assertRaisesRegex(app.UsageError, f"--folds={bad}: expected"):
        cli.parse_folds(bad)

  def test_empty_workdir_is_refused(self):
    fv = flags.FlagValues()
    cli.define_workdir("", flag_values=fv)
    with self.assertRaisesRegex(flags.IllegalFlagValueError, "--workdir is empty"):
      fv(["prog", "--workdir= "])
    fv(["prog", "--workdir=runs/x"])
    self.assertEqual(fv.workdir, "runs/x")


if __name__ == "__main__":
  absltest.main()
