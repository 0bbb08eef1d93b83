"""What the benchmarks share: the machine a number was measured on, timers, memory peaks,
XLA's analyses of a compiled program, JSON reports, the worker subprocess, Markdown tables
and the generated blocks of BENCHMARKS.md.

jax is imported inside the functions that need it: benchmark_build.py's decoding workers
import this module and must start as fast as before.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def script(name: str) -> pathlib.Path:
  """scripts/NAME.py: the command line of benchmarks/NAME.py, which its workers rerun."""
  return ROOT / "scripts" / f"{name}.py"


# --------------------------------------------------------------------------- machine


def processor() -> str:
  """The processor as Python's platform module names it (often just the architecture)."""
  return platform.processor() or platform.machine()


def cpu_model() -> str:
  """The CPU's model name from /proc/cpuinfo, else `processor()`."""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return processor()


def utc_now() -> str:
  """'2026-12-01 18:46 UTC'."""
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def loadavg() -> list[float]:
  """The 1, 5 and 15 minute load averages, rounded to 0.01."""
  return [round(x, 2) for x in os.getloadavg()]


def command_line() -> str:
  """This process's command, the interpreter relative to the working directory when
  inside it ('.venv/bin/python scripts/benchmark.py ...'), else 'python'."""
  return " ".join([os.path.relpath(sys.executable, os.getcwd())
                   if sys.executable.startswith(os.getcwd()) else "python"] + sys.argv)


def machine_info() -> dict:
  """The machine, software, date and load of a measurement."""
  import jax
  devices = jax.devices()
  return dict(
      cpu_model=cpu_model(), cpu_cores=os.cpu_count(),
      memory_gib=round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
      backend=jax.default_backend(), device_kind=devices[0].device_kind,
      device_count=len(devices), process_count=jax.process_count(),
      jax_version=jax.__version__, python=sys.version.split()[0],
      xla_flags=os.environ.get("XLA_FLAGS", ""), date=utc_now(), loadavg=loadavg(),
      command=command_line())


def log(msg: str) -> None:
  """A progress line on stderr, with the time (stdout is for the report)."""
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- timers


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  """(fn(), its wall-clock seconds): a compilation, a first call, a whole run."""
  t0 = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - t0


def time_calls(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> list[float]:
  """Seconds of `repeats` calls of fn(), each until its result is ready on the device,
  after one untimed call when `warmup`."""
  import jax
  if warmup:
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def median_time(fn: Callable[[], Any], repeats: int, warmup: bool = True) -> float:
  """The median of `time_calls`."""
  return statistics.median(time_calls(fn, repeats, warmup))


# --------------------------------------------------------------------------- memory, XLA


def cost_analysis(compiled) -> dict:
  """XLA's cost analysis of a compiled program as one dict ('flops', 'bytes accessed',
  ...); some jax versions return a list of one per program."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return cost or {}


def xla_cost(compiled) -> dict:
  """FLOPs and bytes accessed of a compiled program (XLA's cost analysis)."""
  try:
    cost = cost_analysis(compiled)
  except Exception as e:  # not every backend implements it
    return {"cost_analysis_error": str(e)[:200]}
  return {"xla_flops": float(cost.get("flops", 0.0)) or None,
          "xla_bytes_accessed": float(cost.get("bytes accessed", 0.0)) or None}


def xla_memory(compiled) -> dict:
  """XLA's compiled memory analysis in MiB (what the program needs at its peak)."""
  try:
    m = compiled.memory_analysis()
  except Exception:
    m = None
  if m is None:
    return {}
  args, outs, temp = m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes
  alias = getattr(m, "alias_size_in_bytes", 0)
  return dict(xla_arguments_mib=args / 2**20, xla_outputs_mib=outs / 2**20,
              xla_temporaries_mib=temp / 2**20,
              xla_peak_estimate_mib=(args + outs + temp - alias) / 2**20)


def device_memory_mib(key: str) -> float | None:
  """`key` of the first local device's memory_stats() in MiB ('peak_bytes_in_use',
  'bytes_limit'); None where not reported (CPU)."""
  import jax
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:
    stats = None
  if stats and key in stats:
    return stats[key] / 2**20
  return None


def device_peak_mib() -> float | None:
  """Peak bytes in use on the first local device (GPU/TPU); None where not reported (CPU)."""
  return device_memory_mib("peak_bytes_in_use")


def max_rss_mib() -> float:
  """The process's peak resident memory."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --------------------------------------------------------------------------- JSON, workers


def write_json(path: str | os.PathLike, obj: Any) -> None:
  """A report as indented JSON (values JSON lacks as their str()), ending in a newline."""
  pathlib.Path(path).write_text(json.dumps(obj, indent=1, default=str) + "\n")


# The accelerator memory setting the user gave, before a driver turns preallocation off.
_USER_PREALLOCATE = os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE")


def leave_device_memory_to_workers() -> None:
  """A driver measures nothing itself: it does not preallocate the accelerator's memory,
  so that its workers (which run as the user set) can."""
  os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


def run_worker_subprocess(argv: Sequence[str], devices: int = 0, timeout: float = 1800) -> dict:
  """Runs `python argv... --worker_out FILE` in a fresh process and returns the JSON it
  wrote to FILE (`write_worker_result`), or {'error': ...} (a timeout, an exit status, the
  last error line). `devices` > 0: that many devices (CUDA_VISIBLE_DEVICES on a GPU,
  XLA's host-platform device count on a CPU)."""
  env = dict(os.environ)
  env.pop("XLA_PYTHON_CLIENT_PREALLOCATE", None)
  if _USER_PREALLOCATE is not None:
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = _USER_PREALLOCATE
  if devices:
    import jax
    if jax.default_backend() == "gpu":
      env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(devices))
    else:
      flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
      env["XLA_FLAGS"] = (flags + f" --xla_force_host_platform_device_count={devices}").strip()
  with tempfile.NamedTemporaryFile("r", suffix=".json") as fh:
    cmd = [sys.executable, *argv, "--worker_out", fh.name]
    t0 = time.perf_counter()
    try:
      proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
      return dict(error=f"timed out after {timeout:.0f} s", wall_s=time.perf_counter() - t0)
    text = pathlib.Path(fh.name).read_text()
  if proc.returncode != 0 or not text:
    why = "killed (out of memory?)" if proc.returncode in (-9, 137) else f"exit {proc.returncode}"
    errors = [x for x in proc.stderr.splitlines() if re.match(r"^\w*(Error|Exception)\b", x)]
    return dict(error=f"{why}: {(errors or [proc.stderr.strip()[-300:]])[-1]}",
                stderr_tail=proc.stderr[-2000:], wall_s=time.perf_counter() - t0)
  out = json.loads(text)
  out["wall_s"] = time.perf_counter() - t0
  return out


def write_worker_result(path: str, result: dict) -> None:
  """A worker's side of `run_worker_subprocess`: its result, to the --worker_out file."""
  pathlib.Path(path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- Markdown


def mib(x) -> str:
  return "–" if x is None else f"{x:,.0f} MiB"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A markdown table: `header` [C] column names, `rows` [R][C] cells (str() of
  each; "" an empty cell), every column left-aligned. No trailing newline."""

  def line(cells):
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"

  return "\n".join([line(header), "|" + "---|" * len(header)] + [line(r) for r in rows])


def update_markdown(path: pathlib.Path, preset: str, body: str) -> None:
  """Replaces the generated block of `preset` in `path` (between `<!-- benchmark.py:PRESET
  begin -->` and `<!-- benchmark.py:PRESET end -->`) with `body`, or appends it under a
  heading; the rest of the file is kept as it is."""
  begin = f"<!-- benchmark.py:{preset} begin -->"
  end = f"<!-- benchmark.py:{preset} end -->"
  block = f"{begin}\n{body}{end}"
  text = path.read_text() if path.exists() else "# Benchmarks\n"
  if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    text = head + block + tail
  else:
    text = text.rstrip() + f"\n\n## Generated: preset `{preset}`\n\n{block}\n"
  path.write_text(text)
