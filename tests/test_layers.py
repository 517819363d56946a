"""The package's floors, read from its own imports: nothing imports a floor above its own, no two
packages import each other, and no module outgrows one job (500 lines; an op table may)."""

import ast
import itertools
import pathlib
import sys

GMIA = pathlib.Path(__file__).resolve().parents[1] / "gmia"
# Bottom up, as gmia/__init__.py's docstring states them.
FLOORS = (
    ("files", "fingerprint", "finite", "parallel", "progress", "metrics", "quality", "viz",
     "workdir", "checkpoint", "cli", "onnx", "kernels", "data"),
    ("models",),
    ("runs",),
    ("faces", "sources", "training", "privacy", "gan", "diffusion", "face_encoder",
     "classifier"),
    ("attacks", "inversion"),
    ("jobs",),
)
FLOOR = {unit: level for level, units in enumerate(FLOORS) for unit in units}
OP_TABLES = {"onnx/ops.py"}
MAX_LINES = 500


def unit_of(module: str) -> str | None:
  """The package (or top-level module) of gmia a dotted module name belongs to."""
  parts = module.split(".")
  return parts[1] if parts[0] == "gmia" and len(parts) > 1 else None


def imports() -> list[tuple[str, str, str]]:
  """(file, importing unit, imported unit) for every import of gmia inside gmia."""
  found = []
  for path in sorted(GMIA.rglob("*.py")):
    relative = path.relative_to(GMIA)
    own = relative.parts[0].removesuffix(".py")
    if own == "__init__":
      continue
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
      for unit in {unit_of(name) for name in names} - {None, own}:
        found.append((str(relative), own, unit))
  return found


def test_every_unit_has_a_floor():
  units = {path.relative_to(GMIA).parts[0].removesuffix(".py") for path in GMIA.rglob("*.py")}
  assert units - {"__init__"} <= set(FLOOR), units - set(FLOOR) - {"__init__"}


def test_no_module_imports_a_floor_above_its_own():
  upward = [f"{file} ({own}, floor {FLOOR[own]}) imports {unit} (floor {FLOOR[unit]})"
            for file, own, unit in imports() if FLOOR[unit] > FLOOR[own]]
  assert not upward, "\n".join(upward)


def test_no_two_packages_import_each_other():
  edges = {(own, unit) for _, own, unit in imports()}
  units = {unit for edge in edges for unit in edge}
  # Transitive closure: a cycle through several packages counts too.
  reach = {unit: {b for a, b in edges if a == unit} for unit in units}
  for _ in units:
    for unit in units:
      reach[unit] |= set(itertools.chain.from_iterable(reach[b] for b in reach[unit]))
  cycles = sorted(unit for unit in units if unit in reach[unit])
  assert not cycles, f"package cycles through {cycles}"


def test_modules_stay_small():
  large = {str(p.relative_to(GMIA)): len(p.read_text().splitlines()) for p in GMIA.rglob("*.py")}
  large = {p: n for p, n in large.items() if n > MAX_LINES and p not in OP_TABLES}
  assert not large, large


def test_the_layering_test_sees_an_upward_import(tmp_path, monkeypatch):
  """The check itself fails on a module that reaches up (models importing a job)."""
  fake = tmp_path / "gmia"
  (fake / "models").mkdir(parents=True)
  (fake / "models" / "bad.py").write_text("from gmia.jobs import membership\n")
  monkeypatch.setattr(sys.modules[__name__], "GMIA", fake)
  assert [(own, unit) for _, own, unit in imports()] == [("models", "jobs")]
