"""The package's shape: one indentation, one line length, layers that import one way, configs that load light."""

import ast
import io
import subprocess
import sys
import tokenize

import pytest

from conftest import REPO

PY_FILES = sorted(p for d in ("deft_jax", "tests", "configs", "benchmarks") for p in (REPO / d).rglob("*.py"))
MAX_LINE = 120


def _imports(path) -> set[str]:
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out.update(f"{node.module}.{a.name}" for a in node.names)
  return out


def test_every_block_is_indented_by_two_spaces_and_no_line_is_longer_than_120():
  four, long = [], []
  for path in PY_FILES:
    text = path.read_text()
    indents = [len(t.string) for t in tokenize.generate_tokens(io.StringIO(text).readline)
               if t.type == tokenize.INDENT]
    if indents and min(indents) != 2:
      four.append(str(path.relative_to(REPO)))
    long += [f"{path.relative_to(REPO)}:{i}" for i, line in enumerate(text.splitlines(), 1) if len(line) > MAX_LINE]
  assert not four, f"indented by other than 2 spaces: {four}"
  assert not long, f"lines over {MAX_LINE} characters: {long[:20]}"


@pytest.mark.parametrize("folder, forbidden", [
    ("deft_jax/models", ("deft_jax.parallel", "deft_jax.train_state", "deft_jax.detect", "deft_jax.adapt",
                         "deft_jax.baselines", "deft_jax.pretrain", "deft_jax.loop", "deft_jax.run")),
    ("deft_jax/parallel", ("deft_jax.models",)),
    ("deft_jax/report", ("jax", "flax", "deft_jax.models")),
])
def test_layers_import_one_way(folder, forbidden):
  bad = [f"{p.relative_to(REPO)} imports {m}" for p in sorted((REPO / folder).rglob("*.py")) for m in _imports(p)
         if any(m == f or m.startswith(f + ".") for f in forbidden)]
  assert not bad, bad


def test_loading_every_config_imports_neither_tensorflow_nor_jax():
  code = ("import sys\nfrom deft_jax import config_lib\n"
          "for p in sys.argv[1:]:\n  config_lib.from_file(p)\n"
          "heavy = [m for m in ('tensorflow', 'jax', 'tensorflow_datasets') if m in sys.modules]\n"
          "assert not heavy, heavy\nprint('ok')")
  configs = [str(p) for p in sorted((REPO / "configs").glob("*.py"))]
  proc = subprocess.run([sys.executable, "-c", code, *configs], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
