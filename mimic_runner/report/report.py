"""`mimic-report`'s work: collect runs, build Tables 1-2 and Figures 1-4, write and print them."""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from mimic_runner.errors import UserError
from mimic_runner.io import atomic_path
from mimic_runner.log import stdout
from mimic_runner.report import figures as F
from mimic_runner.report.collect import (
    TABLES,
    Coverage,
    Run,
    collect_runs,
    coverage,
    describe_missing,
    runs_for_table,
)
from mimic_runner.report.render import (
    row_matrix,
    rows_csv,
    stats_csv,
    stats_matrix,
    to_latex,
    to_markdown,
)
from mimic_runner.report.tables import ResultTable, build_tables, load_paper

FORMATS = ("md", "csv", "tex")
DIAG_TITLE = ("Diagnostics: gaze mass on exactly-zero explanation pixels, the KLD with a 1 % "
              "uniform floor, and the explanations of the true label")
PACKAGED_PAPER = Path(__file__).resolve().parent / "paper"


def parse_formats(text: str) -> tuple[str, ...]:
    """``md,csv,tex`` -> a tuple; a :class:`UserError` names an unknown format."""
    wanted = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in wanted if f not in FORMATS]
    if bad or not wanted:
        raise UserError(f"--format {text!r}: use a comma-separated list of {', '.join(FORMATS)}")
    return wanted


def _has_paper(d: Path) -> bool:
    return (d / "table1.csv").is_file() and (d / "table2.csv").is_file()


def find_paper_dir(option: str | Path | None) -> Path:
    """The folder with the published ``table1.csv``/``table2.csv``: ``--paper-dir``, else the
    copy shipped inside the package (``mimic_runner/report/paper/``)."""
    if option is not None:
        d = Path(option).expanduser()
        if not _has_paper(d):
            raise UserError(f"--paper-dir {d}: needs table1.csv and table2.csv")
        return d
    if _has_paper(PACKAGED_PAPER):
        return PACKAGED_PAPER.resolve()
    raise UserError("the published tables are missing from the package (reinstall it); pass "
                    "--paper-dir DIR")


@dataclass
class FigureResult:
    name: str
    path: Path | None
    note: str | None = None


@dataclass
class Report:
    runs_dir: Path
    out_dir: Path
    runs: list[Run]
    tables: dict[str, list[ResultTable]]
    sources: dict[str, str]
    coverage: dict[str, Coverage]
    figures: list[FigureResult]
    paper_dir: Path | None
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def make_report(runs_dir: Path, out_dir: Path | None = None, compare_paper: bool = False,
                paper_dir: str | Path | None = None, formats: Sequence[str] = FORMATS,
                seed_for_samples: int = 0) -> Report:
    """Build everything and write it under ``out_dir`` (default ``runs_dir/report``)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir}: no such directory")
    runs = collect_runs(runs_dir)
    if not runs:
        raise UserError(f"{runs_dir}: no runs found (no folder with .hydra/config.yaml); run "
                        "`mimic-run -m sweep=table1` first")
    out_dir = Path(out_dir) if out_dir is not None else runs_dir / "report"
    pdir = find_paper_dir(paper_dir) if compare_paper else None
    paper = load_paper(pdir) if pdir is not None else None

    tables, sources, cov = {}, {}, {}
    table_runs: dict[str, list[Run]] = {}
    for kind in TABLES:
        selected, sources[kind] = runs_for_table(runs, kind)
        table_runs[kind] = selected
        tables[kind] = build_tables(selected, kind, paper[kind] if paper else None)
        cov[kind] = coverage(selected, kind)

    report = Report(runs_dir=runs_dir, out_dir=out_dir, runs=runs, tables=tables,
                    sources=sources, coverage=cov, figures=[], paper_dir=pdir,
                    warnings=dataset_warnings(runs) if paper else [])
    if paper and table2_repeats_table1(paper):
        for t in tables["table2"]:
            t.notes.append(TABLE2_NOTE)
    report.figures = _figures(runs, table_runs, out_dir, paper, seed_for_samples)
    report.files = _write(report, formats) + [f.path for f in report.figures if f.path]
    return report


TABLE2_NOTE = ("The paper's Table 2 rows for N=10 repeat Table 1's Expl. Ensemble values (the "
               "same ten KLD/NSS pairs) under other seed labels: seed-matched comparisons at "
               "N=10 pair a run with a value the paper gives to another seed.")


def dataset_warnings(runs: Sequence[Run]) -> list[str]:
    """One warning line when published (MIMIC-EGD) values sit beside runs on other data."""
    other = sorted({str(r.metrics.get("dataset")) for r in runs if r.status == "finished"
                    and r.metrics.get("dataset") not in (None, "mimic_egd")})
    if not other:
        return []
    return [f"warning: runs on {', '.join(other)}, not MIMIC-EGD: the published values beside "
            "them come from another dataset; compare the pattern between models, not the "
            "numbers"]


def table2_repeats_table1(paper: dict) -> bool:
    """Whether the published N=10 rows of Table 2 hold Table 1's Expl. Ensemble values."""
    t1 = sorted((v["kld"], v["nss"]) for (g, _), v in paper["table1"].items()
                if g == "expl_ensemble")
    t2 = sorted((v["kld"], v["nss"]) for (g, _), v in paper["table2"].items() if g == 10)
    return bool(t1) and t1 == t2


def _figures(runs: list[Run], table_runs: dict[str, list[Run]], out: Path,
             paper: dict | None, seed: int) -> list[FigureResult]:
    """Every figure it can draw; a missing input skips that figure with a note."""
    t1 = table_runs["table1"] or runs
    # Figure 2's expl. ensemble may come from Table 2 when Table 1 has none.
    fig2_runs = t1 + [r for r in table_runs["table2"] if r not in t1]
    samples = F.pick_runs_for_samples(fig2_runs)
    seed_hint = next(iter(samples.values())).seed if samples else None
    jobs = [
        ("Figure 1", "fig1_ensemble_size_boxplots.png",
         lambda p: F.figure_boxplots(table_runs["table2"], p, paper["table2"] if paper else None)),
        ("Figure 2", "fig2_samples_gradcam.png",
         lambda p: F.figure_samples(fig2_runs, p, seed=seed)),
        ("Figure 3", "fig3_normal_ensemble_member_cams.png",
         lambda p: F.figure_member_cams(
             F.pick_member_cam_run(t1, "normal_ensemble", seed_hint), p,
             "Figure 3: normal ensemble, each sub-model's mean Grad-CAM")),
        ("Figure 4", "fig4_expl_ensemble_member_cams.png",
         lambda p: F.figure_member_cams(
             F.pick_member_cam_run(fig2_runs, "expl_ensemble", seed_hint), p,
             "Figure 4: explanation ensemble, each sub-model's mean Grad-CAM")),
    ]
    results = []
    for name, filename, draw in jobs:
        try:
            results.append(FigureResult(name, draw(out / filename)))
        except F.FigureSkipped as exc:
            results.append(FigureResult(name, None, f"skipped: {exc}"))
    return results


# -- files --------------------------------------------------------------------------------------

def _write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _coverage_lines(c: Coverage, source: str) -> list[str]:
    lines = [f"Source: {source}."]
    if c.expected:
        done = len([k for k in c.expected if k in set(c.finished)])
        lines.append(f"Finished {done} of the {len(c.expected)} runs of sweeps/{c.table}.yaml"
                     + (" (complete)." if c.complete else "."))
    for line in describe_missing(c.missing, c.table):
        lines.append(f"Missing (never run): {line}")
    for r in c.failed:
        lines.append(f"Failed: {r.path} ({r.error or 'see failed.json'})")
    for r in c.unfinished:
        hint = "; resume with resume=true" if r.status == "interrupted" else ""
        lines.append(f"{r.status.capitalize()}: {r.path}{hint}")
    if c.extra:
        lines.append(f"Outside the sweep's grid: {len(c.extra)} finished run(s)")
    return lines


def _runs_csv(runs: Sequence[Run]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run_dir", "status", "sweep", "model", "seed", "ensemble_size", "variant",
                "error"])
    for r in runs:
        w.writerow([r.path, r.status, r.sweep or "", r.model, r.seed, r.ensemble_size,
                    r.variant, r.error or ""])
    return buf.getvalue()


def _write(report: Report, formats: Sequence[str]) -> list[Path]:
    out, files = report.out_dir, []
    out.mkdir(parents=True, exist_ok=True)
    md_parts = [f"# Reproduction report: {report.runs_dir}\n", _status_line(report.runs) + "\n"]
    if report.paper_dir is not None:
        md_parts.append(f"Published values from `{report.paper_dir}`.\n")
    md_parts += [f"**{w}**\n" for w in report.warnings]
    for kind in TABLES:
        tables = report.tables[kind]
        title = "Table 1" if kind == "table1" else "Table 2"
        md_parts.append(f"\n## {title}\n")
        md_parts += [f"- {line}" for line in _coverage_lines(report.coverage[kind],
                                                              report.sources[kind])]
        md_parts.append("")
        if not tables:
            md_parts.append(f"No runs for {title}.\n")
        tex_parts = []
        for t in tables:
            rh, rr = row_matrix(t)
            sh, sr = stats_matrix(t)
            dh, dr = stats_matrix(t, diagnostics=True)
            vs = f"{t.reference or 'the reference'}" + (
                " and of the Expl. Ensemble against the Normal Ensemble (the paper's claim)"
                if kind == "table1" else "")
            md_parts += [f"### {t.title}\n", to_markdown(rh, rr),
                         f"Per {'model' if kind == 'table1' else 'ensemble size'}: mean ± std "
                         "over seeds, 95% t-interval of the mean, paired t-tests against "
                         f"{vs} on the seeds both have; reference maps (uniform, the training "
                         "split's mean gaze, the gaze pooled to the explained grid) scored on "
                         "the same test images.\n",
                         to_markdown(sh, sr), f"\n{DIAG_TITLE}\n", to_markdown(dh, dr)]
            md_parts += [f"- {n}" for n in t.notes]
            tex_parts += [to_latex(rh, rr, t.title),
                          to_latex(sh, sr, f"{t.title}: summary over seeds"),
                          to_latex(dh, dr, f"{t.title}: {DIAG_TITLE}")]
        if tables and "md" in formats:
            files.append(_write_text(out / f"{kind}.md", "\n".join(
                [f"# {title}\n"] + [w + "\n" for w in report.warnings]
                + [f"## {t.title}\n\n" + to_markdown(*row_matrix(t)) + "\n"
                   + to_markdown(*stats_matrix(t)) + f"\n{DIAG_TITLE}\n\n"
                   + to_markdown(*stats_matrix(t, diagnostics=True))
                   + "".join(f"\n- {n}" for n in t.notes) for t in tables])))
        if tables and "csv" in formats:
            files.append(_write_text(out / f"{kind}.csv", rows_csv(tables)))
            files.append(_write_text(out / f"{kind}_summary.csv", stats_csv(tables)))
        if tables and "tex" in formats:
            files.append(_write_text(out / f"{kind}.tex", "\n".join(tex_parts)))
    md_parts.append("\n## Figures\n")
    for f in report.figures:
        md_parts.append(f"- {f.name}: ![{f.name}]({f.path.name})" if f.path
                        else f"- {f.name}: {f.note}")
    if "csv" in formats:
        files.append(_write_text(out / "runs.csv", _runs_csv(report.runs)))
    if "md" in formats:
        files.append(_write_text(out / "report.md", "\n".join(md_parts) + "\n"))
    return files


def _status_line(runs: Sequence[Run]) -> str:
    counts = Counter(r.status for r in runs)
    parts = ", ".join(f"{counts[s]} {s}" for s in ("finished", "failed", "interrupted",
                                                  "incomplete") if counts[s])
    return f"{len(runs)} run(s) found: {parts}."


# -- console ------------------------------------------------------------------------------------

def _rich_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    # Text, not markup: variants and intervals hold square brackets.
    table = Table()
    for i, h in enumerate(header):
        table.add_column(Text(h), justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*(Text(c) for c in row))
    return table


def print_report(report: Report, console: Console | None = None) -> None:
    console = console or stdout
    console.print(_status_line(report.runs))
    for w in report.warnings:
        console.print(Text(w, style="yellow"), soft_wrap=True)
    if report.paper_dir is not None:
        console.print(Text(f"published values: {report.paper_dir}"))
    for kind in TABLES:
        title = "Table 1" if kind == "table1" else "Table 2"
        console.rule(title)
        for line in _coverage_lines(report.coverage[kind], report.sources[kind]):
            style = "red" if line.startswith("Failed") else (
                "yellow" if line.startswith(("Missing", "Interrupted", "Incomplete")) else "")
            console.print(Text(line, style=style), highlight=False)
        if not report.tables[kind]:
            console.print(f"no runs for {title}")
        for t in report.tables[kind]:
            # Titles on their own line: a table's title would wrap at the table's width.
            console.print(Text(t.title, style="bold"))
            console.print(_rich_table(*row_matrix(t)))
            console.print(Text(f"{t.title}: summary over seeds", style="bold"))
            console.print(_rich_table(*stats_matrix(t)))
            console.print(Text(f"{t.title}: {DIAG_TITLE}", style="bold"))
            console.print(_rich_table(*stats_matrix(t, diagnostics=True)))
            for note in t.notes:
                console.print(Text(note, style="yellow"))
    console.rule("Figures")
    for f in report.figures:
        console.print(Text(f"{f.name}: {f.path}") if f.path
                      else Text(f"{f.name}: {f.note}", style="yellow"))
    console.print(f"wrote {len(report.files)} file(s) to {escape(str(report.out_dir))}")
