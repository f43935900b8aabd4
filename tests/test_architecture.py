"""The package's import structure (docs/architecture.md): inference never loads training or dataset code,
models never load evaluation code, and no two package modules import each other."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import wonderland_jax

PACKAGE = Path(wonderland_jax.__file__).parent


def _loaded_after_import(*modules: str) -> list[str]:
  """The wonderland_jax modules in sys.modules of a fresh interpreter after importing `modules`."""
  code = ("import json, sys\n" + "".join(f"import {module}\n" for module in modules)
          + "print(json.dumps(sorted(m for m in sys.modules if m.startswith('wonderland_jax'))))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def _package_modules() -> dict[str, Path]:
  modules = {}
  for path in PACKAGE.rglob("*.py"):
    parts = ("wonderland_jax",) + path.relative_to(PACKAGE).with_suffix("").parts
    modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return modules


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
  """Every package module `module` imports, at the top or inside a function (`from x import name` counts x, and
  x.name when that is a module)."""
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")[:len(package.split(".")) - node.level + 1]
        source = ".".join(base + ([node.module] if node.module else []))
      else:
        source = node.module or ""
      found.add(source)
      found.update(f"{source}.{alias.name}" for alias in node.names)
  return {name for name in found if name in known and name != module}


def test_inference_imports_no_training_or_dataset_code():
  loaded = _loaded_after_import("wonderland_jax.pipeline", "wonderland_jax.reconstruct", "wonderland_jax.diffusion",
                                "wonderland_jax.diffusion.camera_pipeline", "wonderland_jax.diffusion.pipeline",
                                "wonderland_jax.diffusion.sampling")
  assert "wonderland_jax.pipeline" in loaded and "wonderland_jax.models.lalrm" in loaded
  offenders = [m for m in loaded if m.startswith(("wonderland_jax.train", "wonderland_jax.data"))]
  assert not offenders, offenders


def test_models_import_no_evaluation_code():
  models = sorted(m for m in _package_modules() if m.startswith("wonderland_jax.models."))
  loaded = _loaded_after_import(*models)
  assert set(models) <= set(loaded)
  offenders = [m for m in loaded if m.startswith(("wonderland_jax.eval", "wonderland_jax.train"))]
  assert not offenders, offenders


def test_converters_register_on_first_use():
  loaded = _loaded_after_import("wonderland_jax.convert")
  assert not [m for m in loaded if m.startswith("wonderland_jax.models")], loaded


@pytest.mark.parametrize("layer, forbidden", [("wonderland_jax.data", ("wonderland_jax.train", "wonderland_jax.eval")),
                                              ("wonderland_jax.camera", ("wonderland_jax.models", "wonderland_jax.data",
                                                                         "wonderland_jax.train")),
                                              ("wonderland_jax.nn", ("wonderland_jax.models", "wonderland_jax.train",
                                                                     "wonderland_jax.checkpoints"))])
def test_lower_layers_do_not_climb(layer, forbidden):
  modules = _package_modules()
  known = set(modules)
  climbs = {module: sorted(i for i in _imports(module, path, known) if i.startswith(forbidden))
            for module, path in modules.items() if module == layer or module.startswith(layer + ".")}
  assert not {module: found for module, found in climbs.items() if found}


def test_no_two_modules_import_each_other():
  modules = _package_modules()
  known = set(modules)
  graph = {module: _imports(module, path, known) for module, path in modules.items()}
  # A package's __init__ re-exporting its submodules is not a cycle with them.
  is_parent = lambda a, b: b.startswith(a + ".")
  mutual = sorted((a, b) for a in graph for b in graph[a]
                  if a < b and a in graph.get(b, ()) and not is_parent(a, b) and not is_parent(b, a))
  assert not mutual, mutual
  assert len(graph) > 60  # the walk saw the package


def test_tests_share_builders_only_through_helpers():
  """Test modules and conftest files import shared builders from tests/helpers/, never from each other."""
  tests = Path(__file__).parent
  offenders = {}
  for path in tests.rglob("*.py"):
    if "helpers" in path.relative_to(tests).parts:
      continue
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
               else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
      bad = [name for name in names if name.startswith("tests") and not name.startswith("tests.helpers")]
      if bad or (isinstance(node, ast.ImportFrom) and node.level):
        offenders.setdefault(str(path.relative_to(tests)), []).extend(bad or ["relative import"])
  assert not offenders, offenders
  assert (tests / "helpers" / "pipelines.py").exists()
