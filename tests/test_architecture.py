"""The layering of docs/architecture.md, checked on the source: pure math stays pure, nothing
imports the CLIs, imports point down the layers, and modules stay readable."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mimic_runner"
MODULES = sorted(p for p in PKG.rglob("*.py"))
PURE = ("explain", "metrics")
NOT_IN_PURE = ("lightning", "pytorch_lightning", "h5py", "rich", "matplotlib", "csv", "hydra")
# Who may import whom (first-level subpackages of mimic_runner; top-level modules by name).
# A layer imports only itself and the layers listed for it.
ALLOWED = {
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


def _layer(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", [p for p in MODULES if _layer(p) in PURE],
                         ids=lambda p: str(p.relative_to(PKG)))
def test_math_packages_import_no_framework_or_io(path: Path) -> None:
    bad = [n for n in _imports(path) if n.split(".")[0] in NOT_IN_PURE]
    assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_follow_the_layers(path: Path) -> None:
    layer = _layer(path)
    if layer == "__init__":
        return
    allowed = ALLOWED[layer]
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] != "mimic_runner" or len(parts) < 2:
            continue
        target = parts[1]
        assert target != "cli" or layer == "cli", f"{path.name} imports the CLI ({name})"
        if allowed is None or target == layer:
            continue
        assert target in allowed, f"{layer}/{path.name} imports {name} (upward or sideways)"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_modules_stay_short(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= 520, f"{path.relative_to(PKG)} has {n} lines; split it by job"
