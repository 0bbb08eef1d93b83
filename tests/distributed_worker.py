"""Worker for test_train.MultiProcessTest: runs 2 audio_lstm train steps on fixed batches.

Started as N processes with jax.distributed on CPU (4 devices in total); each
process feeds its slice of every global batch, as the input pipeline does.
Writes the losses and gradient norms of each step (<out>.json) from process 0.
"""

import json
import os
import re
import sys

from absl import app
from absl import flags

flags.DEFINE_integer("num_processes", 1, "")
flags.DEFINE_integer("process_id", 0, "")
flags.DEFINE_integer("port", 0, "")
flags.DEFINE_string("out", "", "")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  per_process = 4 // FLAGS.num_processes
  # The suite's other XLA flags (conftest.py) stay; only the device count changes.
  flags_ = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  os.environ["XLA_FLAGS"] = f"{flags_} --xla_force_host_platform_device_count={per_process}".strip()
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  if FLAGS.num_processes > 1:
    jax.distributed.initialize(coordinator_address=f"localhost:{FLAGS.port}",
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from avjax import parallel
  from avjax import steps
  from tests import helpers
  from avjax import train_state

  from avjax import config_tokens
  config = helpers.parity_config()
  config_tokens.apply_args(config, "audio_lstm")       # as test_train.audio_config
  batches = [helpers.tiny_batch(config, seed) for seed in range(2)]
  n = len(batches[0]["label"])
  pid, nproc = jax.process_index(), jax.process_count()
  local = [{k: v[pid * n // nproc:(pid + 1) * n // nproc] for k, v in b.items()} for b in batches]
  mesh = parallel.make_mesh()
  assert jax.device_count() == 4, jax.devices()
  repl, data = parallel.shardings(mesh)
  from avjax.models import gating
  model = gating.create_model(config.model)
  state = train_state.create_train_state(config, model, batches[0], jax.random.PRNGKey(0), repl)
  step = steps.make_train_step(config, mesh)
  history = {"loss": [], "grad_norm": [], "mse": [], "triplet": []}
  for b in local:
    state, m = step(state, parallel.to_global(b, data))
    for key in history:
      history[key].append(float(m[key]))
  if pid == 0:
    with open(FLAGS.out + ".json", "w") as f:
      json.dump(history, f)


if __name__ == "__main__":
  app.run(main)
