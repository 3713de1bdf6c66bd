"""Gaze guidance: the term, its gradient, its warm-up, and weight 0 changing nothing."""

from __future__ import annotations

import pytest
import torch
from cli_helpers import module_for_loss

from mimic_runner.errors import UserError
from mimic_runner.explain.guidance import gaze_guidance, guidance_target, pool_to_grid
from mimic_runner.training.modules.base import GuidanceSettings


def _gaze(n: int = 4, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, size, size, generator=g) ** 4


@pytest.mark.parametrize("distance", ["kl", "mse", "cosine"])
def test_term_is_zero_when_the_map_is_the_pooled_gaze(distance: str) -> None:
    gaze = _gaze()
    target = guidance_target(gaze, (8, 8), distance)
    assert float(gaze_guidance(target, gaze, distance)) == pytest.approx(0.0, abs=1e-6)
    members = target.expand(3, *target.shape)
    assert float(gaze_guidance(members, gaze, distance)) == pytest.approx(0.0, abs=1e-6)
    other = torch.rand_like(target)
    assert float(gaze_guidance(other, gaze, distance)) > 1e-3


def test_kl_is_scale_free_and_images_without_gaze_are_left_out() -> None:
    gaze = _gaze()
    pooled = pool_to_grid(gaze, (8, 8))
    assert float(gaze_guidance(5 * pooled, gaze, "kl")) == pytest.approx(0.0, abs=1e-6)
    gaze[1] = 0
    cams = torch.rand(4, 8, 8)
    full = gaze_guidance(cams, gaze)
    cams2 = cams.clone()
    cams2[1] = torch.rand(8, 8)  # the image without gaze does not count
    assert float(gaze_guidance(cams2, gaze)) == pytest.approx(float(full))
    empty = torch.zeros_like(gaze)
    c = torch.rand(4, 8, 8, requires_grad=True)
    zero = gaze_guidance(c, empty)
    zero.backward()
    assert float(zero.detach()) == 0.0 and c.grad is not None


_module = module_for_loss


def _batch(n: int = 4, size: int = 32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    gaze = _gaze(n, size)
    return {"image": torch.randn(n, 1, size, size, generator=g),
            "label": torch.tensor([0, 1, 2, 0])[:n], "gaze": gaze, "fixations": gaze > 0.5}


@pytest.mark.parametrize("model", ["gaze_guided_ensemble", "expl_gaze_ensemble"])
def test_guidance_gradient_reaches_every_member(compose, model: str) -> None:  # type: ignore[no-untyped-def]
    extra = ("model.lambda_consistency=0",) if model.startswith("expl") else ()
    module = _module(compose, f"model={model}", "model.ensemble_size=3",
                     "model.gaze_guidance.warmup_epochs=0", "model.gaze_guidance.weight=1",
                     *extra)
    batch = _batch()
    out = module(batch["image"])
    ce, _ = module.loss(out, batch)
    ce_grads = torch.autograd.grad(ce, list(module.net.parameters()), retain_graph=True,
                                   allow_unused=True)
    loss, logs = module.training_loss(out, batch)
    assert float(logs["guidance"]) > 0
    torch.testing.assert_close(loss.detach(), ce.detach() + logs["guidance"])
    grads = torch.autograd.grad(loss, list(module.net.parameters()), allow_unused=True)
    # The guidance adds a gradient to every member's backbone, not only to the head.
    for n, backbone in enumerate(module.net.backbones):
        names = {id(p) for p in backbone.parameters()}
        diff = sum(float((g - c).abs().sum()) for p, g, c in
                   zip(module.net.parameters(), grads, ce_grads)
                   if id(p) in names and g is not None and c is not None)
        assert diff > 0, f"member {n} gets no guidance gradient"


def test_single_model_guidance_and_warmup(compose) -> None:  # type: ignore[no-untyped-def]
    module = _module(compose, "model=gaze_guided", "model.gaze_guidance.warmup_epochs=2",
                     "model.gaze_guidance.weight=3")
    batch = _batch()
    for epoch, active in ((0, False), (1, False), (2, True)):
        module._trainer.current_epoch = epoch
        out = module(batch["image"])
        loss, logs = module.training_loss(out, batch)
        assert ("guidance" in logs) is active
        ce, _ = module.loss(out, batch)
        expected = ce + (3 * logs["guidance"] if active else 0)
        torch.testing.assert_close(loss.detach(), expected.detach())


@pytest.mark.parametrize("model", ["baseline", "normal_ensemble", "expl_ensemble"])
def test_weight_zero_reproduces_the_unguided_model_exactly(compose, model: str) -> None:  # type: ignore[no-untyped-def]
    batch = _batch()
    results = []
    for extra in ((), ("model.gaze_guidance.weight=0", "model.gaze_guidance.distance=mse")):
        warm = ("model.warmup_epochs=0",) if model == "expl_ensemble" else ()
        size = ("model.ensemble_size=2",) if "ensemble" in model else ()
        module = _module(compose, f"model={model}", *size, *warm, *extra)
        out = module(batch["image"])
        loss, logs = module.training_loss(out, batch)
        assert "guidance" not in logs
        grads = torch.autograd.grad(loss, list(module.net.parameters()), allow_unused=True)
        results.append((loss.detach(), [g for g in grads if g is not None]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_guided_expl_ensemble_shares_one_set_of_member_maps(compose, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    module = _module(compose, "model=expl_gaze_ensemble", "model.ensemble_size=2",
                     "model.warmup_epochs=0", "model.gaze_guidance.warmup_epochs=0")
    calls = []
    original = module.member_training_maps
    monkeypatch.setattr(module, "member_training_maps",
                        lambda out, t, d=False: calls.append(1) or original(out, t, d))
    batch = _batch()
    _, logs = module.training_loss(module(batch["image"]), batch)
    assert "guidance" in logs and "consistency" in logs and len(calls) == 1


@pytest.mark.parametrize("bad", [{"weight": -1}, {"weight": float("nan")}, {"distance": "l1"},
                                 {"target": "pred"}, {"warmup_epochs": float("inf")},
                                 {"strength": 1}])
def test_bad_settings_are_one_line(bad: dict) -> None:
    with pytest.raises(UserError, match=r"model\.gaze_guidance"):
        GuidanceSettings.from_config({"weight": 1.0, **bad})
