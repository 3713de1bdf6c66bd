"""GradientSHAP as a pure function, and the authors' recipe (model=expl_ensemble_authors)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from mimic_runner.explain.attribution import attribution_maps, gradient_shap
from mimic_runner.training.builders import DataShape, build_module


def test_linear_model_attribution_is_exact() -> None:
    # f(x) = w·x: the gradient is w everywhere, so every draw gives (x - b)·w exactly.
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3, bias=True))
    x, t = torch.randn(5, 2, 4, 4), torch.tensor([0, 1, 2, 0, 1])
    attr = gradient_shap(lin, x, t, baselines=0.5, n_samples=7)
    w = lin[1].weight[t].reshape(5, 2, 4, 4)
    torch.testing.assert_close(attr, (x - 0.5) * w)
    # Completeness for a linear model: the attributions sum to f(x) - f(b).
    fx = lin(x).gather(1, t[:, None])[:, 0]
    fb = lin(torch.full_like(x, 0.5)).gather(1, t[:, None])[:, 0]
    torch.testing.assert_close(attr.flatten(1).sum(1), fx - fb)


def test_attributions_are_differentiable_in_the_parameters() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3))
    x = torch.randn(3, 1, 8, 8)
    maps = attribution_maps(gradient_shap(net, x, torch.tensor([0, 1, 2]), create_graph=True))
    assert maps.shape == (3, 8, 8)
    assert float(maps.detach().min()) >= 0 and float(maps.detach().max()) <= 1
    maps.square().mean().backward()
    assert net[0].weight.grad is not None and float(net[0].weight.grad.abs().sum()) > 0
    # Without create_graph nothing reaches the parameters (the published code's situation).
    plain = gradient_shap(net, x, torch.tensor([0, 1, 2]))
    assert not plain.requires_grad


def test_attribution_maps_min_max_and_constant() -> None:
    a = torch.zeros(2, 1, 3, 3)
    a[0, 0, 1, 1] = -4.0
    m = attribution_maps(a)
    assert float(m[0].max()) == 1.0 and float(m[0].min()) == 0.0
    assert torch.equal(m[1], torch.zeros(3, 3))  # constant -> 0, not NaN


def test_authors_preset_trains_members_through_the_discriminator(compose) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    cfg = compose("model=expl_ensemble_authors", "model.ensemble_size=2", "model.shap_samples=2")
    module = build_module(cfg, DataShape(maps=("gaze", "fixations")))
    assert (module.consistency, module.train_explanation, module.consistency_every) == (
        "adversarial", "gradient_shap", 2)
    module._trainer = SimpleNamespace(max_epochs=4, current_epoch=0)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    out = module(x)
    after_forward = [m.running_mean.clone() for m in norms]
    loss, logs = module.loss(out, {"image": x, "label": y})
    assert "consistency" in logs and "disc_acc" in logs
    # The attribution passes leave the running statistics as the data's forward left them.
    assert all(torch.equal(a, b) for a, b in zip(after_forward,
                                                  [m.running_mean for m in norms]))
    assert not all(torch.equal(a, b) for a, b in zip(before, after_forward))
    loss.backward()
    first = [p.grad for n, p in module.named_parameters() if n.endswith("stages.0.0.weight")]
    assert len(first) == 2 and all(g is not None and float(g.abs().sum()) > 0 for g in first)
    module._trainer.current_epoch = 1  # alternate epochs: no term
    _, logs = module.loss(module(x), {"image": x, "label": y})
    assert "consistency" not in logs
