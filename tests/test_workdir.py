"""The workdir: recorded configs that a rerun cannot silently change, per-fold locks."""

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
from unittest import mock

from absl.testing import absltest

from avjax import config_lib
from avjax import config_tokens
from avjax import fold_lock
from avjax import protocol
from avjax import run_spec
from avjax import workdir


class RecordConfigTest(absltest.TestCase):

  def test_a_rerun_with_another_config_stops_before_writing(self):
    root = tempfile.mkdtemp()
    first = config_lib.get_base_config()
    path = workdir.record_config(first, root)
    before = open(path).read()
    # Fields that only change how the run executes may differ.
    rerun = config_lib.get_base_config()
    rerun.folds = (3,)
    rerun.train.log_every_steps = 1
    rerun.model.conv_impl = "xla"
    workdir.record_config(rerun, root)
    self.assertEqual(open(path).read(), before)
    self.assertEqual(protocol.config_hash(rerun), protocol.config_hash(first))
    # A model / protocol field may not.
    other = config_lib.get_base_config()
    other.model.variant = "lstm"
    other.loss.margin = 0.5
    with self.assertRaises(workdir.ConfigMismatchError) as cm:
      workdir.record_config(other, root)
    message = str(cm.exception)
    self.assertIn("model.variant: recorded 'gating', now 'lstm'", message)
    self.assertIn("loss.margin: recorded 1.0, now 0.5", message)
    self.assertIn("--config_mismatch=ok", message)
    self.assertEqual(open(path).read(), before)                       # nothing written
    self.assertEqual(os.listdir(root), ["config.json"])
    self.assertNotEqual(protocol.config_hash(other), protocol.config_hash(first))
    # With consent the new config is recorded and the old one kept.
    workdir.record_config(other, root, allow_change=True)
    self.assertEqual(workdir.load_config(root).model.variant, "lstm")
    kept = os.path.join(root, f"config.{protocol.config_hash(first)}.json")
    self.assertTrue(os.path.isfile(kept))
    self.assertEqual(open(kept).read(), before)

  def test_a_workdir_of_the_paper_literal_defaults_resumes_only_under_paper_literal(self):
    # config.json as avjax 0.1.0 wrote it before the defaults became `warmup_semihard`:
    # the paper's reading (Adam with L2), the warm-up as batch_all_epochs, no version.
    root = tempfile.mkdtemp()
    old = config_lib.get_base_config().to_dict()
    old["loss"].update(batch_all_epochs=0, negatives="hardest")
    old["model"]["center_audio_head"] = False
    old["optim"]["name"] = "adam"
    del old["loss"]["batch_all_fraction"]
    with open(os.path.join(root, "config.json"), "w") as f:
      json.dump(old, f)
    recorded = workdir.load_config(root)
    self.assertEqual(run_spec.of(recorded).warmup_epochs, 0)
    with self.assertRaises(workdir.ConfigMismatchError) as cm:
      workdir.record_config(config_lib.get_base_config(), root)
    for field in ("loss.negatives", "model.center_audio_head", "loss.batch_all_fraction",
                  "optim.name"):
      self.assertIn(field, str(cm.exception))
    literal = config_tokens.apply_args(config_lib.get_base_config(), "paper_literal")
    workdir.record_config(literal, root)          # no difference: resumes

  def test_config_json_records_its_version(self):
    """config.json says which avjax wrote it; reading it back drops the field (not part of
    the protocol); a newer version than this one is refused; a config without one
    (avjax 0.1.0) gets RECORDED_BEFORE for the fields it lacks, a current one does not."""
    from avjax import __version__
    root = tempfile.mkdtemp()
    path = workdir.record_config(config_lib.get_base_config(), root)
    with open(path) as f:
      doc = json.load(f)
    self.assertEqual(doc["avjax_version"], __version__)
    self.assertNotIn("avjax_version", workdir.load_config(root))
    workdir.record_config(config_lib.get_base_config(), root)      # no difference
    del doc["loss"]["negatives"]
    for version, negatives in ((__version__, "semihard"), (None, "hardest")):
      if version is None:
        del doc["avjax_version"]
      with open(path, "w") as f:
        json.dump(doc, f)
      self.assertEqual(workdir.load_config(root).loss.negatives, negatives)
    doc["avjax_version"] = "99.0.0"
    with open(path, "w") as f:
      json.dump(doc, f)
    with self.assertRaisesRegex(ValueError, "recorded by avjax 99.0.0, newer than this avjax"):
      workdir.load_config(root)

  def test_a_fold_is_read_with_the_config_it_was_trained_with(self):
    root = tempfile.mkdtemp()
    workdir.record_config(config_lib.get_base_config(), root)
    lstm = config_lib.get_base_config()
    lstm.model.variant = "lstm"
    workdir.record_config(lstm, root, path=os.path.join(root, "fold_3", "config.json"))
    self.assertEqual(workdir.load_fold_config(root, 3).model.variant, "lstm")
    self.assertEqual(workdir.load_fold_config(root, 2).model.variant, "gating")


class AtomicWriteTest(absltest.TestCase):

  def test_two_writers_of_one_file_do_not_collide(self):
    # Processes sharing a workdir each write results.json when their folds end: one
    # writing while the other is mid-write must leave a whole file, and neither fails.
    path = os.path.join(tempfile.mkdtemp(), "results.json")

    def slow_writer(tmp):
      with open(tmp, "w") as f:
        f.write('{"writer": ')
        workdir.write_json(path, {"writer": "B"})       # the other process, meanwhile
        f.write('"A"}')
    workdir.write_atomic(path, slow_writer)
    self.assertEqual(json.load(open(path)), {"writer": "A"})
    self.assertEqual(os.listdir(os.path.dirname(path)), ["results.json"])   # no .tmp left


class FoldLockTest(absltest.TestCase):

  def test_one_process_per_fold(self):
    fold = os.path.join(tempfile.mkdtemp(), "fold_0")
    with fold_lock.FoldLock(fold) as lock:
      info = json.load(open(lock.path))
      self.assertEqual((info["host"], info["pid"]), (socket.gethostname(), os.getpid()))
      with self.assertRaisesRegex(fold_lock.FoldLocked, f"held by process {os.getpid()}"):
        fold_lock.FoldLock(fold).acquire()          # a live holder: never taken over
    self.assertFalse(os.path.exists(lock.path))  # released
    # A lock left by a dead process of this host is taken over, with a notice.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = {"host": socket.gethostname(), "pid": int(dead.stdout), "start": "earlier"}
    json.dump(stale, open(lock.path, "w"))
    with contextlib.redirect_stdout(io.StringIO()) as out:
      taken = fold_lock.FoldLock(fold).acquire()
    self.assertIn("no longer running", out.getvalue())
    self.assertEqual(json.load(open(lock.path))["pid"], os.getpid())
    taken.release()
    # Three processes judge one stale lock stale: A takes it over; B, acting on what it
    # read before, must not displace A's fresh lock, even if C tries to create its own the
    # moment the lock file is moved or removed (two holders of one fold otherwise).
    json.dump(stale, open(lock.path, "w"))
    raw = open(lock.path, "rb").read()
    with contextlib.redirect_stdout(io.StringIO()):
      a = fold_lock.FoldLock(fold).acquire()
    b, c = fold_lock.FoldLock(fold), fold_lock.FoldLock(fold)
    c_created = []
    real_replace, real_remove = os.replace, os.remove

    def then_c_creates(real):
      def call(src, *args):
        real(src, *args)
        if os.fspath(src) == lock.path:
          c_created.append(c._create())
      return call
    with mock.patch("os.replace", then_c_creates(real_replace)), \
         mock.patch("os.remove", then_c_creates(real_remove)):
      b._take_away(raw)
    self.assertNotIn(True, c_created)
    self.assertEqual(json.load(open(lock.path))["pid"], os.getpid())
    self.assertEqual(open(lock.path, "rb").read(), a._read()[1])
    self.assertFalse(os.path.exists(lock.path + ".takeover"))
    a.release()
    # Another host's lock cannot be checked from here: it is respected.
    json.dump(dict(stale, host="elsewhere"), open(lock.path, "w"))
    with self.assertRaisesRegex(fold_lock.FoldLocked, "on host elsewhere"):
      fold_lock.FoldLock(fold).acquire()


if __name__ == "__main__":
  absltest.main()
