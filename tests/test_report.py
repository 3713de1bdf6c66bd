"""mimic-report on hand-made run folders: tables, statistics, paper values, figures, gaps."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from scipy import stats

from mimic_runner.cli.report import main as report_main
from mimic_runner.data.schema import write_dataset
from mimic_runner.errors import UserError
from mimic_runner.report import report as R
from mimic_runner.report.collect import collect_runs, coverage, expected_grid, variant_of
from mimic_runner.report.render import row_matrix, stats_matrix, to_latex, to_markdown
from mimic_runner.report.tables import build_tables, load_paper, paired_test, summarize
from mimic_runner.rundir import RunDir

N_TEST, SIZE = 12, 16


def make_dataset(path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 3 * N_TEST
    return write_dataset(
        path, images=rng.integers(0, 255, (n, 1, SIZE, SIZE), dtype=np.uint8),
        labels=rng.integers(0, 3, n), split=np.repeat([0, 1, 2], N_TEST),
        ids=[f"img{i:03d}" for i in range(n)], class_names=["Normal", "CHF", "pneumonia"],
        gaze=rng.random((n, SIZE, SIZE)).astype(np.float32))


def make_run(root: Path, sweep: str | None, model: str, seed: int, size: int = 1,
             status: str = "finished", extra: tuple[str, ...] = ("trainer=smoke",),
             dataset: Path | None = None, kld: float | None = None, nss: float | None = None,
             acc: float | None = None, cams: bool = False,
             more: dict | None = None) -> Path:
    """A run folder as mimic-run writes it (only what the report reads); ``more`` adds keys
    to its metrics.json."""
    overrides = [f"model={model}", f"seed={seed}", *extra]
    if size != 1 and model != "baseline":
        overrides.append(f"model.ensemble_size={size}")
    d = root / (sweep or "multirun") / ",".join(sorted(overrides))
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name": model, "ensemble_size": size}, "seed": seed,
        "sweep_name": sweep or "multirun"}))
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {
        "runtime": {"choices": {"sweep": sweep}},
        "job": {"config": {"override_dirname": {"exclude_keys": ["sweep", "resume"]}}}}}))
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(
        [*overrides, f"sweep={sweep}"] if sweep else overrides))
    rng = np.random.default_rng(seed * 10 + size)
    if status == "finished":
        metrics = {"model": model, "seed": seed, "ensemble_size": size,
                   "test/acc": acc if acc is not None else float(rng.uniform(0.3, 0.9)),
                   "test/kld": kld if kld is not None else float(rng.uniform(0.5, 9)),
                   "test/nss": nss if nss is not None else float(rng.normal()),
                   "dataset_path": str(dataset) if dataset else None, **(more or {})}
        (d / "metrics.json").write_text(json.dumps(metrics))
        if dataset is not None:
            RunDir(d).write_explanations(
                maps=rng.random((N_TEST, SIZE, SIZE)), labels=rng.integers(0, 3, N_TEST),
                probabilities=rng.dirichlet(np.ones(3), N_TEST),
                ids=np.array([f"img{i:03d}" for i in range(2 * N_TEST, 3 * N_TEST)]),
                class_names=["Normal", "CHF", "pneumonia"], explain_target="pred", model=model)
        if cams:
            with h5py.File(d / "member_cams.h5", "w") as f:
                for e in (1, 6):
                    f[f"epoch_{e}"] = rng.random((size, SIZE, SIZE)).astype(np.float32)
                f["mean_image"] = rng.random((SIZE, SIZE)).astype(np.float32)
    elif status == "failed":
        (d / "failed.json").write_text(json.dumps({"error": "ValueError: boom"}))
    elif status == "interrupted":
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "last.ckpt").write_bytes(b"x")
    return d


@pytest.fixture
def partial_sweep(tmp_path: Path) -> Path:
    """A partial Table 1 and Table 2 with one failed and one interrupted run."""
    root = tmp_path / "runs"
    ds = make_dataset(tmp_path / "data.h5")
    for seed in (1735, 2948, 4235):
        make_run(root, "table1", "baseline", seed, dataset=ds)
        make_run(root, "table1", "improved_unet", seed, dataset=ds)
        make_run(root, "table1", "expl_ensemble", seed, size=10, dataset=ds, cams=True)
    make_run(root, "table1", "normal_ensemble", 1735, size=10, cams=True)
    make_run(root, "table1", "normal_ensemble", 2948, size=10, status="failed")
    make_run(root, "table1", "normal_ensemble", 4235, size=10, status="interrupted")
    for size in (5, 10):
        for seed in (1467, 3942, 4635):
            make_run(root, "table2", "expl_ensemble", seed, size=size)
    return root


# -- statistics -----------------------------------------------------------------------------

def test_summarize_matches_the_t_interval() -> None:
    s = summarize([1.0, 2.0, 3.0, 4.0, None, math.nan])
    assert s.n == 4 and s.mean == pytest.approx(2.5)
    assert s.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    lo, hi = stats.t.interval(0.95, 3, loc=2.5, scale=s.std / 2)
    assert (s.ci_low, s.ci_high) == pytest.approx((lo, hi))
    one = summarize([7.0])
    assert one.n == 1 and one.mean == 7.0 and math.isnan(one.std) and math.isnan(one.ci_low)
    assert summarize([]).n == 0


def test_paired_test_uses_the_seeds_both_have() -> None:
    a = {1: 1.0, 2: 2.5, 3: 2.0, 4: 9.0}
    b = {1: 0.5, 2: 2.0, 3: 1.0, 5: 3.0}
    t = paired_test(a, b)
    ref = stats.ttest_rel([1.0, 2.5, 2.0], [0.5, 2.0, 1.0])
    assert t.n == 3 and t.t == pytest.approx(ref.statistic) and t.p == pytest.approx(ref.pvalue)
    assert t.mean_diff == pytest.approx(np.mean([0.5, 0.5, 1.0]))
    single = paired_test({1: 1.0}, {1: 0.0})
    assert single.n == 1 and math.isnan(single.p)


# -- published values -------------------------------------------------------------------------

def test_packaged_paper_tables_load() -> None:
    paper = load_paper(R.PACKAGED_PAPER)
    assert len(paper["table1"]) == 40 and len(paper["table2"]) == 40
    assert paper["table1"][("baseline", 1735)] == {"acc": 72.17, "kld": 10.744, "nss": -0.497}
    assert paper["table2"][(8, 6395)] == {"kld": 6.55, "nss": -1.491}


def test_find_paper_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--paper-dir"):
        R.find_paper_dir(tmp_path)
    mine = tmp_path / "paper"
    mine.mkdir(parents=True)
    for name in ("table1.csv", "table2.csv"):
        (mine / name).write_text((R.PACKAGED_PAPER / name).read_text())
    assert R.find_paper_dir(str(mine)) == mine
    assert R.find_paper_dir(None) == R.PACKAGED_PAPER.resolve()  # the shipped copy


# -- collecting runs --------------------------------------------------------------------------

def test_variant_ignores_grid_and_placement_keys() -> None:
    assert variant_of(["model=a", "seed=1", "trainer=smoke", "sweep=table1", "launcher=local",
                       "launcher.n_jobs=2", "hydra.launcher.partition=x", "resume=true",
                       "data.synth.params.n=240"], ["sweep"]) == \
        "data.synth.params.n=240,trainer=smoke"


def test_collect_and_coverage(partial_sweep: Path) -> None:
    runs = collect_runs(partial_sweep)
    assert len(runs) == 12 + 6
    by_status = {r.status for r in runs}
    assert by_status == {"finished", "failed", "interrupted"}
    t1 = [r for r in runs if r.sweep == "table1"]
    c = coverage(t1, "table1")
    assert len(c.expected) == 40 and len(expected_grid("table2")) == 40
    assert ("baseline", 9576) in c.missing and ("baseline", 1735) not in c.missing
    assert [r.seed for r in c.failed] == [2948] and [r.seed for r in c.unfinished] == [4235]
    assert not c.complete


def test_tables_follow_metrics_json(partial_sweep: Path) -> None:
    runs = collect_runs(partial_sweep)
    paper = load_paper(R.PACKAGED_PAPER)
    (t1,) = build_tables([r for r in runs if r.sweep == "table1"], "table1", paper["table1"])
    assert [r.group for r in t1.rows][:3] == ["baseline"] * 3  # the paper's model order
    assert [r.group for r in t1.rows][6:9] == ["normal_ensemble"] * 3
    for row in t1.rows:
        if row.status != "finished":
            assert row.values == {"acc": None, "kld": None, "nss": None}
            continue
        m = json.loads((row.path / "metrics.json").read_text())
        assert row.values["acc"] == pytest.approx(100 * m["test/acc"])
        assert row.values["kld"] == pytest.approx(m["test/kld"])
        assert row.paper == paper["table1"][(row.group, row.seed)]
    kld = {g.group: g for g in t1.stats if g.metric.key == "kld"}
    base = [r.values["kld"] for r in t1.rows if r.group == "baseline"]
    assert kld["baseline"].summary.mean == pytest.approx(np.mean(base))
    assert kld["baseline"].test is None and kld["improved_unet"].test.n == 3
    assert kld["normal_ensemble"].summary.n == 1 and kld["normal_ensemble"].test.n == 1
    assert kld["baseline"].paper.n == 10
    header, rows = row_matrix(t1)
    assert header[:3] == ["Model", "Seed", "Acc. (%)"] and "paper" in header
    assert rows[0][0] == "Baseline" and rows[1][0] == ""  # the paper's grouped layout
    assert "failed" in [r[-1] for r in rows] and "interrupted" in [r[-1] for r in rows]
    md = to_markdown(*stats_matrix(t1))
    assert "Δ vs Baseline" in md
    tex = to_latex(*row_matrix(t1), caption=t1.title)
    assert r"\toprule" in tex and "Expl. Ensemble" in tex

    (t2,) = build_tables([r for r in runs if r.sweep == "table2"], "table2")
    assert t2.reference == "N=10" and [r.group for r in t2.rows] == [5] * 3 + [10] * 3
    assert row_matrix(t2)[0][:2] == ["Seed", "Ensemble size"]


def test_variants_get_their_own_table(tmp_path: Path) -> None:
    for seed in (1, 2):
        make_run(tmp_path, "table1", "baseline", seed)
        make_run(tmp_path, "table1", "baseline", seed, extra=("trainer=gpu",))
    tables = build_tables(collect_runs(tmp_path), "table1")
    assert [t.variant for t in tables] == ["trainer=gpu", "trainer=smoke"]
    assert all(len(t.rows) == 2 for t in tables)


def test_report_end_to_end_on_a_partial_sweep(partial_sweep: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    report_main([str(partial_sweep), "--out", str(out), "--compare-paper",
                 "--paper-dir", str(R.PACKAGED_PAPER), "--seed-for-samples", "3"])
    printed = capsys.readouterr().out
    assert "Missing (never run)" in printed and "Failed" in printed
    for name in ("table1.md", "table1.csv", "table1_summary.csv", "table1.tex", "table2.md",
                 "table2.csv", "table2_summary.csv", "table2.tex", "runs.csv", "report.md",
                 "fig1_ensemble_size_boxplots.png", "fig2_samples_gradcam.png",
                 "fig3_normal_ensemble_member_cams.png", "fig4_expl_ensemble_member_cams.png"):
        assert (out / name).stat().st_size > 0, name
    with (out / "table1.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    for r in rows:
        if r["status"] == "finished":
            m = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
            assert float(r["kld"]) == pytest.approx(m["test/kld"])
            assert float(r["nss"]) == pytest.approx(m["test/nss"])
            assert float(r["paper_kld"]) > 0
    report_md = (out / "report.md").read_text()
    assert "fig2_samples_gradcam.png" in report_md and "Finished 10 of the 40" in report_md


def test_missing_figure_inputs_are_skipped_with_a_note(tmp_path: Path) -> None:
    # Runs without explanations, member CAMs or a dataset: tables yes, figures skipped.
    make_run(tmp_path / "runs", "table1", "baseline", 1735)
    make_run(tmp_path / "runs", "table2", "expl_ensemble", 1467, size=5)
    rep = R.make_report(tmp_path / "runs", formats=("csv",))
    notes = {f.name: f.note for f in rep.figures}
    assert rep.figures[0].path is not None  # Figure 1 needs metrics only
    assert all(notes[n] and notes[n].startswith("skipped") for n in
               ("Figure 2", "Figure 3", "Figure 4"))
    assert not (tmp_path / "runs" / "report" / "report.md").exists()  # md not asked for
    assert (tmp_path / "runs" / "report" / "table1.csv").exists()


def test_dataset_gone_skips_figure_2(tmp_path: Path) -> None:
    ds = make_dataset(tmp_path / "data.h5")
    make_run(tmp_path / "runs", "table1", "baseline", 1735, dataset=ds)
    ds.unlink()
    rep = R.make_report(tmp_path / "runs", formats=("md",))
    fig2 = next(f for f in rep.figures if f.name == "Figure 2")
    assert fig2.path is None and "not found" in (fig2.note or "")


def test_cli_user_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path / "nope")])
    assert e.value.code == 2 and "no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path)])
    assert e.value.code == 2 and "no runs found" in capsys.readouterr().err
    make_run(tmp_path, "table1", "baseline", 1)
    with pytest.raises(SystemExit) as e:
        report_main([str(tmp_path), "--format", "md,html"])
    assert e.value.code == 2 and "--format" in capsys.readouterr().err


def test_reference_rows_claim_test_diagnostics_and_warnings(tmp_path: Path) -> None:
    """What the report must let a reader judge: reference maps beside the models, the
    explanation ensemble paired with the normal one, the zero-pixel diagnostics, and a warning
    that synthetic runs sit beside MIMIC-EGD values."""
    refs = {"ref/uniform/kld": 1.9, "ref/uniform/nss": 0.0, "ref/mean_gaze/kld": 1.0,
            "ref/mean_gaze/nss": 1.4, "ref/mean_gaze_grid/kld": 1.2,
            "ref/mean_gaze_grid/nss": 1.3, "ref/own_gaze_grid/kld": 0.1,
            "ref/own_gaze_grid/nss": 2.9}
    expl_minus_normal = {1735: 0.5, 2948: 0.25, 4235: 0.75}
    for seed in (1735, 2948, 4235):
        diag = {"test/gaze_on_zero": 0.1, "test/kld_floor": 2.0, "test_label/kld": 3.0,
                "test_label/nss": 0.4, "dataset": "synth_cxr", **refs}
        make_run(tmp_path, "table1", "normal_ensemble", seed, size=10, kld=3.0, nss=0.6,
                 more=diag)
        make_run(tmp_path, "table1", "expl_ensemble", seed, size=10,
                 kld=3.0 + expl_minus_normal[seed], nss=0.5, more=diag)
        make_run(tmp_path, "table1", "baseline", seed, kld=5.0, nss=0.3, more=diag)
        make_run(tmp_path, "table2", "expl_ensemble", seed, size=5, more=diag)
    report = R.make_report(tmp_path, out_dir=tmp_path / "out", compare_paper=True)
    (t1,) = report.tables["table1"]
    assert [r.label for r in t1.references] == ["Uniform map", "Mean gaze (train)",
                                               "Mean gaze (train, model grid)",
                                               "Own gaze (model grid)"]
    kld = {g.group: g for g in t1.stats if g.metric.key == "kld"}
    claim = kld["expl_ensemble"].claim
    assert claim is not None and claim.n == 3 and claim.mean_diff == pytest.approx(0.5)
    assert kld["normal_ensemble"].claim is None and kld["expl_ensemble"].test.n == 3
    assert {g.metric.key for g in t1.diagnostics} >= {"gaze_on_zero", "kld_floor",
                                                       "kld_label", "nss_label"}
    assert report.warnings and "not MIMIC-EGD" in report.warnings[0]
    md = (tmp_path / "out" / "report.md").read_text()
    for text in ("Uniform map", "Mean gaze (train)", "Mean gaze (train, model grid)",
                 "Own gaze (model grid)", "vs Normal Ensemble",
                 "Gaze on zero px", "KLD (true label)", "not MIMIC-EGD", "repeat Table 1"):
        assert text in md, text
    for name in ("table1.csv", "table1_summary.csv", "table1.tex"):
        text = (tmp_path / "out" / name).read_text()
        assert "Own gaze (model grid)" in text or "own_gaze_grid" in text, name
    assert "vs_normal_p" in (tmp_path / "out" / "table1_summary.csv").read_text()
