r"""Folds side by side (`train.parallel_folds`): the A-LSTM step of one fold against one
vmapped step of G folds, and both against the device's matrix-product rate at the
step's own shapes.

  python scripts/benchmark_folds.py --groups=1,10 --out=/tmp/folds.json   # this machine
  python scripts/benchmark_folds.py --groups=1,10 --trunk=finetune_from:conv4
  (scripts/device_check.py runs the frozen case as its `folds` section on a GPU)

Random cached features stand in for the feature store (the step's cost does not depend
on their values): RAVDESS shape, 1296 training clips of 8 SoundNet-8 windows, a batch of
40, `configs/ravdess.py:audio_lstm` with random weights and the trunk of `--trunk`:
`frozen` caches the pooled conv7 features (1024 per window) and trains the head and the
LSTM; `finetune_from:conv4` caches conv4's maps and trains conv5-conv7 too. Per group
size G it reports the median seconds of the bare jitted step (its inputs placed
beforehand; `steps.make_device_train_step` for G = 1, `steps.make_group_train_step`
otherwise), steps per second per fold, XLA's FLOPs of one fold's step (`step_flops`: the
LSTMs' scan unrolled, or XLA would count one window; a convolution in XLA's native form
counts only the taps inside its input, one in the matmul form its whole im2col product,
`model.conv_impl`), the achieved FLOP/s, and the ratio
to `matmul_peak`: the best FLOP/s of a jitted product at the step's own shapes batched G
times, the best of the LSTM's [B T, H] x [H, 4 H] and, for a trained trunk, each trained
convolution's im2col product [B T L_out, K C_in] x [K C_in, C_out] (`product_shapes`).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness

# name: (clips per class, windows, training clips, pooled features)
SHAPES = {"ravdess": (5, 8, 1296, None), "tiny": (1, 2, 32, None)}


TRUNKS = ("frozen", "finetune_from:conv4")


def _config(shape: str, trunk: str = "frozen"):
  from avjax import config_lib
  from configs import ravdess
  config = ravdess.get_config("audio_lstm")
  config.model.trunk = trunk
  config.model.pretrained = False
  config.input.cache_on_device = True
  config.input.clips_per_class = SHAPES[shape][0]
  config.dataset.config = f"w{SHAPES[shape][1]}_l1_ov"
  return config_lib.complete(config)


def product_shapes(config, batch: int, windows: int, samples: int = 22050) -> list[tuple]:
  """(rows, inner, cols) of the step's large matrix products: the LSTM's input product
  and, when SoundNet-8 layers train (`finetune_from:<layer>`), each trained
  convolution's im2col product for a `samples`-long window."""
  from avjax.data import feature_cache
  from avjax.models import soundnet
  h = int(config.model.lstm_hidden)
  shapes = [(batch * windows, h, 4 * h)]
  start = feature_cache.endpoint(config, "audio")
  names = [layer[0] for layer in soundnet.LAYERS]
  if start not in names:
    return shapes
  first = names.index(start)
  for prev, layer in zip(soundnet.LAYERS[first:], soundnet.LAYERS[first + 1:]):
    _, c_out, kernel, stride, pad, _ = layer   # the convolution, before its pool
    length = (soundnet.output_length(samples, prev[0]) + 2 * pad - kernel) // stride + 1
    shapes.append((batch * windows * length, kernel * prev[1], c_out))
  return shapes


def matmul_peak(rows: int, inner: int, cols: int, group: int, repeats: int) -> float:
  """The best FLOP/s of a jitted [G, rows, inner] x [G, inner, cols] product (G = `group`)."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(group, rows, inner)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(group, inner, cols)), jnp.float32)
  fn = jax.jit(lambda x, y: jnp.einsum("gri,gic->grc", x, y))
  jax.block_until_ready(fn(a, b))
  best = min(harness.time_calls(lambda: jax.block_until_ready(fn(a, b)), repeats))
  return 2.0 * group * rows * inner * cols / best


def step_flops(config, state, batch: dict, windows: int) -> float:
  """XLA's FLOPs of one fold's train step. XLA counts a loop's body once, so the step is
  lowered with the LSTMs' scan over the windows unrolled (the program that runs keeps
  its loop; the arithmetic is the same)."""
  from unittest import mock

  import flax.linen as nn

  from avjax import steps
  scan = nn.scan
  with mock.patch.object(nn, "scan", functools.partial(scan, unroll=windows)):
    compiled = jax.jit(functools.partial(steps.train_step, config=config)).lower(
        state, batch).compile()
  return float(harness.cost_analysis(compiled).get("flops", float("nan")))


def measure_folds(shape: str = "ravdess", groups=(1, 10), repeats: int = 10,
                  trunk: str = "frozen") -> dict:
  """See the module docstring."""
  from avjax import fixed_trunk
  from avjax import parallel
  from avjax import steps
  from avjax import train_state
  from avjax.models import gating
  config = _config(shape, trunk)
  per_class, t, n, _ = SHAPES[shape]
  c = len(config.dataset.class_names)
  b = per_class * c
  d = fixed_trunk.feature_shape(config, "audio", {"samples_per_window": 22050})
  mesh = parallel.make_mesh()
  repl, data = parallel.shardings(mesh)
  rng = np.random.default_rng(0)
  host = {"audio": rng.normal(size=(n, 1, t) + d).astype(np.float32),
          "label": (np.arange(n) % c).astype(np.int32),
          "window_valid": np.ones((n, t), np.float32)}
  dataset = types.SimpleNamespace(arrays={k: jax.device_put(v, repl) for k, v in host.items()},
                                  features=("audio",), crop_size=0, max_semitones=0.0)
  model = gating.create_model(config.model)
  sample = {"audio": np.zeros((b, t) + d, np.float32), "label": np.zeros(b, np.int32),
            "window_valid": np.ones((b, t), np.float32)}
  state0 = train_state.create_train_state(config, model, sample, jax.random.PRNGKey(0), repl)

  def indices(g: int) -> np.ndarray:   # a class-balanced batch per fold
    draw = np.random.default_rng(g)
    return np.stack([np.concatenate([draw.choice(np.flatnonzero(host["label"] == k), per_class,
                                                 replace=False) for k in range(c)])
                     for _ in range(g)]).astype(np.int32)

  batch = {k: jnp.asarray(v[:b, 0] if k == "audio" else v[:b]) for k, v in host.items()}
  flops = step_flops(config, state0, batch, t)
  lstm = int(config.model.lstm_hidden)
  products = product_shapes(config, b, t)
  rows = []
  for g in groups:
    if g == 1:
      step = steps.make_device_train_step(config, mesh, dataset)
      state = jax.tree.map(jnp.copy, state0)
      inputs = {"index": jax.device_put(indices(1)[0], data), "view": jax.device_put(0, repl)}
      call = lambda s: step(s, inputs)   # noqa: E731
    else:   # on several devices, g is rounded up to a multiple of them
      g = parallel.fold_slots(g, mesh)
      _, per_fold, fold_batch = parallel.fold_shardings(mesh)
      step = steps.make_group_train_step(config, mesh, dataset)
      state = jax.device_put(train_state.stack_states([state0] * g), per_fold)
      inputs = {"index": jax.device_put(indices(g), fold_batch),
                "view": jax.device_put(np.zeros(g, np.int32), per_fold)}
      warm = jax.device_put(np.zeros(g, np.int32), per_fold)
      total = jax.device_put(np.full(g, 2**30, np.int32), per_fold)
      call = lambda s: step(s, inputs, warm, total)   # noqa: E731
    t0 = time.perf_counter()
    state, m = call(state)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      state, m = call(state)
      jax.block_until_ready(m)
      times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    peak = max(matmul_peak(*p, g, max(20, 2 * repeats)) for p in products)
    achieved = g * flops / step_s
    rows.append(dict(group=g, first_step_s=first, step_s=step_s,
                     steps_per_s_per_fold=1.0 / step_s, fold_steps_per_s=g / step_s,
                     achieved_flops_per_s=achieved, matmul_peak_flops_per_s=peak,
                     ratio_to_matmul_peak=achieved / peak))
  base = rows[0]["fold_steps_per_s"]
  for r in rows:
    r["speedup_over_first"] = r["fold_steps_per_s"] / base
  return dict(shape=dict(B=b, T=t, N=n, features=list(d), lstm_hidden=lstm), trunk=trunk,
              products=[list(p) for p in products], flops_per_fold_step=flops,
              rows=rows, device_kind=jax.devices()[0].device_kind,
              device_count=jax.device_count(), device_peak_mib=harness.device_peak_mib())


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shape", default="ravdess", choices=sorted(SHAPES))
  parser.add_argument("--groups", default="1,10", help="group sizes G, comma-separated")
  parser.add_argument("--trunk", default="frozen", choices=TRUNKS,
                      help="the cached trunk: pooled conv7 features or conv4's maps")
  parser.add_argument("--repeats", type=int, default=10, help="timed steps per group size")
  parser.add_argument("--out", default=None, help="write the JSON report here")
  args = parser.parse_args(argv)
  doc = measure_folds(args.shape, tuple(int(g) for g in args.groups.split(",")), args.repeats,
                      args.trunk)
  doc.update(harness.machine_info())
  if args.out:
    harness.write_json(args.out, doc)
  print(json.dumps(doc, indent=1))
  rows = [[r["group"], f"{r['step_s'] * 1e3:.1f}", f"{r['fold_steps_per_s']:.1f}",
           f"{r['speedup_over_first']:.2f}", f"{r['achieved_flops_per_s'] / 1e9:.1f}",
           f"{r['matmul_peak_flops_per_s'] / 1e9:.1f}", f"{r['ratio_to_matmul_peak']:.2f}"]
          for r in doc["rows"]]
  print(harness.md_table(["folds side by side", "ms / step", "fold steps / s", "speed-up",
                          "GFLOP/s", "matmul GFLOP/s", "ratio"], rows))

