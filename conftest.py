"""Test setup for the suite (tests/).

Four fake CPU devices, so sharding tests run anywhere; must be set before JAX
initialises its backends. Compiled programs are released after each test module.
"""

import os
import shutil
import uuid

import pytest

# Compilation is most of the suite's time: XLA:CPU's legacy elemental emitters compile the
# tiny train step faster than its fusion emitters. Single-threaded Eigen: the suite runs
# one pytest-xdist worker per core, and a pool of one thread per core in each worker
# oversubscribed the machine (figures: docs/benchmark_history.md, "Test suite times").
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4 "
                      "--xla_cpu_use_fusion_emitters=false --xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's backend optimisations off (as flax's examples' train_test.py): the tests'
# tiny shapes run in milliseconds either way, and they compile faster. Subprocesses
# (workers, benchmarks) inherit it.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Each module's compiled programs are shared by its tests, then dropped: a process
  holding every test's programs runs out of memory mappings (tests.helpers.release_compiled)."""
  yield
  from tests import helpers
  helpers.release_compiled()


def pytest_configure(config):
  """One id per run, inherited by pytest-xdist's workers: they share one directory of
  test data (tests.helpers), removed by the process that made the id.

  No persistent compilation cache: with XLA:CPU's four fake devices, a train step
  loaded from the cache that another process compiled (the shared tiny workdir's
  training) can deadlock in an all-gather (jax 0.10.2: a rendezvous timeout after
  40 s, then an abort)."""
  if "AVJAX_TEST_RUN" not in os.environ:
    os.environ["AVJAX_TEST_RUN"] = uuid.uuid4().hex
    config._avjax_owns_run = True


  # Orbax writes a replicated array by slicing it across its replicas (4 fake devices
  # here): each save then runs one small eager slice per array and replica, each
  # compiled on first use. Without it one replica writes; the checkpoints' format and
  # contents do not change.
  from orbax.checkpoint import type_handlers
  import jax
  type_handlers.register_type_handler(
      jax.Array, type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


def pytest_unconfigure(config):
  if getattr(config, "_avjax_owns_run", False):
    from tests import helpers
    shutil.rmtree(helpers.session_path(os.environ["AVJAX_TEST_RUN"]), ignore_errors=True)
