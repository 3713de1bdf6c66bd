"""Shared fixtures: a per-session synthetic-data cache and a helper to run the CLIs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from cli_helpers import run_cli

# Tests run with few threads: the CI machine has 2 cores and pytest may share them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test generates synthetic data into one session cache, never into ~/.cache."""
    cache = os.environ.get("MIMIC_TEST_CACHE_DIR")
    path = Path(cache) if cache else tmp_path_factory.mktemp("mimic-cache")
    os.environ["MIMIC_CACHE_DIR"] = str(path)
    return path


@pytest.fixture
def compose():  # type: ignore[no-untyped-def]
    """``compose("model=baseline", ...)``: the config ``mimic-run`` composes (with the
    ``hydra`` node when ``hydra=True``), through the library's own :func:`config.compose`."""
    from mimic_runner.config import compose as _compose

    def _run(*overrides: str, hydra: bool = False):  # type: ignore[no-untyped-def]
        return _compose(list(overrides), return_hydra_config=hydra)

    return _run


@pytest.fixture
def cli(tmp_path: Path):  # type: ignore[no-untyped-def]
    def _run(*args: str, timeout: float = 600, cwd: Path | None = None):  # type: ignore[no-untyped-def]
        return run_cli(list(args), cwd or tmp_path, timeout=timeout)

    return _run
