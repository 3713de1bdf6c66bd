"""sweep=tune_expl: Optuna on validation data only — the sweep's config, the pre-flight of
Optuna's override syntax, the optimized metric's checks, and a real two-trial study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from cli_helpers import run_cli

from mimic_runner.config import _composition_error, preflight
from mimic_runner.errors import UserError
from mimic_runner.paths import sweeps_dir
from mimic_runner.training.run import optimized_value

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

TINY = ["data.synth.params.n=240", "data.image_size=64", "trainer=smoke",
        "model.ensemble_size=2"]


def _paper_seeds() -> set[int]:
    seeds: set[int] = set()
    for name in ("table1", "table2"):
        grid = yaml.safe_load((Path(sweeps_dir()) / f"{name}.yaml").read_text())
        seeds |= {int(s) for s in str(grid["hydra"]["sweeper"]["params"]["seed"]).split(",")}
    return seeds


def test_tune_sweep_optimises_a_validation_value(compose) -> None:  # type: ignore[no-untyped-def]
    cfg = compose("sweep=tune_expl", hydra=True)
    sw = cfg.hydra.sweeper
    assert sw._target_.endswith("OptunaSweeper") and sw.sampler._target_.endswith("TPESampler")
    assert sw.direction == "maximize" and sw.n_jobs == 1  # the serial launcher: one at a time
    assert set(sw.params) == {"model.lambda_consistency", "model.warmup_epochs",
                              "model.consistency", "seed"}
    assert "log" in sw.params["model.lambda_consistency"]
    assert int(sw.params.seed) not in _paper_seeds()
    assert cfg.model.name == "expl_ensemble"
    assert cfg.optimized_metric == "val/objective" and cfg.explain.val_explanations is True
    assert 0 < cfg.explain.acc_floor < 1
    # The warm-up never reaches past the checkpoint window (select_after).
    assert "0.4)" in sw.params["model.warmup_epochs"] and cfg.select_after == 0.4


def test_tune_sweep_asks_as_many_trials_as_the_launcher_runs(compose) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = compose("sweep=tune_expl", "launcher=local", "launcher.n_jobs=3", hydra=True)
    assert cfg.hydra.sweeper.n_jobs == 3


def test_preflight_copes_with_optuna_syntax() -> None:
    preflight(["-m", "sweep=tune_expl", "hydra.sweeper.n_trials=2", *TINY])
    preflight(["-m", "sweep=tune_expl", "model.lambda_consistency=tag(log, interval(1, 100))",
               "model.warmup_epochs=interval(0.0, 0.4)", "model.consistency=choice(mean,pairwise)",
               "trainer.max_epochs=interval(2, 5)"])  # a whole-number interval: an integer
    with pytest.raises(UserError, match=r"^model\.lamda_consistency: no such config key"):
        preflight(["-m", "sweep=tune_expl", "model.lamda_consistency=interval(1, 100)"])


@pytest.mark.parametrize(("argv", "message"), [
    (["-m", "optimized_metric=test/acc", "seed=1,2"], "never a test one"),
    (["-m", "optimized_metric=val/nss", "seed=1,2"], "only with explain.val_explanations=true"),
    (["-m", "sweep=tune_expl", "explain.val_explanations=false"], "only with explain"),
])
def test_a_sweep_never_optimises_a_test_or_unrecorded_value(argv: list[str], message: str
                                                            ) -> None:
    with pytest.raises(UserError, match=message):
        preflight(argv)


def test_single_runs_and_plain_validation_metrics_pass() -> None:
    preflight(["optimized_metric=test/acc"])  # a single run returns nothing to a sweeper
    preflight(["-m", "optimized_metric=val/auroc", "seed=1,2"])
    preflight(["-m", "optimized_metric=null", "seed=1,2"])


def test_missing_sweeper_plugin_is_named() -> None:
    from hydra.errors import MissingConfigException

    exc = MissingConfigException("In 'sweep/tune_expl': Could not find 'hydra/sweeper/optuna'"
                                 "\n\nAvailable options in 'hydra/sweeper':\n\tbasic")
    assert _composition_error(exc) == (
        "sweep=tune_expl needs the Hydra plugin 'hydra-optuna-sweeper'; install the tuning "
        "extra: pip install 'mimic-runner[tuning]'")


def test_nan_objective_is_a_failed_trial_not_a_value(compose) -> None:  # type: ignore[no-untyped-def]
    cfg = compose("sweep=tune_expl")
    assert optimized_value(cfg, {"val/objective": 1.5, "test/nss": 9.0}) == 1.5
    assert optimized_value(cfg, {"val/objective": math.nan}) is None  # Optuna would stop
    assert optimized_value(cfg, {"val/objective": None}) is None  # NaN read back from JSON
    assert optimized_value(cfg, None) is None


@pytest.mark.slow
def test_two_trials_return_their_validation_objective(tmp_path: Path) -> None:
    r = run_cli(["mimic-run", "-m", "sweep=tune_expl", "hydra.sweeper.n_trials=2", *TINY],
                cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "runs" / "tune_expl"
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"model.lambda_consistency", "model.warmup_epochs",
                                        "model.consistency"}
    trials = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert len(trials) == 2
    objectives = []
    for trial in trials:
        cfg = yaml.safe_load((trial / ".hydra" / "config.yaml").read_text())
        assert cfg["optimized_metric"].startswith("val/")
        assert cfg["model"]["name"] == "expl_ensemble" and cfg["seed"] not in _paper_seeds()
        m = json.loads((trial / "metrics.json").read_text())
        floor = cfg["explain"]["acc_floor"]
        assert m["val/objective"] == pytest.approx(
            m["val/nss"] - 10 * max(0.0, floor - m["val/acc"]))
        objectives.append(m["val/objective"])
    # The study saw the validation objectives (maximised), not a test value.
    assert best["best_value"] == pytest.approx(max(objectives))
