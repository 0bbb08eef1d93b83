r"""avjax benchmarks: the real train step, its options, scaling, the model, MWTSM, input and build.

Legend: B clips per (global) batch, T windows, F frames per window, H = W crop
size, S audio samples per window, N clips mined together, D embedding size.

  .venv/bin/python scripts/benchmark.py --preset=cpu_quick --out=bench_cpu.json --update_md
  .venv/bin/python scripts/benchmark.py --preset=gpu --out=bench_gpu.json --update_md
  .venv/bin/python scripts/benchmark.py --sections=models --models_shape=ravdess --models_batch=1

Sections (`--sections`, comma-separated; a preset picks them and their sizes):

* train_step: `steps.make_train_step` (the jitted step with its shardings and
  donated state) on synthetic batches of a given shape: compile time, step time
  (median of `repeats` after a warm-up step), clips/s, peak memory (the device's
  `peak_bytes_in_use` where the backend reports it, else XLA's compiled memory
  analysis), FLOPs per step from XLA's `cost_analysis()` of the compiled step,
  achieved FLOP/s, utilisation against the device's peak (PEAK_FLOPS; "n/a" on
  CPUs), and the ratio of XLA's FLOPs to the cost model of docs/design.md
  (0.37 TFLOP per RAVDESS clip per step, full widths, scaled by T F H W).
  A case with `compile_only` compiles without running (FLOPs and memory of a
  shape that does not fit the machine, e.g. B = 40 on a 24 GB CPU box).
* options: the same step with one option changed (bf16 compute, remat, no
  donation), each against its baseline.
* scaling: step time against T (1, 2, 4, 8) and against B; the growth ratio
  time(x_max) / time(x_min) against x_max / x_min ("linear" when no larger
  than the size ratio times `--linear_tolerance`).
* data_parallel: the same global batch on 1, 2, 4 devices; on a CPU host the
  devices are XLA's host-platform devices (XLA_FLAGS=
  --xla_force_host_platform_device_count=N), each count in its own process.
* models (only when named in `--sections`): the gating model alone at a shape
  of SHAPES with MODEL_WIDTHS' widths (`--models_shape`, default the preset's:
  demo for cpu_quick, ravdess for gpu; `--models_batch` and the other
  `--models_*` flags override it): the forward pass as the evaluation runs it
  and forward + backward without the optimiser (`measure_models`), their time,
  XLA's memory estimate, the device peak and the process's RSS.
* mwtsm: `avjax.mining.mwtsm` and batch-hard (jitted), timed; against a
  per-anchor reference miner with agreement of the picks when the caller passes
  one (`main(..., mwtsm_reference=...)`: tests/test_benchmark.py passes
  tests/test_mining.py's `brute_force`; the command line has none).
* input: clips/s of `input_pipeline.create_train_iterator` on the synthetic
  set (built into a temporary data_dir) against the clips/s the train step
  consumes at the demo shape.
* loop: steady seconds per step of the real training loop (`train.train_fold`,
  demo config, synthetic set): the host pipeline, and the device-resident
  dataset (`config.input.cache_on_device`).
* build: decoding clips/s per core of the RAVDESS builder's worker task on
  generated 1280x720 H.264 clips (benchmarks/benchmark_build.py's functions).
* layers (only when named in `--sections`): every convolution of SoundNet-8 and
  I3D alone, forward + backward, in each form of `avjax.models.conv` ('xla',
  'matmul'), at the preset's shapes (benchmarks/benchmark_layers.py), with the form
  `model.conv_impl='auto'` picks: the evidence for its table.

Every train-step case, every device count and the models section runs in a
fresh subprocess (`--worker`), so that the device's peak memory belongs to that
case alone and a case that runs out of memory does not end the run. The JSON
records the machine (CPU model, cores, device kind and count), jax's version,
the command, the date and the load average at the start. `--update_md` rewrites
this preset's generated section of BENCHMARKS.md (between `<!-- benchmark.py:PRESET
begin -->` and `<!-- ... end -->`, appended when missing).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from benchmarks.harness import md_table, mib

# Dense peak FLOP/s by device kind (substring of jax's device_kind) and compute
# dtype. H100 SXM: 989 TFLOP/s bf16 dense on tensor cores, 67 TFLOP/s fp32 on
# the CUDA cores (XLA may use TF32 tensor cores for fp32 convolutions, up to
# 495: fp32 utilisation against 67 can then exceed 1). H200: the H100's
# compute. The PCIe H100 is listed first (its kind also contains "H100").
PEAK_FLOPS = (
    ("H100 PCIe", {"bfloat16": 756e12, "float32": 51e12}),
    ("H100", {"bfloat16": 989e12, "float32": 67e12}),
    ("H200", {"bfloat16": 989e12, "float32": 67e12}),
)
# the cost model of docs/design.md: 0.37 TFLOP per RAVDESS clip per training step (I3D
# forward + backward at 8 windows x 25 frames x 96 x 96, full width).
COST_MODEL_FLOPS_PER_CLIP = 0.37e12
COST_MODEL_SHAPE = dict(T=8, F=25, H=96)

# RAVDESS: 1440 clips in 10 actor folds, four of 180 clips and six of 120, so a test
# fold trains on 1260 or 1320 clips: floor(N / 40) = 31 or 33 steps per epoch; 100 epochs.
RAVDESS_RUN_STEPS = 100 * (4 * 31 + 6 * 33)   # 32,200

SHAPES = {
    # configs/ravdess.py: B = 5 clips x 8 classes, w8_l1_ov (25 fps, 112x112 stored, 96 crop).
    "ravdess": dict(config="ravdess", batch=40, windows=8, frames=25, size=96, samples=22050),
    # configs/demo.py: B = 5 x 4 classes, w4_l1_ov on the synthetic set (8 fps, 32 crop).
    "demo": dict(config="demo", batch=20, windows=4, frames=8, size=32, samples=22050),
    # Test-sized: tests/test_benchmark.py.
    "tiny": dict(config="demo", batch=4, windows=2, frames=4, size=16, samples=5000),
}


def describe(case: dict) -> str:
  """'ravdess:audio_lstm B=40 T=8 F=25 96x96 bfloat16 remat no-donate conv=xla'."""
  arg = case.get("config_arg", "")
  impl = case.get("conv_impl", "auto")
  return (f"{case['shape']}{':' + arg if arg else ''} B={case['batch']} T={case['windows']} "
          f"F={case['frames']} {case['size']}x{case['size']} {case['dtype']}"
          + (" remat" if case["remat"] else "")
          + ("" if case["donate"] else " no-donate")
          + ("" if impl == "auto" else f" conv={impl}")
          + (" (compile only)" if case["compile_only"] else ""))


def make_case(shape: str, **kw) -> dict:
  kw.pop("label", None)
  out = dict(SHAPES[shape], shape=shape, dtype="float32", remat=False, donate=True,
             compile_only=False, config_arg="", conv_impl="auto")
  out.update(kw)
  out["label"] = describe(out)
  return out


PRESETS = {
    # 2-core CPU box, 24 GB: B = 40 at RAVDESS shape does not fit forward + backward
    # (about 70 GB), so it is compiled only; B = 1, 2 run. About 10-15 minutes.
    "cpu_quick": dict(
        sections=("train_step", "options", "scaling", "data_parallel", "mwtsm", "input", "loop",
                  "build"),
        train_step=[make_case("ravdess", compile_only=True),
                    make_case("ravdess", batch=1), make_case("ravdess", batch=2),
                    make_case("ravdess", config_arg="audio_lstm"),
                    make_case("demo")],
        options=[("demo", {}), ("demo", dict(dtype="bfloat16")), ("demo", dict(conv_impl="xla")),
                 ("ravdess_b1", {}), ("ravdess_b1", dict(dtype="bfloat16")),
                 ("ravdess_b1", dict(remat=True)), ("ravdess_b1", dict(donate=False)),
                 ("ravdess_b1", dict(conv_impl="xla")),
                 ("ravdess_audio", {}), ("ravdess_audio", dict(conv_impl="xla"))],
        scaling_windows=dict(shape="demo", batch=4, values=(1, 2, 4, 8)),
        scaling_batch=dict(shape="demo", windows=2, values=(2, 4, 8, 16)),
        data_parallel=dict(shape="demo", batch=8, windows=2, devices=(1, 2, 4)),
        mwtsm=dict(sizes=(40, 160), windows=8, dim=400, repeats=5),
        input=dict(batches=12, prefetch=(1, 2)),
        loop=dict(steps=12, log_every=4),
        build=dict(num_clips=4, workers=(1,)),
        models=dict(shape="demo"),
        layers=dict(shapes=("ravdess", "demo"), repeats=3),
        repeats=2,
    ),
    # One accelerator (H100 / H200): the full RAVDESS shape and its options.
    "gpu": dict(
        sections=("train_step", "options", "scaling", "data_parallel", "mwtsm", "input", "loop",
                  "build"),
        train_step=[make_case("ravdess"), make_case("ravdess", dtype="bfloat16"),
                    make_case("ravdess", batch=80, dtype="bfloat16"), make_case("demo")],
        options=[("ravdess_bf16", {}), ("ravdess_bf16", dict(remat=True)),
                 ("ravdess_bf16", dict(donate=False)), ("ravdess_bf16", dict(dtype="float32"))],
        scaling_windows=dict(shape="ravdess", batch=40, dtype="bfloat16", values=(1, 2, 4, 8)),
        scaling_batch=dict(shape="ravdess", windows=8, dtype="bfloat16", values=(10, 20, 40, 80)),
        data_parallel=dict(shape="ravdess", batch=40, dtype="bfloat16", devices=None),
        mwtsm=dict(sizes=(40, 160, 320), windows=8, dim=400, repeats=20),
        input=dict(batches=30, prefetch=(2, 8)),
        loop=dict(steps=40, log_every=10),
        build=dict(num_clips=32, workers=(1, 8, 16)),
        models=dict(shape="ravdess"),
        layers=dict(shapes=("ravdess",), repeats=10, i3d_windows=320),
        repeats=10,
    ),
    # The test's sizes (seconds).
    "tiny": dict(
        sections=("train_step", "mwtsm"),
        train_step=[make_case("tiny")],
        options=[], mwtsm=dict(sizes=(12,), windows=3, dim=8, repeats=2),
        models=dict(shape="tiny"),
        layers=dict(shapes=("tiny",), networks=("soundnet",), repeats=1),
        repeats=1,
    ),
}
# Sections every preset accepts in --sections but does not run unless named there.
EXTRA_SECTIONS = ("models", "layers")
_OPTION_BASES = {
    "demo": lambda: make_case("demo"),
    "ravdess_b1": lambda: make_case("ravdess", batch=1),
    "ravdess_bf16": lambda: make_case("ravdess", dtype="bfloat16"),
    "ravdess_audio": lambda: make_case("ravdess", config_arg="audio_lstm"),
}


# --------------------------------------------------------------------------- machine


def peak_flops(device_kind: str, dtype: str) -> float | None:
  """Dense peak FLOP/s of one device of `device_kind` at `dtype`, or None (unknown, CPUs)."""
  for key, peaks in PEAK_FLOPS:
    if key.lower() in device_kind.lower():
      return peaks.get(dtype)
  return None


def cost_model_flops(batch: int, windows: int, frames: int, size: int,
                     widths: tuple[float, float]) -> float | None:
  """The FLOPs of docs/design.md per training step, scaled linearly in T, F and H x W; None
  for narrowed models (the model is for the full-width I3D)."""
  if widths != (1.0, 1.0):
    return None
  s = COST_MODEL_SHAPE
  return (COST_MODEL_FLOPS_PER_CLIP * batch * (windows / s["T"]) * (frames / s["F"])
          * (size / s["H"]) ** 2)


# --------------------------------------------------------------------------- train step


def bench_config(case: dict):
  """The ConfigDict of a case: configs/ravdess.py or configs/demo.py (with the case's
  config_arg, e.g. 'audio_lstm'), not pretrained (random weights cost the same),
  with the case's dtype, remat and conv_impl."""
  from configs import demo, ravdess
  config = {"ravdess": ravdess, "demo": demo}[case["config"]].get_config(
      case.get("config_arg") or None)
  config.model.conv_impl = case.get("conv_impl", "auto")
  config.model.pretrained = False
  config.model.dtype = case["dtype"]
  config.model.remat = bool(case["remat"])
  if case["shape"] == "tiny":   # the tests' smoke shape: narrow, and I3D up to Mixed_3b
    config.model.video_width, config.model.audio_width = 0.125, 0.25
    config.model.video_last_block = "Mixed_3b"
    config.model.embed_dim = config.model.lstm_hidden = 16
  return config


def synthetic_batch(batch: int, windows: int, frames: int, size: int, samples: int,
                    num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
  """A host batch as the input pipeline makes it; labels in pairs (2 clips a class
  where the batch allows, so that anchors have positives)."""
  rng = np.random.default_rng(seed)
  return {
      "video": rng.integers(0, 256, (batch, windows, frames, size, size, 3), dtype=np.uint8),
      "audio": rng.uniform(-0.5, 0.5, (batch, windows, samples)).astype(np.float32),
      "label": ((np.arange(batch) // 2) % num_classes).astype(np.int32),
      "window_valid": np.ones((batch, windows), np.float32),
  }


def random_variables(shapes, seed: int = 0):
  """Variables shaped like `shapes` (eval_shape of init), filled from NumPy: same cost
  as trained weights without compiling flax's initialisers."""
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      fan_in = max(1, int(np.prod(s.shape[:-1])))
      return rng.normal(0, 1 / np.sqrt(fan_in), s.shape).astype(s.dtype)
    if "var" in name or "scale" in name:
      return np.ones(s.shape, s.dtype)
    return np.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def make_state(config, model, host_batch: dict, replicated):
  """A replicated TrainState as train_state.create_train_state builds it, with random weights."""
  from avjax import train_state
  from avjax.models import gating
  video, audio = gating.model_inputs(host_batch, config.model.modalities)
  one = lambda x: None if x is None else x[:1, :1]  # noqa: E731
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          one(video), one(audio))
  variables = random_variables(shapes)
  tx = train_state.optimizer_for(config, variables["params"])

  def create(params, batch_stats):
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                                   batch_stats=batch_stats)

  return jax.jit(create, out_shardings=replicated)(variables["params"],
                                                   variables.get("batch_stats", {}))


def measure_train_step(case: dict, repeats: int = 3) -> dict:
  """Compiles and times the real jitted train step on a synthetic batch of `case`.

  `case`: a dict from `_case` (shape, batch, windows, frames, size, samples,
  dtype, remat, donate, compile_only). With donate=False the step is jitted
  like steps.make_train_step but without donate_argnums."""
  from avjax import parallel
  from avjax import steps
  from avjax.models import gating
  config = bench_config(case)
  b, t, f, hw, s = (case[k] for k in ("batch", "windows", "frames", "size", "samples"))
  mesh = parallel.make_mesh()
  repl, data = parallel.shardings(mesh)
  model = gating.create_model(config.model)
  host = synthetic_batch(b, t, f, hw, s, len(config.dataset.class_names))
  batch = parallel.to_global(host, data)
  state = make_state(config, model, host, repl)
  num_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(state.params))
  step_fn = steps.jitted_train_step(config, mesh, donate=case["donate"])
  # The real step augments the audio in-graph: one batch's draws (non-identity).
  aug = parallel.replicate({"speed": np.float32(1.05), "semitones": np.float32(0.5),
                            "noise": np.zeros((t, s), np.float32)}, repl)
  compiled, compile_s = harness.timed(lambda: step_fn.lower(state, batch, aug).compile())
  out = dict(case=case, num_params=num_params, compile_s=compile_s,
             device_count=jax.device_count(), device_kind=jax.devices()[0].device_kind)
  out.update(harness.xla_cost(compiled))
  out.update(harness.xla_memory(compiled))
  widths = (float(config.model.video_width), float(config.model.audio_width))
  model_flops = cost_model_flops(b, t, f, hw, widths)
  # XLA's cost analysis covers one device's partitioned program: the global step
  # does device_count times as much (checked by the data_parallel section).
  if out.get("xla_flops"):
    out["xla_flops_per_step"] = out["xla_flops"] * jax.device_count()
    out["xla_flops_per_clip"] = out["xla_flops_per_step"] / b
    if model_flops:
      out["cost_model_flops_per_step"] = model_flops
      out["xla_over_cost_model"] = out["xla_flops_per_step"] / model_flops
  if not case["compile_only"]:
    state, metrics = compiled(state, batch, aug)          # warm-up
    jax.block_until_ready((state, metrics))
    # The first step from the same weights and batch: comparable across dtypes and remat.
    out.update(first_loss=float(metrics["loss"]), first_grad_norm=float(metrics["grad_norm"]),
               param_dtypes=sorted({str(x.dtype) for x in jax.tree_util.tree_leaves(state.params)}))
    times = []
    for _ in range(max(1, repeats)):
      t0 = time.perf_counter()
      state, metrics = compiled(state, batch, aug)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    out.update(times_s=times, step_s=med, min_s=min(times), clips_per_s=b / med,
               loss=float(metrics["loss"]))
    if out.get("xla_flops_per_step"):
      out["achieved_flops_per_s"] = out["xla_flops_per_step"] / med
      peak = peak_flops(out["device_kind"], case["dtype"])
      out["peak_flops_per_s"] = peak * jax.device_count() if peak else None
      out["utilisation"] = out["achieved_flops_per_s"] / out["peak_flops_per_s"] if peak else None
  out["device_peak_mib"] = harness.device_peak_mib()
  out["device_memory_limit_mib"] = harness.device_memory_mib("bytes_limit")
  out["peak_memory_mib"] = out["device_peak_mib"] or out.get("xla_peak_estimate_mib")
  out["peak_memory_source"] = ("device peak_bytes_in_use" if out["device_peak_mib"]
                               else "XLA memory_analysis (arguments + outputs + temporaries)")
  out["process_max_rss_mib"] = harness.max_rss_mib()
  return out



def run_case_subprocess(case: dict, repeats: int, devices: int = 0, timeout: float = 1800) -> dict:
  """`measure_train_step` in a fresh process (own device peak, survives running out
  of memory). `devices` > 0: that many devices (XLA's host-platform device count on
  CPU, CUDA_VISIBLE_DEVICES on GPU)."""
  out = harness.run_worker_subprocess(
      [str(harness.script("benchmark")), "--worker", json.dumps(case), "--repeats", str(repeats)],
      devices=devices, timeout=timeout)
  out.setdefault("case", case)
  return out


# --------------------------------------------------------------------------- sections


def section_train_step(preset: dict, repeats: int) -> list[dict]:
  rows = []
  for case in preset["train_step"]:
    harness.log(f"train_step {case['label']}")
    rows.append(run_case_subprocess(case, repeats))
    harness.log(f"  -> {brief_step(rows[-1])}")
  return rows


def brief_step(r: dict) -> str:
  if "error" in r:
    return "error: " + r["error"][:200]
  s = f"compile {r['compile_s']:.1f} s"
  if "step_s" in r:
    s += f", step {r['step_s']:.3f} s, {r['clips_per_s']:.2f} clips/s"
  if r.get("xla_flops_per_step"):
    s += f", {r['xla_flops_per_step'] / 1e12:.3f} TFLOP/step"
  return s


def section_options(preset: dict, repeats: int, known: list[dict]) -> list[dict]:
  """Each option against its baseline case (reused from train_step when measured there)."""
  rows = []
  cache = {json.dumps(r["case"], sort_keys=True): r for r in known if "case" in r}
  for base_name, change in preset["options"]:
    case = _OPTION_BASES[base_name]()
    case.update(change)
    case["label"] = describe(case)
    key = json.dumps(case, sort_keys=True)
    if key not in cache:
      harness.log(f"options {case['label']}")
      cache[key] = run_case_subprocess(case, repeats)
      harness.log(f"  -> {brief_step(cache[key])}")
    rows.append(dict(base=base_name, change=change, result=cache[key]))
  for row in rows:  # speed-up against the unchanged baseline
    base = next((r["result"] for r in rows if r["base"] == row["base"] and not r["change"]), None)
    if base and "step_s" in base and "step_s" in row["result"]:
      row["speedup_vs_base"] = base["step_s"] / row["result"]["step_s"]
      if base.get("peak_memory_mib") and row["result"].get("peak_memory_mib"):
        row["memory_vs_base"] = row["result"]["peak_memory_mib"] / base["peak_memory_mib"]
  return rows


def growth(values: Sequence[int], times: Sequence[float], tolerance: float) -> dict:
  """time(x_max) / time(x_min) against x_max / x_min, and whether it is at most linear."""
  ratio = times[-1] / times[0]
  size = values[-1] / values[0]
  return dict(size_ratio=size, time_ratio=ratio, at_most_linear=bool(ratio <= size * tolerance),
              per_unit_s=[t / v for v, t in zip(values, times)])


def section_scaling(preset: dict, repeats: int, tolerance: float) -> dict:
  out = {}
  for name, key in (("windows", "scaling_windows"), ("batch", "scaling_batch")):
    spec = dict(preset[key])
    values = spec.pop("values")
    shape = spec.pop("shape")
    rows = []
    for v in values:
      case = make_case(shape, **spec, **{name: v})
      harness.log(f"scaling {case['label']}")
      rows.append(run_case_subprocess(case, repeats))
      harness.log(f"  -> {brief_step(rows[-1])}")
    ok = [(v, r) for v, r in zip(values, rows) if "step_s" in r]
    res = dict(values=list(values), rows=rows)
    if len(ok) >= 2:
      res.update(growth([v for v, _ in ok], [r["step_s"] for _, r in ok], tolerance))
      flops = [r.get("xla_flops_per_step") for _, r in ok]
      if all(flops):
        res["flops_ratio"] = flops[-1] / flops[0]
    out[name] = res
  return out


def section_data_parallel(preset: dict, repeats: int) -> dict:
  spec = dict(preset["data_parallel"])
  counts = spec.pop("devices")
  shape = spec.pop("shape")
  on_cpu = jax.default_backend() == "cpu"
  if counts is None:  # accelerators: 1 .. all local devices, powers of two
    n = jax.local_device_count()
    counts = [c for c in (1, 2, 4, 8, 16) if c <= n]
  rows = []
  for n in counts:
    case = make_case(shape, **spec)
    harness.log(f"data_parallel {case['label']} on {n} device(s)")
    r = run_case_subprocess(case, repeats, devices=n)
    rows.append(r)
    harness.log(f"  -> {brief_step(r)}")
  base = rows[0].get("step_s") if rows else None
  for n, r in zip(counts, rows):
    if base and "step_s" in r:
      r["speedup_vs_1"] = base / r["step_s"]
      r["efficiency"] = r["speedup_vs_1"] / n
  return dict(devices=list(counts), host_platform_devices=on_cpu, rows=rows,
              note=("host-platform devices share the machine's cores: no speed-up is possible "
                    "beyond the core count" if on_cpu else ""))


# Models -----------------------------------------------------------------------

# The model's widths at each shape of SHAPES: ravdess the full-width model (I3D +
# SoundNet-8 at width 1.0, D = G = 400, the pretrained shapes) with frozen BN as
# configs/ravdess.py; demo configs/demo.py's model, BN not frozen; tiny the test's.
MODEL_WIDTHS = {
    "ravdess": dict(video_width=1.0, audio_width=1.0, embed_dim=400, lstm_hidden=400,
                    freeze_bn=True),
    "demo": dict(video_width=0.125, audio_width=0.25, embed_dim=64, lstm_hidden=64,
                 freeze_bn=False),
    "tiny": dict(video_width=0.125, audio_width=0.25, embed_dim=16, lstm_hidden=16,
                 freeze_bn=False),
}


def time_compiled(fn, args, repeats: int) -> dict:
  """Compiles jit(fn) for `args` and times `repeats` calls after a warm-up call; with
  XLA's memory analysis, the device's peak and the process's peak RSS."""
  compiled, compile_s = harness.timed(jax.jit(fn).lower(*args).compile)
  times = harness.time_calls(lambda: compiled(*args), repeats)
  result = dict(compile_s=compile_s, times_s=times, median_s=statistics.median(times),
                min_s=min(times))
  result.update(harness.xla_memory(compiled))
  result["device_peak_mib"] = harness.device_peak_mib()
  result["process_max_rss_mib"] = harness.max_rss_mib()
  return result


def measure_models(shape: str = "demo", batch: int | None = None, windows: int | None = None,
                   frames: int | None = None, size: int | None = None,
                   samples: int | None = None, dtype: str = "float32", variant: str = "gating",
                   freeze_bn: bool | None = None, remat: bool = False, repeats: int = 2,
                   skip_backward: bool = False) -> dict:
  """Times the model's forward and forward + backward passes and reports memory.

  B clips, T windows, F frames, H x W pixels, S audio samples per window: those
  of SHAPES[shape] unless batch / windows / frames / size / samples are given;
  the widths of MODEL_WIDTHS[shape] (freeze_bn None: its BN setting). Variables
  are random (`random_variables` of jax.eval_shape of the model's init), which
  costs the same as the pretrained ones and skips compiling flax's
  initialisers. "forward" is the inference pass (train=False, as the evaluation
  runs it); "forward_backward" is jax.value_and_grad of a loss over all outputs
  in training mode (BN statistics updated unless frozen), i.e. a training step
  without the optimiser update and triplet mining (both negligible next to the
  encoders). Each has `time_compiled`'s fields.
  """
  from avjax import config_lib
  from avjax.models import gating
  given = dict(batch=batch, windows=windows, frames=frames, size=size, samples=samples)
  b, t, f, hw, s = (SHAPES[shape][k] if v is None else v for k, v in given.items())
  model_config = config_lib.get_base_config().model
  model_config.update(MODEL_WIDTHS[shape])
  model_config.update(dict(variant=variant, dtype=dtype, remat=remat, pretrained=False))
  if freeze_bn is not None:
    model_config.freeze_bn = bool(freeze_bn)
  model = gating.create_model(model_config)

  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.integers(0, 256, (b, t, f, hw, hw, 3), dtype=np.uint8))
  audio = jnp.asarray(rng.uniform(-0.5, 0.5, (b, t, s)).astype(np.float32))
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          video[:1, :1], audio[:1, :1])
  variables = jax.device_put(random_variables(shapes))
  num_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(variables["params"]))

  def forward(variables, video, audio):
    return model.apply(variables, video, audio, train=False)

  def loss_fn(params, batch_stats, video, audio):
    out, state = model.apply({"params": params, "batch_stats": batch_stats}, video, audio,
                             train=True, mutable=["batch_stats"])
    loss = sum(jnp.mean(v ** 2) for k, v in out.items() if k.endswith("_gate"))
    if "video_enc" in out and "audio_enc" in out:
      loss += jnp.mean((out["video_enc"] - out["audio_enc"]) ** 2)
    return loss, state

  def forward_backward(variables, video, audio):
    (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        variables["params"], variables["batch_stats"], video, audio)
    return loss, grads, state

  report = dict(
      preset=shape, shape=dict(B=b, T=t, F=f, H=hw, W=hw, S=s), windows_per_batch=b * t,
      model={k: model_config[k] for k in ("variant", "modalities", "embed_dim", "lstm_hidden",
                                          "video_width", "audio_width", "dtype", "remat", "freeze_bn")},
      num_params=num_params, backend=jax.default_backend(),
      devices=[str(d) for d in jax.devices()][:1], device_count=jax.device_count(),
      jax_version=jax.__version__)
  report["forward"] = time_compiled(forward, (variables, video, audio), repeats)
  if not skip_backward:
    report["forward_backward"] = time_compiled(forward_backward, (variables, video, audio), repeats)
  return report


def section_models(preset: dict, repeats: int, overrides: dict | None = None) -> dict:
  """`measure_models` at the preset's shape with `overrides` (its keyword arguments;
  None values ignored), in a fresh process."""
  spec = dict(preset["models"])
  spec.update({k: v for k, v in (overrides or {}).items() if v is not None})
  harness.log(f"models {spec}")
  out = run_case_subprocess({"models": spec}, repeats)
  harness.log("  -> " + (out["error"][:200] if "error" in out else
                         f"forward {out['forward']['median_s']:.3f} s" + (
                             f", forward + backward {out['forward_backward']['median_s']:.3f} s"
                             if "forward_backward" in out else "")))
  return out


# MWTSM ------------------------------------------------------------------------


def measure_mwtsm(n: int, windows: int, dim: int, num_classes: int = 8, repeats: int = 5,
                  seed: int = 0, reference=None) -> dict:
  """Jitted mining.mwtsm (and batch-hard) at N clips, against `reference` when given.

  reference: None or a per-anchor miner written from the definition,
  (embeddings [T, N, D] float32, labels [N]) -> (positives, negatives, valid),
  each [T, N]; it is timed once and its picks compared with mining.mwtsm's.
  """
  from avjax import mining
  rng = np.random.default_rng(seed)
  emb = rng.standard_normal((windows, n, dim)).astype(np.float32)
  labels = (np.arange(n) % num_classes).astype(np.int32)
  emb_j, labels_j = jnp.asarray(emb), jnp.asarray(labels)
  fn = jax.jit(mining.mwtsm, static_argnames="exclude_used")
  compiled, compile_s = harness.timed(lambda: fn.lower(emb_j, labels_j).compile())
  hard = jax.jit(functools.partial(mining.mwtsm, exclude_used=False)).lower(emb_j, labels_j).compile()
  mwtsm_s = harness.median_time(lambda: compiled(emb_j, labels_j), repeats)
  hard_s = harness.median_time(lambda: hard(emb_j, labels_j), repeats)
  out = dict(N=n, T=windows, D=dim, classes=num_classes, compile_s=compile_s, mwtsm_s=mwtsm_s,
             batch_hard_s=hard_s)
  if reference is not None:
    ref, ref_s = harness.timed(lambda: [np.asarray(a) for a in reference(emb, labels)])
    got = [np.asarray(a) for a in compiled(emb_j, labels_j)]
    agree = np.mean([np.array_equal(g, r) for g, r in zip(got, ref)])
    picks_agree = float(np.mean((got[0] == ref[0]) & (got[1] == ref[1]) & (got[2] == ref[2])))
    out.update(reference_s=ref_s, speedup_vs_reference=ref_s / mwtsm_s, picks_agree=picks_agree,
               all_equal=bool(agree == 1.0))
  out.update({f"mwtsm_{k}": v for k, v in harness.xla_memory(compiled).items()})
  return out


def section_mwtsm(preset: dict, reference=None) -> list[dict]:
  spec = preset["mwtsm"]
  rows = []
  for n in spec["sizes"]:
    harness.log(f"mwtsm N={n}")
    rows.append(measure_mwtsm(n, spec["windows"], spec["dim"], repeats=spec["repeats"],
                              reference=reference))
    r = rows[-1]
    harness.log(f"  -> {r['mwtsm_s'] * 1e3:.2f} ms" + (
        f" vs reference {r['reference_s'] * 1e3:.0f} ms, agree {r['picks_agree']:.3f}"
        if "reference_s" in r else ""))
  return rows


# Input pipeline and loop ------------------------------------------------------------


@contextlib.contextmanager
def synthetic_data_dir(windowing: str = "w4_l1_ov"):
  """A temporary data_dir holding the synthetic set (the demo's data), removed afterwards."""
  from avjax.tfds_builders.synthetic_av import synthetic_av_dataset_builder as synthetic_builder
  path = tempfile.mkdtemp(prefix="avjax_bench_synth_")
  try:
    t0 = time.perf_counter()
    synthetic_builder.Builder(config=windowing, data_dir=path).download_and_prepare()
    harness.log(f"synthetic set built in {time.perf_counter() - t0:.1f} s")
    yield path
  finally:
    shutil.rmtree(path, ignore_errors=True)


def demo_config(data_dir: str, **input_overrides):
  from configs import demo
  config = demo.get_config()
  config.dataset.data_dir = data_dir
  config.dataset.build = False
  for k, v in input_overrides.items():
    config.input[k] = v
  return config


def measure_input(data_dir: str, batches: int, **input_overrides) -> dict:
  """clips/s of the training iterator (after its first batch) on the synthetic set."""
  from avjax import input_pipeline
  from avjax.data import registry
  config = demo_config(data_dir, **input_overrides)
  folds = registry.training_folds(config, 0)
  it = input_pipeline.create_train_iterator(config, folds, seed=0)
  try:
    first = next(it)
    b = len(first["label"])
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    seconds = time.perf_counter() - t0
  finally:
    it.close()
  return dict(overrides=input_overrides, batch=b, batches=batches, seconds=seconds,
              clips_per_s=batches * b / seconds, ms_per_batch=1e3 * seconds / batches,
              shapes={k: list(v.shape) for k, v in first.items()})


def section_input(preset: dict, data_dir: str, step_rows: list[dict]) -> dict:
  spec = preset["input"]
  rows = []
  for p in spec["prefetch"]:
    harness.log(f"input prefetch={p}")
    rows.append(measure_input(data_dir, spec["batches"], prefetch=p))
    harness.log(f"  -> {rows[-1]['clips_per_s']:.1f} clips/s")
  rows.append(measure_input(data_dir, spec["batches"], pitch_shift_semitones=0.0))
  demo = next((r for r in step_rows if r.get("case", {}).get("shape") == "demo"
               and r["case"]["batch"] == 20 and "clips_per_s" in r), None)
  out = dict(rows=rows)
  ravdess = [r["clips_per_s"] for r in step_rows
             if r.get("case", {}).get("shape") == "ravdess" and "clips_per_s" in r]
  if ravdess:  # the synthetic set's frames are smaller (40x40, 8 fps) than RAVDESS's
    out["ravdess_step_clips_per_s"] = max(ravdess)
  if demo:
    out["train_step_clips_per_s"] = demo["clips_per_s"]
    out["pipeline_over_step"] = max(r["clips_per_s"] for r in rows[:len(spec["prefetch"])]) / demo["clips_per_s"]
  return out


def measure_loop(data_dir: str, steps: int, log_every: int, **input_overrides) -> dict:
  """Steady seconds per step of train.train_fold (demo config) from metrics.jsonl's
  times between the first log line and the last (compilation excluded)."""
  from avjax import train
  config = demo_config(data_dir, **input_overrides)
  config.train.max_steps = steps
  config.train.log_every_steps = log_every
  config.train.checkpoint_every_steps = 10 ** 6
  workdir = tempfile.mkdtemp(prefix="avjax_bench_loop_")
  try:
    t0 = time.perf_counter()
    train.train_fold(config, os.path.join(workdir, "fold_0"), 0)
    total = time.perf_counter() - t0
    lines = [json.loads(x) for x in
             pathlib.Path(workdir, "fold_0", "metrics.jsonl").read_text().splitlines() if x.strip()]
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  logs = [r for r in lines if "loss" in r and "time" in r]
  first, last = logs[0], logs[-1]
  per_step = (last["time"] - first["time"]) / (last["step"] - first["step"])
  b = config.input.clips_per_class * len(config.dataset.class_names)
  return dict(overrides=input_overrides, steps=steps, total_s=total, step_s=per_step,
              clips_per_s=b / per_step)


def section_loop(preset: dict, data_dir: str) -> dict:
  spec = preset["loop"]
  out = {"host": None, "device": None}
  harness.log("loop: host pipeline")
  out["host"] = measure_loop(data_dir, spec["steps"], spec["log_every"])
  harness.log(f"  -> {out['host']['step_s']:.3f} s/step")
  harness.log("loop: device-resident dataset")
  try:
    out["device"] = measure_loop(data_dir, spec["steps"], spec["log_every"], cache_on_device=True)
    out["device_speedup"] = out["host"]["step_s"] / out["device"]["step_s"]
    harness.log(f"  -> {out['device']['step_s']:.3f} s/step")
  except Exception as e:  # report, keep the other sections
    out["device_error"] = f"{type(e).__name__}: {e}"[:400]
  return out


# Build ------------------------------------------------------------------------------


def section_build(preset: dict) -> list[dict]:
  """Decoding throughput of the RAVDESS builder's worker task (per core)."""
  from avjax.data import windows
  from benchmarks import benchmark_build   # PyAV and absl flags: only when this section runs
  spec = preset["build"]
  folder = pathlib.Path(tempfile.gettempdir()) / "avjax_bench_ravdess"
  t0 = time.perf_counter()
  paths = benchmark_build.make_clips(folder, spec["num_clips"], 3.5)
  harness.log(f"build: {len(paths)} clips ready in {time.perf_counter() - t0:.1f} s")
  rows = []
  for w in spec["workers"]:
    s = benchmark_build.time_decode(paths, windows.parse_name("w8_l1_ov"), w)
    rows.append(dict(workers=w, clips=len(paths), decode_s=s, clips_per_s=len(paths) / s,
                     clips_per_s_per_core=len(paths) / s / w, config="w8_l1_ov"))
    harness.log(f"  -> {w} worker(s): {rows[-1]['clips_per_s']:.2f} clips/s")
  return rows


# Layers -----------------------------------------------------------------------------


def section_layers(preset: dict) -> list[dict]:
  """Every convolution of SoundNet-8 and I3D alone, in each form (benchmark_layers.py)."""
  from benchmarks import benchmark_layers
  spec = dict(preset["layers"])
  rows = []
  for shape in spec.pop("shapes"):
    rows += benchmark_layers.measure_layers(shape=shape, log=harness.log, **spec)
  return rows


# --------------------------------------------------------------------------- markdown


def _f(x, fmt="{:.3g}", none="–"):
  return none if x is None else fmt.format(x)


def _one_line(text: str, n: int = 120) -> str:
  return " ".join(text.split())[:n].replace("|", "/")


def _step_cells(r: dict) -> list[str]:
  c = r["case"]
  what = describe(c)
  if "error" in r:
    return [what, _one_line(r["error"])] + [""] * 6
  util = "n/a" if r.get("utilisation") is None else f"{100 * r['utilisation']:.1f}%"
  if c["compile_only"]:
    util = "(not run)"
  return [what, _f(r.get("step_s"), "{:.3f} s"), _f(r.get("clips_per_s"), "{:.2f}"),
          f"{r['compile_s']:.1f} s", mib(r.get("peak_memory_mib")),
          _f(r.get("xla_flops_per_step") and r["xla_flops_per_step"] / 1e12, "{:.4g}"),
          f"{_f(r.get('achieved_flops_per_s') and r['achieved_flops_per_s'] / 1e9, '{:.1f}')} / {util}",
          _f(r.get("xla_over_cost_model"), "{:.2f}")]


_STEP_HEADER = ("case", "step", "clips/s", "compile", "peak memory", "TFLOP/step (XLA)",
                "GFLOP/s / util.", "XLA / cost model")


def _models_cell(r: dict | None) -> str:
  """One pass of the models section: median time, peak memory, RSS, compile time."""
  if r is None:
    return "–"
  return (f"{r['median_s']:.3f} s, {mib(r.get('device_peak_mib') or r.get('xla_peak_estimate_mib'))}, "
          f"RSS {r['process_max_rss_mib'] / 1024:.1f} GiB, compile {r['compile_s']:.1f} s")


def render_markdown(report: dict) -> str:
  m = report["machine"]
  lines = [f"Generated by `scripts/benchmark.py` on {m['date']}: `{m['command']}`.",
           f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores, {m['memory_gib']} GiB; "
           f"{m['device_count']} x {m['device_kind']} ({m['backend']}); jax {m['jax_version']}, "
           f"Python {m['python']}. Load average at start: {' / '.join(map(str, m['loadavg']))} "
           f"(1/5/15 min); at the end: {' / '.join(map(str, report.get('loadavg_end', [])))}. "
           f"Total {report.get('total_s', 0) / 60:.1f} min.", ""]
  if len(report.get("runs", [])) > 1:
    lines += ["Merged from several runs:"] + [
        f"- {r['date']}, load {' / '.join(map(str, r['loadavg']))}: {', '.join(r['sections'])} "
        f"(`{r['command']}`)" for r in report["runs"]] + [""]
  s = report["sections"]
  if "train_step" in s:
    lines += ["### Train step (`steps.make_train_step`, donated state, synthetic batch)", "",
              "Step: median of the timed steps after one warm-up step. Peak memory: "
              + ("the device's peak_bytes_in_use." if any(r.get("device_peak_mib") for r in s["train_step"])
                 else "XLA's compiled-memory estimate (arguments + outputs + temporaries; "
                      "the CPU reports no device peak).")
              + " Utilisation against the device's dense peak (n/a: no peak known for this device).",
              "", md_table(_STEP_HEADER, [_step_cells(r) for r in s["train_step"]])]
    for r in s["train_step"]:
      c = r["case"]
      if c["shape"] == "ravdess" and c["batch"] == 40 and "step_s" in r:
        hours = RAVDESS_RUN_STEPS * r["step_s"] / 3600
        lines.append(f"\nAt {c['dtype']}, a RAVDESS 10-fold x 100-epoch run "
                     f"({RAVDESS_RUN_STEPS:,} steps of 40 clips) would take {hours:.2f} h of "
                     "train steps on this machine.")
    lines.append("")
  if "options" in s:
    rows = []
    for row in s["options"]:
      r = row["result"]
      if "error" in r:
        rows.append([r["case"]["label"], _one_line(r["error"]), "", "", ""])
        continue
      rows.append([r["case"]["label"], _f(r.get("step_s"), "{:.3f} s"),
                   _f(row.get("speedup_vs_base"), "{:.2f}x"), mib(r.get("peak_memory_mib")),
                   _f(row.get("memory_vs_base"), "{:.2f}")])
    lines += ["### Options (each against its baseline, same shape)", "",
              md_table(["case", "step", "speed-up", "peak memory", "memory ratio"], rows), ""]
  if "scaling" in s:
    rows = []
    for name, res in s["scaling"].items():
      times = ", ".join(_f(r.get("step_s"), "{:.3f}") for r in res["rows"])
      rows.append([f"{name} ({res['rows'][0]['case']['shape']})", res["values"], f"{times} s",
                   _f(res.get("time_ratio"), "{:.2f}"), _f(res.get("size_ratio"), "{:.0f}"),
                   _f(res.get("flops_ratio"), "{:.2f}"), res.get("at_most_linear", "–")])
    lines += ["### Scaling", "",
              md_table(["against", "values", "step times", "time ratio", "size ratio", "FLOP ratio",
                        "at most linear"], rows), ""]
  if "data_parallel" in s:
    dp = s["data_parallel"]
    rows = [[n, _f(r.get("step_s"), "{:.3f} s"), _f(r.get("clips_per_s"), "{:.2f}"),
             _f(r.get("speedup_vs_1"), "{:.2f}x"), _f(r.get("efficiency"), "{:.2f}"),
             _f(r.get("xla_flops_per_step") and r["xla_flops_per_step"] / 1e12, "{:.4g}")]
            for n, r in zip(dp["devices"], dp["rows"])]
    lines += ["### Data parallel (same global batch)", "",
              ("Host-platform CPU devices (XLA_FLAGS=--xla_force_host_platform_device_count=N, "
               "one process each); they share the cores." if dp["host_platform_devices"] else ""),
              "", md_table(["devices", "step", "clips/s", "speed-up", "efficiency",
                            "XLA TFLOP/step"], rows), ""]
  if "models" in s:
    r = s["models"]
    lines += ["### Models: forward and forward + backward (`gating.create_model`, random weights)", "",
              "Forward: the inference pass (train=False, as the evaluation runs it); forward + "
              "backward: `jax.value_and_grad` of a loss over all outputs in training mode, without "
              "the optimiser. Each: median time after a warm-up call, peak memory (the device's "
              "peak_bytes_in_use, else XLA's compiled-memory estimate), the process's peak RSS, "
              "compile time.", ""]
    if "error" in r:
      lines.append(md_table(["setting", "error"], [[json.dumps(r["case"]["models"]),
                                                    _one_line(r["error"])]]))
    else:
      sh, mc = r["shape"], r["model"]
      setting = (f"{r['preset']} B={sh['B']} T={sh['T']} F={sh['F']} {sh['H']}x{sh['W']} "
                 f"S={sh['S']}, {mc['variant']} {mc['dtype']}, widths {mc['video_width']:g} / "
                 f"{mc['audio_width']:g}" + (", frozen BN" if mc["freeze_bn"] else "")
                 + (", remat" if mc["remat"] else ""))
      lines.append(md_table(["setting", "params", "forward", "forward + backward"],
                            [[setting, f"{r['num_params']:,}", _models_cell(r["forward"]),
                              _models_cell(r.get("forward_backward"))]]))
    lines.append("")
  if "mwtsm" in s:
    with_ref = any("reference_s" in r for r in s["mwtsm"])
    rows = [[r["N"], r["T"], r["D"], f"{r['mwtsm_s'] * 1e3:.2f} ms", f"{r['batch_hard_s'] * 1e3:.2f} ms"]
            + ([f"{r['reference_s'] * 1e3:.0f} ms", f"{r['speedup_vs_reference']:.0f}x",
                f"{100 * r['picks_agree']:.1f}%"] if "reference_s" in r else ["–"] * 3)
            + [f"{r['compile_s']:.1f} s"] for r in s["mwtsm"]]
    lines += ["### MWTSM miner (jitted)" + (" against a per-anchor NumPy reference" if with_ref else
                                             " (no reference miner given)"), "",
              md_table(["N", "T", "D", "mwtsm", "batch-hard", "reference", "speed-up", "picks agree",
                        "compile"], rows), ""]
  if "input" in s:
    inp = s["input"]
    lines += ["### Input pipeline (synthetic set, demo config, training iterator)", "",
              md_table(["setting", "clips/s", "ms per batch"],
                       [[f"{r['overrides']} (batch {r['batch']})", f"{r['clips_per_s']:.0f}",
                         f"{r['ms_per_batch']:.0f}"] for r in inp["rows"]])]
    if "train_step_clips_per_s" in inp:
      lines += ["", f"The demo train step consumes {inp['train_step_clips_per_s']:.1f} clips/s: the "
                f"pipeline delivers {inp['pipeline_over_step']:.1f}x that."]
    if "ravdess_step_clips_per_s" in inp:
      lines += [f"The fastest RAVDESS-shape step measured consumes "
                f"{inp['ravdess_step_clips_per_s']:.1f} clips/s (the synthetic set's 40x40, "
                "8 fps frames are cheaper to read than RAVDESS's 112x112, 25 fps ones)."]
    lines.append("")
  if "loop" in s:
    lp = s["loop"]
    lines += ["### Training loop (`train.train_fold`, demo config, steady steps)", ""]
    for key in ("host", "device"):
      r = lp.get(key)
      if r:
        lines.append(f"- {key} pipeline: {r['step_s']:.3f} s/step, {r['clips_per_s']:.1f} clips/s "
                     f"({r['steps']} steps, {r['total_s']:.0f} s with compilation)")
    if lp.get("device_error"):
      lines.append(f"- device-resident dataset failed: {lp['device_error']}")
    if lp.get("device_speedup"):
      lines.append(f"- device-resident speed-up: {lp['device_speedup']:.2f}x")
    lines.append("")
  if "layers" in s:
    lines += ["### Per-layer convolution forms (`--sections=layers`)", "",
              "Each convolution alone, forward + backward (gradients for input, kernel and bias; "
              "none for the input of a network's first layer), median milliseconds; **bold**: "
              "the faster form; `auto`: what `model.conv_impl='auto'` runs on this backend "
              "(avjax/models/conv.py `AUTO`). `all`: the sum over the network's layers.", ""]
    from benchmarks import benchmark_layers
    lines += benchmark_layers.markdown_lines(s["layers"])
  if "build" in s:
    lines += ["### Dataset build (RAVDESS worker task: decode, resample, window, zlib)", "",
              md_table(["workers", "clips", "clips/s", "per core"],
                       [[r["workers"], r["clips"], f"{r['clips_per_s']:.2f}",
                         f"{r['clips_per_s_per_core']:.2f}"] for r in s["build"]]), ""]
  return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- main


def run(preset_name: str, sections: Sequence[str] | None = None, repeats: int | None = None,
        batch: int | None = None, linear_tolerance: float = 1.25, models: dict | None = None,
        mwtsm_reference=None) -> dict:
  """Runs the sections of a preset and returns the report (see the module docstring).
  `batch` overrides the batch of every RAVDESS-shape train-step case that runs;
  `models` the models section's `measure_models` arguments (None values ignored);
  `mwtsm_reference` is the mwtsm section's reference miner (`measure_mwtsm`)."""
  preset = PRESETS[preset_name]
  if batch:
    preset = dict(preset)
    preset["train_step"] = [make_case(**dict(c, batch=batch))
                            if c["shape"] == "ravdess" and not c["compile_only"] else c
                            for c in preset["train_step"]]
    unique = {json.dumps(c, sort_keys=True): c for c in preset["train_step"]}
    preset["train_step"] = list(unique.values())
  sections = list(sections or preset["sections"])
  repeats = repeats or preset["repeats"]
  t_start = time.perf_counter()
  report: dict[str, Any] = dict(preset=preset_name, machine=harness.machine_info(), sections={})
  s = report["sections"]
  if "train_step" in sections:
    s["train_step"] = section_train_step(preset, repeats)
  if "options" in sections:
    s["options"] = section_options(preset, repeats, s.get("train_step", []))
  if "scaling" in sections:
    s["scaling"] = section_scaling(preset, repeats, linear_tolerance)
  if "data_parallel" in sections:
    s["data_parallel"] = section_data_parallel(preset, repeats)
  if "models" in sections:
    s["models"] = section_models(preset, repeats, models)
  if "mwtsm" in sections:
    s["mwtsm"] = section_mwtsm(preset, mwtsm_reference)
  if "build" in sections:
    s["build"] = section_build(preset)
  if "layers" in sections:
    s["layers"] = section_layers(preset)
  if "input" in sections or "loop" in sections:
    # TFDS and the training loop print progress: keep stdout for the report.
    with contextlib.redirect_stdout(sys.stderr), synthetic_data_dir() as data_dir:
      if "input" in sections:
        s["input"] = section_input(preset, data_dir, s.get("train_step", []))
      if "loop" in sections:
        s["loop"] = section_loop(preset, data_dir)
  report["total_s"] = time.perf_counter() - t_start
  report["loadavg_end"] = harness.loadavg()
  return report


def main(argv: Sequence[str] | None = None, mwtsm_reference=None) -> dict | None:
  """The command line; `mwtsm_reference`: see `measure_mwtsm` (the command line has none)."""
  from avjax import choices
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu_quick")
  parser.add_argument("--sections", default="", help="comma-separated subset of the preset's")
  parser.add_argument("--repeats", type=int, default=0, help="timed steps per case (0: preset's)")
  parser.add_argument("--batch", type=int, default=0,
                      help="batch of the RAVDESS-shape train-step cases (0: preset's)")
  parser.add_argument("--linear_tolerance", type=float, default=1.25)
  models = parser.add_argument_group("models section (--sections=models)")
  models.add_argument("--models_shape", choices=sorted(MODEL_WIDTHS), default=None,
                      help="shape and widths (default: the preset's)")
  for name in ("batch", "windows", "frames", "size", "samples"):
    models.add_argument(f"--models_{name}", type=int, default=0, help="0: the shape's")
  models.add_argument("--models_dtype", choices=choices.DTYPES, default="float32")
  models.add_argument("--models_variant", choices=choices.VARIANTS, default="gating")
  models.add_argument("--models_freeze_bn", type=int, choices=(0, 1), default=None,
                      help="default: the shape's (ravdess 1 as configs/ravdess.py, demo 0)")
  models.add_argument("--models_remat", action="store_true")
  models.add_argument("--models_skip_backward", action="store_true")
  parser.add_argument("--out", default="", help="write the JSON report here")
  parser.add_argument("--merge", action="store_true",
                      help="keep the sections of an existing --out report that this run does not "
                           "measure (to split a preset over several shorter commands)")
  parser.add_argument("--update_md", action="store_true",
                      help="rewrite this preset's generated section of --md")
  parser.add_argument("--md", default=str(harness.BENCHMARKS_MD))
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
  parser.add_argument("--worker_out", default="", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:  # one train-step case, or the models section, in this process
    case = json.loads(args.worker)
    if "models" in case:
      result = measure_models(**case["models"], repeats=args.repeats or 2)
    else:
      result = measure_train_step(case, repeats=args.repeats or 3)
    harness.write_worker_result(args.worker_out, result)
    return None
  # The driver's own work is small; leave the accelerator's memory to the case processes.
  harness.leave_device_memory_to_workers()
  sections = [x for x in args.sections.split(",") if x]
  unknown = set(sections) - set(PRESETS[args.preset]["sections"]) - set(EXTRA_SECTIONS)
  if unknown:
    parser.error(f"--sections {sorted(unknown)} not in preset {args.preset}'s "
                 f"{PRESETS[args.preset]['sections'] + EXTRA_SECTIONS}")
  models_args = dict(shape=args.models_shape, dtype=args.models_dtype, variant=args.models_variant,
                     freeze_bn=None if args.models_freeze_bn is None else bool(args.models_freeze_bn),
                     remat=args.models_remat, skip_backward=args.models_skip_backward,
                     **{k: getattr(args, f"models_{k}") or None
                        for k in ("batch", "windows", "frames", "size", "samples")})
  report = run(args.preset, sections, args.repeats or None, args.batch or None,
               args.linear_tolerance, models_args, mwtsm_reference)
  if args.merge and args.out and pathlib.Path(args.out).exists():
    old = json.loads(pathlib.Path(args.out).read_text())
    if old.get("preset") != args.preset:
      parser.error(f"--merge: {args.out} holds preset {old.get('preset')!r}, not {args.preset!r}")
    report["runs"] = old.get("runs", [dict(old["machine"], sections=sorted(old["sections"]),
                                           total_s=old.get("total_s"))])
    report["sections"] = {**old["sections"], **report["sections"]}
  report.setdefault("runs", [])
  report["runs"].append(dict(report["machine"], sections=sorted(sections or PRESETS[args.preset]["sections"]),
                             total_s=report["total_s"]))
  if args.out:
    harness.write_json(args.out, report)
  md = render_markdown(report)
  print(md)
  if args.update_md:
    harness.update_markdown(pathlib.Path(args.md), args.preset, md)
  return report

