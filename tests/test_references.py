"""Reference maps, the zero-pixel diagnostics and the averaging curve (issue: Tables that can
answer the paper's question)."""

from __future__ import annotations

import math

import pytest
import torch

from mimic_runner.metrics.evaluation import RunEvaluation
from mimic_runner.metrics.references import (
    cyclic_subset_means,
    grid_like_cam,
    mean_gaze_map,
    own_gaze_grid,
    uniform_maps,
)
from mimic_runner.metrics.saliency import MATLAB_EPS, gaze_on_zero, kld, kld_floor, nss


def _smooth_gaze(b: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    maps = []
    for _ in range(b):
        cy, cx = (torch.rand(2, generator=g) * (size - 8) + 4).tolist()
        maps.append(torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0**2)))
    return torch.stack(maps).float()


def test_gaze_on_zero_is_one_when_the_map_is_zero_wherever_the_gaze_is() -> None:
    gaze = torch.zeros(2, 8, 8)
    gaze[:, 2:4, 2:4] = 1.0
    expl = torch.zeros(2, 8, 8)
    expl[0, 5:, 5:] = 1.0  # mass only where nobody looked
    expl[1] = 0.5          # positive everywhere
    torch.testing.assert_close(gaze_on_zero(expl, gaze), torch.tensor([1.0, 0.0]))
    half = expl[1].clone()
    half[2, 2:4] = 0.0     # zero under half of the gaze mass
    assert float(gaze_on_zero(half, gaze[1])) == pytest.approx(0.5)
    assert math.isnan(float(gaze_on_zero(expl[0], torch.zeros(8, 8))))


def test_kld_floor_bounds_the_zero_pixel_cost() -> None:
    gaze = _smooth_gaze(4)
    expl = gaze.clone()
    expl[:, :16] = 0.0  # a Grad-CAM-like hole under part of the gaze
    raw, floored = kld(expl, gaze), kld_floor(expl, gaze)
    assert bool((floored < raw).all())
    # Where the explanation has no zero pixel the floor changes little (1 % mixture).
    full = kld_floor(gaze + 0.01, gaze) - kld(gaze + 0.01, gaze)
    assert float(full.abs().max()) < 0.05
    # An all-zero explanation becomes the uniform map, not MATLAB's eps map.
    torch.testing.assert_close(kld_floor(torch.zeros_like(gaze), gaze),
                               kld(torch.ones_like(gaze), gaze))
    assert float(kld(torch.zeros_like(gaze[0]), gaze[0])) > -math.log(MATLAB_EPS) / 2


def test_own_gaze_beats_uniform_and_mean_gaze_on_smooth_gaze() -> None:
    gaze = _smooth_gaze(8)
    fix = gaze > 0.8
    oracle = own_gaze_grid(gaze, (8, 8))
    assert oracle.shape == gaze.shape and float(oracle.min()) >= 0 and float(oracle.max()) <= 1
    uniform = uniform_maps(gaze)
    mean = mean_gaze_map(gaze).expand_as(gaze)
    assert float(kld(oracle, gaze).mean()) < float(kld(mean, gaze).mean()) < float(
        kld(uniform, gaze).mean())
    assert float(nss(oracle, fix).mean()) > float(nss(uniform, fix).mean()) == 0.0


def test_mean_gaze_normalises_each_map_first_and_skips_empty_ones() -> None:
    a = torch.zeros(3, 2, 2)
    a[0, 0, 0] = 10.0  # weight 10, but one map
    a[1, 1, 1] = 1.0
    m = mean_gaze_map(a)  # the third map is empty: left out
    torch.testing.assert_close(m, torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
    with pytest.raises(ValueError):
        mean_gaze_map(torch.zeros(2, 3, 3))


def test_own_gaze_grid_is_not_an_upper_bound() -> None:
    # A grid map built from the fixations themselves beats the pooled gaze on NSS: the
    # reference once called "gaze oracle" is a reference, not a bound.
    gaze = _smooth_gaze(8)
    fix = gaze > 0.9
    from_fixations = grid_like_cam(fix.float(), (8, 8))
    assert float(nss(from_fixations, fix).mean()) > float(nss(own_gaze_grid(gaze, (8, 8)),
                                                               fix).mean())


def test_mean_gaze_grid_is_the_pooled_mean_gaze_postprocessed_like_a_cam() -> None:
    gaze = _smooth_gaze(6)
    mean = mean_gaze_map(gaze)
    ref = grid_like_cam(mean.expand_as(gaze), (4, 4))
    assert ref.shape == gaze.shape and float(ref.min()) >= 0 and float(ref.max()) <= 1
    assert torch.unique(ref[0, 8:16, 8:16]).numel() > 4  # bilinear, not blocky
    torch.testing.assert_close(ref[0], ref[5])  # one map for every image


def test_cyclic_subset_means() -> None:
    members = torch.rand(4, 2, 5, 5)
    ones = cyclic_subset_means(members, 1)
    torch.testing.assert_close(ones, members)
    twos = cyclic_subset_means(members, 2)
    torch.testing.assert_close(twos[3], (members[3] + members[0]) / 2)
    torch.testing.assert_close(cyclic_subset_means(members, 4)[2], members.mean(0))
    with pytest.raises(ValueError):
        cyclic_subset_means(members, 5)


def test_run_evaluation_keys_and_the_averaging_curve_ends_at_test_kld() -> None:
    torch.manual_seed(0)
    gaze = _smooth_gaze(6)
    batch = {"gaze": gaze, "fixations": gaze > 0.8, "label": torch.tensor([0, 1, 2, 0, 1, 2])}
    members = torch.rand(3, 6, 32, 32)
    maps = members.mean(0)
    preds = torch.tensor([0, 1, 0, 0, 2, 2])
    ev = RunEvaluation(maps=("gaze", "fixations"), class_names=("Normal", "CHF", "pneu monia"),
                       ensemble_size=3)
    ev.set_mean_gaze(mean_gaze_map(gaze))
    ev.update(batch, maps, preds, label_maps=members[0].mean(0, keepdim=True).expand_as(maps),
              members=members, grid=(8, 8))
    out = ev.compute("test")
    assert out["test/kld_at_k"][-1] == out["test/kld"]
    assert out["test/nss_at_k"][-1] == out["test/nss"]
    assert len(out["test/kld_at_k"]) == 3
    # k = 1 is the mean over the members of each member's own score, not member 0 alone.
    singles = [float(kld(members[n], gaze).mean()) for n in range(3)]
    assert out["test/kld_at_k"][0] == pytest.approx(sum(singles) / 3, rel=1e-5)
    assert out["test/no_fixation_images"] == 0.0
    for key in ("ref/uniform/kld", "ref/mean_gaze/nss", "ref/own_gaze_grid/cc",
                "ref/mean_gaze_grid/kld", "ref/mean_gaze_grid/nss",
                "test_label/kld", "test_correct/nss", "test_class/Normal/kld",
                "test_class/pneu_monia/nss", "test/gaze_on_zero", "test/kld_floor"):
        assert key in out, key
    # The correct subset: rows 0, 1, 3, 5 (pred == label).
    ok = preds == batch["label"]
    assert out["test_correct/kld"] == pytest.approx(float(kld(maps[ok], gaze[ok]).mean()),
                                                    rel=1e-5)
    assert out["ref/uniform/nss"] == 0.0
    assert out["ref/uniform/kld"] == pytest.approx(float(kld(torch.ones_like(gaze),
                                                             gaze).mean()), rel=1e-5)
    assert "ref/uniform/kld" not in ev.compute("val")
