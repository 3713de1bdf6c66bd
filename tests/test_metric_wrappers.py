"""torchmetrics wrappers: dataset mean of the per-image scores, skip counting, reset, merging."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from mimic_runner.metrics import saliency as F
from mimic_runner.metrics.torchmetrics_wrappers import (
    ConfounderShare,
    SaliencyAUCJudd,
    SaliencyCC,
    SaliencyKLD,
    SaliencyNSS,
    SaliencySIM,
)


def _batches(seed: int = 0) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Two batches of (saliency, gaze, fixations) of different sizes, 8x9 maps."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in (3, 5):
        sal = torch.rand(b, 8, 9, generator=g, dtype=torch.float64)
        gaze = torch.rand(b, 8, 9, generator=g, dtype=torch.float64) ** 3
        fix = torch.rand(b, 8, 9, generator=g) < 0.2
        fix[:, 0, 0] = True  # at least one fixation everywhere
        out.append((sal, gaze, fix))
    return out


CASES: list[tuple[Callable[[], object], Callable[[Tensor, Tensor], Tensor], str]] = [
    (SaliencyKLD, F.kld, "gaze"),
    (SaliencyCC, F.cc, "gaze"),
    (SaliencySIM, F.sim, "gaze"),
    (SaliencyNSS, F.nss, "fix"),
    (SaliencyAUCJudd, F.auc_judd, "fix"),
    (lambda: SaliencyNSS(source="gaze"), F.nss_from_gaze, "gaze"),
    (
        lambda: SaliencyNSS(source="gaze", variant="quantile", q=0.8),
        lambda s, g: F.nss_from_gaze(s, g, variant="quantile", q=0.8),
        "gaze",
    ),
    (ConfounderShare, F.confounder_share, "fix"),
]


@pytest.mark.parametrize(("make", "fn", "target"), CASES)
def test_mean_over_updates_equals_pure_function(make, fn, target: str) -> None:
    metric = make()
    scores = []
    for sal, gaze, fix in _batches():
        tgt = gaze if target == "gaze" else fix
        metric.update(sal, tgt)
        scores.append(fn(sal, tgt))
    expected = torch.cat(scores).mean()
    got = metric.compute()
    assert got.shape == () and got.dtype == torch.float64
    assert abs(got.item() - expected.item()) < 1e-12
    assert metric.last_counts == {"scored": 8, "skipped": 0, "degenerate": 0}


def test_skipped_images_are_counted_not_averaged() -> None:
    (sal, gaze, fix), _ = _batches(1)
    fix_holes, gaze_holes = fix.clone(), gaze.clone()
    fix_holes[1] = False  # no fixation
    gaze_holes[2] = 0.0  # all-zero gaze
    kept = torch.tensor([True, True, False])

    m = SaliencyNSS()
    m.update(sal, fix_holes)
    assert abs(m.compute().item() - F.nss(sal[[0, 2]], fix[[0, 2]]).mean().item()) < 1e-12
    assert m.last_counts == {"scored": 2, "skipped": 1, "degenerate": 0}

    for metric, fn in ((SaliencyKLD(), F.kld), (SaliencyCC(), F.cc), (SaliencySIM(), F.sim)):
        metric.update(sal, gaze_holes)
        expected = fn(sal[kept], gaze[kept]).mean().item()
        assert abs(metric.compute().item() - expected) < 1e-12
        assert int(metric.num_skipped) == 1 and int(metric.num_scored) == 2

    auc = SaliencyAUCJudd()
    all_fixated = fix_holes.clone()
    all_fixated[0] = True
    auc.update(sal, all_fixated)  # row 0: every pixel, row 1: none -> both skipped
    assert abs(auc.compute().item() - F.auc_judd(sal[2], fix[2]).item()) < 1e-12
    assert auc.last_counts["skipped"] == 2


def test_degenerate_saliency_is_scored_and_counted() -> None:
    (sal, _, fix), _ = _batches(2)
    sal = sal.clone()
    sal[0] = 0.0  # e.g. an all-zero Grad-CAM
    m = SaliencyAUCJudd()
    m.update(sal, fix)
    expected = torch.cat([torch.tensor([0.5], dtype=torch.float64), F.auc_judd(sal[1:], fix[1:])])
    assert abs(m.compute().item() - expected.mean().item()) < 1e-12
    assert m.last_counts == {"scored": 3, "skipped": 0, "degenerate": 1}


def test_confounder_share_skips_zero_maps_and_empty_masks() -> None:
    sal = torch.tensor(
        [[[1.0, 3.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]]
    )
    mask = torch.tensor([[[False, True], [False, False]], [[True, False], [False, False]]])
    mask = torch.cat([mask, torch.zeros(1, 2, 2, dtype=torch.bool)])
    m = ConfounderShare()
    m.update(sal, mask)  # image 0: 3/4; image 1: zero map; image 2: no confounder
    assert m.compute().item() == 0.75
    assert m.last_counts == {"scored": 1, "skipped": 2, "degenerate": 0}
    keep_empty = ConfounderShare(skip_empty_masks=False)
    keep_empty.update(sal, mask)
    assert keep_empty.compute().item() == pytest.approx(0.375)
    assert keep_empty.higher_is_better is False


def test_all_skipped_returns_nan_with_warning() -> None:
    m = SaliencyNSS()
    m.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.warns(UserWarning, match="no image could be scored"):
        value = m.compute()
    assert math.isnan(value.item())
    assert m.last_counts == {"scored": 0, "skipped": 2, "degenerate": 0}


def test_reset() -> None:
    (sal, gaze, _), (sal2, gaze2, _) = _batches(3)
    m = SaliencyKLD()
    m.update(sal, gaze)
    m.compute()
    m.reset()
    assert m.last_counts is None
    assert int(m.num_scored) == 0 and int(m.num_skipped) == 0 and float(m.score_sum) == 0.0
    m.update(sal2, gaze2)
    assert abs(m.compute().item() - F.kld(sal2, gaze2).mean().item()) < 1e-12


def test_merge_state_is_the_ddp_sum() -> None:
    # merge_state applies the dist_reduce_fx ("sum") as a DDP all-reduce would.
    (sal, gaze, _), (sal2, gaze2, _) = _batches(4)
    gaze2 = gaze2.clone()
    gaze2[0] = 0.0
    rank0, rank1 = SaliencyCC(), SaliencyCC()
    rank0.update(sal, gaze)
    rank1.update(sal2, gaze2)
    rank0.merge_state(rank1)
    expected = torch.cat([F.cc(sal, gaze), F.cc(sal2[1:], gaze2[1:])]).mean()
    assert abs(rank0.compute().item() - expected.item()) < 1e-12
    assert rank0.last_counts == {"scored": 7, "skipped": 1, "degenerate": 0}


def test_nss_variant_attribute_and_validation() -> None:
    assert SaliencyNSS().nss_variant == "fixations"
    assert SaliencyNSS(source="gaze").nss_variant == "gaze-weighted"
    assert SaliencyNSS(source="gaze", variant="quantile", q=0.95).nss_variant == (
        "gaze-quantile@0.95"
    )
    assert SaliencyNSS(source="gaze", variant="positive").nss_variant == "gaze-positive"
    with pytest.raises(ValueError, match="source"):
        SaliencyNSS(source="heatmap")
    with pytest.raises(ValueError, match="unknown NSS variant"):
        SaliencyNSS(source="gaze", variant="mean")


def test_single_map_update_and_shape_errors() -> None:
    sal, gaze = torch.rand(6, 7, dtype=torch.float64), torch.rand(6, 7, dtype=torch.float64)
    m = SaliencySIM()
    m.update(sal, gaze)
    assert abs(m.compute().item() - F.sim(sal, gaze).item()) < 1e-12
    with pytest.raises(ValueError, match=r"\(2, 6, 7\) and \(2, 7, 6\)"):
        m.update(torch.rand(2, 6, 7), torch.rand(2, 7, 6))
