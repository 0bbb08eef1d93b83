r"""Per-layer convolution benchmark: every convolution of SoundNet-8 and I3D in each form.

  .venv/bin/python scripts/benchmark.py --sections=layers --update_md
  .venv/bin/python scripts/benchmark_layers.py --network=soundnet --shape=ravdess

The layers' shapes come from the models themselves: `conv_specs` records every
`nn.Conv` call of an abstract SoundNet8 / I3D initialisation
(`avjax.models.conv.conv_layers`: path, input shape, kernel, strides, padding,
output channels), so the table always matches the code. Each layer is then
timed alone, forward (`y = conv(x, w) + b`) and forward + backward (the
gradients of sum(y * g) for a fixed random g with respect to w, b and x; not x
for the network's first layer, whose input needs no gradient, as in training),
in every form of `avjax.models.conv` ('xla', 'matmul'), median of `repeats`
calls after a warm-up. A form whose im2col would need more than
`max_im2col_gib` is skipped and says so. Each row also says which form
`conv_impl='auto'` picks for that layer on this backend.

Shapes (`--shape`): 'ravdess' (B x T = 320 one-second windows for SoundNet; for
I3D `i3d_windows` windows, default 8, of 25 frames at 96 x 96, full width: the
per-layer times are linear in the window count, the full 320 windows do not fit
a CPU box) and 'demo' (configs/demo.py's widths and shapes: 80 windows, I3D
width 0.125 at 8 x 32 x 32, SoundNet width 0.25).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from avjax.models import conv, i3d, soundnet
from benchmarks import harness

FORMS = ("xla", "matmul")
NETWORKS = ("soundnet", "i3d")
# Window counts per network, I3D frames and crop, audio samples, widths.
SHAPES = {
    "ravdess": dict(soundnet_windows=320, i3d_windows=8, frames=25, size=96, samples=22050,
                    video_width=1.0, audio_width=1.0),
    "demo": dict(soundnet_windows=80, i3d_windows=80, frames=8, size=32, samples=22050,
                 video_width=0.125, audio_width=0.25),
    "tiny": dict(soundnet_windows=2, i3d_windows=2, frames=8, size=32, samples=5000,
                 video_width=0.125, audio_width=0.125),
}


def conv_specs(network: str, shape: str = "ravdess", windows: int | None = None,
               dtype: Any = jnp.float32) -> list[dict]:
  """Every nn.Conv call of `network` at `shape`, in network order (see module docstring)."""
  s = SHAPES[shape]
  if network == "soundnet":
    n = windows or s["soundnet_windows"]
    model = soundnet.SoundNet8(width=s["audio_width"], dtype=dtype)
    x = jax.ShapeDtypeStruct((n, s["samples"]), jnp.float32)
  elif network == "i3d":
    n = windows or s["i3d_windows"]
    model = i3d.I3D(width=s["video_width"], dtype=dtype)
    x = jax.ShapeDtypeStruct((n, s["frames"], s["size"], s["size"], 3), jnp.uint8)
  else:
    raise ValueError(f"network {network!r} is not one of {NETWORKS}")
  return conv.conv_layers(model, x, network=network)


def im2col_bytes(spec: dict, itemsize: int = 4) -> int:
  """Bytes of the matmul form's column matrix (output positions x K x Cin)."""
  shape, kernel, strides = spec["input_shape"], spec["kernel"], spec["strides"]
  out = [-(-n // s) if spec["padding"] == "SAME" else None for n, s in zip(shape[1:-1], strides)]
  if None in out:  # explicit padding (SoundNet)
    out = [(n + p[0] + p[1] - k) // s + 1
           for n, p, k, s in zip(shape[1:-1], spec["padding"], kernel, strides)]
  return int(shape[0] * np.prod(out) * np.prod(kernel) * shape[-1] * itemsize)


def _layer_fns(spec: dict, form: str):
  """(forward, gradient) of one layer in `form`, as jittable functions; the
  gradient function computes the forward pass and the backward pass."""
  fn = conv.matmul_conv if form == "matmul" else lax.conv_general_dilated
  nd = len(spec["kernel"])
  dn = lax.ConvDimensionNumbers((0, nd + 1) + tuple(range(1, nd + 1)),
                                (nd + 1, nd) + tuple(range(nd)),
                                (0, nd + 1) + tuple(range(1, nd + 1)))
  padding = spec["padding"] if isinstance(spec["padding"], str) else list(spec["padding"])

  def forward(x, w, b):
    y = fn(x, w, spec["strides"], padding, dimension_numbers=dn)
    return y + b.astype(y.dtype)

  def loss(x, w, b, g):
    return jnp.sum(forward(x, w, b).astype(jnp.float32) * g)

  argnums = (1, 2) if spec["first"] else (0, 1, 2)
  return forward, jax.grad(loss, argnums=argnums)


def layer_arrays(spec: dict, dtype: Any = jnp.float32, seed: int = 0):
  """Random (x, w, b) of a layer's shapes, and g of its output's."""
  rng = np.random.default_rng(seed)
  cin = spec["input_shape"][-1]
  x = jnp.asarray(rng.normal(size=spec["input_shape"]), dtype)
  w = jnp.asarray(rng.normal(size=spec["kernel"] + (cin, spec["features"]))
                  / np.sqrt(np.prod(spec["kernel"]) * cin), dtype)
  b = jnp.asarray(rng.normal(size=(spec["features"],)), dtype)
  out = jax.eval_shape(_layer_fns(spec, "xla")[0], x, w, b)
  g = jnp.asarray(rng.normal(size=out.shape), jnp.float32)
  return x, w, b, g


def time_layer(spec: dict, form: str, dtype: Any = jnp.float32, repeats: int = 3,
               max_im2col_gib: float = 4.0) -> dict:
  """Forward and forward + backward seconds of one layer in `form` (or why skipped)."""
  if form == "matmul":
    gib = im2col_bytes(spec, jnp.dtype(dtype).itemsize) / 2**30
    if gib > max_im2col_gib:
      return dict(skipped=f"im2col {gib:.1f} GiB > {max_im2col_gib:g}")
  x, w, b, g = layer_arrays(spec, dtype)
  forward, backward = _layer_fns(spec, form)
  fwd = jax.jit(forward).lower(x, w, b).compile()
  bwd = jax.jit(backward).lower(x, w, b, g).compile()
  flops = harness.cost_analysis(fwd)
  # The gradient function runs the forward pass too: its time is forward + backward.
  return dict(forward_s=harness.median_time(lambda: fwd(x, w, b), repeats),
              fwd_bwd_s=harness.median_time(lambda: bwd(x, w, b, g), repeats),
              forward_gflop=float(flops.get("flops", 0.0)) / 1e9)


def auto_form(spec: dict) -> str:
  """The form conv_impl='auto' picks for this layer on the default backend."""
  return "matmul" if conv.conv_fn("auto", spec["network"], spec["layer"]) else "xla"


def measure_layers(networks: Sequence[str] = NETWORKS, shape: str = "ravdess",
                   dtype: str = "float32", repeats: int = 3, i3d_windows: int | None = None,
                   max_im2col_gib: float = 4.0, log=print) -> list[dict]:
  """One row per convolution: its spec, each form's times, the fastest and auto's pick."""
  jdtype = jnp.dtype(dtype)
  rows = []
  for network in networks:
    specs = conv_specs(network, shape, i3d_windows if network == "i3d" else None, jdtype)
    for spec in specs:
      row = dict(spec, shape=shape, dtype=dtype, forms={})
      for form in FORMS:
        row["forms"][form] = time_layer(spec, form, jdtype, repeats, max_im2col_gib)
      timed = {f: r["fwd_bwd_s"] for f, r in row["forms"].items() if "fwd_bwd_s" in r}
      row["fastest"] = min(timed, key=timed.get)
      row["auto"] = auto_form(spec)
      rows.append(row)
      log(f"layers: {network} {spec['layer']} {spec['input_shape']} k{spec['kernel']} -> "
          f"{spec['features']}: " + ", ".join(f"{f} {t * 1e3:.1f} ms" for f, t in timed.items())
          + f" (auto: {row['auto']})")
  return rows


def totals(rows: Sequence[dict]) -> dict:
  """Per (network, shape): the sum over layers of forward + backward seconds in each
  form, 'auto' (each layer in auto's pick) and 'best' (each in its fastest)."""
  out: dict[tuple[str, str], dict[str, float]] = {}
  for r in rows:
    t = out.setdefault((r["network"], r["shape"]), {f: 0.0 for f in (*FORMS, "auto", "best")})
    for f in FORMS:
      t[f] += r["forms"][f].get("fwd_bwd_s", float("nan"))
    t["auto"] += r["forms"][r["auto"]]["fwd_bwd_s"]
    t["best"] += r["forms"][r["fastest"]]["fwd_bwd_s"]
  return out


def _ms(cell: dict) -> str:
  return cell["skipped"] if "fwd_bwd_s" not in cell else f"{cell['fwd_bwd_s'] * 1e3:.1f}"


def markdown_lines(rows: Sequence[dict]) -> list[str]:
  """Markdown lines: one table per (network, shape), forward + backward ms per form."""
  lines = []
  for (network, shape), t in totals(rows).items():
    sub = [r for r in rows if (r["network"], r["shape"]) == (network, shape)]
    lines += [f"#### {network}, {shape} shape ({sub[0]['dtype']}, {sub[0]['input_shape'][0]} "
              f"windows; forward + backward ms)", ""]
    body = []
    for r in sub:
      stride = f" /{max(r['strides'])}" if max(r["strides"]) > 1 else ""
      cells = [r["layer"], f"{'x'.join(map(str, r['input_shape'][1:]))} → {r['features']}",
               "x".join(map(str, r["kernel"])) + stride]
      for f in FORMS:
        text = _ms(r["forms"][f])
        cells.append(f"**{text}**" if f == r["fastest"] else text)
      body.append(cells + [r["auto"]])
    body.append(["all", "", ""] + [f"{t[f] * 1e3:.0f}" for f in FORMS] + [f"{t['auto'] * 1e3:.0f}"])
    lines += [harness.md_table(["layer", "input → out", "kernel", *FORMS, "auto"], body), ""]
  return lines


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--network", choices=NETWORKS, action="append")
  parser.add_argument("--shape", choices=sorted(SHAPES), default="ravdess")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--i3d_windows", type=int, default=0)
  args = parser.parse_args(argv)
  rows = measure_layers(args.network or NETWORKS, args.shape, args.dtype, args.repeats,
                        args.i3d_windows or None, log=lambda m: print(m, file=sys.stderr))
  for (network, shape), t in totals(rows).items():
    print(f"{network} {shape}: " + ", ".join(f"{k} {v:.3f} s" for k, v in t.items()))

