"""Faults and bad files: a full or read-only disk, a truncated workdir file, a dead or
foreign lock, a value checkable at start, Ctrl-C. Each ends with one line naming the file
and what to do, the right exit status, and no leftovers.

A full disk is simulated by making the writer raise OSError(ENOSPC) (orbax: the
`ValueError: RESOURCE_EXHAUSTED ... [os_error_code='28']` it raises on a full tmpfs).
Unit-level except one re-evaluation of the shared tiny workdir (`tests.helpers`).
"""

import contextlib
import errno
import io
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from unittest import mock

import numpy as np
from absl.testing import absltest

from avjax import cli
from avjax import errors
from tests import helpers
from avjax import fold_lock
from avjax import workdir as workdir_lib

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))   # as a write() raises it: no path
HAVE_PROC = os.path.isfile(f"/proc/{os.getpid()}/stat")


def _run(args, **kwargs):
  return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=helpers.REPO, **kwargs)


def _error_lines(err: str) -> list[str]:
  return [line for line in err.splitlines() if line.startswith("error: ")]


class ExitStatusTest(absltest.TestCase):
  """Usage errors and failures are told apart by type, whatever library raised them."""

  def test_storage_errors_are_failures_usage_errors_are_not(self):
    orbax_full = ValueError(
        'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local file "/w/fold_0/'
        'checkpoints/2.orbax-checkpoint-tmp/state/": Failed to write 169591 bytes to file 14: '
        "No space left on device [os_error_code='28']")
    self.assertEqual(errors.storage_errno(orbax_full), errno.ENOSPC)
    self.assertEqual(cli.exit_status(orbax_full), cli.FAILURE)        # was 2: a ValueError
    tfds_full = RuntimeError('Failed to finalize writing of split "fold3": ... No space left '
                             "on device")
    self.assertEqual(cli.exit_status(tfds_full), cli.FAILURE)
    self.assertEqual(cli.exit_status(errors.StorageError("/w/x", errno.EROFS)), cli.FAILURE)
    self.assertEqual(cli.exit_status(errors.FoldsHeld("...")), cli.FAILURE)
    self.assertEqual(cli.exit_status(errors.CorruptFileError("/w/config.json", "empty", "fix")),
                     cli.USAGE)
    self.assertEqual(cli.exit_status(errors.UsageError("config.eval.k: ...")), cli.USAGE)
    self.assertEqual(cli.exit_status(ValueError("config.train.log_every_steps: 0")), cli.USAGE)
    self.assertIsNone(errors.storage_errno(ValueError("RESOURCE_EXHAUSTED: Out of memory while "
                                                      "trying to allocate 4.0GiB")))
    # avjax's own line names the path and the errno's meaning, not the library's wording.
    wrapped = errors.StorageError("/w/fold_0/predictions.npz", errno.ENOSPC)
    try:
      raise wrapped from ENOSPC
    except errors.StorageError as e:
      self.assertEqual(cli._root_message(e), "cannot write /w/fold_0/predictions.npz: No space "
                       "left on device; " + errors.STORAGE_ERRNOS[errno.ENOSPC])

  def test_ctrl_c_is_one_line_and_status_130(self):
    code = ("import sys; sys.path.insert(0, {repo!r})\n"
            "from avjax import cli, errors\n"
            "def main(argv):\n"
            "  raise errors.Interrupted('interrupted at step 7 of fold 0; rerun the same "
            "command to resume (from its checkpoint of step 6)')\n"
            "cli.run(main)\n").format(repo=str(helpers.REPO))
    proc = _run(["-c", code])
    _, err = proc.communicate(timeout=120)
    self.assertEqual(proc.returncode, 130, err)
    self.assertEqual(err.strip().splitlines()[-1], "interrupted at step 7 of fold 0; rerun the "
                     "same command to resume (from its checkpoint of step 6)")
    self.assertNotIn("Traceback", err)


class AtomicWriteTest(absltest.TestCase):

  def test_a_full_disk_names_the_file_and_leaves_no_temporary_file(self):
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "predictions.npz")
    with mock.patch.object(np, "savez", side_effect=ENOSPC), \
         self.assertRaises(errors.StorageError) as cm:
      workdir_lib.write_npz(path, {"a": np.zeros(3)})
    self.assertEqual(str(cm.exception), f"cannot write {path}: No space left on device; "
                     + errors.STORAGE_ERRNOS[errno.ENOSPC])
    self.assertEqual(cli.exit_status(cm.exception), cli.FAILURE)
    self.assertEqual(os.listdir(folder), [])                    # no predictions.npz.tmp
    with mock.patch("builtins.open", side_effect=OSError(errno.EROFS, "Read-only file system",
                                                         path + ".tmp")), \
         self.assertRaisesRegex(errors.StorageError, "Read-only file system; the file system"):
      workdir_lib.write_text(os.path.join(folder, "results.md"), "x")

  def test_a_killed_writers_temporary_files_go_with_the_next_lock(self):
    fold = os.path.join(tempfile.mkdtemp(), "fold_0")
    os.makedirs(fold)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    for name in ("predictions.npz.tmp", f"lock.json.tmp-{int(dead.stdout)}", "fold_info.json"):
      open(os.path.join(fold, name), "w").close()
    with fold_lock.FoldLock(fold):
      removed = fold_lock.clean_temp(fold)
      self.assertCountEqual(removed, ["predictions.npz.tmp", f"lock.json.tmp-{int(dead.stdout)}"])
      self.assertCountEqual(os.listdir(fold), ["fold_info.json", "lock.json"])

  def test_figures_and_metrics_writers(self):
    from matplotlib.figure import Figure
    from avjax import figures
    from avjax import writers
    folder = tempfile.mkdtemp()
    png = os.path.join(folder, "figures", "fig4.png")
    fig = Figure()
    with mock.patch.object(fig, "savefig", side_effect=ENOSPC), \
         self.assertRaisesRegex(errors.StorageError, f"cannot write {png}: No space"):
      figures._save(fig, png)
    self.assertEqual(os.listdir(os.path.dirname(png)), [])     # no half-written PNG
    jsonl = writers.JsonlWriter(os.path.join(folder, "metrics.jsonl"))
    with mock.patch.object(jsonl._file, "write", side_effect=ENOSPC), \
         self.assertRaisesRegex(errors.StorageError, "metrics.jsonl: No space"):
      jsonl.write_scalars(1, {"loss": 1.0})
    jsonl.close()

  def test_a_dead_tensorboard_writer_thread_is_a_failure_not_a_hang(self):
    from avjax import writers
    previous = threading.excepthook
    self.addCleanup(setattr, threading, "excepthook", previous)
    errors.install_thread_hook()                 # as the command lines do: no traceback
    writer = writers.TensorboardXWriter(os.path.join(tempfile.mkdtemp(), "tensorboard"))
    event_writer = writer._writer._get_file_writer().event_writer
    with mock.patch.object(event_writer._ev_writer, "write_event", side_effect=ENOSPC):
      writer.write_scalars(1, {"loss": 1.0})
      event_writer._worker.join(timeout=30)
    self.assertFalse(event_writer._worker.is_alive())
    with self.assertRaisesRegex(errors.StorageError, "tensorboard: No space left on device"):
      writer.write_scalars(2, {"loss": 1.0})
    writer.close()                                 # returns: nothing waits on the dead thread


class CheckpointStorageTest(absltest.TestCase):

  def test_a_full_disk_while_saving_is_one_failure_without_background_tracebacks(self):
    import ml_collections
    from absl import logging as absl_logging
    from avjax import train_state
    fold = tempfile.mkdtemp()
    config = ml_collections.ConfigDict({"train": {"keep_checkpoints": 2}})
    manager = train_state.checkpoint_manager(fold, config, cleanup_tmp=True)
    ckpt = workdir_lib.checkpoint_dir(fold)
    tmp = os.path.join(ckpt, "2.orbax-checkpoint-tmp")

    def full_disk_save(step, **kwargs):   # what orbax does on a full tmpfs
      # Orbax's save first waits for the manager's start-up cleanup of half-written
      # steps (`cleanup_tmp`), which runs in a thread; without the wait that thread
      # could find this step's directory and race the failure handler to remove it.
      getattr(manager, "_maybe_await_cleanup_tmp_directory", lambda: None)()
      os.makedirs(os.path.join(tmp, "state"))
      absl_logging.error("[thread=np_type_handler] _SignalingThread.run() raised an exception: "
                         "RESOURCE_EXHAUSTED: ...")
      raise ValueError(f'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database at local '
                       f'file "{tmp}/state/": Failed to write 400 bytes to file 14: No space '
                       "left on device [os_error_code='28']")

    self.addCleanup(logging.getLogger("absl").removeFilter, train_state._QUIET)
    self.addCleanup(logging.getLogger("asyncio").removeFilter, train_state._QUIET)
    with mock.patch.object(manager, "save", side_effect=full_disk_save), \
         self.assertNoLogs("absl", level="ERROR"), \
         self.assertRaises(errors.StorageError) as cm:
      train_state.save_checkpoint(manager, 2, {"w": np.zeros(3)}, {"step": 2})
    self.assertEqual(cm.exception.errno, errno.ENOSPC)
    self.assertEqual(cm.exception.filename, os.path.join(ckpt, "2"))
    self.assertEqual(cli.exit_status(cm.exception), cli.FAILURE)
    self.assertEqual(os.listdir(ckpt), [])        # the half-written step is gone
    manager.close()


class LockTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.fold = os.path.join(tempfile.mkdtemp(), "fold_0")
    os.makedirs(self.fold)
    self.path = os.path.join(self.fold, "lock.json")

  def _take(self, record: dict | None, raw: str | None = None) -> str:
    """Writes the lock, ages it past the grace period, takes it; returns the notice."""
    with open(self.path, "w") as f:
      f.write(raw if raw is not None else json.dumps(record))
    old = time.time() - 60
    os.utime(self.path, (old, old))
    with contextlib.redirect_stdout(io.StringIO()) as out:
      lock = fold_lock.FoldLock(self.fold).acquire()
    self.assertEqual(json.load(open(self.path))["pid"], os.getpid())
    lock.release()
    return out.getvalue()

  def _process(self, *argv):
    proc = subprocess.Popen(list(argv))
    self.addCleanup(proc.wait)
    self.addCleanup(proc.kill)
    return proc

  def test_an_empty_or_unparsable_lock_is_taken_over(self):
    for raw in ("", '{"host": "h', "[]"):
      self.assertIn("empty or unreadable", self._take(None, raw), repr(raw))

  @absltest.skipUnless(HAVE_PROC, "needs /proc")
  def test_a_pid_that_is_not_the_holder_any_more_is_stale(self):
    host = socket.gethostname()
    # A live process that is not avjax (the issue's `pid 1`), written after it started.
    sleeper = self._process("sleep", "60")
    time.sleep(0.2)
    notice = self._take({"host": host, "pid": sleeper.pid,
                         "start": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "time": time.time()})
    self.assertIn(f"process {sleeper.pid} of this host is not avjax (sleep 60)", notice)
    # A Python process that started after the lock was written: the pid was reused.
    python = self._process(sys.executable, "-c", "import time; time.sleep(60)")
    notice = self._take({"host": host, "pid": python.pid, "start": "2026-01-01T00:00:00+0000"})
    self.assertIn("started after the lock was written", notice)
    # A lock of this avjax records its process's start: another start is another process.
    ticks = fold_lock._start_ticks(python.pid)
    notice = self._take({"host": host, "pid": python.pid, "time": time.time() + 3600,
                         "pid_start": ticks + 1})
    self.assertIn("another process now", notice)
    # The same process, alive: respected.
    with open(self.path, "w") as f:
      json.dump({"host": host, "pid": python.pid, "time": time.time(), "pid_start": ticks,
                 "start": "now"}, f)
    with self.assertRaisesRegex(fold_lock.FoldLocked, f"held by process {python.pid}"):
      fold_lock.FoldLock(self.fold).acquire()

  def test_a_foreign_lock_is_respected_unless_taken_over(self):
    with open(self.path, "w") as f:
      json.dump({"host": "elsewhere", "pid": 42, "start": "2026-12-05T10:00:00+0000"}, f)
    with self.assertRaises(fold_lock.FoldLocked) as cm:
      fold_lock.FoldLock(self.fold).acquire()
    self.assertTrue(cm.exception.foreign)
    self.assertIn("--take_over_locks", str(cm.exception))
    with contextlib.redirect_stdout(io.StringIO()) as out:
      fold_lock.FoldLock(self.fold, take_over_foreign=True).acquire().release()
    self.assertIn("--take_over_locks was given", out.getvalue())

  def test_a_run_whose_folds_are_all_held_fails_with_the_list(self):
    from avjax import train
    held = [(0, fold_lock.FoldLocked("x", {"pid": 7, "host": "elsewhere", "start": "T0"}, True)),
            (3, fold_lock.FoldLocked("y", {"pid": 9, "host": "here", "start": "T1"}, False))]
    text = train._describe_held(held, take_over_locks=False)
    self.assertIn("fold(s) [0, 3] are held", text)
    self.assertIn("fold 0 by process 7 on host elsewhere since T0", text)
    self.assertIn("fold 3 by process 9 on host here since T1", text)
    self.assertIn("--take_over_locks", text)
    self.assertNotIn("--take_over_locks", train._describe_held(held[1:], False))

  def test_a_lock_that_cannot_be_written_is_a_storage_error(self):
    with mock.patch("builtins.open", side_effect=OSError(errno.ENOSPC, "No space left on device",
                                                         self.path + ".tmp-1")), \
         self.assertRaisesRegex(errors.StorageError, "No space left on device"):
      fold_lock.FoldLock(self.fold).acquire()
    self.assertEqual(os.listdir(self.fold), [])


class CorruptFileTest(absltest.TestCase):
  """A recorded file that does not read back: refused with its name and repair."""

  def test_a_truncated_recorded_config_names_the_file_and_the_repair(self):
    from avjax import config_lib
    root = tempfile.mkdtemp()
    path = workdir_lib.record_config(config_lib.get_base_config(), root)
    text = open(path).read()
    open(path, "w").write(text[: len(text) // 2])
    with self.assertRaises(errors.CorruptFileError) as cm:
      workdir_lib.record_config(config_lib.get_base_config(), root)
    message = cli._root_message(cm.exception)
    self.assertTrue(message.startswith(f"{path} cannot be read (not valid JSON: "), message)
    self.assertIn("remove it and rerun python -m avjax.main", message)
    self.assertEqual(cli.exit_status(cm.exception), cli.USAGE)
    fold_config = os.path.join(root, "fold_3", "config.json")
    os.makedirs(os.path.dirname(fold_config))
    open(fold_config, "w").close()
    with self.assertRaisesRegex(errors.CorruptFileError,
                                f"{fold_config} cannot be read \\(empty\\); .*copy {path}"):
      workdir_lib.load_fold_config(root, 3)

  def test_truncated_evaluation_files_name_the_evaluate_command(self):
    from avjax import results
    workdir = tempfile.mkdtemp()
    fold = helpers.write_fake_fold(workdir, 2, labels=[0, 1, 2, 3], correct={"AV": [2, 3]})
    npz = os.path.join(fold, "predictions.npz")
    data = open(npz, "rb").read()
    open(npz, "wb").write(data[: len(data) // 2])
    with self.assertRaises(errors.CorruptFileError) as cm:
      results.load_fold(fold)
    self.assertEqual(cm.exception.path, npz)
    self.assertIn(f"python -m avjax.evaluate --workdir={workdir} --folds=2", str(cm.exception))
    open(npz, "wb").write(data)
    results.check_fold_outputs(fold)             # whole again
    info = os.path.join(fold, "fold_info.json")
    open(info, "w").write('{"dataset": "synth')
    with self.assertRaisesRegex(errors.CorruptFileError, "fold_info.json cannot be read"):
      results.check_fold_outputs(fold)

  def test_predict_refuses_a_truncated_config_with_one_line_and_status_2(self):
    from avjax import predict
    workdir = tempfile.mkdtemp()
    os.makedirs(os.path.join(workdir, "fold_0"))
    open(os.path.join(workdir, "config.json"), "w").write('{"dataset": {"na')
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
      status = predict.main([f"--workdir={workdir}", "clip.mp4"])
    self.assertEqual(status, predict.EXIT_USAGE)
    lines = err.getvalue().strip().splitlines()
    self.assertLen(lines, 1)
    self.assertIn(f"{workdir}/config.json cannot be read (not valid JSON", lines[0])

  def test_main_and_evaluate_refuse_a_truncated_config_before_writing(self):
    workdir = tempfile.mkdtemp()
    open(os.path.join(workdir, "config.json"), "w").write('{"dataset": {"na')
    procs = {
        "main": _run(["-m", "avjax.main", "--config=configs/demo.py", f"--workdir={workdir}",
                      "--config.dataset.build=False", f"--config.dataset.data_dir={workdir}/d"]),
        "evaluate": _run(["-m", "avjax.evaluate", f"--workdir={workdir}"]),
    }
    for name, proc in procs.items():
      _, err = proc.communicate(timeout=300)
      self.assertEqual(proc.returncode, 2, f"{name}: {err}")
      self.assertNotIn("Traceback", err, name)
      lines = _error_lines(err)
      self.assertLen(lines, 1, f"{name}: {err}")
      self.assertIn(f"{workdir}/config.json cannot be read (not valid JSON", lines[0])
    self.assertEqual(os.listdir(workdir), ["config.json"])


class BuildTest(absltest.TestCase):

  class FakeBuilder:
    def __init__(self, data_dir, fail):
      self.data_dir, self.fail, self.built = data_dir, fail, False

    def is_prepared(self):
      return self.built

    def download_and_prepare(self, download_config=None):
      os.makedirs(os.path.join(os.path.dirname(self.data_dir), "incomplete.NEW123_1.0.0"))
      if self.fail:
        raise RuntimeError('Failed to finalize writing of split "fold3": ... No space left on '
                           "device")
      self.built = True

  def test_a_killed_builds_folder_is_removed_and_a_full_disk_is_one_failure(self):
    from avjax.data import builder_lib
    config_dir = os.path.join(tempfile.mkdtemp(), "synthetic_av", "w4_l1_ov")
    killed = os.path.join(config_dir, "incomplete.ABC123_1.3.0")
    os.makedirs(os.path.join(killed, "shards"))
    builder = self.FakeBuilder(os.path.join(config_dir, "1.3.0"), fail=True)
    with contextlib.redirect_stdout(io.StringIO()) as out, \
         self.assertRaises(errors.StorageError) as cm:
      builder_lib.prepare(builder)
    self.assertIn(f"notice: removed {killed}, left by an interrupted build", out.getvalue())
    self.assertEqual(cm.exception.errno, errno.ENOSPC)
    self.assertIn(config_dir, str(cm.exception))
    self.assertEqual(os.listdir(config_dir), [".avjax_build.lock"])   # nothing incomplete
    builder.fail = False
    with contextlib.redirect_stdout(io.StringIO()):
      self.assertTrue(builder_lib.prepare(builder))
      self.assertFalse(builder_lib.prepare(builder))   # prepared: nothing to do


  def test_a_bad_manual_dir_fails_before_anything_is_written(self):
    from avjax.data import builder_lib
    from avjax.tfds_builders.ravdess import ravdess_dataset_builder as ravdess
    import tensorflow_datasets as tfds
    root = tempfile.mkdtemp()
    data_dir = os.path.join(root, "data")
    builder = ravdess.Builder(config="w2_l1_ov", data_dir=data_dir, num_workers=1)
    with self.assertRaisesRegex(builder_lib.ManualDirError, "does not exist"):
      builder_lib.prepare(builder, tfds.download.DownloadConfig(
          manual_dir=os.path.join(root, "missing")))
    self.assertFalse(os.path.exists(data_dir))


class FeatureStoreFilesTest(absltest.TestCase):

  def _fold(self, store, fold, n=3, shape=(1, 2, 4)):
    d = os.path.join(store, f"fold_{fold}")
    os.makedirs(d)
    arrays = {"features": np.ones((n,) + shape, np.float32), "window_valid": np.ones((n, 2)),
              "label": np.arange(n), "actor": np.arange(n), "clip_id": np.array(["a"] * n)}
    for k, v in arrays.items():
      np.save(os.path.join(d, f"{k}.npy"), v)
    return d

  def test_a_truncated_array_is_found_and_leftovers_are_removed(self):
    from avjax import feature_store
    store = tempfile.mkdtemp()
    d = self._fold(store, 0)
    check = dict(num_views=1, num_windows=2, shape=(4,))
    self.assertIsNone(feature_store._fold_problem(store, 0, 3, **check))
    self.assertIn("expected (4, 1, 2, 4)", feature_store._fold_problem(store, 0, 4, **check))
    features = os.path.join(d, "features.npy")
    data = open(features, "rb").read()
    open(features, "wb").write(data[: len(data) // 2])
    self.assertIn("features.npy: ValueError", feature_store._fold_problem(store, 0, 3, **check))
    # A failed assembly removes its folder; a killed one's folder goes with the next.
    os.makedirs(os.path.join(store, "fold_1.partial"))
    open(os.path.join(store, "fold_1.partial", "part_000000.npz.tmp-99.npz"), "w").close()
    np.savez(os.path.join(store, "fold_1.partial", "part_000000.npz"),
             **{k: np.zeros(1) for k in ("features", "window_valid", "label", "actor")},
             clip_id=np.array(["a"]))
    os.makedirs(os.path.join(store, "fold_2.tmp-12345"))
    with mock.patch.object(np, "save", side_effect=ENOSPC), \
         self.assertRaisesRegex(errors.StorageError, "fold_1: No space left"):
      feature_store._assemble(os.path.join(store, "fold_1.partial"),
                              os.path.join(store, "fold_1"), 1)
    self.assertFalse(os.path.exists(os.path.join(store, f"fold_1.tmp-{os.getpid()}")))
    with mock.patch.object(np, "savez", side_effect=ENOSPC), \
         self.assertRaisesRegex(errors.StorageError, "part_000001.npz: No space left"):
      feature_store._write_npz(os.path.join(store, "fold_1.partial", "part_000001.npz"),
                               {"a": np.zeros(1)})
    feature_store._clean_leftovers(store)
    self.assertCountEqual(os.listdir(store), ["fold_0", "fold_1.partial"])
    self.assertEqual(os.listdir(os.path.join(store, "fold_1.partial")), ["part_000000.npz"])


class CheckedAtStartTest(absltest.TestCase):

  def test_eval_k_against_the_smallest_training_set_before_anything_is_written(self):
    from avjax import train
    config = helpers.tiny_synthetic_config(max_steps=1)
    config.folds = (0,)
    config.eval.k = 1000
    workdir = os.path.join(tempfile.mkdtemp(), "w")
    with self.assertRaisesRegex(errors.UsageError, r"^config\.eval\.k: 1000 is more than the "
                                r"72 training clips of test fold 0"):
      train.train_and_evaluate(config, workdir)
    self.assertFalse(os.path.exists(workdir))
    config.eval.k = 72
    train.check_at_start(config)


class TrainingInterruptTest(absltest.TestCase):

  def test_ctrl_c_names_the_step_and_the_checkpoint_it_resumes_from(self):
    import jax.numpy as jnp
    from avjax import steps
    from avjax import train
    config = helpers.tiny_synthetic_config(max_steps=4)      # checkpoints every 2 steps
    calls = []

    def make_fake_step(config, mesh, batch_all_steps):
      keys = steps.metric_keys(config.model.modalities)

      def step(state, batch):
        calls.append(1)
        if len(calls) == 3:
          raise KeyboardInterrupt
        return state.replace(step=state.step + 1), {k: jnp.zeros(()) for k in keys}
      return step

    fold = tempfile.mkdtemp()
    with mock.patch.object(steps, "make_train_step", make_fake_step), \
         contextlib.redirect_stdout(io.StringIO()), \
         self.assertRaises(errors.Interrupted) as cm:
      train.train_fold(config, fold, test_fold=0)
    self.assertEqual(str(cm.exception), "interrupted at step 3 of fold 0; rerun the same command "
                     "to resume (from its checkpoint of step 2)")
    self.assertEqual(sorted(os.listdir(workdir_lib.checkpoint_dir(fold))), ["2"])


class ReevaluationTest(absltest.TestCase):

  def test_unreadable_evaluation_files_of_a_done_fold_are_written_again(self):
    from avjax import train
    workdir = os.path.join(tempfile.mkdtemp(), "w")
    shutil.copytree(helpers.tiny_workdir(), workdir)
    fold = os.path.join(workdir, "fold_0")
    want = dict(np.load(os.path.join(fold, "predictions.npz")))
    open(os.path.join(fold, "fold_info.json"), "w").write('{"dataset": "synth')
    open(os.path.join(fold, "predictions.npz.tmp"), "w").close()   # a killed write's
    config = helpers.tiny_synthetic_config(max_steps=2)
    config.folds = (0, 1)
    with contextlib.redirect_stdout(io.StringIO()) as out:
      train.train_and_evaluate(config, workdir)
    self.assertIn("fold 0: fold_info.json cannot be read (not valid JSON", out.getvalue())
    self.assertIn("evaluating the fold again from its checkpoint", out.getvalue())
    self.assertNotIn("fold 1:", out.getvalue().split("Results:")[0].replace("fold 1 ", ""))
    got = np.load(os.path.join(fold, "predictions.npz"))
    for key in ("labels", "pred_AV", "pred_AO", "pred_VO"):
      np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    self.assertEqual(json.load(open(os.path.join(fold, "fold_info.json")))["checkpoint_step"], 2)
    self.assertFalse(os.path.exists(os.path.join(fold, "predictions.npz.tmp")))


if __name__ == "__main__":
  absltest.main()
