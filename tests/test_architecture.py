"""The layering of docs/architecture.md, checked on the source: pure math stays pure, nothing
imports the CLIs, imports point down the layers, no import cycle, and modules and functions stay
readable.

Every import form counts: ``import a.b``, ``from a import b`` (``from mimic_runner import cli``
names the module ``mimic_runner.cli``), relative imports, imports inside functions, and
``importlib.import_module("...")`` / ``__import__("...")`` with a literal name. The checker
functions take any package root, and the last tests plant each violation in a temporary tree
to see the checker catch it.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mimic_runner"
MODULES = sorted(p for p in PKG.rglob("*.py"))
PURE = ("explain", "metrics")
NOT_IN_PURE = ("lightning", "pytorch_lightning", "h5py", "rich", "matplotlib", "csv", "hydra")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 120
# Who may import whom (first-level subpackages of mimic_runner; top-level modules by name).
# A layer imports only itself and the layers listed for it.
ALLOWED: dict[str, set[str] | None] = {
    "errors": set(), "io": {"errors"}, "paths": set(), "log": set(), "traits": {"errors"},
    "plotting": {"io"},
    "rundir": {"errors", "io"},
    "config": {"errors", "paths"},
    "explain": {"errors"}, "metrics": {"errors", "explain"}, "models": {"errors"},
    "data": {"errors", "io", "paths", "log"},
    "training": {"errors", "io", "log", "rundir", "config", "data", "models", "explain",
                 "metrics", "traits"},
    "analysis": {"errors", "io", "log", "rundir", "config", "data", "models", "explain",
                 "metrics", "training", "plotting"},
    "report": {"errors", "io", "log", "rundir", "paths", "data", "plotting", "metrics",
               "traits"},
    "feedback": {"errors", "io", "log", "rundir", "config", "data", "models", "explain",
                 "metrics", "training", "analysis", "plotting"},
    "bench": {"errors", "io", "log", "config", "data", "models", "explain", "metrics",
              "training", "traits"},
    "cli": None,  # the top: may import anything
}


# -- the checker -----------------------------------------------------------------------------

def module_name(path: Path, root: Path) -> str:
    """``root/a/b.py`` -> ``<root name>.a.b``; a package's ``__init__.py`` -> the package."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, root: Path) -> list[str]:
    """Every dotted name ``path`` imports, in any form, made absolute."""
    tree = ast.parse(path.read_text())
    me = module_name(path, root)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import x`: x is a module or a name in pkg; resolved in import_edges.
            names += [module if a.name == "*" else f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if called in ("import_module", "__import__") and isinstance(arg, ast.Constant) \
                    and isinstance(arg.value, str):
                names.append(arg.value)
    return names


def import_edges(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (a dotted name resolved to the longest
    prefix that is a module of the package; ``from pkg import name`` of a non-module is pkg)."""
    modules = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for me, path in modules.items():
        for name in imported_names(path, root):
            parts = name.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            target = ".".join(parts)
            if target and target != me and not me.startswith(f"{target}."):
                edges[me].add(target)
    return edges


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_violations(edges: Mapping[str, Iterable[str]],
                     allowed: Mapping[str, set[str] | None]) -> list[str]:
    """Imports of the CLI from below it, and imports of a layer not allowed for the importer
    (upward or sideways); a layer missing from the table is reported too."""
    out = []
    for src, targets in sorted(edges.items()):
        layer = layer_of(src)
        if layer == "__init__":
            continue
        if layer not in allowed:
            out.append(f"{src}: layer '{layer}' is not in the table")
            continue
        ok = allowed[layer]
        for dst in sorted(targets):
            target = layer_of(dst)
            if target in ("__init__", layer):
                continue
            if target == "cli" and layer != "cli":
                out.append(f"{src} imports the CLI ({dst})")
            elif ok is not None and target not in ok:
                out.append(f"{src} imports {dst} (upward or sideways)")
    return out


def cycles(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import cycles (strongly connected components of more than one module), Tarjan."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def long_modules(root: Path, limit: int = MAX_MODULE_LINES) -> list[str]:
    return [f"{p.relative_to(root)}: {n} lines (split it by job)"
            for p in sorted(root.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > limit]


def long_functions(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for p in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > limit:
                    out.append(f"{p.relative_to(root)}:{node.lineno} {node.name}: {n} lines")
    return out


# -- the package -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def edges() -> dict[str, set[str]]:
    return import_edges(PKG)


@pytest.mark.parametrize("path", [p for p in MODULES if p.relative_to(PKG).parts[0] in PURE],
                         ids=lambda p: str(p.relative_to(PKG)))
def test_math_packages_import_no_framework_or_io(path: Path) -> None:
    bad = [n for n in imported_names(path, PKG) if n.split(".")[0] in NOT_IN_PURE]
    assert not bad, f"{path.name} imports {bad}"


def test_imports_follow_the_layers(edges: dict[str, set[str]]) -> None:
    assert layer_violations(edges, ALLOWED) == []


def test_no_import_cycle(edges: dict[str, set[str]]) -> None:
    assert cycles(edges) == []


def test_modules_stay_short() -> None:
    assert long_modules(PKG) == []


def test_functions_stay_short() -> None:
    assert long_functions(PKG) == []


# -- planted violations: the checker sees each one ---------------------------------------------

def _tree(tmp_path: Path, files: Mapping[str, str]) -> Path:
    root = tmp_path / "mimic_runner"
    for rel, text in {"__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in path.relative_to(root).parents:
            init = root / folder / "__init__.py"
            if not init.exists():
                init.write_text("")
        path.write_text(textwrap.dedent(text))
    return root


TABLE = {"errors": set(), "data": {"errors"}, "training": {"errors", "data"}, "cli": None}


@pytest.mark.parametrize("source", [
    "import mimic_runner.training.run\n",
    "from mimic_runner.training import run\n",
    "from mimic_runner import training\n",
    "from ..training import run\n",
    "from ..training.run import go\n",
    "def f():\n    from mimic_runner.training.run import go\n",
    "import importlib\nimportlib.import_module('mimic_runner.training.run')\n",
    "__import__('mimic_runner.training.run')\n",
])
def test_checker_sees_every_upward_import_form(tmp_path: Path, source: str) -> None:
    root = _tree(tmp_path, {"data/reader.py": source, "training/run.py": "def go(): pass\n"})
    found = layer_violations(import_edges(root), TABLE)
    assert found and "mimic_runner.data.reader imports mimic_runner.training" in found[0]


@pytest.mark.parametrize("source", ["from mimic_runner import cli\n",
                                    "from ..cli.main import main\n"])
def test_checker_sees_an_import_of_the_cli(tmp_path: Path, source: str) -> None:
    root = _tree(tmp_path, {"training/run.py": source, "cli/main.py": "def main(): pass\n"})
    assert any("imports the CLI" in v for v in layer_violations(import_edges(root), TABLE))


def test_checker_allows_downward_imports(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"training/run.py": "from ..data import reader\n",
                            "data/reader.py": "from mimic_runner.errors import E\n",
                            "errors.py": "class E(Exception): pass\n"})
    edges = import_edges(root)
    assert edges["mimic_runner.training.run"] == {"mimic_runner.data.reader"}
    assert layer_violations(edges, TABLE) == [] and cycles(edges) == []


def test_checker_sees_a_cycle_inside_a_layer(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"data/a.py": "from . import b\n",
                            "data/b.py": "def f():\n    from mimic_runner.data.c import x\n",
                            "data/c.py": "import importlib\nx = importlib.import_module("
                                         "'mimic_runner.data.a')\n"})
    edges = import_edges(root)
    assert layer_violations(edges, TABLE) == []  # one layer: the table has nothing to say
    assert cycles(edges) == [["mimic_runner.data.a", "mimic_runner.data.b",
                              "mimic_runner.data.c"]]


def test_checker_sees_long_modules_and_functions(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    root = _tree(tmp_path, {"data/long.py": "def f():\n" + body,
                            "data/ok.py": "def g():\n" + body[:-len("    x0 = 0\n") * 2]})
    assert [v.split(":")[0] for v in long_functions(root)] == ["data/long.py"]
    root = _tree(tmp_path / "b", {"data/big.py": "x = 1\n" * (MAX_MODULE_LINES + 1),
                                  "data/fine.py": "x = 1\n" * MAX_MODULE_LINES})
    assert [v.split(":")[0] for v in long_modules(root)] == ["data/big.py"]
