"""The attention-branch network and its LightningModule (model=attention_branch)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import h5py
import pytest
import torch

from mimic_runner.errors import UserError
from mimic_runner.models.attention_branch import (
    AttentionBranchNet,
    apply_attention,
    parse_apply_at,
)
from mimic_runner.models.backbones import build_backbone
from mimic_runner.training.modules import AttentionBranchModule, attention_maps

BACKBONE = partial(build_backbone, name="small_cnn")
OPT = partial(torch.optim.Adam, lr=1e-3)


def _module(**kw):  # type: ignore[no-untyped-def]
    return AttentionBranchModule(backbone=BACKBONE, in_channels=1, num_classes=3, optimizer=OPT,
                                 name="attention_branch", maps=("gaze",), **kw)


def _batch(b: int = 4, c: int = 1, s: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randn(b, c, s, s, generator=g), "label": torch.arange(b) % 3,
            "gaze": torch.rand(b, s, s, generator=g)}


@pytest.mark.parametrize("apply_at", ["input", 0, 2, "1"])
@pytest.mark.parametrize("channels", [1, 3])
def test_forward_shapes_and_range(apply_at: str | int, channels: int) -> None:
    net = AttentionBranchNet(BACKBONE, channels, 3, apply_at=apply_at)
    x = torch.randn(2, channels, 48, 64)
    with torch.no_grad():
        out = net(x)
    m = out.extras["attention"]
    assert out.logits.shape == (2, 3)
    assert out.extras["attention_logits"].shape == (2, 3)
    assert m.shape == (2, 1, 48, 64)  # at input resolution
    assert float(m.min()) >= 0 and float(m.max()) <= 1
    assert out.features.ndim == 4 and out.features.shape[0] == 2


def test_input_attention_is_residual() -> None:
    """(1 + M) ⊙ x: M = 0 leaves the input unchanged, M = 1 doubles it; resized to features."""
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(apply_attention(x, torch.zeros(2, 1, 8, 8)), x)
    assert torch.allclose(apply_attention(x, torch.ones(2, 1, 16, 16)), 2 * x)


def test_attention_modulates_perception_input() -> None:
    """With apply_at=input, the perception branch sees exactly (1 + M) ⊙ x."""
    net = AttentionBranchNet(BACKBONE, 1, 3, apply_at="input").eval()
    x = torch.randn(2, 1, 32, 32)
    out = net(x)
    m = out.extras["attention"]
    y = (1 + m) * x
    for stage in net.backbone.stages:
        y = stage(y)
    assert torch.allclose(net.head(y.mean(dim=(-2, -1))), out.logits, atol=1e-6)


def test_bad_apply_at() -> None:
    with pytest.raises(UserError, match="apply_at"):
        parse_apply_at("middle")
    with pytest.raises(UserError, match="stages"):
        AttentionBranchNet(BACKBONE, 1, 3, apply_at=9)


def test_loss_has_both_branches_and_gradients_reach_attention() -> None:
    module = _module(attention_weight=0.5)
    batch = _batch()
    out = module.net(batch["image"])
    loss, logs = module.loss(out, batch)
    assert torch.allclose(loss, logs["ce_perception"] + 0.5 * logs["ce_attention"])
    loss.backward()
    grads = [p.grad for p in module.net.attention_branch.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_explanations_attention_and_gradcam() -> None:
    batch = _batch(s=64)
    module = _module()
    out, maps, members = module.explain_batch(batch)
    assert members is None
    assert maps.shape == (4, 64, 64)
    assert torch.allclose(maps, attention_maps(out))  # default: M(x) itself
    cam_module = _module(explanation="gradcam")
    cam_module.load_state_dict(module.state_dict())
    _, cams, _ = cam_module.explain_batch(batch)
    assert cams.shape == (4, 64, 64)
    assert not torch.allclose(cams, maps)
    assert float(cams.min()) >= 0 and float(cams.max()) <= 1 + 1e-6
    with pytest.raises(UserError, match="explanation"):
        _module(explanation="saliency")


def test_config_builds_the_module(compose) -> None:  # type: ignore[no-untyped-def]
    from mimic_runner.training.builders import DataShape, build_module

    cfg = compose("model=attention_branch", "model.explanation=gradcam", "model.apply_at=1")
    module = build_module(cfg, DataShape(maps=("gaze", "confounder")))
    assert isinstance(module, AttentionBranchModule)
    assert module.explanation == "gradcam" and module.net.apply_stage == 1


@pytest.mark.slow
def test_mimic_run_attention_branch(tmp_path: Path) -> None:
    """`mimic-run model=attention_branch` trains and reports like every other model."""
    from feedback_runs import train_run

    run = train_run(tmp_path, ["model=attention_branch", "trainer=smoke",
                               "data.synth.params.n=240", "data.image_size=64"])
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "attention_branch"
    for key in ("test/acc", "test/acc_attention_branch", "test/kld", "test/nss",
                "test/confounder_share"):
        assert key in metrics
    with h5py.File(run / "explanations.h5") as f:
        maps = f["maps"][()]
        assert maps.shape[1:] == (64, 64)
        assert maps.min() >= 0 and maps.max() <= 1
