"""Find the runs under a folder and tell which table of the paper each one belongs to.

A run is any folder with ``.hydra/config.yaml``: ``finished`` when it has ``metrics.json``,
``failed`` with ``failed.json``, else ``interrupted`` (a ``last.ckpt`` to resume from) or
``incomplete``. The expected grids come from the sweep definitions in ``sweeps/``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from mimic_runner.errors import UserError
from mimic_runner.paths import conf_dir, sweeps_dir
from mimic_runner.rundir import RunDir, find_run_dirs
from mimic_runner.traits import ModelTraits

TABLES = ("table1", "table2")
# Table 1's ensembles have ten sub-models; other sizes are labelled and not matched to it.
PAPER_ENSEMBLE_SIZE = 10
# Keys that place a run in a table's grid; every other override makes a "variant".
GRID_KEYS = ("model", "seed", "model.ensemble_size")
# Never part of a variant: where and how a run ran, not what it computed.
_NOT_VARIANT_PREFIXES = ("launcher", "hydra.", "sweep", "resume", "skip_completed", "paths.")


@dataclass(frozen=True)
class Run:
    """One run folder, as far as the report is concerned."""

    path: Path
    status: str                      # finished | failed | interrupted | incomplete
    sweep: str | None                # the `sweep=` option it ran under (table1, table2, None)
    model: str
    seed: int | None
    ensemble_size: int
    variant: str                     # its other overrides, e.g. "trainer=smoke" ("" = none)
    metrics: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    error: str | None = None
    # What the model is (its saved ``model.traits``): display name and order in the report.
    traits: ModelTraits = field(default_factory=ModelTraits, hash=False, compare=False)

    @property
    def label(self) -> str:
        """The model's display name (its traits'), else its name."""
        return self.traits.label(self.model)


def _load_yaml(path: Path) -> DictConfig | ListConfig | None:
    try:
        return OmegaConf.load(path)
    except Exception:  # missing, truncated or hand-edited: the run is still listed
        return None


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _option_traits(folder: Path, name: str, depth: int = 0) -> dict[str, Any]:
    """The ``traits`` node of ``<folder>/<name>.yaml`` over those of the options it extends
    (its ``defaults`` list), as a plain dict."""
    path = folder / f"{name}.yaml"
    cfg = _load_yaml(path) if depth < 8 and path.is_file() else None
    if not isinstance(cfg, DictConfig):
        return {}
    traits: dict[str, Any] = {}
    for parent in cfg.get("defaults") or []:
        if isinstance(parent, str) and parent != "_self_":
            traits.update(_option_traits(folder, parent, depth + 1))
    own = cfg.get("traits")
    if isinstance(own, DictConfig):
        traits.update(OmegaConf.to_container(own, resolve=False))
    return traits


@functools.lru_cache(maxsize=64)
def shipped_traits(model: str) -> ModelTraits:
    """The traits of a shipped model option, for runs saved before configs had traits (the
    defaults for a model the shipped ``conf/model/`` does not have)."""
    try:
        return ModelTraits.of(_option_traits(Path(conf_dir()) / "model", model))
    except UserError:
        return ModelTraits()


def run_traits(node: Any, model: str) -> ModelTraits:
    """A run's traits from its saved ``model.traits`` (the shipped option's without one)."""
    if isinstance(node, DictConfig):
        try:
            return ModelTraits.of(node)
        except UserError:
            pass
    return shipped_traits(model)


def variant_of(overrides: Iterable[str], exclude_keys: Iterable[str] = ()) -> str:
    """The overrides that are neither grid keys nor run-placement keys, sorted and joined."""
    excluded = set(exclude_keys) | set(GRID_KEYS)
    keep = []
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key in excluded or key.startswith(_NOT_VARIANT_PREFIXES):
            continue
        keep.append(item)
    return ",".join(sorted(keep))


def read_run(run_dir: Path) -> Run:
    """Read one run folder for the report (never raises on a damaged file: it reads what it
    can)."""
    rd = RunDir(run_dir)
    run_dir = rd.path
    cfg = _load_yaml(rd.config)
    hydra_cfg = _load_yaml(rd.hydra_config)
    overrides = _load_yaml(rd.overrides)
    status = rd.status()
    metrics = rd.read_metrics() if status == "finished" else None
    if status == "finished" and metrics is None:
        status = "incomplete"  # an unreadable metrics.json
    failed = rd.read_failure() if status == "failed" else None

    def select(key: str) -> Any:
        if cfg is None:
            return None
        try:
            return OmegaConf.select(cfg, key, throw_on_missing=False)
        except Exception:  # an interpolation that only resolves inside Hydra
            return None

    sweep = None
    exclude: list[str] = []
    if hydra_cfg is not None:
        sweep = OmegaConf.select(hydra_cfg, "hydra.runtime.choices.sweep")
        exclude = list(OmegaConf.select(
            hydra_cfg, "hydra.job.config.override_dirname.exclude_keys", default=[]) or [])
    if sweep is None:
        name = select("sweep_name")
        sweep = name if name in TABLES else None
    m = metrics or {}
    model = m.get("model") or select("model.name") or "unknown"
    seed = _as_int(m.get("seed", select("seed")))
    size = _as_int(m.get("ensemble_size", select("model.ensemble_size"))) or 1
    items = [str(o) for o in overrides] if isinstance(overrides, ListConfig) else []
    return Run(path=run_dir, status=status, sweep=str(sweep) if sweep else None,
               model=str(model), seed=seed, ensemble_size=size,
               variant=variant_of(items, exclude), metrics=m,
               error=(failed or {}).get("error") if status == "failed" else None,
               traits=run_traits(select("model.traits"), str(model)))


def collect_runs(root: Path) -> list[Run]:
    """Every run under ``root`` (recursively), sorted by path."""
    return [read_run(d) for d in find_run_dirs(Path(root))]


def runs_for_table(runs: Sequence[Run], table: str) -> tuple[list[Run], str]:
    """The runs a table is built from, and where they came from (for the report's notes).

    Runs of ``sweep=table1``/``table2`` go to their table. Without any, Table 1 takes every
    run outside the two sweeps and Table 2 the explanation ensembles among them.
    """
    tagged = [r for r in runs if r.sweep == table]
    if tagged:
        return tagged, f"runs of sweep={table}"
    others = [r for r in runs if r.sweep not in TABLES]
    if table == "table2":
        others = [r for r in others if r.model == "expl_ensemble"]
    return others, f"no sweep={table} runs; using {len(others)} other run(s)"


# -- the expected grids -----------------------------------------------------------------------

def sweep_params(table: str, sweeps: Path | None = None) -> dict[str, list[str]]:
    """The sweeper params of ``sweeps/<table>.yaml`` as lists of strings ({} if unreadable)."""
    path = Path(sweeps or sweeps_dir()) / f"{table}.yaml"
    cfg = _load_yaml(path) if path.exists() else None
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) if cfg else None
    if params is None:
        return {}
    return {str(k): [v.strip() for v in str(val).split(",") if v.strip()]
            for k, val in params.items()}


def grid_key(run: Run, table: str) -> tuple[str | int, int | None]:
    """Where a run sits in its table's grid: (model, seed) or (ensemble size, seed).

    A Table 1 ensemble of another size than the paper's is ``model@size``: outside the grid.
    """
    if table == "table2":
        return (run.ensemble_size, run.seed)
    if run.ensemble_size not in (1, PAPER_ENSEMBLE_SIZE):
        return (f"{run.model}@{run.ensemble_size}", run.seed)
    return (run.model, run.seed)


def expected_grid(table: str, sweeps: Path | None = None) -> list[tuple[str | int, int]]:
    """The (model, seed) or (ensemble size, seed) pairs the sweep definition runs."""
    params = sweep_params(table, sweeps)
    seeds = [int(s) for s in params.get("seed", [])]
    if table == "table2":
        groups: list[str | int] = [int(s) for s in params.get("model.ensemble_size", [])]
    else:
        groups = list(params.get("model", []))
    return [(g, s) for g in groups for s in seeds]


@dataclass
class Coverage:
    """Expected grid vs the runs found, for one table."""

    table: str
    expected: list[tuple[str | int, int]]
    finished: list[tuple[str | int, int | None]]
    failed: list[Run]
    unfinished: list[Run]            # interrupted or incomplete
    missing: list[tuple[str | int, int]]
    extra: list[tuple[str | int, int | None]]  # finished runs outside the expected grid

    @property
    def complete(self) -> bool:
        return bool(self.expected) and not self.missing and not self.failed \
            and not self.unfinished


def coverage(runs: Sequence[Run], table: str, sweeps: Path | None = None) -> Coverage:
    expected = expected_grid(table, sweeps)
    finished = sorted({grid_key(r, table) for r in runs if r.status == "finished"}, key=str)
    seen = {grid_key(r, table) for r in runs}
    return Coverage(
        table=table, expected=expected, finished=finished,
        failed=[r for r in runs if r.status == "failed"],
        unfinished=[r for r in runs if r.status in ("interrupted", "incomplete")],
        missing=[k for k in expected if k not in seen],
        extra=[k for k in finished if k not in set(expected)],
    )


def describe_missing(keys: Sequence[tuple[str | int, int]], table: str) -> list[str]:
    """One line per group: ``baseline: seeds 4582, 4678``."""
    by_group: dict[str | int, list[int]] = {}
    for g, s in keys:
        by_group.setdefault(g, []).append(s)
    label = "N=" if table == "table2" else ""
    return [f"{label}{g}: seed{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}"
            for g, v in by_group.items()]
