r"""avjax entry point: trains and evaluates one configuration.

  python -m avjax.main --config=configs/ravdess.py --workdir=runs/ravdess
  python -m avjax.main --config=configs/ravdess.py:w4_l1_ov --config.train.num_epochs=50 --workdir=...

Intentionally short: parse flags, set up (multi-host) JAX, log the resolved
config and devices, then hand over to `train.train_and_evaluate`.
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training configuration file (configs/*.py[:args]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, results and figures.")
flags.DEFINE_enum("config_mismatch", "error", ["error", "ok"],
                  "A workdir trained with another config (a field that changes the model, data or "
                  "protocol differs): 'error' stops before touching anything; 'ok' trains the "
                  "remaining folds with the new config (each fold records its own).")
flags.mark_flags_as_required(["config", "workdir"])

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  import jax  # after flag parsing, so --help stays fast

  from avjax import config_lib
  from avjax import train

  if _is_multiprocess():
    jax.distributed.initialize()
  try:
    config = FLAGS.config
    config.dataset  # noqa: B018  (the first access loads it)
  except OSError as e:   # config_flags defers a config file that failed to load
    from avjax import cli
    raise app.UsageError(f"--config: {cli._root_message(e)}") from None
  config_lib.validate(config)
  logging.info("JAX process %d of %d; local devices: %s", jax.process_index(),
               jax.process_count(), jax.local_devices())
  logging.info("All devices: %s", jax.devices())
  logging.info("Config:\n%s", config)
  train.train_and_evaluate(config, FLAGS.workdir, config_mismatch=FLAGS.config_mismatch)


if __name__ == "__main__":
  from avjax import cli
  cli.run(main)
