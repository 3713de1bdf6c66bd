"""Model traits (``model.traits``) and adding a model with one module and one YAML only."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from cli_helpers import TINY, run_cli
from omegaconf import OmegaConf

from mimic_runner.errors import UserError
from mimic_runner.traits import ModelTraits


def test_traits_from_a_node_over_defaults() -> None:
    base = ModelTraits(kind="ensemble")
    t = ModelTraits.of(OmegaConf.create({"display_name": "X", "report_order": 3}), default=base)
    assert (t.kind, t.display_name, t.report_order, t.label("x")) == ("ensemble", "X", 3, "X")
    assert ModelTraits.of(None, default=base) is base
    assert ModelTraits().label("plain") == "plain"


@pytest.mark.parametrize("node, message", [
    ({"kinds": "single"}, "model.traits.kinds: no such trait"),
    ({"kind": "pair"}, "model.traits.kind=pair: use single or ensemble"),
    ({"takes_gaze": "yes"}, "model.traits.takes_gaze=yes: use true or false"),
    ({"trains_explanation": "lime"}, "model.traits.trains_explanation=lime"),
    ({"report_order": "first"}, "model.traits.report_order=first: use a number"),
])
def test_bad_traits_are_one_line(node: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ModelTraits.of(node)


def test_the_class_checks_the_kind_and_the_ensemble_size(compose) -> None:  # type: ignore[no-untyped-def]
    from mimic_runner.config import validate

    with pytest.raises(UserError, match="EnsembleModule trains ensemble models"):
        validate(compose("model=expl_ensemble", "model.traits.kind=single"))
    with pytest.raises(UserError, match="an ensemble needs at least 2 members"):
        validate(compose("model=normal_ensemble", "model.ensemble_size=1"))
    validate(compose("model=normal_ensemble", "model.ensemble_size=2"))


def test_shipped_models_declare_what_they_are(compose) -> None:  # type: ignore[no-untyped-def]
    from mimic_runner.training.builders import default_channels_last

    def traits(model: str) -> ModelTraits:
        return ModelTraits.of(compose(f"model={model}").model.traits)

    assert traits("expl_ensemble").is_ensemble and not traits("baseline").is_ensemble
    assert traits("improved_unet").takes_gaze and traits("improved_unet").trains_explanation
    cpu = ["trainer.accelerator=cpu", "backbone=small_cnn"]
    assert default_channels_last(compose("model=baseline", *cpu)) == {"channels_last": True}
    assert default_channels_last(compose("model=improved_unet", *cpu)) == {}


# -- a toy model: its module in a package of its own, its YAML in a --config-dir --------------

TOY_MODULE = '''
"""A model known only to this test: cross-entropy with label smoothing."""
import torch.nn.functional as F

from mimic_runner.training.modules import ExplainedClassifier


class ToyModule(ExplainedClassifier):
    def loss(self, out, batch):
        return F.cross_entropy(out.logits, batch["label"], label_smoothing=0.1), {}
'''

TOY_YAML = '''
defaults:
  - default
_target_: {package}.toy.ToyModule
name: toy
traits:
  display_name: Toy Model
  report_order: 15
'''


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(the folder on PYTHONPATH holding the toy package, the config folder with its YAML)."""
    package = f"toy_models_{tmp_path.name.replace('-', '_')}"
    code = tmp_path / "code"
    (code / package).mkdir(parents=True)
    (code / package / "__init__.py").write_text("")
    (code / package / "toy.py").write_text(textwrap.dedent(TOY_MODULE))
    conf = tmp_path / "conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "toy.yaml").write_text(TOY_YAML.format(package=package))
    monkeypatch.syspath_prepend(str(code))
    return code, conf


@pytest.mark.slow  # a smoke run in a subprocess, the report and a bench step: ~40 s on 2 cores
def test_a_toy_model_runs_and_shows_up_in_the_report_and_the_bench(
        toy: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mimic_runner.bench.steps import model_options, model_traits
    from mimic_runner.bench.suite import BenchOptions, run_steps
    from mimic_runner.cli.report import main as report_main

    code, conf = toy
    res = run_cli(["mimic-run", "--config-dir", str(conf), "model=toy", "trainer=smoke",
                   *TINY, "data.image_size=32"], tmp_path, env={"PYTHONPATH": str(code)})
    assert res.returncode == 0, res.stderr[-3000:]
    runs = [p.parent for p in (tmp_path / "runs").rglob("metrics.json")]
    assert len(runs) == 1
    assert json.loads((runs[0] / "metrics.json").read_text())["model"] == "toy"

    report_main([str(tmp_path / "runs"), "--out", str(tmp_path / "report"), "--format", "md"])
    capsys.readouterr()
    assert "Toy Model" in (tmp_path / "report" / "table1.md").read_text()

    assert "toy" in model_options([conf]) and not model_traits("toy", [conf]).is_ensemble
    opt = BenchOptions(models=["toy"], backbones=["small_cnn"], repeats=1, warmup=0,
                       batch_size=4, image_size=32, flops=False, sections=["steps"],
                       config_dirs=[conf], log=lambda _msg: None)
    rows, _ = run_steps(opt, "cpu", "small_cnn")
    assert [r["model"] for r in rows] == ["toy"] and rows[0]["images_per_s"] > 0
