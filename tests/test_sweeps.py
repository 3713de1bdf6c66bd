"""The Table 1/2 sweeps: grids, command-line narrowing, skip on re-run, failures, the report."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from cli_helpers import TINY, run_cli
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from mimic_runner.report.collect import sweep_params
from mimic_runner.report.report import PACKAGED_PAPER


def _paper(table: str) -> list[dict[str, str]]:
    with (PACKAGED_PAPER / f"{table}.csv").open() as f:
        return list(csv.DictReader(f))


def test_sweeps_hold_the_papers_grids() -> None:
    t1, t2 = sweep_params("table1"), sweep_params("table2")
    assert t1["model"] == ["baseline", "improved_unet", "normal_ensemble", "expl_ensemble"]
    assert [int(s) for s in t1["seed"]] == sorted({int(r["seed"]) for r in _paper("table1")})
    assert t2["model"] == ["expl_ensemble"]
    assert t2["model.ensemble_size"] == ["5", "7", "8", "10"]
    paper2 = [int(r["seed"]) for r in _paper("table2") if r["ensemble_size"] == "5"]
    assert [int(s) for s in t2["seed"]] == paper2  # the paper's order


@pytest.mark.parametrize("table", ["table1", "table2"])
def test_a_sweep_names_its_folder(compose, table: str) -> None:  # type: ignore[no-untyped-def]
    cfg = compose(f"sweep={table}", "trainer=smoke", "backbone=resnet18", hydra=True)
    assert cfg.sweep_name == table and cfg.hydra.sweep.dir == f"runs/{table}"
    assert cfg.trainer.max_epochs == 2 and cfg.backbone.name == "resnet18"  # others compose


def _jobs(compose, table: str, cli: list[str]) -> list[list[str]]:  # type: ignore[no-untyped-def]
    """The jobs Hydra's basic sweeper launches: the sweep's params, then the command line."""
    cfg = compose(f"sweep={table}", hydra=True)
    params = [f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()]
    overrides = OverridesParser.create().parse_overrides([*params, *cli])
    (batch,) = BasicSweeper.split_arguments(overrides, None)
    return batch


def test_command_line_narrows_the_grid(compose) -> None:  # type: ignore[no-untyped-def]
    assert len(_jobs(compose, "table1", [])) == 40 and len(_jobs(compose, "table2", [])) == 40
    jobs = _jobs(compose, "table1", ["model=baseline,expl_ensemble", "seed=1,2", "trainer=smoke"])
    assert jobs == [["model=baseline", "seed=1", "trainer=smoke"],
                    ["model=baseline", "seed=2", "trainer=smoke"],
                    ["model=expl_ensemble", "seed=1", "trainer=smoke"],
                    ["model=expl_ensemble", "seed=2", "trainer=smoke"]]
    # A plain value replaces the sweep's list too: one model, all ten seeds.
    assert {j[0] for j in _jobs(compose, "table1", ["model=baseline"])} == {"model=baseline"}
    assert len(_jobs(compose, "table2", ["model.ensemble_size=5"])) == 10


def _metrics(root: Path, table: str) -> dict[Path, dict]:
    return {p: json.loads(p.read_text()) for p in (root / "runs" / table).glob("*/metrics.json")}


@pytest.mark.slow
def test_reduced_grid_resumes_and_reports(tmp_path: Path) -> None:
    # Two models x two seeds, plus a seed Lightning rejects: those two jobs fail, the rest run.
    t1 = ["mimic-run", "-m", "sweep=table1", "model=baseline,improved_unet",
          "seed=1735,2948,-1", "trainer=smoke", *TINY]
    r = run_cli(t1, cwd=tmp_path)
    assert r.returncode == 1, r.stderr[-3000:]  # some run failed; the others went on
    assert "4 trained, 0 skipped" in r.stderr and "2 failed" in r.stderr
    first = _metrics(tmp_path, "table1")
    assert sorted((m["model"], m["seed"]) for m in first.values()) == [
        ("baseline", 1735), ("baseline", 2948), ("improved_unet", 1735),
        ("improved_unet", 2948)]
    failed = sorted((tmp_path / "runs" / "table1").glob("*/failed.json"))
    assert len(failed) == 2 and all("seed=-1" in p.parent.name for p in failed)
    # Refused by the job's config check (a sweep's later jobs are checked in their job).
    assert "seed=-1: use an integer from 0 to" in json.loads(failed[0].read_text())["error"]
    mtimes = {p: p.stat().st_mtime_ns for p in first}

    # The same command again trains nothing (the failed jobs are retried and fail again).
    r = run_cli(t1, cwd=tmp_path)
    assert r.returncode == 1
    assert "0 trained, 4 skipped" in r.stderr and r.stderr.count("metrics.json") >= 4
    assert {p: p.stat().st_mtime_ns for p in _metrics(tmp_path, "table1")} == mtimes

    # Table 2 with small ensembles, and one normal ensemble for Figure 3.
    r = run_cli(["mimic-run", "-m", "sweep=table2", "model.ensemble_size=2,3",
                 "seed=1467,3942", "trainer=smoke", *TINY], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli(["mimic-run", "-m", "sweep=table1", "model=normal_ensemble",
                 "model.ensemble_size=2", "seed=1735", "trainer=smoke", *TINY], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]

    r = run_cli(["mimic-report", "runs", "--compare-paper"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "runs" / "report"
    for name in ("fig1_ensemble_size_boxplots.png", "fig2_samples_gradcam.png",
                 "fig3_normal_ensemble_member_cams.png", "fig4_expl_ensemble_member_cams.png",
                 "table1.md", "table1.tex", "table2.md", "table2.tex", "report.md"):
        assert (out / name).stat().st_size > 0, name
    assert "skipped" not in r.stdout  # every figure drawn
    for table, n_rows in (("table1", 7), ("table2", 4)):
        with (out / f"{table}.csv").open() as f:
            rows = list(csv.DictReader(f))
        refs = [r for r in rows if r["status"] == "reference"]
        assert [r["label"] for r in refs] == ["Uniform map", "Mean gaze (train)",
                                              "Mean gaze (train, model grid)",
                                              "Own gaze (model grid)"]
        rows = [r for r in rows if r["status"] != "reference"]
        assert len(rows) == n_rows
        finished = _metrics(tmp_path, table)
        for row in rows:
            if row["status"] == "failed":
                assert row["seed"] == "-1" and row["kld"] == ""
                continue
            run_dir = Path(row["run_dir"])  # as found under RUNS_DIR="runs"
            m = finished[tmp_path / run_dir / "metrics.json"]
            assert float(row["kld"]) == pytest.approx(m["test/kld"])
            assert float(row["nss"]) == pytest.approx(m["test/nss"])
            if table == "table1":
                assert float(row["acc"]) == pytest.approx(100 * m["test/acc"])
                # Matched by model and seed; the 2-member ensemble is not the paper's.
                assert (row["paper_kld"] != "") == (row["model"] != "normal_ensemble@2")
    report = (out / "report.md").read_text()
    assert "Failed:" in report and "Missing (never run)" in report


def test_outcome_counts_a_run_finished_just_before_the_sweep_as_skipped(tmp_path: Path) -> None:
    """A run that finished a moment before the next sweep started was skipped by that sweep,
    not trained (the second invocation of a sweep on a fast machine)."""
    import os
    import time

    from mimic_runner.training.sweep import sweep_outcome

    now = time.time()

    def run(name: str, config_at: float, metrics_at: float | None) -> None:
        d = tmp_path / name / ".hydra"
        d.mkdir(parents=True)
        (d / "config.yaml").write_text("{}")
        os.utime(d / "config.yaml", (config_at, config_at))
        if metrics_at is not None:
            (d.parent / "metrics.json").write_text("{}")
            os.utime(d.parent / "metrics.json", (metrics_at, metrics_at))

    since = now - 2.0  # the sweep's start, with its slack
    run("finished_just_before", config_at=now + 0.5, metrics_at=now - 0.5)
    run("trained_now", config_at=now + 0.5, metrics_at=now + 3.0)
    run("earlier_invocation", config_at=now - 60, metrics_at=now - 50)
    run("crashed_now", config_at=now + 0.5, metrics_at=None)
    out = sweep_outcome(tmp_path, since)
    assert [d.name for d in out.skipped] == ["finished_just_before"]
    assert [d.name for d in out.trained] == ["trained_now"]
    assert [d.name for d in out.incomplete] == ["crashed_now"]
    assert out.total == 3
