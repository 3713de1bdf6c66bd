"""The models' training losses, called as Lightning calls them (``module.loss(out, batch)``):
the consistency weight λ scales its term, the warm-up gates it, the U-Net's γ weights its two
terms, and the ensembles' cross-entropy is the sum of the members' own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from cli_helpers import module_for_loss

_module = module_for_loss


def _batch(size: int = 32, n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    gaze = torch.rand(n, size, size, generator=g)
    return {"image": torch.randn(n, 1, size, size, generator=g),
            "label": torch.tensor([0, 1, 2, 0])[:n], "gaze": gaze,
            "fixations": gaze > 0.9}


def _loss(module, batch):  # type: ignore[no-untyped-def]
    out = module(batch["image"])
    return module.loss(out, batch)


def test_ensemble_cross_entropy_is_the_sum_of_the_members(compose) -> None:  # type: ignore[no-untyped-def]
    module = _module(compose, "model=normal_ensemble", "model.ensemble_size=3")
    batch = _batch()
    out = module(batch["image"])
    loss, logs = module.loss(out, batch)
    by_hand = sum(F.cross_entropy(out.member_logits[i], batch["label"]) for i in range(3))
    torch.testing.assert_close(loss, by_hand)
    assert "consistency" not in logs


@pytest.mark.parametrize("consistency", ["mean", "pairwise"])
def test_lambda_scales_the_consistency_term(compose, consistency: str) -> None:  # type: ignore[no-untyped-def]
    batch = _batch()
    parts = {}
    for lam in (1.0, 7.0):
        module = _module(compose, "model=expl_ensemble", "model.ensemble_size=3",
                         f"model.consistency={consistency}", "model.warmup_epochs=0",
                         f"model.lambda_consistency={lam}")
        loss, logs = _loss(module, batch)
        assert float(logs["consistency"]) > 0
        torch.testing.assert_close(loss.detach(), logs["ce"] + lam * logs["consistency"])
        parts[lam] = (float(logs["ce"]), float(logs["consistency"]), float(loss.detach()))
    # Same seed, same members: the same CE and term, the loss apart by 6 terms.
    assert parts[1.0][:2] == pytest.approx(parts[7.0][:2])
    assert parts[7.0][2] - parts[1.0][2] == pytest.approx(6 * parts[1.0][1], rel=1e-5)


def test_warmup_gates_the_term(compose) -> None:  # type: ignore[no-untyped-def]
    module = _module(compose, "model=expl_ensemble", "model.ensemble_size=2",
                     "model.warmup_epochs=3", "model.lambda_consistency=5")
    batch = _batch()
    for epoch, active in ((0, False), (2, False), (3, True), (9, True)):
        module._trainer.current_epoch = epoch
        loss, logs = _loss(module, batch)
        assert ("consistency" in logs) is active, epoch
        expected = logs["ce"] + (5 * logs["consistency"] if active else 0)
        torch.testing.assert_close(loss.detach(), expected)


def test_consistency_gradient_reaches_every_member_through_the_loss(compose) -> None:  # type: ignore[no-untyped-def]
    module = _module(compose, "model=expl_ensemble", "model.ensemble_size=2",
                     "model.warmup_epochs=0", "model.lambda_consistency=1")
    batch = _batch()
    out = module(batch["image"])
    # The term alone (loss minus CE), differentiated: every member's first conv gets a gradient.
    loss, _ = module.loss(out, batch)
    ce = sum(F.cross_entropy(out.member_logits[i], batch["label"]) for i in range(2))
    (loss - ce).backward()
    grads = [p.grad for name, p in module.named_parameters() if ".0.0.weight" in name]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("gaze_loss", ["bce", "kl"])
def test_unet_gamma_weights_its_two_terms(compose, gaze_loss: str) -> None:  # type: ignore[no-untyped-def]
    batch = _batch()
    seen = {}
    for gamma in (0.0, 0.41731, 1.0):
        module = _module(compose, "model=improved_unet", f"model.gamma={gamma}",
                         f"model.gaze_loss={gaze_loss}")
        loss, logs = _loss(module, batch)
        torch.testing.assert_close(loss.detach(),
                                   gamma * logs["ce"] + (1 - gamma) * logs["gaze_loss"])
        seen[gamma] = (float(logs["ce"]), float(logs["gaze_loss"]), float(loss.detach()))
    assert seen[1.0][2] == pytest.approx(seen[1.0][0])  # γ = 1: classification only
    assert seen[0.0][2] == pytest.approx(seen[0.0][1])  # γ = 0: the gaze term only
    assert seen[0.0][1] > 0 and seen[1.0][0] > 0
