"""Tables 1 and 2 as text: the rows and summaries as string matrices, then Markdown, LaTeX
(booktabs) and CSV. Pure functions of :class:`~mimic_runner.report.tables.ResultTable`."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from mimic_runner.report.tables import (
    CLAIM,
    CONFIDENCE,
    Group,
    PairedTest,
    ResultTable,
    Summary,
    model_label,
)

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
    for ref in table.references:
        cells = [ref.label, "mean"] if table.kind == "table1" else ["mean", ref.label]
        for m in table.metrics:
            s = ref.summaries.get(m.key)
            cells.append(fmt(s.mean, m.digits) if s is not None and s.n else "")
            if table.compare:
                cells.append("")
        cells.append("reference")
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


def _test_cells(t: PairedTest | None, digits: int) -> list[str]:
    if t is None:
        return ["", "", "", ""]
    return [fmt(t.mean_diff, digits), str(t.n), fmt(t.t, 3), fmt_p(t.p)]


def stats_matrix(table: ResultTable, diagnostics: bool = False
                 ) -> tuple[list[str], list[list[str]]]:
    """Per group and metric: n, mean ± std, 95% CI, (published), paired test vs the reference
    group and, in Table 1, the explanation ensemble vs the normal one; then the reference
    maps. ``diagnostics``: the same for :data:`DIAGNOSTICS` (no published values)."""
    group_col = "Model" if table.kind == "table1" else "Ensemble size"
    ci = f"{int(CONFIDENCE * 100)}% CI"
    compare = table.compare and not diagnostics
    header = [group_col, "Metric", "n", "Mean ± std", ci]
    if compare:
        header += ["Paper mean ± std", f"Paper {ci}"]
    ref = table.reference or "reference"
    header += [f"Δ vs {ref}", "pairs", "t", "p"]
    claim = table.kind == "table1"
    if claim:
        header += [f"Δ vs {model_label(CLAIM[1], table.labels)}", "pairs ", "t ", "p "]
    out = []
    for g in (table.diagnostics if diagnostics else table.stats):
        d = g.metric.digits
        cells = [g.label, g.metric.label, str(g.summary.n), _mean_std(g.summary, d),
                 _ci(g.summary, d)]
        if compare:
            cells += [_mean_std(g.paper, d), _ci(g.paper, d)]
        cells += _test_cells(g.test, d)
        if claim:
            cells += _test_cells(g.claim, d)
        out.append(cells)
    if not diagnostics:
        metrics = {m.key: m for m in table.metrics}
        for r in table.references:
            for key, s in r.summaries.items():
                if not s.n:
                    continue
                d = metrics[key].digits
                cells = [r.label, metrics[key].label, str(s.n), _mean_std(s, d), _ci(s, d)]
                cells += [""] * (len(header) - len(cells))
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
        for ref in t.references:
            cells = [t.variant, f"ref/{ref.name}", ref.label, "", "reference"]
            for m in t.metrics:
                s = ref.summaries.get(m.key)
                cells.append(_num(s.mean) if s is not None and s.n else "")
                if t.compare:
                    cells.append("")
            cells.append("")
            w.writerow(cells)
    return buf.getvalue()


def stats_csv(tables: Sequence[ResultTable]) -> str:
    """Per variant, group and metric: n, mean, std, CI, paired test (and the paper's)."""
    header = ["variant", "group", "label", "metric", "n", "mean", "std", "ci_low", "ci_high",
              "reference", "pairs", "mean_diff", "t", "p", "vs_normal_pairs",
              "vs_normal_mean_diff", "vs_normal_t", "vs_normal_p", "paper_n", "paper_mean",
              "paper_std", "paper_ci_low", "paper_ci_high"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)

    def test_cells(te: PairedTest | None) -> list[Any]:
        if te is None:
            return ["", "", "", ""]
        return [te.n, _num(te.mean_diff), _num(te.t), _num(te.p)]

    for t in tables:
        for g in [*t.stats, *t.diagnostics]:
            s, te, p = g.summary, g.test, g.paper
            w.writerow([t.variant, g.group, g.label, g.metric.key, s.n, _num(s.mean),
                        _num(s.std), _num(s.ci_low), _num(s.ci_high),
                        t.reference if te else "", *test_cells(te)[:4],
                        *test_cells(g.claim), p.n if p else "", _num(p.mean) if p else "",
                        _num(p.std) if p else "", _num(p.ci_low) if p else "",
                        _num(p.ci_high) if p else ""])
        for ref in t.references:
            for key, s in ref.summaries.items():
                if s.n:
                    w.writerow([t.variant, f"ref/{ref.name}", ref.label, key, s.n,
                                _num(s.mean), _num(s.std), _num(s.ci_low), _num(s.ci_high),
                                *[""] * 14])
    return buf.getvalue()


def _num(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return ""
    return repr(float(v))
