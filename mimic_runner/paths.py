"""Where the shipped configs live, in a wheel and in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _find(name: str) -> Path:
    # Wheel: force-included inside the package. Source/editable checkout: the repo's top level.
    for candidate in (_PKG / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"mimic-runner's '{name}/' folder is missing; reinstall the package")


def conf_dir() -> Path:
    """The Hydra config root (``conf/``)."""
    return _find("conf")


def sweeps_dir() -> Path:
    """The sweep presets (``sweeps/``), mounted as the Hydra group ``sweep``."""
    return _find("sweeps")
