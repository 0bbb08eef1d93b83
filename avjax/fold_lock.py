"""A fold's lock (`fold_<k>/lock.json`): one process trains and evaluates a fold at a time,
also across hosts sharing a workdir; stale locks (a dead process, a reused pid, an
unreadable file) are taken over with a notice."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
import time

from avjax import errors
from avjax import workdir as workdir_lib


class FoldLocked(RuntimeError):
  """Another live process holds the fold's lock (or one of another host, which cannot
  be checked from here). `holder`: the lock's record; `foreign`: of another host."""

  def __init__(self, message: str, holder: dict | None = None, foreign: bool = False):
    super().__init__(message)
    self.holder = holder or {}
    self.foreign = foreign


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:   # exists, owned by another user
    return True
  except (OverflowError, ValueError):   # not a pid at all
    return False
  return True


def _read_proc(path: str) -> str | None:
  try:
    with open(path, "rb") as f:
      return f.read().decode("utf-8", "replace")
  except OSError:
    return None


def _start_ticks(pid: int) -> int | None:
  """The start time of process `pid` in clock ticks since boot (/proc/<pid>/stat's
  22nd field), or None where /proc does not say."""
  stat = _read_proc(f"/proc/{pid}/stat")
  if not stat or ")" not in stat:
    return None
  fields = stat.rsplit(")", 1)[1].split()   # after the command name, which may hold spaces
  try:
    return int(fields[19])                  # field 22; fields[0] is field 3
  except (IndexError, ValueError):
    return None


def _boot_id() -> str | None:
  text = _read_proc("/proc/sys/kernel/random/boot_id")
  return text.strip() if text else None


def _start_time(pid: int) -> float | None:
  """The start time of process `pid` (seconds since the epoch), or None."""
  ticks, stat = _start_ticks(pid), _read_proc("/proc/stat")
  if ticks is None or not stat:
    return None
  boot = [line.split()[1] for line in stat.splitlines() if line.startswith("btime ")]
  if not boot:
    return None
  return int(boot[0]) + ticks / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int) -> list[str] | None:
  text = _read_proc(f"/proc/{pid}/cmdline")
  return None if text is None else [a for a in text.split("\0") if a]


def _looks_like_avjax(cmdline: list[str]) -> bool:
  """Whether a process that wrote no `pid_start` (a lock of an earlier avjax) could be
  avjax: a Python interpreter, or a command naming avjax."""
  return any("avjax" in a for a in cmdline) or (
      bool(cmdline) and os.path.basename(cmdline[0]).startswith("python"))


def _lock_time(info: dict) -> float | None:
  if isinstance(info.get("time"), (int, float)):
    return float(info["time"])
  try:
    return time.mktime(time.strptime(str(info.get("start")), "%Y-%m-%dT%H:%M:%S%z"))
  except ValueError:
    return None


def stale_reason(info: dict | None, host: str | None = None) -> str | None:
  """Why the lock record `info` (None: empty or unreadable) no longer holds its fold, or
  None when it does: a lock of another host is never judged stale from here. A lock of
  this host is stale when its process is gone, when the host restarted since, or when
  its pid now belongs to another process: one that started later than recorded
  (`pid_start`, or for a lock without it, after the lock's time) or that is not avjax
  (/proc/<pid>/cmdline)."""
  host = host or socket.gethostname()
  if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or not info.get("host"):
    return "it is empty or unreadable (a process died while writing it)"
  pid = info["pid"]
  if info["host"] != host:
    return None
  if not _alive(pid):
    return f"it was left by process {pid} of this host, which is no longer running"
  boot = _boot_id()
  if info.get("boot_id") and boot and info["boot_id"] != boot:
    return f"it was written before this host restarted (process {pid} is another one now)"
  ticks = _start_ticks(pid)
  if isinstance(info.get("pid_start"), int) and ticks is not None:
    if ticks != info["pid_start"]:
      return f"process {pid} of this host is another process now (the pid was reused)"
    return None
  started, written = _start_time(pid), _lock_time(info)
  if started is not None and written is not None and started > written + 2:
    return (f"process {pid} of this host started after the lock was written (the pid was "
            "reused)")
  cmdline = _cmdline(pid)
  if cmdline is not None and not _looks_like_avjax(cmdline):
    return f"process {pid} of this host is not avjax ({' '.join(cmdline)[:80]})"
  return None


class FoldLock:
  """`fold_dir/lock.json` ({host, pid, start, time, boot_id, pid_start, argv}), created
  atomically and whole (written to a temporary file, then hard-linked into place), so
  that two processes sharing a workdir never train one fold together. A stale lock
  (`stale_reason`: empty or unreadable, of a dead process of this host, of a pid that
  another process now has) is taken over with a notice. A live process's lock raises
  FoldLocked; so does another host's (whose processes cannot be checked from here),
  unless `take_over_foreign` (--take_over_locks: its process is known to be gone, e.g.
  a job requeued on another host). Use as a context manager; the lock is removed on exit."""

  # An unreadable lock younger than this may be one being written (file systems without
  # hard links): read again before taking it over.
  GRACE_S = 2.0
  # A takeover holds its mutex for milliseconds; one older than this was left by a
  # process killed meanwhile.
  TAKEOVER_STALE_S = 30.0

  def __init__(self, fold_dir_: str, take_over_foreign: bool = False):
    self.path = os.path.join(fold_dir_, workdir_lib.LOCK)
    self.held = False
    self.take_over_foreign = take_over_foreign

  def _record(self) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "time": time.time(),
                       "boot_id": _boot_id(), "pid_start": _start_ticks(os.getpid()),
                       "argv": sys.argv[:8]})

  def _create(self) -> bool:
    """Creates the lock, whole; False when one exists. StorageError when it cannot be
    written."""
    tmp = f"{self.path}.tmp-{os.getpid()}"
    try:
      with open(tmp, "w") as f:
        f.write(self._record())
      try:
        os.link(tmp, self.path)
        return True
      except FileExistsError:
        return False
      except OSError as e:
        if errors.storage_errno(e) is not None:
          raise
      # No hard links here (some network or FUSE file systems): O_EXCL, then the record.
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        return False
      try:
        with os.fdopen(fd, "w") as f:
          f.write(self._record())
      except OSError:
        errors.remove_quietly(self.path)
        raise
      return True
    except OSError as e:
      raise (errors.as_storage_error(e, self.path) or e) from e
    finally:
      errors.remove_quietly(tmp)

  def _read(self) -> tuple[dict | None, bytes | None]:
    """(the parsed record or None, the raw bytes or None when there is no lock)."""
    try:
      with open(self.path, "rb") as f:
        raw = f.read()
    except FileNotFoundError:
      return None, None
    except OSError:
      return None, b""
    try:
      info = json.loads(raw)
    except ValueError:
      return None, raw
    return (info if isinstance(info, dict) else None), raw

  def holder(self) -> dict:
    return self._read()[0] or {}

  def _age(self) -> float:
    try:
      return time.time() - os.path.getmtime(self.path)
    except OSError:
      return 0.0

  def _take_away(self, raw: bytes) -> None:
    """Removes the stale lock whose bytes are `raw`, holding `lock.json.takeover`
    (created exclusively) meanwhile: one process at a time takes a stale lock over and
    removes it only while it still holds `raw`, so a fresh lock that another process
    put in its place is never displaced (two holders of one fold)."""
    mutex = f"{self.path}.takeover"
    try:
      os.close(os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:   # another process is taking it over: read the lock again
      with contextlib.suppress(OSError):
        if time.time() - os.path.getmtime(mutex) > self.TAKEOVER_STALE_S:
          errors.remove_quietly(mutex)    # left by a process killed while taking over
      time.sleep(0.05)
      return
    except OSError as e:
      raise (errors.as_storage_error(e, mutex) or e) from e
    try:
      with open(self.path, "rb") as f:
        current = f.read()
      if current == raw:
        os.remove(self.path)
    except FileNotFoundError:
      pass
    finally:
      errors.remove_quietly(mutex)

  def acquire(self) -> "FoldLock":
    try:
      os.makedirs(os.path.dirname(self.path), exist_ok=True)
    except OSError as e:
      raise (errors.as_storage_error(e, os.path.dirname(self.path), "create") or e) from e
    waited = False
    for _ in range(5):
      if self._create():
        self.held = True
        return self
      info, raw = self._read()
      if raw is None:   # released meanwhile
        continue
      reason = stale_reason(info)
      if reason and info is None and not waited and self._age() < self.GRACE_S:
        waited = True   # perhaps being written: read it again once it is old enough
        time.sleep(self.GRACE_S - self._age() + 0.1)
        continue
      foreign = reason is None and info is not None and info.get("host") != socket.gethostname()
      if foreign and self.take_over_foreign:
        reason = (f"it is held by process {info.get('pid')} on host {info.get('host')} since "
                  f"{info.get('start')}, and --take_over_locks was given")
      if reason is None:
        info = info or {}
        how = (" (another host: if that process is gone, e.g. a job requeued elsewhere, "
               "rerun with --take_over_locks)" if foreign else "")
        raise FoldLocked(f"{os.path.dirname(self.path)} is held by process {info.get('pid')} "
                         f"on host {info.get('host')} since {info.get('start')} "
                         f"({self.path}){how}", info, foreign)
      print(f"notice: {self.path}: {reason}; taking the fold over", flush=True)
      self._take_away(raw)
    raise FoldLocked(f"could not take {self.path}: other processes keep taking it")

  def release(self) -> None:
    if self.held:
      self.held = False
      try:
        os.remove(self.path)
      except FileNotFoundError:
        pass

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def clean_temp(fold_dir_: str) -> list[str]:
  """Removes the temporary files a killed process left in `fold_dir_` (`<name>.tmp`,
  and `lock.json.tmp-<pid>` / `.stale-<pid>` of processes no longer running); call it
  holding the fold's lock. Returns the names removed."""
  removed = []
  try:
    names = os.listdir(fold_dir_)
  except OSError:
    return removed
  for name in names:
    m = re.fullmatch(re.escape(workdir_lib.LOCK) + r"\.(?:tmp|stale)-(\d+)", name)
    if name.endswith(".tmp") or (m and not _alive(int(m.group(1)))):
      errors.remove_quietly(os.path.join(fold_dir_, name))
      removed.append(name)
  return removed
