"""User errors as one line: the command-line entry points' error handling.

`avjax.main`, `avjax.evaluate`, scripts/cross_validate.py and scripts/build_datasets.py
run through `run(main)`. The exit status follows the error's type (`avjax.errors`),
checked before the ValueError that some libraries raise for anything:

* status 1, a failure: `errors.Failure` (a file system that refuses a write,
  `errors.StorageError`, wherever it happens: checkpoints, evaluation files,
  results, figures, feature store, dataset build; folds all held by other
  processes, `errors.FoldsHeld`), any exception caused by a full disk, a
  read-only mount, no permission or an I/O error (orbax reports a full disk as
  `ValueError: RESOURCE_EXHAUSTED`), and those in `_failures()` (a dataset that
  is missing or not built, a checkpoint that is absent or does not restore, a
  non-finite loss);
* status 2, a usage error: `errors.UsageError` (including `errors.CorruptFileError`,
  a workdir file that does not read back, named with its repair), a flag or config
  that cannot be parsed, a workdir trained with another config, and the ValueErrors
  that the config checks raise;
* status 130, Ctrl-C: one line (`errors.Interrupted` says at which step).

Each prints one `error:` line naming the field or file. Anything else is a bug and
keeps its traceback; `--verbosity=1` (or higher) keeps every traceback.
"""

from __future__ import annotations

import re
import sys
from typing import Callable

from absl import app
from absl import flags

from avjax import errors
from avjax.data import folds as folds_lib

USAGE = 2
FAILURE = 1
INTERRUPTED = 130


def _usage_errors() -> tuple[type[BaseException], ...]:
  return (errors.UsageError, ValueError, app.UsageError)


def _failures() -> tuple[type[BaseException], ...]:
  from avjax import train_state
  from avjax.data import builder_lib
  # OSError covers a missing or read-only data dir or workdir (PermissionError, EROFS),
  # a workdir that is a file, and other file-system failures: their messages name the path.
  return (errors.Failure, OSError, builder_lib.ManualDirError, train_state.CheckpointNotFound,
          train_state.CheckpointRestoreError, FloatingPointError)


def exit_status(e: BaseException) -> int | None:
  """USAGE or FAILURE for the errors reported as one line, None for the others (bugs)."""
  if isinstance(e, errors.UsageError):
    return USAGE
  if isinstance(e, errors.Failure) or errors.storage_errno(e) is not None:
    return FAILURE
  if isinstance(e, _failures()):
    return FAILURE
  if isinstance(e, _usage_errors()):
    return USAGE
  return None


def _root_message(e: BaseException) -> str:
  """One line from `e`'s chain of causes: the innermost exception that is neither absl's
  flag-parsing wrapper nor a bare KeyError (config_dict's AttributeError above it says
  'Did you mean ...'). A message that embeds a traceback (config_flags' "Error whilst
  parsing config file") is reduced to its last line, the config file's own error."""
  chain = list(errors.chain(e))
  ours = [x for x in chain if isinstance(x, errors.AvjaxError)]
  if ours:   # avjax's own message already names the file and what to do
    return " ".join(str(ours[0]).split())
  useful = [x for x in chain if not isinstance(x, (flags.Error, KeyError))] or chain
  e = useful[-1]
  named = [x for x in chain if isinstance(x, flags.IllegalFlagValueError)
           and not isinstance(e, AttributeError) and str(e).strip() in str(x)
           and "Traceback (most recent call last)" not in str(x)]
  if named:   # the flag's own line prefixes the bare value error: "flag --checkpoint=bset: ..."
    return " ".join(str(named[0]).split())
  text = str(e).strip()
  if "Traceback (most recent call last)" in text:
    text = [line for line in text.splitlines() if line.strip()][-1]
    text = re.sub(r"^\s*[A-Za-z_.]*(Error|Exception): ", "", text)
  if isinstance(e, AttributeError) and "attribute 'get_config'" in text:
    return "the --config file defines no get_config() (see configs/ravdess.py)"
  if isinstance(e, AttributeError):   # config_dict's: the key quoted, then "Did you mean"
    unescaped = text.replace("\\'", "'").replace("\\n", "\n")
    m = re.match(r"""^["']*([\w.]+)["']*\s*(.*?)["']*$""", unescaped, re.S)
    if m:
      text = f"unknown config field '{m.group(1)}'. {m.group(2)}".strip()
  return " ".join(text.split()) or type(e).__name__


def define_workdir(help_text: str, flag_values=flags.FLAGS) -> None:
  """The required `--workdir` flag; an empty one (`--workdir=$UNSET`) is refused, as it
  would mean the current directory."""
  flags.DEFINE_string("workdir", None, help_text, flag_values=flag_values)
  flags.mark_flag_as_required("workdir", flag_values=flag_values)
  flags.register_validator(
      "workdir", lambda v: v is None or bool(v.strip()),
      message="--workdir is empty (an unset shell variable?): give a directory",
      flag_values=flag_values)


def loaded_config(flag_values=flags.FLAGS):
  """`--config`'s ConfigDict, loaded now: a file that does not load is a usage error."""
  try:
    config = flag_values.config
    config.dataset  # noqa: B018  (the first access loads it)
  except OSError as e:   # config_flags defers a config file that failed to load
    raise app.UsageError(f"--config: {_root_message(e)}") from None
  return config


def parse_folds(items, flag: str = "--folds") -> tuple[int, ...]:
  """Test folds from a flag (comma-separated text or a list of strings), each of 0 to 9
  once; app.UsageError naming the flag otherwise."""
  text = items if isinstance(items, str) else ",".join(items)
  try:
    folds = tuple(int(f) for f in text.split(","))
  except ValueError:
    folds = ()
  last = folds_lib.NUM_FOLDS - 1
  if not folds or len(set(folds)) != len(folds) or not all(0 <= f <= last for f in folds):
    raise app.UsageError(f"{flag}={text}: expected comma-separated test folds, each of 0 to "
                         f"{last} once, e.g. {flag}=0,3")
  return folds


def _verbose() -> bool:
  try:
    return int(flags.FLAGS["verbosity"].value) >= 1
  except (KeyError, flags.UnparsedFlagAccessError):
    return False


def _fail(status: int, message: str) -> None:
  sys.stderr.write(f"error: {message}\n")
  sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad flag or config (an unknown field, a config file
  that raises) as one `error:` line and status 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001  (absl and config_flags raise many types)
    if any(a.startswith("--verbosity=") and a.split("=", 1)[1] not in ("0", "-1")
           for a in argv):
      raise
    _fail(USAGE, _root_message(e) + "\n  (--helpshort lists the flags)")
  return []


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)` with user errors as one line (see the module docstring)."""

  def wrapped(argv):
    errors.install_thread_hook()
    try:
      main(argv)
    except KeyboardInterrupt as e:
      if _verbose():
        raise
      line = str(e) if isinstance(e, errors.Interrupted) else \
          "interrupted; rerun the same command to resume"
      sys.stderr.write(line + "\n")
      sys.stderr.flush()
      sys.exit(INTERRUPTED)
    except Exception as e:  # noqa: BLE001  (sorted by exit_status; the rest re-raised)
      status = exit_status(e)
      if status is None or _verbose():
        raise
      _fail(status, _root_message(e))

  app.run(wrapped, flags_parser=parse_flags)
