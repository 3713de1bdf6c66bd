"""Tables 1 and 2 of the paper from runs: rows, per-group statistics, paper values, rendering.

Everything here is a pure function of :class:`~mimic_runner.report.collect.Run` records and the
published CSVs; files are written by :mod:`mimic_runner.report.report`.
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from mimic_runner.errors import UserError
from mimic_runner.report.collect import Run, grid_key, shipped_traits, sweep_params

CONFIDENCE = 0.95

Group = str | int   # a model name (Table 1) or an ensemble size (Table 2)
PaperValues = dict[tuple[Group, int], dict[str, float]]


@dataclass(frozen=True)
class Metric:
    key: str          # name in the paper's CSV and in our tables
    label: str
    source: str       # key in metrics.json
    scale: float      # accuracy is a fraction in metrics.json, a percentage in the paper
    digits: int


ACC = Metric("acc", "Acc. (%)", "test/acc", 100.0, 2)
KLD = Metric("kld", "KLD", "test/kld", 1.0, 3)
NSS = Metric("nss", "NSS", "test/nss", 1.0, 3)
TABLE_METRICS = {"table1": (ACC, KLD, NSS), "table2": (KLD, NSS)}
# The second summary: how much of a KLD is the zero-pixel artefact, and the explanations of the
# true label (the class the explanation ensemble's training term explains).
DIAGNOSTICS = (Metric("gaze_on_zero", "Gaze on zero px", "test/gaze_on_zero", 1.0, 3),
               Metric("kld_floor", "KLD (floored)", "test/kld_floor", 1.0, 3),
               Metric("kld_label", "KLD (true label)", "test_label/kld", 1.0, 3),
               Metric("nss_label", "NSS (true label)", "test_label/nss", 1.0, 3))
# Reference maps scored on the same test images (metrics.json ``ref/<name>/<metric>``).
# ``gaze_oracle`` is the old name of ``own_gaze_grid`` (runs made before it was renamed).
REFERENCES = {"uniform": "Uniform map", "mean_gaze": "Mean gaze (train)",
              "mean_gaze_grid": "Mean gaze (train, model grid)",
              "own_gaze_grid": "Own gaze (model grid)",
              "gaze_oracle": "Own gaze (model grid, old runs)"}
# The claim of the paper: the explanation ensemble against the normal one, paired over seeds.
CLAIM = ("expl_ensemble", "normal_ensemble")
TABLE_TITLES = {"table1": "Table 1: models x seeds",
                "table2": "Table 2: explanation ensemble, ensemble size x seeds"}


# -- statistics -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    """Mean, sample std (N-1) and a t-distribution confidence interval of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


def _finite(values: Iterable[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def summarize(values: Iterable[float | None], confidence: float = CONFIDENCE) -> Summary:
    """Summary of the finite values (NaN where n is too small: std and CI need n >= 2)."""
    x = np.asarray(_finite(values), dtype=float)
    n = len(x)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test of a group against the reference group over the seeds both have."""

    n: int
    mean_diff: float  # mean of (group - reference)
    t: float
    p: float


def paired_test(values: Mapping[int, float | None], reference: Mapping[int, float | None]
                ) -> PairedTest:
    """``scipy.stats.ttest_rel`` on the seeds with a finite value in both (n >= 2 needed)."""
    seeds = sorted(s for s in values if s in reference
                   and _finite([values[s]]) and _finite([reference[s]]))
    if not seeds:
        return PairedTest(0, math.nan, math.nan, math.nan)
    a = np.array([values[s] for s in seeds], dtype=float)
    b = np.array([reference[s] for s in seeds], dtype=float)
    diff = float((a - b).mean())
    if len(seeds) < 2:
        return PairedTest(len(seeds), diff, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical pairs: t and p are NaN
        res = stats.ttest_rel(a, b)
    return PairedTest(len(seeds), diff, float(res.statistic), float(res.pvalue))


# -- the published values ---------------------------------------------------------------------

def load_paper(paper_dir: Path) -> dict[str, PaperValues]:
    """``table1.csv`` and ``table2.csv`` of the paper as {table: {(group, seed): values}}."""
    out: dict[str, PaperValues] = {}
    for table, group_col in (("table1", "model"), ("table2", "ensemble_size")):
        path = Path(paper_dir) / f"{table}.csv"
        try:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            values: PaperValues = {}
            for r in rows:
                group: Group = r[group_col] if table == "table1" else int(r[group_col])
                vals = {"kld": float(r["kld"]), "nss": float(r["nss"])}
                if "accuracy" in r:
                    vals["acc"] = float(r["accuracy"])
                values[(group, int(r["seed"]))] = vals
        except (OSError, KeyError, ValueError) as exc:
            raise UserError(f"{path}: cannot read the published values ({exc})") from None
        out[table] = values
    return out


# -- tables -----------------------------------------------------------------------------------

@dataclass
class Row:
    """One run of a table (or a failed/unfinished one, with empty values)."""

    group: Group
    label: str
    seed: int | None
    status: str
    values: dict[str, float | None]
    paper: dict[str, float | None] | None
    path: Path | None = None


@dataclass
class GroupStats:
    group: Group
    label: str
    metric: Metric
    summary: Summary
    test: PairedTest | None        # None for the reference group itself
    paper: Summary | None
    claim: PairedTest | None = None  # Table 1: Expl. Ensemble vs Normal Ensemble


@dataclass
class ReferenceRow:
    """A reference map's scores, over the table's finished runs (one value per seed)."""

    name: str
    label: str
    summaries: dict[str, Summary]  # metric key -> summary over runs


@dataclass
class ResultTable:
    kind: str                      # table1 | table2
    variant: str
    metrics: tuple[Metric, ...]
    rows: list[Row]
    stats: list[GroupStats]
    reference: str | None          # label of the paired tests' reference group
    compare: bool
    notes: list[str] = field(default_factory=list)
    references: list[ReferenceRow] = field(default_factory=list)
    diagnostics: list[GroupStats] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # model name -> display name

    @property
    def title(self) -> str:
        return TABLE_TITLES[self.kind] + (f" [{self.variant}]" if self.variant else "")


def group_of(run: Run, kind: str) -> Group:
    """Table 1 groups by model (ensembles of another size than the paper's apart), Table 2 by
    ensemble size."""
    return grid_key(run, kind)[0]


def model_labels(runs: Sequence[Run]) -> dict[str, str]:
    """Model name -> display name (the runs' traits)."""
    return {r.model: r.label for r in runs}


def model_label(model: str, labels: Mapping[str, str]) -> str:
    """A model's display name: from its runs' traits, else the shipped option's, else its name."""
    return labels.get(model) or shipped_traits(model).label(model)


def model_order(runs: Sequence[Run]) -> list[str]:
    """The models of ``runs`` in their traits' report order (unordered ones last, by name)."""
    order: dict[str, float | None] = {r.model: r.traits.report_order for r in runs}
    return sorted(order, key=lambda m: (order[m] is None, order[m] or 0, m))


def group_label(group: Group, kind: str, labels: Mapping[str, str] | None = None) -> str:
    if kind == "table2":
        return str(group)
    model, _, size = str(group).partition("@")
    label = model_label(model, labels or {})
    return f"{label} (N={size})" if size else label


def paper_group(group: Group, kind: str) -> Group | None:
    """The published group a group is compared with (None: the paper has no such group)."""
    if kind == "table2":
        return group
    return None if "@" in str(group) else group


def _order(kind: str, runs: Sequence[Run]) -> tuple[list[Group], list[int]]:
    """Group and seed order: Table 2's sizes and the seeds as the sweep definition (the
    paper's) lists them, Table 1's models by their traits' report order; then anything else."""
    params = sweep_params(kind)
    seeds = [int(s) for s in params.get("seed", [])]
    if kind == "table2":
        return [int(s) for s in params.get("model.ensemble_size", [])], seeds
    return list(model_order(runs)), seeds


def _sort_key(order: Sequence[Any], value: Any) -> tuple[int, str]:
    # A Table 1 ensemble of another size ("normal_ensemble@5") sorts with its model.
    base = str(value).partition("@")[0] if isinstance(value, str) else value
    if base in order:
        return (order.index(base), "" if base == value else f"{value!s:>12}")
    return (len(order), f"{value!s:>12}")


def build_tables(runs: Sequence[Run], kind: str, paper: PaperValues | None = None
                 ) -> list[ResultTable]:
    """One table per variant (runs differing only in model/seed/size share a table).

    ``paper`` (``load_paper(...)[kind]``) adds the published value beside each row and the
    published summary beside each group's.
    """
    metrics = TABLE_METRICS[kind]
    group_order, seed_order = _order(kind, runs)
    labels = model_labels(runs)
    variants = sorted({r.variant for r in runs})
    tables = []
    for variant in variants:
        rows: list[Row] = []
        seen: set[tuple[Group, int | None]] = set()
        notes: list[str] = []
        chosen = sorted((r for r in runs if r.variant == variant),
                        key=lambda r: (r.status != "finished", str(r.path)))
        for run in chosen:
            group = group_of(run, kind)
            if (group, run.seed) in seen:
                notes.append(f"duplicate run ignored: {run.path} ({run.status})")
                continue
            seen.add((group, run.seed))
            finished = run.status == "finished"
            values = {m.key: (_value(run.metrics, m) if finished else None) for m in metrics}
            pg = paper_group(group, kind)
            pvals = None
            if paper is not None:
                published = paper.get((pg, run.seed), {}) if pg is not None else {}
                pvals = {m.key: published.get(m.key) for m in metrics}
            rows.append(Row(group=group, label=group_label(group, kind, labels), seed=run.seed,
                            status=run.status, values=values, paper=pvals, path=run.path))
        rows.sort(key=lambda r: (_sort_key(group_order, r.group),
                                 _sort_key(seed_order, r.seed)))
        stats_, reference = _group_stats(rows, kind, metrics, paper, labels)
        finished = [r for r in chosen if r.status == "finished"]
        diag_rows = [Row(group=r.group, label=r.label, seed=r.seed, status=r.status,
                         values={m.key: _value(run.metrics, m) for m in DIAGNOSTICS},
                         paper=None, path=r.path)
                     for r in rows for run in finished if run.path == r.path]
        diagnostics, _ = _group_stats(diag_rows, kind, DIAGNOSTICS, None, labels)
        tables.append(ResultTable(kind=kind, variant=variant, metrics=metrics, rows=rows,
                                  stats=stats_, reference=reference,
                                  compare=paper is not None, notes=notes,
                                  references=reference_rows(finished, metrics),
                                  diagnostics=diagnostics, labels=labels))
    return tables


def reference_rows(runs: Sequence[Run], metrics: Sequence[Metric]) -> list[ReferenceRow]:
    """The reference maps' scores over the runs that have them (mean over runs: the maps do
    not depend on the model, but a run's test images and explained grid may differ)."""
    out = []
    for name, label in REFERENCES.items():
        summaries = {}
        for m in metrics:
            if m.key == "acc":
                continue
            values = [r.metrics.get(f"ref/{name}/{m.key}") for r in runs]
            summaries[m.key] = summarize(v for v in values if v is not None)
        if any(s.n for s in summaries.values()):
            out.append(ReferenceRow(name=name, label=label, summaries=summaries))
    return out


def _value(metrics: Mapping[str, Any], m: Metric) -> float | None:
    v = metrics.get(m.source)
    try:
        return float(v) * m.scale if v is not None else None
    except (TypeError, ValueError):
        return None


def _group_stats(rows: Sequence[Row], kind: str, metrics: Sequence[Metric],
                 paper: PaperValues | None, labels: Mapping[str, str]
                 ) -> tuple[list[GroupStats], str | None]:
    groups: list[Group] = []
    for r in rows:
        if r.group not in groups:
            groups.append(r.group)
    # Reference of the paired tests: the baseline (Table 1), the largest ensemble (Table 2).
    if kind == "table2":
        sizes = [g for g in groups if isinstance(g, int)]
        reference = max(sizes) if sizes else None
    else:
        reference = "baseline" if "baseline" in groups else None
    out = []
    for g in groups:
        for m in metrics:
            by_seed = {r.seed: r.values[m.key] for r in rows
                       if r.group == g and r.seed is not None}
            test = None
            if reference is not None and g != reference:
                ref = {r.seed: r.values[m.key] for r in rows
                       if r.group == reference and r.seed is not None}
                test = paired_test(by_seed, ref)
            psum = None
            pg = paper_group(g, kind)
            if paper is not None and pg is not None:
                published = [v[m.key] for (pgrp, _), v in paper.items()
                             if pgrp == pg and m.key in v]
                psum = summarize(published) if published else None
            claim = None
            model, at, size = str(g).partition("@")
            partner = f"{CLAIM[1]}{at}{size}"  # the normal ensemble of the same size
            if kind == "table1" and model == CLAIM[0] and partner in map(str, groups):
                other = {r.seed: r.values[m.key] for r in rows
                         if str(r.group) == partner and r.seed is not None}
                claim = paired_test(by_seed, other)
            out.append(GroupStats(group=g, label=group_label(g, kind, labels), metric=m,
                                  summary=summarize(by_seed.values()), test=test, paper=psum,
                                  claim=claim))
    ref_label = group_label(reference, kind, labels) if reference is not None else None
    if kind == "table2" and ref_label is not None:
        ref_label = f"N={ref_label}"
    return out, ref_label
