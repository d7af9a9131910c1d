"""The package's import graph and sizes: stages are peers over one classifier kit, and nothing runs back up.

The graph is read from the source (ast), not from a running interpreter: every ``import`` and ``from ... import``
of a module (function-level ones included), and every string constant that names a deft_jax module (the registry
tables that importlib loads by name, e.g. ``"deft_jax.baselines.gmm"`` or ``"deft_jax.adapt.methods:fft"``).

Layers, bottom to top (an import may point down or sideways within one package, never up):

- base: models/, data/, report/, parallel/ and the shared top-level modules (train_state, loop, optim, ...);
- kit: classify/ (what trains and evaluates a classifier);
- stages: pretrain/, detect/, baselines/, adapt/ (peers: none imports another);
- entry points: run, api, main, cli, config_check (config_check reads the baselines' names for its table).
"""

import ast
import re

import pytest

from conftest import REPO

PACKAGE = REPO / "deft_jax"
STAGES = ("pretrain", "detect", "baselines", "adapt")
KIT = ("classify",)
ENTRY = ("run", "api", "main", "cli", "config_check")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
NAMED_MODULE = re.compile(r"^(deft_jax(?:\.\w+)+)(?::\w+)?$")


def _module_name(path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str:
  """The longest prefix of the dotted ``name`` that is a module of the package (``deft_jax.adapt.train.run``
  -> ``deft_jax.adapt.train``)."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name


def imports_of(module: str) -> set[str]:
  """The deft_jax modules ``module`` imports, by statement or by a string that names one."""
  path = MODULES[module]
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names] + [base]
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
      m = NAMED_MODULE.match(node.value)
      names = [m.group(1)] if m else []
    out.update(r for r in (_resolve(n) for n in names if n.startswith("deft_jax")) if r and r != module)
  return out


def part(module: str) -> str:
  """The package a module belongs to: ``deft_jax.adapt.train`` -> "adapt", ``deft_jax.run`` -> "run"."""
  return module.split(".")[1] if module != "deft_jax" else ""


def layer(module: str) -> int:
  p = part(module)
  return 3 if p in ENTRY else 2 if p in STAGES else 1 if p in KIT else 0


def edges() -> list[tuple[str, str]]:
  return sorted((m, i) for m in MODULES for i in imports_of(m))


def test_the_graph_sees_imports_of_every_kind():
  assert "deft_jax.models.clip" in imports_of("deft_jax.models.build")  # from deft_jax.models import clip as ...
  assert "deft_jax.errors" in imports_of("deft_jax.baselines")  # a function-level import
  assert {"deft_jax.baselines.gmm", "deft_jax.baselines.label_match"} <= imports_of("deft_jax.baselines")  # by name


def test_no_stage_imports_another_stage():
  bad = [f"{m} -> {i}" for m, i in edges() if part(m) in STAGES and part(i) in STAGES and part(m) != part(i)]
  assert not bad, "stages are peers; these imports join them:\n" + "\n".join(bad)


def test_no_import_runs_back_up():
  bad = [f"{m} -> {i}" for m, i in edges() if layer(i) > layer(m)]
  assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_no_import_loop_between_packages():
  graph = {}
  for m, i in edges():
    if part(m) != part(i):
      graph.setdefault(part(m), set()).add(part(i))
  loops = []

  def visit(node, path):
    for nxt in sorted(graph.get(node, ())):
      if nxt == path[0]:
        loops.append(" -> ".join(path + [nxt]))
      elif nxt not in path and nxt > path[0]:  # each loop once, from its smallest package
        visit(nxt, path + [nxt])

  for start in sorted(graph):
    visit(start, [start])
  assert not loops, "import loops between packages:\n" + "\n".join(loops)


def _functions(tree):
  for node in ast.walk(tree):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      yield node


@pytest.mark.parametrize("limit", [MAX_MODULE_LINES])
def test_no_module_is_longer_than_400_lines(limit):
  long = {str(p.relative_to(REPO)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > limit}
  assert not long, long


@pytest.mark.parametrize("limit", [MAX_FUNCTION_LINES])
def test_no_function_is_longer_than_80_lines(limit):
  long = {}
  for p in MODULES.values():
    for f in _functions(ast.parse(p.read_text())):
      n = f.end_lineno - f.lineno + 1
      if n > limit:
        long[f"{p.relative_to(REPO)}:{f.lineno} {f.name}"] = n
  assert not long, long


def test_every_module_is_imported_under_one_name():
  """One module, one local name across the package, its tests and benchmarks (``detect.step`` is always
  ``detect_step``, never ``step_lib`` in one file and ``detect_step`` in another)."""
  names = {}
  for path in sorted(p for d in ("deft_jax", "tests", "benchmarks") for p in (REPO / d).rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deft_jax") and not node.level:
        pairs = [(f"{node.module}.{a.name}", a.asname or a.name) for a in node.names]
      elif isinstance(node, ast.Import):
        pairs = [(a.name, a.asname) for a in node.names if a.name.startswith("deft_jax") and a.asname]
      else:
        continue
      for module, local in pairs:
        if module in MODULES and module != "deft_jax":
          names.setdefault(module, {}).setdefault(local, []).append(str(path.relative_to(REPO)))
  several = {m: {k: v[:3] for k, v in by.items()} for m, by in names.items() if len(by) > 1}
  assert not several, several


def _path_edits(source: str) -> list[int]:
  """Lines of ``source`` that change the import path (sys.path.insert / append / extend / assignment)."""
  out = []
  for node in ast.walk(ast.parse(source)):
    target = node.func if isinstance(node, ast.Call) else (node.targets[0] if isinstance(node, ast.Assign) else None)
    if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute)
        and target.value.attr == "path" and getattr(target.value.value, "id", "") == "sys"):
      out.append(node.lineno)
    elif (isinstance(target, ast.Attribute) and target.attr == "path" and getattr(target.value, "id", "") == "sys"
          and isinstance(node, ast.Assign)):
      out.append(node.lineno)
  return sorted(out)


def test_no_module_edits_the_import_path():
  """Was: 8 benchmark files put the repository on sys.path themselves; they run as `PYTHONPATH=. python ...`
  from the repository root (deft_jax itself is installed), as every documented command says."""
  assert _path_edits("import sys\nsys.path.insert(0, 'x')\nsys.path = []\nsys.path.append('y')\n") == [2, 3, 4]
  found = {f"{p.relative_to(REPO)}:{line}" for root in ("deft_jax", "benchmarks")
           for p in sorted((REPO / root).rglob("*.py")) for line in _path_edits(p.read_text())}
  assert not found, sorted(found)
