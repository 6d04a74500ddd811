"""The import graph of synthgen: floors that point one way, no cycles, no private names across modules.

Every ``import`` / ``from ... import`` of a synthgen module is read from the source (module level,
inside functions and under ``TYPE_CHECKING`` alike). A *unit* is a sub-package (``synthgen.drr``)
or a top-level module (``synthgen.volume``); each unit sits on one floor of `FLOORS` and may only
import units on lower floors. A new unit must be given a floor here before it can land.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "synthgen"

#: Lowest first. A unit imports only from units on floors below its own.
FLOORS: list[tuple[str, ...]] = [
    ("_version", "errors"),
    ("memory", "_assets"),
    ("files",),  # atomic writes, safe names and paths
    ("config",),
    ("vocab",),
    ("volume",),
    ("io", "synthgen"),  # readers and writers, provenance records; the package root re-exports Volume
    ("anatomy",),  # label-map operations, deformation, the procedural phantom
    ("texture",),  # fine-texture statistics of CT per tissue
    ("report",),  # pictures and charts
    ("outputs",),  # the case writer: volumes + record + config + preview
    ("data",),  # the example CT, the phantom
    ("lesions",),
    ("text",),  # prompt parser, captions
    ("drr",),
    ("models",),  # networks, conditioning, the sampling loop
    ("fidelity",),
    ("library",),  # the label-map library: prompt -> label map
    ("pipelines", "train"),
    ("generate",),
    ("expand",),
    ("recipes",),
    ("cli",),
    ("__main__",),
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}
#: Modules whose in-function synthgen imports are deliberate: the CLI loads a command's job (and
#: with it torch, itk, MONAI) only when that command runs, so `synthgen info` starts fast.
LAZY_OK = {"synthgen.cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """``(target module, imported names, line, inside a function)`` of every synthgen import in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "synthgen" or target.startswith("synthgen."):
                yield target, [a.name for a in node.names], node.lineno, id(node) in in_function
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "synthgen" or a.name.startswith("synthgen."):
                    yield a.name, [], node.lineno, id(node) in in_function


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "synthgen"


@pytest.fixture(scope="module")
def graph():
    return {_module_name(p): list(_imports(p)) for p in sorted(ROOT.rglob("*.py"))}


def test_every_unit_has_a_floor(graph):
    missing = sorted({_unit(m) for m in graph} - set(FLOOR))
    assert not missing, f"give these units a floor in FLOORS: {missing}"


def test_imports_point_down(graph):
    bad = []
    for module, imports in graph.items():
        for target, _, line, _ in imports:
            a, b = _unit(module), _unit(target)
            if a != b and FLOOR[b] >= FLOOR[a]:
                bad.append(f"{module}:{line} imports {target} (floor {FLOOR[b]} >= {FLOOR[a]})")
    assert not bad, "imports from a floor at or above the importer's:\n" + "\n".join(bad)


def _first_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A path ``a -> ... -> a`` in the directed graph ``edges``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(u: str, path: list[str]) -> list[str] | None:
        state[u] = 1
        for v in sorted(edges.get(u, ())):
            if state.get(v) == 1:
                return [*path, u, v]
            if v not in state and (found := visit(v, [*path, u])):
                return found
        state[u] = 2
        return None

    for u in sorted(edges):
        if u not in state and (found := visit(u, [])):
            return found
    return None


def test_no_unit_cycle(graph):
    edges = defaultdict(set)
    for module, imports in graph.items():
        for target, *_ in imports:
            if _unit(target) != _unit(module):
                edges[_unit(module)].add(_unit(target))
    cycle = _first_cycle(edges)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_module_cycle(graph):
    """Within a unit too: no module imports one that (through others) imports it back. ``from
    synthgen.io import dicom`` is an edge to the module ``synthgen.io.dicom``."""
    edges = defaultdict(set)
    for module, imports in graph.items():
        for target, names, *_ in imports:
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in graph]
            edges[module].update(t for t in (subs or [target]) if t != module and t in graph)
    cycle = _first_cycle(edges)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_check_finds_cycles():
    assert _first_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _first_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_private_name_crosses_a_module(graph):
    bad = [f"{module}:{line} imports {name} from {target}"
           for module, imports in graph.items() for target, names, line, _ in imports
           for name in names if name.startswith("_") and not name.startswith("__") and target != module
           and f"{target}.{name}" not in graph]  # a package's private sub-module is its own business
    assert not bad, "private names used outside their module (make them public where they live):\n" + "\n".join(bad)


def test_synthgen_imports_are_at_module_level(graph):
    """Imports inside functions are for heavy optional third-party packages; synthgen's own modules
    are imported at the top, where the floors above can see them."""
    bad = [f"{module}:{line} imports {target} inside a function"
           for module, imports in graph.items() if module not in LAZY_OK
           for target, _, line, in_function in imports if in_function]
    assert not bad, "\n".join(bad)
