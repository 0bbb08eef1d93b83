r"""avjax entry point: trains and evaluates one configuration.

  python -m avjax.main --config=configs/ravdess.py --workdir=runs/ravdess
  python -m avjax.main --config=configs/ravdess.py:w4_l1_ov --config.train.num_epochs=50 --workdir=...

Intentionally short: parse flags, set up (multi-host) JAX, log the resolved
config and devices, then hand over to `train.train_and_evaluate`.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from avjax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py[:args]).", lock_config=True)
cli.define_workdir("Directory for checkpoints, metrics, results and figures.")
flags.DEFINE_enum("config_mismatch", "error", ["error", "ok"],
                  "A workdir trained with another config (a field that changes the model, data or "
                  "protocol differs): 'error' stops before touching anything; 'ok' trains the "
                  "remaining folds with the new config (each fold records its own).")
flags.DEFINE_bool("take_over_locks", False,
                  "Also take over the folds whose lock.json names a process of another host "
                  "(which cannot be checked from here): for a job requeued elsewhere after its "
                  "first host died. Locks of live processes of this host are always respected.")
flags.mark_flags_as_required(["config"])

# Environment variables that mean "one of several processes" under the
# launchers jax.distributed.initialize() understands (SLURM, Open MPI, TPU pods,
# or an explicit coordinator).
_CLUSTER_ENV = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _is_multiprocess() -> bool:
  for var in _CLUSTER_ENV:
    value = os.environ.get(var)
    if value is None:
      continue
    if var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
      if int(value) > 1:
        return True
    elif var == "TPU_WORKER_HOSTNAMES":
      if len(value.split(",")) > 1:
        return True
    else:
      return True
  return False


def _gpu_expected() -> str | None:
  """Why this machine looks like it has (or was asked to use) a GPU or TPU, or None."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if any(p in platforms for p in ("cuda", "gpu", "rocm", "tpu")):
    return f"JAX_PLATFORMS={platforms}"
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible not in (None, "", "-1"):
    return f"CUDA_VISIBLE_DEVICES={visible}"
  if os.path.exists("/dev/nvidia0"):
    return "/dev/nvidia0 exists"
  if os.environ.get("TPU_NAME") or os.path.exists("/dev/accel0"):
    return "a TPU is attached"
  return None


def backend_report(jax) -> tuple[str, str | None]:
  """(the start-up line naming the backend and devices, a warning or None). The warning
  is for a run on CPU on a machine where a GPU or TPU was expected: the CPU-only jax
  that `make` installs by default does not see accelerators."""
  devices = jax.devices()
  kinds = sorted({d.device_kind for d in devices})
  line = (f"avjax: JAX {jax.__version__}, backend {jax.default_backend()}, "
          f"{len(devices)} device(s) ({', '.join(kinds)}), {jax.local_device_count()} local; "
          f"process {jax.process_index()} of {jax.process_count()}")
  warning = None
  why = _gpu_expected()
  if jax.default_backend() == "cpu" and why:
    warning = (f"WARNING: running on CPU although {why}: this jax has no GPU/TPU support "
               "or cannot reach the device. Install the accelerator build (make demo "
               "ACCEL=cuda12 | cuda13 | tpu, or pip install 'jax[cuda12]'), see the README's "
               "'GPUs and clusters'.")
  return line, warning


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # after flag parsing, so --help stays fast

  from avjax import config_lib
  from avjax import train

  if _is_multiprocess():
    jax.distributed.initialize()
  config = cli.loaded_config()
  config_lib.validate(config)
  line, warning = backend_report(jax)
  if jax.process_index() == 0:
    print(line, flush=True)
    if warning:
      print(warning, file=sys.stderr, flush=True)
  else:
    logging.info(line)
    if warning:
      logging.warning(warning)
  logging.info("JAX process %d of %d; local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info("All devices: %s", jax.devices())
  logging.info("Config:\n%s", config)
  train.train_and_evaluate(config, FLAGS.workdir, config_mismatch=FLAGS.config_mismatch,
                           take_over_locks=FLAGS.take_over_locks)


if __name__ == "__main__":
  cli.run(main)
