"""Global explanations: normalisation, grouped aggregation, empty classes, and a model whose
decision depends only on a known square (its global map must concentrate there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mimic_runner.explain.global_maps import (
    global_explanations,
    grouped_mean_std,
    normalize_maps,
)

# -- a model that only looks at one square ---------------------------------------------------
SIZE = 24
REGION = (slice(4, 10), slice(12, 18))  # rows, cols: 36 of 576 pixels


class SquareModel(nn.Module):
    """Two classes; the logit is the mean intensity in REGION (0.5 = undecided)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, 0, REGION[0], REGION[1]].mean(dim=(-2, -1))
        return torch.stack([-(m - 0.5) * 20, (m - 0.5) * 20], dim=-1)


def square_data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 1, S, S) of noise; the square is bright for class 1, dark for class 0."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    x = torch.rand(n, 1, SIZE, SIZE, generator=g)
    inside = torch.rand(n, 1, 6, 6, generator=g) * 0.2
    x[:, :, REGION[0], REGION[1]] = torch.where(labels.view(-1, 1, 1, 1) == 1, 0.8 + inside,
                                                inside)
    return (x * 255).round().to(torch.uint8), labels


def gradient_saliency(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """|d logit[pred] / d x| per pixel: (N, H, W)."""
    x = (images.float() / 255).requires_grad_()
    logits = model(x)
    logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
    return x.grad.abs().sum(1)


def test_global_map_concentrates_on_the_region_the_model_uses() -> None:
    model = SquareModel()
    images, labels = square_data()
    maps = gradient_saliency(model, images)
    preds = model(images.float() / 255).argmax(-1)
    assert (preds == labels).all()
    for group_by in ("label", "pred"):
        g = global_explanations(maps, labels, preds, normalize="sum", group_by=group_by,
                                class_names=["dark", "bright"])
        region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        region[REGION] = True
        assert g.overall.sum() == pytest.approx(1.0, abs=1e-5)
        assert g.overall[region].sum() > 0.99
        for k in range(2):
            assert g.per_class[k][region].sum() > 0.99
        assert g.counts.tolist() == [20, 20]
        assert g.notes == []


# -- normalisation -----------------------------------------------------------------------------
def test_sum_normalisation_and_zero_maps() -> None:
    maps = torch.rand(3, 5, 7)
    maps[1] = 0
    out = normalize_maps(maps, "sum")
    assert torch.allclose(out.sum(dim=(-2, -1)), torch.ones(3))
    assert torch.allclose(out[1], torch.full((5, 7), 1 / 35))  # no preference -> uniform
    assert torch.allclose(out[0], maps[0] / maps[0].sum())


def test_minmax_normalisation() -> None:
    maps = torch.rand(2, 4, 4) * 5 - 1
    maps[1] = 3.0
    out = normalize_maps(maps, "minmax")
    assert out[0].min() == 0 and out[0].max() == pytest.approx(1.0, abs=1e-6)
    assert (out[1] == 0).all()  # a constant map carries nothing


def test_normalisation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        normalize_maps(-torch.rand(1, 3, 3), "sum")
    with pytest.raises(ValueError, match="NaN"):
        normalize_maps(torch.full((1, 3, 3), float("nan")), "minmax")
    with pytest.raises(ValueError, match="normalize"):
        normalize_maps(torch.rand(1, 3, 3), "zscore")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        normalize_maps(torch.rand(3, 3), "sum")


def test_float16_maps_are_aggregated_in_float32() -> None:
    maps = torch.rand(4, 8, 8).half()
    out = normalize_maps(maps, "sum")
    assert out.dtype == torch.float32


# -- aggregation --------------------------------------------------------------------------------
def test_grouped_mean_std_matches_numpy() -> None:
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(30, 6, 5, generator=g)
    groups = torch.randint(0, 3, (30,), generator=g)
    groups[groups == 2] = 0  # group 2 is empty
    mean, std, counts = grouped_mean_std(maps, groups, 4)
    a, gr = maps.numpy(), groups.numpy()
    for k in range(2):
        sel = a[gr == k]
        np.testing.assert_allclose(mean[k].numpy(), sel.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std[k].numpy(), sel.std(0, ddof=0), rtol=1e-4, atol=1e-6)
        assert int(counts[k]) == len(sel)
    for k in (2, 3):
        assert int(counts[k]) == 0
        assert torch.isnan(mean[k]).all() and torch.isnan(std[k]).all()


def test_std_does_not_cancel_on_sum_normalised_maps() -> None:
    # Values around 1/P with a small spread: E[x²] − E[x]² in float32 would lose it.
    base = torch.full((1, 64, 64), 1 / 4096)
    maps = base + torch.tensor([-1.0, 1.0]).view(2, 1, 1) * 1e-6
    _, std, _ = grouped_mean_std(maps, torch.zeros(2, dtype=torch.long), 1)
    assert torch.allclose(std, torch.full_like(std, 1e-6), rtol=1e-2)


def test_single_image_group_has_zero_std() -> None:
    _, std, counts = grouped_mean_std(torch.rand(1, 3, 3), torch.zeros(1, dtype=torch.long), 1)
    assert int(counts[0]) == 1 and (std == 0).all()


def test_overall_is_the_mean_over_images_and_groups_follow_group_by() -> None:
    maps = torch.rand(10, 4, 4)
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    preds = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    x = normalize_maps(maps, "sum")
    by_label = global_explanations(maps, labels, preds, normalize="sum", group_by="label")
    by_pred = global_explanations(maps, labels, preds, normalize="sum", group_by="pred")
    assert torch.allclose(by_label.overall, x.mean(0), atol=1e-7)
    assert torch.allclose(by_pred.overall, by_label.overall)
    assert torch.allclose(by_label.per_class[0], x[:6].mean(0), atol=1e-7)
    assert torch.allclose(by_pred.per_class[0], x[:2].mean(0), atol=1e-7)
    assert by_label.counts.tolist() == [6, 4] and by_pred.counts.tolist() == [2, 8]
    assert torch.allclose(by_label.overall_std, x.std(0, correction=0), atol=1e-7)


def test_a_class_without_images_is_nan_with_a_note() -> None:
    maps = torch.rand(4, 3, 3)
    labels = torch.tensor([0, 0, 2, 2])
    g = global_explanations(maps, labels, class_names=["a", "b", "c"])
    assert g.counts.tolist() == [2, 0, 2]
    assert torch.isnan(g.per_class[1]).all() and torch.isnan(g.per_class_std[1]).all()
    assert len(g.notes) == 1 and "'b'" in g.notes[0] and "count 0" in g.notes[0]
    assert torch.equal(g.class_map_or_overall(1), g.overall)
    assert torch.equal(g.class_map_or_overall(0), g.per_class[0])


def test_argument_errors() -> None:
    maps, labels = torch.rand(3, 2, 2), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match="predictions"):
        global_explanations(maps, labels, group_by="pred")
    with pytest.raises(ValueError, match="group_by"):
        global_explanations(maps, labels, group_by="batch")
    with pytest.raises(ValueError, match="labels"):
        global_explanations(maps, labels[:2])
    with pytest.raises(ValueError, match="N ≥ 1"):
        global_explanations(torch.rand(0, 2, 2), torch.zeros(0, dtype=torch.long))
