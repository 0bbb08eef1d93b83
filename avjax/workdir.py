"""The layout of a workdir, in one place: every file name, the fold directories,
the recorded config, the done markers and atomic writes.

  <workdir>/config.json               the run's complete config (`record_config`)
  <workdir>/fold_<k>/config.json      the config fold k was trained with
  <workdir>/results.json, results.md  aggregated over the finished folds
  <workdir>/figures/                  the paper's figures (PNG)
  <workdir>/fold_<k>/checkpoints/     orbax CheckpointManager (state + data iterator)
  <workdir>/fold_<k>/metrics.jsonl    training metrics, plus TensorBoard events
  <workdir>/fold_<k>/predictions.npz  per-gate KNN predictions (docs/results_schema.md)
  <workdir>/fold_<k>/reference_bank.npz   training embeddings for avjax.predict
  <workdir>/fold_<k>/fold_info.json   written last: its presence marks the fold done
  <workdir>/fold_<k>/checkpoints.bad/ checkpoint steps that failed to restore
  <workdir>/fold_<k>/lock.json        held while a process trains and evaluates the fold

Every file is written to `<name>.tmp` and renamed, so an interrupted run never
leaves a file that looks complete; a write the file system refuses (a full disk, a
read-only mount) removes its `.tmp` and raises `errors.StorageError` naming the file,
and a `.tmp` left by a killed process is removed by the next process that takes the
fold's lock (`clean_temp`). A recorded file that does not read back raises
`errors.CorruptFileError`, naming it and the command that repairs it.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time

import ml_collections
import numpy as np

from avjax import config_lib
from avjax import errors
from avjax import protocol

CONFIG = "config.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FIGURES = "figures"
CHECKPOINTS = "checkpoints"
METRICS = "metrics.jsonl"
PREDICTIONS = "predictions.npz"
REFERENCE_BANK = "reference_bank.npz"
FOLD_INFO = "fold_info.json"
BAD_CHECKPOINTS = "checkpoints.bad"
LOCK = "lock.json"   # steps that failed to restore, moved out of orbax's way
_FOLD_DIR = re.compile(r"fold_(\d+)")


def fold_dir(workdir: str, fold: int) -> str:
  return os.path.join(workdir, f"fold_{int(fold)}")


def fold_of_dir(path: str) -> int | None:
  """k of a `fold_k` directory name, or None."""
  m = _FOLD_DIR.fullmatch(os.path.basename(os.path.normpath(path)))
  return int(m.group(1)) if m else None


def checkpoint_dir(fold_dir_: str) -> str:
  return os.path.abspath(os.path.join(fold_dir_, CHECKPOINTS))


def fold_is_done(fold_dir_: str) -> bool:
  """A fold is done when its evaluation (predictions + fold_info.json) is on disk."""
  return (os.path.isfile(os.path.join(fold_dir_, FOLD_INFO))
          and os.path.isfile(os.path.join(fold_dir_, PREDICTIONS)))


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

  def __init__(self, fold_dir_: str, take_over_foreign: bool = False):
    self.path = os.path.join(fold_dir_, LOCK)
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
    """Removes the stale lock whose bytes are `raw`; a lock that another process put in
    its place meanwhile is put back."""
    aside = f"{self.path}.stale-{os.getpid()}"
    try:
      os.replace(self.path, aside)
    except FileNotFoundError:
      return
    try:
      with open(aside, "rb") as f:
        moved = f.read()
      if moved != raw:   # not the one judged stale: another process's fresh lock
        try:
          os.link(aside, self.path)
        except OSError:
          pass
    finally:
      errors.remove_quietly(aside)

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
    m = re.fullmatch(re.escape(LOCK) + r"\.(?:tmp|stale)-(\d+)", name)
    if name.endswith(".tmp") or (m and not _alive(int(m.group(1)))):
      errors.remove_quietly(os.path.join(fold_dir_, name))
      removed.append(name)
  return removed


def move_aside(path: str, folder: str) -> str:
  """Moves `path` into `folder` (created), under a name not taken yet; returns it."""
  os.makedirs(folder, exist_ok=True)
  base = os.path.join(folder, os.path.basename(os.path.normpath(path)))
  target, n = base, 1
  while os.path.exists(target):
    target, n = f"{base}.{n}", n + 1
  os.replace(path, target)
  return target


def write_atomic(path: str, write) -> None:
  """write(tmp) then os.replace(tmp, path); a refused write removes the temporary file
  and raises errors.StorageError naming `path`."""
  tmp = path + ".tmp"
  try:
    write(tmp)
    os.replace(tmp, path)
  except OSError as e:
    errors.remove_quietly(tmp)
    raise (errors.as_storage_error(e, path) or e) from e


def write_text(path: str, text: str) -> None:
  """Writes `text` atomically (a temporary file, then os.replace)."""
  def write(tmp):
    with open(tmp, "w") as f:
      f.write(text)
  write_atomic(path, write)


def write_json(path: str, obj, **kwargs) -> None:
  write_text(path, json.dumps(obj, **kwargs))


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  """np.savez atomically (no pickle: object arrays are refused when read back)."""
  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
  write_atomic(path, write)


def read_json(path: str, repair: str):
  """json.load of a file avjax wrote; errors.CorruptFileError (naming `path` and
  `repair`, the command that mends it) when it does not parse."""
  try:
    with open(path, "rb") as f:
      return json.loads(f.read())
  except (ValueError, UnicodeDecodeError) as e:   # JSONDecodeError, an empty file
    reason = "empty" if not os.path.getsize(path) else f"not valid JSON: {e}"
    raise errors.CorruptFileError(path, reason, repair) from e


def save_config(config: ml_collections.ConfigDict, workdir: str, name: str = CONFIG) -> str:
  """Writes `config`, completed from the base config, as `workdir/<name>`."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise (errors.as_storage_error(e, workdir, "create") or e) from e
  path = os.path.join(workdir, name)
  write_text(path, config_lib.complete(config).to_json_best_effort(indent=2, sort_keys=True))
  return path


class ConfigMismatchError(errors.UsageError):
  """A run's config differs from the one its workdir (or fold) was trained with."""


def _describe_diff(diff) -> str:
  def show(v):
    return "(absent)" if not isinstance(v, (str, int, float, bool, list, type(None))) else repr(v)
  return "\n".join(f"  {field}: recorded {show(old)}, now {show(new)}" for field, old, new in diff)


def record_config(config: ml_collections.ConfigDict, workdir: str, allow_change: bool = False,
                  path: str | None = None, write: bool = True) -> str:
  """Records `config` as `path` (default `workdir/config.json`) on a first run; on a
  later run checks it against the recorded one and raises ConfigMismatchError,
  before writing anything, when a field that changes the model, data or protocol
  differs (`protocol.RUN_ONLY_FIELDS` may). With `allow_change` the new config
  replaces the recorded one, which is kept as `config.<its hash>.json` beside it.
  `write=False` only checks (the processes other than 0 of a multi-host run)."""
  path = path or os.path.join(workdir, CONFIG)
  if os.path.isfile(path):
    recorded = config_lib.complete(read_json(path, config_repair(path)), recorded=True)
    diff = protocol.config_diff(recorded, config)
    if not diff:
      return path
    if not allow_change:
      raise ConfigMismatchError(
          f"{path} was recorded with another configuration; these fields differ:\n"
          f"{_describe_diff(diff)}\nResults in this workdir were produced with the recorded "
          "values. Use another --workdir, rerun with the recorded values, or pass "
          "--config_mismatch=ok to train the remaining folds with the new values (each fold "
          "records the config it was trained with).")
    if not write:
      return path
    old = os.path.join(os.path.dirname(path), f"config.{protocol.config_hash(recorded)}.json")
    os.replace(path, old)
  if not write:
    return path
  return save_config(config, os.path.dirname(path), name=os.path.basename(path))


def load_fold_config(workdir: str, fold: int) -> ml_collections.ConfigDict:
  """The config fold `fold` was trained with (`fold_k/config.json`), else the workdir's."""
  path = os.path.join(fold_dir(workdir, fold), CONFIG)
  if os.path.isfile(path):
    return config_lib.complete(read_json(path, config_repair(path)), recorded=True)
  return load_config(workdir)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The recorded config of `workdir`, completed from the base config (a config.json
  written by an older avjax lacks the fields added since; they get their defaults,
  or for those that changed behaviour the value that run had,
  `config_lib.RECORDED_BEFORE`)."""
  path = os.path.join(workdir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} an avjax workdir (written by avjax.main)?")
  return config_lib.complete(read_json(path, config_repair(path)), recorded=True)


def config_repair(path: str) -> str:
  """What mends a recorded config.json that does not read back (it is a record, not
  derived from anything: nothing rebuilds it)."""
  here = os.path.dirname(os.path.abspath(path))
  fold = fold_of_dir(here)
  if fold is None:
    return ("remove it and rerun python -m avjax.main with the run's --config and "
            f"--workdir={here}: it records the config again (each fold is still checked "
            "against its own fold_k/config.json)")
  workdir = os.path.dirname(here)
  return (f"if fold {fold} was trained with the workdir's config, copy "
          f"{os.path.join(workdir, CONFIG)} over it; otherwise remove {here} and rerun "
          f"python -m avjax.main to train fold {fold} again")
