"""Grad-CAM as a pure function vs pytorch-grad-cam, the GAP+linear closed form, and autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mimic_runner.explain.gradcam import Size, grad_cam, postprocess_cam

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

TOL = 1e-4  # per pixel, vs pytorch-grad-cam (float32 + OpenCV resize)


# The test oracle: Grad-CAM of a GAP + linear head in closed form.

def gap_linear_grad_cam(
    features: Tensor,
    weight: Tensor,
    targets: Tensor | None = None,
    bias: Tensor | None = None,
    size: Size | None = None,
    normalize: bool = True,
) -> Tensor:
    """Closed-form Grad-CAM for a global-average-pooling + linear head .

    For ``logits = mean_{h,w}(features) @ weight.T + bias`` the gradient of logit ``y`` w.r.t.
    ``features[c, i, j]`` is ``weight[y, c] / (h·w)`` at every pixel, so the Grad-CAM weights are
    ``weight[y] / (h·w)`` (CAM of Zhou et al. up to the positive factor 1/(h·w)).

    Args:
        features: (*, C, h, w). weight: (K, C). bias: (K,) or None (only used for the default
        targets). targets: (*,), default argmax of the head's logits. size, normalize: as
        :func:`grad_cam`.

    Returns:
        (*, H, W) maps, detached from any graph.
    """
    features = features.detach()
    weight = weight.detach().to(features.dtype)
    if features.dim() < 3 or weight.dim() != 2 or weight.shape[1] != features.shape[-3]:
        raise ValueError(
            f"expected features (*, C, h, w) and weight (K, C), got {tuple(features.shape)} "
            f"and {tuple(weight.shape)}"
        )
    h, w = features.shape[-2:]
    logits = features.mean(dim=(-2, -1)) @ weight.T
    if bias is not None:
        logits = logits + bias.detach().to(features.dtype)
    if targets is None:
        targets = logits.argmax(-1)
    cam_weights = weight[targets] / (h * w)  # (*, C)
    cam = torch.relu((cam_weights[..., None, None] * features).sum(dim=-3))
    return postprocess_cam(cam, size=size, normalize=normalize)


class TinyNet(nn.Module):
    """Conv backbone (``features``) and a non-linear head, so the gradients vary in space."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 6, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Conv2d(6, 5, 1),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(5, k),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x)
        return self.head(f), f


class GapLinear(nn.Module):
    def __init__(self, c: int = 4, k: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(c, k)

    def forward_with_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x)
        return self.fc(f.mean(dim=(-2, -1))), f


def _reference(model: nn.Module, layer: nn.Module, x: Tensor, targets: list[int] | None):
    with GradCAM(model=model, target_layers=[layer]) as cam:
        tg = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
        return cam(input_tensor=x, targets=tg)


@pytest.fixture
def tiny() -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet().eval()  # pytorch-grad-cam puts the model in eval mode too
    with torch.no_grad():  # non-trivial BatchNorm statistics
        bn = model.features[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("targets", [None, [2, 0, 1]])
def test_matches_pytorch_grad_cam_tiny(tiny: TinyNet, targets: list[int] | None) -> None:
    torch.manual_seed(1)
    x = torch.randn(3, 3, 20, 28)  # non-square, features 10x14 upsampled x2
    ref = _reference(tiny, tiny.features, x, targets)
    logits, feats = tiny.forward_with_features(x)
    tg = None if targets is None else torch.tensor(targets)
    ours = grad_cam(logits, feats, targets=tg, size=x.shape[-2:])
    assert ours.shape == (3, 20, 28) and not ours.requires_grad
    assert np.abs(ours.numpy() - ref).max() < TOL


def test_matches_pytorch_grad_cam_non_integer_scale(tiny: TinyNet) -> None:
    torch.manual_seed(2)
    x = torch.randn(2, 3, 27, 19)  # features 14x10 -> 27x19
    ref = _reference(tiny, tiny.features, x, None)
    logits, feats = tiny.forward_with_features(x)
    ours = grad_cam(logits, feats, size=(27, 19))
    assert np.abs(ours.numpy() - ref).max() < TOL


@pytest.mark.parametrize("targets", [None, [1, 1]])
def test_matches_pytorch_grad_cam_resnet18(targets: list[int] | None) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    ref = _reference(m, m.layer4, x, targets)
    f = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
    logits = m.fc(torch.flatten(m.avgpool(f), 1))
    tg = None if targets is None else torch.tensor(targets)
    ours = grad_cam(logits, f, targets=tg, size=64)
    assert ours.shape == (2, 64, 64)
    assert np.abs(ours.numpy() - ref).max() < TOL


def test_closed_form_gap_linear() -> None:
    torch.manual_seed(3)
    model = GapLinear().double()
    x = torch.randn(4, 3, 6, 5, dtype=torch.float64)
    logits, feats = model.forward_with_features(x)
    targets = torch.tensor([0, 1, 2, 1])
    for normalize in (True, False):
        ours = grad_cam(logits, feats, targets=targets, size=(12, 10), normalize=normalize)
        oracle = gap_linear_grad_cam(
            feats, model.fc.weight, targets, size=(12, 10), normalize=normalize
        )
        torch.testing.assert_close(ours, oracle, rtol=0, atol=1e-12)
    # The raw map written out: ReLU(Σ_c W[y, c] / (h·w) · A_c), at the feature size.
    raw = grad_cam(logits, feats, targets=targets, normalize=False)
    w = model.fc.weight[targets] / (6 * 5)
    expected = torch.relu((w[:, :, None, None] * feats).sum(1)).detach()
    torch.testing.assert_close(raw, expected, rtol=0, atol=1e-12)
    # Default targets: argmax of the logits, in both.
    torch.testing.assert_close(
        grad_cam(logits, feats),
        gap_linear_grad_cam(feats, model.fc.weight, bias=model.fc.bias),
        rtol=0,
        atol=1e-12,
    )


def test_normalized_range_and_default_size(tiny: TinyNet) -> None:
    x = torch.randn(2, 3, 16, 16)
    logits, feats = tiny.forward_with_features(x)
    cam = grad_cam(logits, feats)
    assert cam.shape == (2, 8, 8)
    flat = cam.flatten(1)
    assert torch.all(flat.amin(1) == 0)
    assert torch.all((flat.amax(1) > 1 - 1e-5) | (flat.amax(1) == 0))


def test_create_graph_gives_gradients_on_backbone(tiny: TinyNet) -> None:
    torch.manual_seed(4)
    x = torch.randn(2, 3, 16, 16)
    logits, feats = tiny.forward_with_features(x)
    cam = grad_cam(logits, feats, size=16, create_graph=True)
    assert cam.requires_grad
    detached = grad_cam(logits, feats, size=16)
    torch.testing.assert_close(cam.detach(), detached)
    loss = ((cam - torch.rand_like(cam)) ** 2).mean()
    loss.backward()
    for conv in (tiny.features[0], tiny.features[3]):
        g = conv.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_no_graph_left_and_caller_can_still_backward(tiny: TinyNet) -> None:
    x = torch.randn(2, 3, 16, 16)
    logits, feats = tiny.forward_with_features(x)
    cam = grad_cam(logits, feats, size=16)
    assert not cam.requires_grad and cam.grad_fn is None
    assert all(p.grad is None for p in tiny.parameters())  # nothing accumulated
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()  # graph retained
    assert tiny.features[0].weight.grad is not None


def test_all_zero_map_is_zero_not_nan() -> None:
    torch.manual_seed(5)
    model = GapLinear().double()
    with torch.no_grad():
        model.fc.weight.copy_(-model.fc.weight.abs() - 0.1)  # features >= 0 -> cam <= 0
    x = torch.randn(3, 3, 5, 5, dtype=torch.float64)
    logits, feats = model.forward_with_features(x)
    for normalize in (True, False):
        cam = grad_cam(logits, feats, size=9, normalize=normalize, create_graph=True)
        assert torch.equal(cam, torch.zeros_like(cam))
    cam.sum().backward()
    assert torch.isfinite(model.features[0].weight.grad).all()


def test_leading_dims_equal_per_member_calls() -> None:
    torch.manual_seed(6)
    members = [TinyNet().eval() for _ in range(3)]
    x = torch.randn(2, 3, 16, 12)
    feats = torch.stack([m.features(x) for m in members])  # (N, B, C, h, w)
    logits = torch.stack([m.head(feats[i]) for i, m in enumerate(members)])  # (N, B, K)
    targets = torch.tensor([[0, 1], [2, 2], [1, 0]])
    for tg in (None, targets):
        stacked = grad_cam(logits, feats, targets=tg, size=(16, 12))
        assert stacked.shape == (3, 2, 16, 12)
        for i, m in enumerate(members):
            lo, f = m.forward_with_features(x)
            single = grad_cam(lo, f, targets=None if tg is None else tg[i], size=(16, 12))
            torch.testing.assert_close(stacked[i], single, rtol=0, atol=1e-6)


def test_errors(tiny: TinyNet) -> None:
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        logits, feats = tiny.forward_with_features(x)
    with pytest.raises(RuntimeError, match="does not require grad"):
        grad_cam(logits, feats)
    logits, feats = tiny.forward_with_features(x)
    with pytest.raises(ValueError, match="leading dims"):
        grad_cam(logits[:1], feats)
    with pytest.raises(ValueError, match="targets must have shape"):
        grad_cam(logits, feats, targets=torch.tensor([0, 1, 2]))
    unrelated = feats.detach().clone().requires_grad_()
    with pytest.raises(ValueError, match="do not depend on features"):
        grad_cam(logits, unrelated)
