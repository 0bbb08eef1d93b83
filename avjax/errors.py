"""avjax's error types, in one place: what the command lines report as one `error:` line
and with which exit status (`avjax.cli` maps them).

  UsageError        bad input: a config value, a flag, a workdir or file that cannot be
                    used as given (exit status 2). A ValueError, as the config checks'.
  CorruptFileError  a UsageError: a file avjax wrote earlier does not read back; the
                    message names the file and the command that repairs it.
  Failure           the input was fine but the run could not finish (exit status 1).
  StorageError      a Failure and an OSError: a file or directory could not be written
                    (a full disk, a read-only mount, no permission, an I/O error); the
                    message names the path and the errno's meaning.
  FoldsHeld         a Failure: every fold a run was asked for is held by other processes.
  Interrupted       a KeyboardInterrupt (Ctrl-C) with the line to print (exit status 130).

Only the standard library here: the command lines import it before JAX.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import threading

# The errnos of a file system that refuses a write, and what to do about each.
STORAGE_ERRNOS = {
    errno.ENOSPC: "free some space, then rerun the same command",
    errno.EDQUOT: "free some space or raise the quota, then rerun the same command",
    errno.EROFS: "the file system is mounted read-only: use a writable directory",
    errno.EACCES: "check the permissions of the directory",
    errno.EPERM: "check the permissions of the directory",
    errno.EIO: "the device reported an I/O error: check the disk",
}
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)|\[Errno (\d+)\]")


class AvjaxError(Exception):
  """Base of the errors reported as one line."""


class UsageError(AvjaxError, ValueError):
  """Bad input (exit status 2)."""


class CorruptFileError(UsageError):
  """A file avjax wrote earlier does not read back: names the file and its repair."""

  def __init__(self, path: str, reason: str, repair: str):
    self.path, self.reason, self.repair = path, reason, repair
    super().__init__(f"{path} cannot be read ({reason}); {repair}")


class Failure(AvjaxError):
  """The run could not finish although its input was fine (exit status 1)."""


class StorageError(Failure, OSError):
  """`path` could not be written: a full disk, a read-only file system, no permission,
  an I/O error. str() names the path, the errno's meaning and what to do."""

  def __init__(self, path: str, code: int, what: str | None = "write"):
    OSError.__init__(self, code, os.strerror(code), path)
    self.what = what   # None: the operation is not known

  def __str__(self) -> str:
    hint = STORAGE_ERRNOS.get(self.errno)
    where = f"cannot {self.what} {self.filename}" if self.what else str(self.filename)
    return f"{where}: {self.strerror}" + (f"; {hint}" if hint else "")


class FoldsHeld(Failure):
  """Every fold a run was asked for is held by another process: nothing was done."""


class Interrupted(KeyboardInterrupt):
  """Ctrl-C, with the one line to print (`str(e)`)."""


def chain(e: BaseException):
  """`e` and its causes and contexts, outermost first."""
  seen = []
  while e is not None and e not in seen:
    seen.append(e)
    yield e
    e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def storage_errno(e: BaseException) -> int | None:
  """The errno of a file system's refusal behind `e`, or None. An OSError in the chain
  with one of STORAGE_ERRNOS; else the code C libraries put in their messages
  (tensorstore, under orbax: `ValueError: RESOURCE_EXHAUSTED: ... No space left on
  device [os_error_code='28']`) or the errno's text itself."""
  for x in chain(e):
    if isinstance(x, OSError) and x.errno in STORAGE_ERRNOS:
      return x.errno
  for x in chain(e):
    text = str(x)
    for m in _OS_ERROR_CODE.finditer(text):
      code = int(m.group(1) or m.group(2))
      if code in STORAGE_ERRNOS:
        return code
    for code in STORAGE_ERRNOS:
      if os.strerror(code) in text:
        return code
    if "RESOURCE_EXHAUSTED" in text and "memory" not in text.lower():
      return errno.ENOSPC
  return None


def storage_path(e: BaseException, default: str) -> str:
  """The file an OSError in `e`'s chain names, else `default`."""
  for x in chain(e):
    if isinstance(x, OSError) and x.filename:
      return os.fsdecode(x.filename)
  return default


def as_storage_error(e: BaseException, path: str,
                     what: str | None = "write") -> StorageError | None:
  """A StorageError for `e` (naming the file it names, else `path`) when `e` is a file
  system's refusal, else None."""
  if isinstance(e, StorageError):
    return e
  code = storage_errno(e)
  if code is None:
    return None
  return StorageError(storage_path(e, path), code, what)


def remove_quietly(path: str) -> None:
  """Removes a file or directory tree if it exists (best effort: cleaning up after a
  failed write must not hide the failure)."""
  try:
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path, ignore_errors=True)
    else:
      os.remove(path)
  except OSError:
    pass


_BACKGROUND: list[int] = []   # errnos of storage errors that ended background threads


def background_errno() -> int | None:
  """The errno of the first file-system refusal that ended a background thread (with
  `install_thread_hook`), or None."""
  return _BACKGROUND[0] if _BACKGROUND else None


def install_thread_hook() -> None:
  """A background thread (a library's writer) ended by a file system's refusal prints
  no traceback: its errno is kept for the main thread, which reports the failure as
  one line when it next writes. Other exceptions keep Python's report."""
  previous = threading.excepthook
  if getattr(previous, "_avjax", False):
    return

  def hook(args):
    code = storage_errno(args.exc_value) if args.exc_value is not None else None
    if code is None:
      previous(args)
    else:
      _BACKGROUND.append(code)

  hook._avjax = True
  threading.excepthook = hook
