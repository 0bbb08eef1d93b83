"""Times the gating model's forward and forward+backward passes and reports memory.

Shapes: B clips, T windows, F frames, H x W pixels, S audio samples per window.

Presets:
  ravdess  B=40, T=8, F=25, 96x96, S=22050, full-width model (I3D + SoundNet-8 at
           width 1.0, D = G = 400, the pretrained shapes), frozen BN
  demo     B=20, T=4, F=8, 32x32, S=22050, configs/demo.py's model (video width 0.125,
           audio width 0.25, D = G = 64, BN not frozen)
Any of --batch/--windows/--frames/--size/--samples/--dtype overrides the preset
(e.g. a smaller --batch where the full batch does not fit a small machine).

Variables are random (shaped by jax.eval_shape of the model's init, filled from
NumPy), which costs the same as the pretrained ones and skips compiling flax's
initialisers. "forward" is the inference pass (train=False, as the evaluation
runs it); "forward_backward" is jax.value_and_grad of a loss over all outputs in
training mode (BN statistics updated unless frozen), i.e. a training step without
the optimiser update and triplet mining (both negligible next to the encoders).

Memory: XLA's compiled memory analysis (arguments + outputs + temporaries, the
buffers the program needs at its peak), the device's peak_bytes_in_use where the
backend reports it (GPU/TPU; not the CPU), and the process's peak RSS so far.

Run:  .venv/bin/python scripts/benchmark_models.py --preset demo
      .venv/bin/python scripts/benchmark_models.py --preset ravdess --batch 1 --out bench.json
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from avjax import config_lib
from avjax.models import gating

PRESETS = {
    "ravdess": dict(batch=40, windows=8, frames=25, size=96, samples=22050,
                    model=dict(video_width=1.0, audio_width=1.0, embed_dim=400, lstm_hidden=400,
                               freeze_bn=True)),
    "demo": dict(batch=20, windows=4, frames=8, size=32, samples=22050,
                 model=dict(video_width=0.125, audio_width=0.25, embed_dim=64, lstm_hidden=64,
                            freeze_bn=False)),
}


def random_variables(shapes, seed: int = 0):
  rng = np.random.default_rng(seed)

  def fill(path, s):
    name = jax.tree_util.keystr(path)
    if "kernel" in name:
      return jnp.asarray(rng.normal(0, 1 / np.sqrt(np.prod(s.shape[:-1])), s.shape).astype(np.float32))
    if "var" in name:
      return jnp.ones(s.shape, s.dtype)
    return jnp.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def memory_of(compiled) -> dict:
  out = {}
  try:
    m = compiled.memory_analysis()
  except Exception:  # not every backend implements it
    m = None
  if m is not None:
    args, outs, temp = m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes
    alias = getattr(m, "alias_size_in_bytes", 0)
    out.update(xla_arguments_mib=args / 2**20, xla_outputs_mib=outs / 2**20,
               xla_temporaries_mib=temp / 2**20,
               xla_peak_estimate_mib=(args + outs + temp - alias) / 2**20)
  return out


def device_peak_mib() -> float | None:
  stats = jax.devices()[0].memory_stats()
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return None


def max_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def time_it(fn, args, repeats: int) -> dict:
  lowered = jax.jit(fn).lower(*args)
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  result = dict(compile_s=compile_s, times_s=times, median_s=statistics.median(times),
                min_s=min(times))
  result.update(memory_of(compiled))
  result["device_peak_mib"] = device_peak_mib()
  result["process_max_rss_mib"] = max_rss_mib()
  return result


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
  for name in ("batch", "windows", "frames", "size", "samples"):
    parser.add_argument(f"--{name}", type=int, default=None)
  parser.add_argument("--dtype", choices=config_lib.DTYPES, default="float32")
  parser.add_argument("--variant", choices=config_lib.VARIANTS, default="gating")
  parser.add_argument("--freeze_bn", type=int, choices=(0, 1), default=None,
                      help="default: the preset's (ravdess 1 as configs/ravdess.py, demo 0)")
  parser.add_argument("--remat", action="store_true")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--skip_backward", action="store_true")
  parser.add_argument("--out", default="", help="also write the JSON here")
  args = parser.parse_args(argv)

  preset = PRESETS[args.preset]
  shape = {k: getattr(args, k) if getattr(args, k) is not None else preset[k]
           for k in ("batch", "windows", "frames", "size", "samples")}
  b, t, f, hw, s = (shape[k] for k in ("batch", "windows", "frames", "size", "samples"))
  model_config = config_lib.get_base_config().model
  model_config.update(preset["model"])
  model_config.update(dict(variant=args.variant, dtype=args.dtype, remat=args.remat,
                           pretrained=False))
  if args.freeze_bn is not None:
    model_config.freeze_bn = bool(args.freeze_bn)
  model = gating.create_model(model_config)

  rng = np.random.default_rng(0)
  video = jnp.asarray(rng.integers(0, 256, (b, t, f, hw, hw, 3), dtype=np.uint8))
  audio = jnp.asarray(rng.uniform(-0.5, 0.5, (b, t, s)).astype(np.float32))
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          video[:1, :1], audio[:1, :1])
  variables = random_variables(shapes)
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
      preset=args.preset, shape=dict(B=b, T=t, F=f, H=hw, W=hw, S=s), windows_per_batch=b * t,
      model={k: model_config[k] for k in ("variant", "modalities", "embed_dim", "lstm_hidden",
                                          "video_width", "audio_width", "dtype", "remat", "freeze_bn")},
      num_params=num_params, backend=jax.default_backend(),
      devices=[str(d) for d in jax.devices()][:1], device_count=jax.device_count(),
      jax_version=jax.__version__, machine=platform.machine(), python=sys.version.split()[0],
      command="python " + " ".join(sys.argv),
  )
  report["forward"] = time_it(forward, (variables, video, audio), args.repeats)
  if not args.skip_backward:
    report["forward_backward"] = time_it(forward_backward, (variables, video, audio), args.repeats)
  text = json.dumps(report, indent=2)
  print(text, flush=True)
  if args.out:
    with open(args.out, "w") as fh:
      fh.write(text + "\n")
  return report


if __name__ == "__main__":
  main()
