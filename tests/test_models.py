"""Networks and losses of the four models: shapes, ensemble maths, consistency gradients."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from mimic_runner.errors import UserError
from mimic_runner.explain.consistency import (
    MapDiscriminator,
    adversarial_consistency,
    consistency_to_mean,
    map_distance,
    pairwise_consistency,
)
from mimic_runner.explain.gradcam import grad_cam
from mimic_runner.models.backbones import BACKBONES, build_backbone
from mimic_runner.models.classifier import ClassifierNet
from mimic_runner.models.ensemble import EnsembleNet
from mimic_runner.models.unet import UNetNet

small = functools.partial(build_backbone, "small_cnn", channels=(4, 8, 8, 8))


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("channels", [1, 3])
def test_backbone_stages(name: str, channels: int) -> None:
    bb = build_backbone(name, channels)
    stages = bb.forward_stages(torch.zeros(1, channels, 64, 64))
    assert [s.shape[1] for s in stages] == bb.stage_channels
    assert stages[-1].shape[-1] < stages[0].shape[-1]


def test_pretrained_needs_cached_weights(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match="not cached"):
        build_backbone("resnet18", 3, pretrained=True)


def test_unknown_backbone() -> None:
    with pytest.raises(UserError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", 1)


def test_unet_decoder_has_image_size() -> None:
    net = UNetNet(small, in_channels=1, num_classes=3, decoder_channels=(8, 8, 4))
    out = net(torch.randn(2, 1, 48, 40))
    assert out.extras["gaze_logits"].shape == (2, 1, 48, 40)
    assert out.logits.shape == (2, 3)
    assert out.features.shape[-1] < 40  # Grad-CAM at the encoder's last stage


def test_ensemble_output_is_mean_of_member_log_softmax() -> None:
    torch.manual_seed(0)
    net = EnsembleNet(small, in_channels=1, num_classes=3, ensemble_size=4).eval()
    x = torch.randn(5, 1, 32, 32)
    out = net(x)
    assert out.member_logits is not None and out.member_logits.shape == (4, 5, 3)
    assert out.features.shape[:2] == (4, 5)
    members = torch.stack([
        F.log_softmax(h(b(x).mean(dim=(-2, -1))), -1)
        for b, h in zip(net.backbones, net.heads)])
    torch.testing.assert_close(out.logits, members.mean(0))
    # Members are initialised independently.
    w0, w1 = (net.backbones[i].stages[0][0].weight for i in (0, 1))
    assert not torch.equal(w0, w1)


def test_ensemble_explained_layer_before_last() -> None:
    net = EnsembleNet(small, in_channels=1, num_classes=3, ensemble_size=2, explain_layer=1)
    out = net(torch.randn(2, 1, 32, 32))
    maps = grad_cam(out.member_logits, out.features, size=(32, 32))
    assert maps.shape == (2, 2, 32, 32) and torch.isfinite(maps).all()


def _identical_ensemble(n: int) -> EnsembleNet:
    net = EnsembleNet(small, in_channels=1, num_classes=3, ensemble_size=n)
    for i in range(1, n):
        net.backbones[i] = copy.deepcopy(net.backbones[0])
        net.heads[i] = copy.deepcopy(net.heads[0])
    return net


@pytest.mark.parametrize("distance", ["mse", "cosine", "kl"])
@pytest.mark.parametrize("form", ["mean", "pairwise"])
def test_consistency_zero_for_identical_members(distance: str, form: str) -> None:
    torch.manual_seed(0)
    net = _identical_ensemble(3)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    out = net(x)
    maps = grad_cam(out.member_logits, out.features, y.expand(3, 4), create_graph=True)
    fn = consistency_to_mean if form == "mean" else pairwise_consistency
    assert float(fn(maps, distance).detach()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("distance", ["mse", "cosine", "kl"])
@pytest.mark.parametrize("form", ["mean", "pairwise"])
def test_consistency_positive_and_reaches_every_member(distance: str, form: str) -> None:
    torch.manual_seed(1)
    net = EnsembleNet(small, in_channels=1, num_classes=3, ensemble_size=3)
    x, y = torch.randn(4, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    out = net(x)
    maps = grad_cam(out.member_logits, out.features, y.expand(3, 4), create_graph=True)
    fn = consistency_to_mean if form == "mean" else pairwise_consistency
    term = fn(maps, distance)
    assert float(term.detach()) > 1e-6
    term.backward()
    for b in net.backbones:
        first_conv = b.stages[0][0].weight
        assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_adversarial_term_reverses_member_gradients() -> None:
    torch.manual_seed(2)
    net = EnsembleNet(small, in_channels=1, num_classes=3, ensemble_size=3)
    disc = MapDiscriminator(3, hidden=8, pool=4)
    out = net(torch.randn(4, 1, 32, 32))
    maps = grad_cam(out.member_logits, out.features, torch.zeros(3, 4, dtype=torch.long),
                    create_graph=True)
    loss, acc = adversarial_consistency(maps, disc)
    assert 0 <= float(acc) <= 1
    member_params = [p for b in net.backbones for p in b.parameters()]
    g_members = torch.autograd.grad(loss, member_params, retain_graph=True, allow_unused=True)
    assert all(g is not None for g in g_members[:1])
    # Without the reversal the members' gradient would be the opposite.
    flat = maps.reshape(12, *maps.shape[2:])
    who = torch.arange(3).repeat_interleave(4)
    plain = F.cross_entropy(disc(flat), who)
    g_plain = torch.autograd.grad(plain, member_params[0])[0]
    torch.testing.assert_close(g_members[0], -g_plain)


def test_map_distance_kl_is_kl() -> None:
    a, b = torch.rand(2, 5, 5), torch.rand(2, 5, 5)
    p = a.flatten(1) / a.flatten(1).sum(1, keepdim=True)
    q = b.flatten(1) / b.flatten(1).sum(1, keepdim=True)
    expected = (p * (p / q).log()).sum(1)
    torch.testing.assert_close(map_distance(a, b, "kl"), expected, atol=1e-5, rtol=1e-4)


def test_classifier_features_feed_logits() -> None:
    net = ClassifierNet(small, in_channels=3, num_classes=2)
    out = net(torch.randn(2, 3, 32, 32))
    maps = grad_cam(out.logits, out.features, size=(32, 32))
    assert maps.shape == (2, 32, 32)


@pytest.mark.parametrize(("warmup", "max_epochs", "expected"),
                         [(0.4, 10, 4), (0.4, 2, 0), (0.5, 3, 1), (3, 10, 3), (3.0, 2, 3),
                          (0, 10, 0)])
def test_warmup_counts_epochs_or_a_fraction_of_them(warmup: float, max_epochs: int,
                                                     expected: int) -> None:
    from types import SimpleNamespace

    from mimic_runner.bench.steps import build_module

    module = build_module(["model=expl_ensemble", "model.ensemble_size=2",
                           f"model.warmup_epochs={warmup}"])
    module._trainer = SimpleNamespace(max_epochs=max_epochs, current_epoch=0)
    assert module.warmup_length() == expected
    module._trainer.current_epoch = expected
    assert module.consistency_active()
    if expected:
        module._trainer.current_epoch = expected - 1
        assert not module.consistency_active()


def test_negative_warmup_is_a_user_error() -> None:
    from mimic_runner.bench.steps import build_module
    from mimic_runner.errors import UserError

    with pytest.raises(UserError, match="warmup_epochs"):
        build_module(["model=expl_ensemble", "model.warmup_epochs=-1"])
