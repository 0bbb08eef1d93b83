"""The package's import graph: no cycle, and the step and models without the data stack;
what the wheel installs, and the tests' helpers kept out of the package."""

import ast
import pathlib
import subprocess
import sys
import tomllib

from absl.testing import absltest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "avjax"
DATA_STACK = ("tensorflow_datasets", "grain", "av", "soxr", "array_record", "tensorflow")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: pathlib.Path) -> set[str]:
  """Every absolute module name a file imports anywhere (top level or inside functions),
  with `from a import b` giving both a and a.b."""
  names = set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module)
      names.update(f"{node.module}.{a.name}" for a in node.names)
  return names


def import_graph() -> dict[str, set[str]]:
  """avjax module -> the avjax modules it imports anywhere (top level or inside functions)."""
  modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
  return {name: {t for t in imported_names(path) if t in modules and t != name} - {"avjax"}
          for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle as [a, b, ..., a], or None (depth-first search)."""
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node):
    state[node] = 1
    stack.append(node)
    for dep in sorted(graph[node]):
      if state.get(dep) == 1:
        return stack[stack.index(dep):] + [dep]
      if dep not in state:
        found = visit(dep)
        if found:
          return found
    stack.pop()
    state[node] = 2
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


class ImportGraphTest(absltest.TestCase):

  def test_no_cycle(self):
    graph = import_graph()
    self.assertIn("avjax.train", graph)
    self.assertIsNone(find_cycle(graph))

  def test_cycle_finder_finds_a_planted_cycle(self):
    graph = import_graph()
    graph["avjax.losses"] = graph["avjax.losses"] | {"avjax.train"}  # train -> steps -> losses
    cycle = find_cycle(graph)
    self.assertIsNotNone(cycle)
    self.assertEqual(cycle[0], cycle[-1])

  def test_flow(self):
    """main -> train -> input_pipeline / models -> losses / mining; train -> evaluate -> knn
    -> results -> figures: nothing below imports what is above it."""
    graph = import_graph()
    self.assertIn("avjax.evaluate", graph["avjax.train"])
    for low, high in [("avjax.evaluate", "avjax.train"), ("avjax.device_data", "avjax.train"),
                      ("avjax.steps", "avjax.train"), ("avjax.input_pipeline", "avjax.train"),
                      ("avjax.knn", "avjax.evaluate"), ("avjax.results", "avjax.evaluate"),
                      ("avjax.results", "avjax.report"), ("avjax.paper", "avjax.results"),
                      ("avjax.choices", "avjax.config_lib"), ("avjax.trunks", "avjax.config_lib"),
                      ("avjax.data.registry", "avjax.config_lib"),
                      ("avjax.config_lib", "avjax.config_tokens"),
                      ("avjax.config_lib", "avjax.protocol"),
                      ("avjax.figures", "avjax.evaluate"), ("avjax.predict", "avjax.train"),
                      ("avjax.predict", "avjax.evaluate"),
                      ("avjax.input_pipeline", "avjax.feature_store"),
                      ("avjax.data.feature_cache", "avjax.input_pipeline")]:
      self.assertNotIn(high, graph[low], f"{low} imports {high}")

  def test_step_and_models_without_the_data_stack(self):
    """The jitted step, the train state, the models and the feature extraction import with
    tensorflow-datasets, grain, PyAV and soxr unavailable (as on the device check's machine)."""
    blocked = ", ".join(repr(m) for m in DATA_STACK)
    code = f"""
import sys
for name in ({blocked},):
  sys.modules[name] = None          # `import name` now raises ImportError
from avjax import steps, train_state, parallel, augment, losses, mining, knn, feature_store, fixed_trunk
from avjax.models import gating, i3d, soundnet
for name in ({blocked},):
  assert sys.modules[name] is None, name
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PACKAGE.parent, timeout=300)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertIn("ok", out.stdout)


class LayoutTest(absltest.TestCase):

  def test_package_imports_no_test_tools(self):
    """Nothing installed imports pytest, absl.testing or the tests' helpers, nor the
    checkout's configs/ (not installed)."""
    for path in sorted(PACKAGE.rglob("*.py")):
      roots = {n.split(".")[0] for n in imported_names(path)}
      self.assertEmpty(roots & {"pytest", "tests", "configs", "chex"}, str(path))
      self.assertNotIn("absl.testing", imported_names(path), str(path))

  def test_modules_stay_small(self):
    """No module of the package is over 450 lines: one job each (docs/architecture.md)."""
    sizes = {str(p.relative_to(PACKAGE.parent)): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    self.assertEqual({k: v for k, v in sizes.items() if v > 450}, {})

  def test_architecture_lists_every_module(self):
    """docs/architecture.md names every module of the package."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for path in sorted(PACKAGE.rglob("*.py")):
      if path.name != "__init__.py" and "tfds_builders" not in path.parts:
        self.assertIn(path.name, text, str(path))

  def test_derived_facts_are_resolved_in_run_spec(self):
    """The resolvers behind a RunSpec's facts are called by avjax/run_spec.py alone, plus
    the model, which reads its own `model` block (gating.create_model): every other
    module asks `run_spec.of(config)`."""
    resolvers = {"reads_audio_records", "trunk_inputs", "warmup_epochs"}
    allowed = {"avjax.run_spec": resolvers, "avjax.models.gating": {"trunk_inputs"}}
    for path in sorted(PACKAGE.rglob("*.py")):
      called = {n.func.attr if isinstance(n.func, ast.Attribute) else getattr(n.func, "id", "")
                for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)}
      extra = (called & resolvers) - allowed.get(module_name(path), set())
      self.assertEmpty(extra, f"{path.name} resolves {sorted(extra)} itself")

  def test_no_test_module_imports_another(self):
    tests = PACKAGE.parent / "tests"
    for path in sorted(tests.glob("*.py")):
      others = {n for n in imported_names(path)
                if n.split(".")[-1].startswith("test_") and n.split(".")[0] == "tests"}
      self.assertEmpty(others, f"{path.name} imports a test module")

  def test_the_wheel_installs_only_avjax(self):
    """pyproject's package list (setuptools' find) holds avjax and its subpackages only,
    the dataset builders among them, and its package data names an installed package."""
    import setuptools
    with open(PACKAGE.parent / "pyproject.toml", "rb") as f:
      tools = tomllib.load(f)["tool"]["setuptools"]
    packages = setuptools.find_packages(str(PACKAGE.parent), **tools["packages"]["find"])
    self.assertNotEmpty(packages)
    for name in packages:
      self.assertTrue(name == "avjax" or name.startswith("avjax."), name)
    for name in ("avjax.tfds_builders.ravdess", "avjax.tfds_builders.crema_d_av",
                 "avjax.tfds_builders.synthetic_av", "avjax.models", "avjax.data"):
      self.assertIn(name, packages)
    for name in tools["package-data"]:
      self.assertIn(name, packages)


if __name__ == "__main__":
  absltest.main()
