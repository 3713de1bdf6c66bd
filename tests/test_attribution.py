"""GradientSHAP as a pure function, and the authors' recipe (model=expl_ensemble_authors)."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mimic_runner.training.modules.ensemble as ensemble_module
from mimic_runner.explain.attribution import attribution_maps, gradient_shap
from mimic_runner.explain.consistency import adversarial_consistency
from mimic_runner.explain.double_backward import batch_norm_train, conv2d, fast_double_backward
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


def _second_order(fn, inputs: tuple[torch.Tensor, ...], seed: int = 0):  # type: ignore[no-untyped-def]
    """fn(*inputs), its first derivatives along a random output direction, and the second
    derivatives of a random functional of those first derivatives (float64)."""
    g = torch.Generator().manual_seed(seed)
    out = fn(*inputs)
    direction = torch.randn(out.shape, generator=g, dtype=out.dtype)
    firsts = torch.autograd.grad(out, inputs, direction, create_graph=True)
    probe = sum((f * torch.randn(f.shape, generator=g, dtype=f.dtype)).sum() for f in firsts)
    seconds = torch.autograd.grad(probe, inputs, allow_unused=True)
    return [out, *firsts, *seconds]


@pytest.mark.parametrize("affine", [True, False])
def test_batch_norm_second_derivatives_match_pytorch(affine: bool) -> None:
    torch.manual_seed(2)
    x = torch.randn(6, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    params = (torch.randn(3, dtype=torch.float64, requires_grad=True),
              torch.randn(3, dtype=torch.float64, requires_grad=True)) if affine else ()
    ours = _second_order(lambda x, *wb: batch_norm_train(x, *wb), (x, *params))
    ref = _second_order(lambda x, *wb: F.batch_norm(x, None, None, *wb, training=True),
                        (x, *params))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # Every second derivative, including those through the first backward's gamma/beta grads.
    small = (x[:4, :, :3, :3].detach().clone().requires_grad_(True), *params)
    assert torch.autograd.gradgradcheck(lambda x, *wb: batch_norm_train(x, *wb), small,
                                        fast_mode=True)


@pytest.mark.parametrize(("stride", "padding", "groups", "bias"),
                         [(2, 1, 1, False), (1, 1, 1, True), (1, 0, 2, True)])
def test_conv2d_second_derivatives_match_pytorch(stride: int, padding: int, groups: int,
                                                 bias: bool) -> None:
    torch.manual_seed(3)
    x = torch.randn(3, 4, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4 // groups, 3, 3, dtype=torch.float64, requires_grad=True)
    params = (w, torch.randn(6, dtype=torch.float64, requires_grad=True)) if bias else (w,)
    ours = _second_order(lambda x, *p: conv2d(x, *p, stride=stride, padding=padding,
                                              groups=groups), (x, *params))
    ref = _second_order(lambda x, *p: F.conv2d(x, *p, stride=stride, padding=padding,
                                               groups=groups), (x, *params))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fast_double_backward_keeps_running_statistics_and_eval_mode() -> None:
    torch.manual_seed(4)
    bn = nn.BatchNorm2d(3)
    x = torch.randn(5, 3, 4, 4)
    ref = nn.BatchNorm2d(3)
    with fast_double_backward():
        y = bn(x.requires_grad_(True))
    assert "BatchNormTrain" in type(y.grad_fn).__name__  # the mode took it
    torch.testing.assert_close(y, ref(x))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    bn.eval(), ref.eval()
    with fast_double_backward():
        torch.testing.assert_close(bn(x), ref(x))


def test_authors_term_is_unchanged_by_the_fast_second_order(compose, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The authors' term (GradientSHAP maps of every member, the discriminator's L_D) and
    every gradient of the training loss are those of PyTorch's own double backward."""
    cfg = compose("model=expl_ensemble_authors", "model.ensemble_size=2", "model.shap_samples=3")
    torch.manual_seed(0)
    module = build_module(cfg, DataShape(maps=("gaze", "fixations"))).double()
    module._trainer = SimpleNamespace(max_epochs=2, current_epoch=0)
    x, y = torch.randn(4, 1, 32, 32, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    state = {k: v.clone() for k, v in module.state_dict().items()}

    def run(fast: bool) -> list[torch.Tensor]:
        module.load_state_dict(state)
        module.zero_grad(set_to_none=True)
        monkeypatch.setattr(ensemble_module, "gradient_shap",
                            partial(gradient_shap, fast_second_order=fast))
        torch.manual_seed(1)
        maps = module.member_attribution_maps(x, y)
        term, _ = adversarial_consistency(maps, module.discriminator)
        torch.manual_seed(1)
        loss, _ = module.loss(module(x), {"image": x, "label": y})
        loss.backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p)
                 for p in module.parameters()]
        return [maps.detach(), term.detach(), loss.detach(), *grads]

    fast, plain = run(True), run(False)
    assert float(fast[1]) > 0 and any(float(g.abs().sum()) > 0 for g in fast[3:])
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
