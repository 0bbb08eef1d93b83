"""One-line user errors: which errors get which exit status, and the line they print."""

import errno

import ml_collections
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
    self.assertEqual(cli._root_message(OSError(errno.EROFS, "Read-only file system", "/d")),
                     "[Errno 30] Read-only file system: '/d'")


if __name__ == "__main__":
  absltest.main()
