"""Batched ensemble execution (wide grouped convs, vmap) against the loop: same numbers.

Compared in float64 on tiny inputs: logits, Grad-CAM maps, gradients of Σ CE + λ·consistency
w.r.t. every parameter (the double backward through Grad-CAM included), and BatchNorm's
running statistics after a train-mode pass. Plus: state_dict compatibility, ``auto``, and
bf16 / channels-last staying within tolerance.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F

from mimic_runner.errors import UserError
from mimic_runner.explain.consistency import consistency_to_mean, pairwise_consistency
from mimic_runner.explain.gradcam import grad_cam
from mimic_runner.models.backbones import build_backbone
from mimic_runner.models.ensemble import AUTO_IMPL, EnsembleNet, vmap_blocker, wide_supported

small = functools.partial(build_backbone, "small_cnn", channels=(4, 8, 8, 8))
resnet = functools.partial(build_backbone, "resnet18")
N, B, K = 3, 4, 3


@pytest.fixture
def float64():  # type: ignore[no-untyped-def]
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _loss_and_maps(net: EnsembleNet, x: torch.Tensor, y: torch.Tensor, form: str = "mean"):  # type: ignore[no-untyped-def]
    """The expl_ensemble training loss (EnsembleModule.loss) with its Grad-CAM maps."""
    out = net(x)
    maps = grad_cam(out.member_logits, out.features, y.expand(N, -1), create_graph=True)
    n, b, k = out.member_logits.shape
    ce = F.cross_entropy(out.member_logits.reshape(n * b, k), y.repeat(n), reduction="sum") / b
    term = consistency_to_mean(maps) if form == "mean" else pairwise_consistency(maps, "kl")
    return out, maps, ce + 0.7 * term


def _run(ref: EnsembleNet, impl: str, x: torch.Tensor, y: torch.Tensor, form: str = "mean"):  # type: ignore[no-untyped-def]
    net = copy.deepcopy(ref)
    net.impl = impl
    out, maps, loss = _loss_and_maps(net, x, y, form)
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return out, maps, grads, net


@pytest.mark.parametrize(("backbone", "layer", "impl", "px"), [
    (small, -1, "wide", 32), (small, -1, "vmap", 32), (small, 1, "wide", 32),
    (small, 1, "vmap", 32),
    # 64 px: resnet18's last map is 2x2 (at 32 px a 1x1 map min-max-normalises to zero).
    pytest.param(resnet, -1, "wide", 64, marks=pytest.mark.slow),
    pytest.param(resnet, 3, "vmap", 64, marks=pytest.mark.slow),
])
@pytest.mark.parametrize("train", [True, False])
def test_batched_equals_loop_float64(float64, backbone, layer, impl, px, train) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    ref = EnsembleNet(backbone, in_channels=1, num_classes=K, ensemble_size=N,
                      explain_layer=layer).train(train)
    if not train:  # non-trivial running statistics for eval mode
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x, y = torch.randn(B, 1, px, px), torch.tensor([0, 1, 2, 0])
    out_a, maps_a, grads_a, net_a = _run(ref, "loop", x, y)
    out_b, maps_b, grads_b, net_b = _run(ref, impl, x, y)
    tol = {"rtol": 1e-10, "atol": 1e-12}
    torch.testing.assert_close(out_b.logits, out_a.logits, **tol)
    torch.testing.assert_close(out_b.member_logits, out_a.member_logits, **tol)
    torch.testing.assert_close(out_b.features, out_a.features, **tol)
    torch.testing.assert_close(maps_b, maps_a, **tol)
    assert maps_a.abs().sum() > 0
    for (name, _), ga, gb in zip(ref.named_parameters(), grads_a, grads_b):
        torch.testing.assert_close(gb, ga, **tol, msg=lambda m, name=name: f"{name}: {m}")
    # BatchNorm running stats (and num_batches_tracked) updated exactly as by the loop.
    for (name, ba), bb, b0 in zip(net_a.named_buffers(), net_b.buffers(), ref.buffers()):
        torch.testing.assert_close(bb, ba, **tol, msg=lambda m, name=name: f"{name}: {m}")
        if train and name.endswith("running_mean"):
            assert not torch.equal(ba, b0)


def test_pairwise_kl_gradients_match(float64) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    ref = EnsembleNet(small, in_channels=1, num_classes=K, ensemble_size=N)
    x, y = torch.randn(B, 1, 24, 24), torch.tensor([2, 1, 0, 1])
    _, _, ga, _ = _run(ref, "loop", x, y, form="pairwise")
    for impl in ("wide", "vmap"):
        _, _, gb, _ = _run(ref, impl, x, y, form="pairwise")
        for a, b in zip(ga, gb):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_wide_is_bitwise_equal_in_float32() -> None:
    torch.manual_seed(2)
    ref = EnsembleNet(small, in_channels=1, num_classes=K, ensemble_size=N)
    x, y = torch.randn(B, 1, 32, 32), torch.tensor([0, 1, 2, 0])
    _, maps_a, ga, _ = _run(ref, "loop", x, y)
    _, maps_b, gb, _ = _run(ref, "wide", x, y)
    torch.testing.assert_close(maps_b, maps_a, rtol=1e-5, atol=1e-6)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_state_dict_is_the_same_whatever_the_impl(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(3)
    loop = EnsembleNet(small, in_channels=1, num_classes=K, ensemble_size=N, impl="loop")
    path = tmp_path / "ckpt.pt"
    torch.save(loop.state_dict(), path)
    x = torch.randn(2, 1, 32, 32)
    for impl in ("wide", "vmap", "batched", "auto"):
        torch.manual_seed(99)  # different initial weights, overwritten by the checkpoint
        other = EnsembleNet(small, in_channels=1, num_classes=K, ensemble_size=N, impl=impl)
        assert other.state_dict().keys() == loop.state_dict().keys()
        other.load_state_dict(torch.load(path, weights_only=True))
        torch.testing.assert_close(other.eval()(x).logits, loop.eval()(x).logits)
        # ... and back: a batched model's checkpoint loads into the loop.
        again = EnsembleNet(small, in_channels=1, num_classes=K, ensemble_size=N, impl="loop")
        again.load_state_dict(other.state_dict())
        torch.testing.assert_close(again.eval()(x).logits, loop(x).logits)


def test_lightning_module_checkpoint_across_impls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A run trained with ensemble_impl=loop resumes/reloads with =batched (and back):
    same state_dict (as ``load_run`` reads it) and the same optimizer parameter list."""
    from mimic_runner.bench.steps import make_step

    a = make_step("expl_ensemble", "small_cnn", ensemble_size=2, impl="loop", batch_size=2,
                  size=32)
    a.step()
    torch.save({"state_dict": a.module.state_dict(), "optimizer": a.optimizer.state_dict()},
               tmp_path / "last.ckpt")
    b = make_step("expl_ensemble", "small_cnn", ensemble_size=2, impl="batched", batch_size=2,
                  size=32, seed=1)
    assert b.module.net.impl == "batched"
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    b.module.load_state_dict(ckpt["state_dict"])
    b.optimizer.load_state_dict(ckpt["optimizer"])  # same parameters, same order
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(b.module.eval()(x).logits, a.module.eval()(x).logits)
    b.module.train()
    assert torch.isfinite(b.step())


def test_impl_resolution() -> None:
    net = EnsembleNet(small, in_channels=1, num_classes=K, ensemble_size=2, impl="auto")
    cpu = torch.device("cpu")
    assert net.resolve_impl(cpu) == AUTO_IMPL["cpu"]
    net.impl = "batched"
    assert net.resolve_impl(cpu) == "wide"
    net.impl = "auto"
    assert net.resolve_impl(torch.device("cuda")) == "wide"  # batched on CUDA: wide for small_cnn
    with pytest.raises(UserError, match="ensemble_impl"):
        EnsembleNet(small, in_channels=1, num_classes=K, ensemble_size=2, impl="fast")


@pytest.mark.slow  # builds DenseNet-121 and EfficientNet-b0 ensembles (~20 s on 2 cores)
def test_backbones_without_wide_support_use_vmap_or_loop() -> None:
    dense = EnsembleNet(functools.partial(build_backbone, "densenet121"), 1, K, ensemble_size=2,
                        impl="batched")
    assert not dense.wide_ok and dense.resolve_impl(torch.device("cpu")) == "vmap"
    eff = EnsembleNet(functools.partial(build_backbone, "efficientnet_b0"), 1, K,
                      ensemble_size=2, impl="batched")
    assert vmap_blocker(eff.backbones[0]) is not None  # stochastic depth, train mode
    assert eff.resolve_impl(torch.device("cpu")) == "loop"
    eff.eval()
    assert eff.resolve_impl(torch.device("cpu")) == "vmap"
    eff.train()
    eff.impl = "wide"
    with pytest.raises(NotImplementedError, match="wide"):
        eff(torch.randn(2, 1, 32, 32))
    assert wide_supported(build_backbone("resnet18", 1).stages)


def test_identical_members_replaced_in_place_are_seen_by_batched() -> None:
    """Tests elsewhere swap members (net.backbones[i] = ...): batched reads them each call."""
    torch.manual_seed(5)
    net = EnsembleNet(small, in_channels=1, num_classes=K, ensemble_size=3, impl="wide").eval()
    for i in (1, 2):
        net.backbones[i] = copy.deepcopy(net.backbones[0])
        net.heads[i] = copy.deepcopy(net.heads[0])
    out = net(torch.randn(2, 1, 32, 32))
    torch.testing.assert_close(out.member_logits[1], out.member_logits[0])


@pytest.mark.parametrize("impl", ["loop", "wide"])
def test_channels_last_and_bf16_within_tolerance(impl: str) -> None:
    """Channels-last changes no result beyond fp32 noise; bf16 autocast stays close."""
    torch.manual_seed(6)
    ref = EnsembleNet(small, in_channels=1, num_classes=K, ensemble_size=N, impl=impl).eval()
    x, y = torch.randn(B, 1, 64, 64), torch.tensor([0, 1, 2, 0])
    out_a, maps_a, loss_a = _loss_and_maps(ref, x, y)
    cl = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    out_b, maps_b, _ = _loss_and_maps(cl, x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(out_b.logits, out_a.logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(maps_b, maps_a, rtol=1e-3, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_c, maps_c, loss_c = _loss_and_maps(copy.deepcopy(ref), x, y)
    # bf16 has 8 bits of mantissa: logits within a few 1e-2, maps in [0, 1] within 0.1.
    torch.testing.assert_close(out_c.logits.float(), out_a.logits, rtol=0.05, atol=0.05)
    assert (maps_c.float() - maps_a).abs().mean() < 0.02
    assert (maps_c.float() - maps_a).abs().max() < 0.15
    la, lc = float(loss_a.detach()), float(loss_c.detach())
    assert abs(lc - la) < 0.05 * abs(la) + 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("impl", ["wide", "vmap"])
def test_batched_equals_loop_on_gpu(impl: str) -> None:
    torch.manual_seed(7)
    ref = EnsembleNet(small, in_channels=1, num_classes=K, ensemble_size=N).cuda().double()
    x, y = torch.randn(B, 1, 32, 32).cuda().double(), torch.tensor([0, 1, 2, 0]).cuda()
    out_a, maps_a, ga, _ = _run(ref, "loop", x, y)
    out_b, maps_b, gb, _ = _run(ref, impl, x, y)
    torch.testing.assert_close(out_b.logits, out_a.logits, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(maps_b, maps_a, rtol=1e-9, atol=1e-11)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bf16_channels_last_on_gpu_within_tolerance() -> None:
    torch.manual_seed(8)
    ref = EnsembleNet(resnet, in_channels=1, num_classes=K, ensemble_size=N,
                      impl="batched").cuda().eval()
    x, y = torch.randn(B, 1, 128, 128).cuda(), torch.tensor([0, 1, 2, 0]).cuda()
    out_a, maps_a, _ = _loss_and_maps(ref, x, y)
    net = copy.deepcopy(ref).to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_b, maps_b, _ = _loss_and_maps(net, x.contiguous(memory_format=torch.channels_last), y)
    torch.testing.assert_close(out_b.logits.float(), out_a.logits, rtol=0.05, atol=0.05)
    assert (maps_b.float() - maps_a).abs().mean() < 0.02
