"""Tables 1 and 2 of the paper from runs: rows, per-group statistics, paper values, rendering.

Everything here is a pure function of :class:`~mimic_runner.report.collect.Run` records and the
published CSVs; files are written by :mod:`mimic_runner.report.report`.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from mimic_runner.errors import UserError
from mimic_runner.report.collect import Run, grid_key, sweep_params

MODEL_ORDER = ("baseline", "improved_unet", "normal_ensemble", "expl_ensemble")
MODEL_LABELS = {"baseline": "Baseline", "improved_unet": "Improved UNet",
                "normal_ensemble": "Normal Ensemble", "expl_ensemble": "Expl. Ensemble"}
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

    @property
    def title(self) -> str:
        return TABLE_TITLES[self.kind] + (f" [{self.variant}]" if self.variant else "")


def group_of(run: Run, kind: str) -> Group:
    """Table 1 groups by model (ensembles of another size than the paper's apart), Table 2 by
    ensemble size."""
    return grid_key(run, kind)[0]


def group_label(group: Group, kind: str) -> str:
    if kind == "table2":
        return str(group)
    model, _, size = str(group).partition("@")
    label = MODEL_LABELS.get(model, model)
    return f"{label} (N={size})" if size else label


def paper_group(group: Group, kind: str) -> Group | None:
    """The published group a group is compared with (None: the paper has no such group)."""
    if kind == "table2":
        return group
    return None if "@" in str(group) else group


def _order(kind: str) -> tuple[list[Group], list[int]]:
    """Group and seed order: the sweep definition's (the paper's), then anything else."""
    params = sweep_params(kind)
    seeds = [int(s) for s in params.get("seed", [])]
    if kind == "table2":
        return [int(s) for s in params.get("model.ensemble_size", [])], seeds
    return list(MODEL_ORDER), seeds


def _sort_key(order: Sequence[Any], value: Any) -> tuple[int, str]:
    return (order.index(value), "") if value in order else (len(order), f"{value!s:>12}")


def build_tables(runs: Sequence[Run], kind: str, paper: PaperValues | None = None
                 ) -> list[ResultTable]:
    """One table per variant (runs differing only in model/seed/size share a table).

    ``paper`` (``load_paper(...)[kind]``) adds the published value beside each row and the
    published summary beside each group's.
    """
    metrics = TABLE_METRICS[kind]
    group_order, seed_order = _order(kind)
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
            rows.append(Row(group=group, label=group_label(group, kind), seed=run.seed,
                            status=run.status, values=values, paper=pvals, path=run.path))
        rows.sort(key=lambda r: (_sort_key(group_order, r.group),
                                 _sort_key(seed_order, r.seed)))
        stats_, reference = _group_stats(rows, kind, metrics, paper)
        tables.append(ResultTable(kind=kind, variant=variant, metrics=metrics, rows=rows,
                                  stats=stats_, reference=reference,
                                  compare=paper is not None, notes=notes))
    return tables


def _value(metrics: Mapping[str, Any], m: Metric) -> float | None:
    v = metrics.get(m.source)
    try:
        return float(v) * m.scale if v is not None else None
    except (TypeError, ValueError):
        return None


def _group_stats(rows: Sequence[Row], kind: str, metrics: Sequence[Metric],
                 paper: PaperValues | None) -> tuple[list[GroupStats], str | None]:
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
            out.append(GroupStats(group=g, label=group_label(g, kind), metric=m,
                                  summary=summarize(by_seed.values()), test=test, paper=psum))
    ref_label = group_label(reference, kind) if reference is not None else None
    if kind == "table2" and ref_label is not None:
        ref_label = f"N={ref_label}"
    return out, ref_label


# -- rendering --------------------------------------------------------------------------------

def fmt(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return f"{value:.{digits}f}"


def fmt_p(p: float) -> str:
    if not math.isfinite(p):
        return ""
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def row_matrix(table: ResultTable, repeat_group: bool = False) -> tuple[list[str], list[list[str]]]:
    """The rows table in the paper's layout, as strings: Table 1 (model, seed, metrics),
    Table 2 (seed, ensemble size, metrics); a ``paper`` column after each metric when
    comparing; the run's status last."""
    first = ["Model", "Seed"] if table.kind == "table1" else ["Seed", "Ensemble size"]
    header = list(first)
    for m in table.metrics:
        header.append(m.label)
        if table.compare:
            header.append("paper")
    header.append("Status")
    out = []
    previous: Group | None = None
    for r in table.rows:
        seed = "" if r.seed is None else str(r.seed)
        label = r.label if (repeat_group or r.group != previous) else ""
        previous = r.group
        cells = [label, seed] if table.kind == "table1" else [seed, r.label]
        for m in table.metrics:
            cells.append(fmt(r.values[m.key], m.digits))
            if table.compare:
                cells.append(fmt((r.paper or {}).get(m.key), m.digits))
        cells.append("" if r.status == "finished" else r.status)
        out.append(cells)
    return header, out


def _mean_std(s: Summary | None, digits: int) -> str:
    if s is None or s.n == 0:
        return ""
    if s.n < 2:
        return fmt(s.mean, digits)
    return f"{fmt(s.mean, digits)} ± {fmt(s.std, digits)}"


def _ci(s: Summary | None, digits: int) -> str:
    if s is None or s.n < 2:
        return ""
    return f"[{fmt(s.ci_low, digits)}, {fmt(s.ci_high, digits)}]"


def stats_matrix(table: ResultTable) -> tuple[list[str], list[list[str]]]:
    """Per group and metric: n, mean ± std, 95% CI, (published), paired test vs reference."""
    group_col = "Model" if table.kind == "table1" else "Ensemble size"
    ci = f"{int(CONFIDENCE * 100)}% CI"
    header = [group_col, "Metric", "n", "Mean ± std", ci]
    if table.compare:
        header += ["Paper mean ± std", f"Paper {ci}"]
    ref = table.reference or "reference"
    header += [f"Δ vs {ref}", "pairs", "t", "p"]
    out = []
    for g in table.stats:
        d = g.metric.digits
        cells = [g.label, g.metric.label, str(g.summary.n), _mean_std(g.summary, d),
                 _ci(g.summary, d)]
        if table.compare:
            cells += [_mean_std(g.paper, d), _ci(g.paper, d)]
        if g.test is None:
            cells += ["", "", "", ""]
        else:
            t = g.test
            cells += [fmt(t.mean_diff, d), str(t.n), fmt(t.t, 3), fmt_p(t.p)]
        out.append(cells)
    return header, out


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    out = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    return out.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def to_latex(header: Sequence[str], rows: Sequence[Sequence[str]], caption: str) -> str:
    """A booktabs ``table`` with a ``tabular`` (first two columns left-aligned)."""
    spec = "".join("l" if i < 2 else "r" for i in range(len(header)))
    lines = [r"\begin{table}[t]", r"\centering", r"\small",
             rf"\caption{{{tex_escape(caption)}}}", rf"\begin{{tabular}}{{{spec}}}",
             r"\toprule", " & ".join(tex_escape(h) for h in header) + r" \\", r"\midrule"]
    lines += [" & ".join(tex_escape(c) for c in row) + r" \\" for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def rows_csv(tables: Sequence[ResultTable]) -> str:
    """Every row of every variant, values at full precision (the machine-readable table)."""
    if not tables:
        return ""
    t0 = tables[0]
    group_col = "model" if t0.kind == "table1" else "ensemble_size"
    header = ["variant", group_col, "label", "seed", "status"]
    for m in t0.metrics:
        header.append(m.key)
        if t0.compare:
            header.append(f"paper_{m.key}")
    header.append("run_dir")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for t in tables:
        for r in t.rows:
            cells: list[Any] = [t.variant, r.group, r.label, r.seed, r.status]
            for m in t.metrics:
                cells.append(_num(r.values[m.key]))
                if t.compare:
                    cells.append(_num((r.paper or {}).get(m.key)))
            cells.append(str(r.path) if r.path else "")
            w.writerow(cells)
    return buf.getvalue()


def stats_csv(tables: Sequence[ResultTable]) -> str:
    """Per variant, group and metric: n, mean, std, CI, paired test (and the paper's)."""
    header = ["variant", "group", "label", "metric", "n", "mean", "std", "ci_low", "ci_high",
              "reference", "pairs", "mean_diff", "t", "p", "paper_n", "paper_mean",
              "paper_std", "paper_ci_low", "paper_ci_high"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for t in tables:
        for g in t.stats:
            s, te, p = g.summary, g.test, g.paper
            w.writerow([t.variant, g.group, g.label, g.metric.key, s.n, _num(s.mean),
                        _num(s.std), _num(s.ci_low), _num(s.ci_high),
                        t.reference if te else "", te.n if te else "",
                        _num(te.mean_diff) if te else "", _num(te.t) if te else "",
                        _num(te.p) if te else "", p.n if p else "", _num(p.mean) if p else "",
                        _num(p.std) if p else "", _num(p.ci_low) if p else "",
                        _num(p.ci_high) if p else ""])
    return buf.getvalue()


def _num(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return ""
    return repr(float(v))
