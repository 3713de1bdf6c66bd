"""PEPPR: grid, ranking, masks, the free inverse control, batching, and a model whose decision
depends only on a known square (erasing it first must drop accuracy to chance at once, random
order must not; restoring it first must recover at once)."""

from __future__ import annotations

import pytest
import torch
from test_global_maps import REGION, SIZE, SquareModel, gradient_saliency, square_data
from torch import nn

from mimic_runner.explain.global_maps import global_explanations
from mimic_runner.explain.peppr import (
    METRICS,
    PerturbationResult,
    curve_auc,
    gaussian_blur,
    inverse_ranks,
    is_symmetric,
    mirror_result,
    peppr_curves,
    perturb,
    predict_batched,
    random_patch_ranks,
    random_ranks,
    rank_pixels,
    reading,
    step_counts,
    summarise_peppr,
)


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


# -- grid and ranking --------------------------------------------------------------------------
@pytest.mark.parametrize("p,steps", [(576, 21), (16384, 21), (10, 4), (7, 7), (5, 2), (3, 11)])
def test_step_counts_are_symmetric_and_cover_0_to_all(p: int, steps: int) -> None:
    c = step_counts(p, steps)
    assert len(c) == steps and c[0] == 0 and c[-1] == p
    assert (c[1:] >= c[:-1]).all()
    sym = c + c.flip(0) == p
    if steps % 2 and p % 2:  # half a pixel cannot be erased at the middle step
        assert sym.sum() == steps - 1 and not is_symmetric(c)
    else:
        assert sym.all() and is_symmetric(c)
    exact = torch.arange(steps) * p / (steps - 1)
    assert ((c - exact).abs() <= 0.5 + 1e-9).all()


def test_step_counts_reject_too_few_steps() -> None:
    with pytest.raises(ValueError, match="steps"):
        step_counts(10, 1)


def test_rank_pixels_orders_by_importance() -> None:
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
    ranks = rank_pixels(scores)
    assert ranks.tolist() == [[3, 0, 1, 2]]
    assert rank_pixels(scores, descending=False).tolist() == [[0, 3, 2, 1]]
    assert ranks.dtype == torch.int32


def test_rank_pixels_breaks_ties_randomly_not_in_raster_order() -> None:
    flat = torch.zeros(3, 8, 8)
    ranks = rank_pixels(flat, generator=torch.Generator().manual_seed(3))
    assert ranks.shape == (3, 64)
    for r in ranks:
        assert sorted(r.tolist()) == list(range(64))  # a permutation
    assert not torch.equal(ranks[0], torch.arange(64, dtype=torch.int32))
    again = rank_pixels(flat, generator=torch.Generator().manual_seed(3))
    assert torch.equal(ranks, again)  # seeded
    with pytest.raises(ValueError, match="finite"):
        rank_pixels(torch.full((2, 2), float("nan")))


def test_random_patch_ranks_erase_whole_blocks() -> None:
    r = random_patch_ranks(8, 10, patch=4, n=2, generator=torch.Generator().manual_seed(0))
    assert r.shape == (2, 80)
    for ranks in r:
        assert sorted(ranks.tolist()) == list(range(80))
        grid = ranks.view(8, 10)
        # Blocks (the last column of blocks is 2 px wide): consecutive ranks.
        for rows in (slice(0, 4), slice(4, 8)):
            for cols in (slice(0, 4), slice(4, 8), slice(8, 10)):
                block = grid[rows, cols].flatten().sort().values
                assert torch.equal(block, torch.arange(int(block[0]), int(block[0]) + len(block),
                                                       dtype=block.dtype))
    assert not torch.equal(r[0], r[1])
    pixelwise = random_patch_ranks(4, 4, patch=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(pixelwise, random_ranks(16, 1, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="patch"):
        random_patch_ranks(4, 4, patch=0)


def test_random_and_inverse_ranks() -> None:
    r = random_ranks(20, 3, torch.Generator().manual_seed(0))
    assert r.shape == (3, 20) and all(sorted(x.tolist()) == list(range(20)) for x in r)
    assert torch.equal(inverse_ranks(r) + r, torch.full_like(r, 19))


# -- perturbation --------------------------------------------------------------------------------
def test_perturb_erases_and_restores_the_top_pixels() -> None:
    img = torch.arange(4.0).view(1, 1, 2, 2) / 10
    ranks = torch.tensor([[2, 0, 3, 1]])  # pixel 1 first, then 3, 0, 2
    fill = torch.full((1, 1, 1, 1), 9.0)
    er = perturb(img, fill, ranks, torch.tensor([0, 2, 4]), "erase")
    assert er.shape == (3, 1, 1, 2, 2)
    assert er[0].flatten().tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert er[1].flatten().tolist() == pytest.approx([0.0, 9.0, 0.2, 9.0])
    assert (er[2] == 9).all()
    re = perturb(img, fill, ranks, torch.tensor([0, 2, 4]), "restore")
    assert (re[0] == 9).all()
    assert re[1].flatten().tolist() == pytest.approx([9.0, 0.1, 9.0, 0.3])
    assert re[2].flatten().tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="mode"):
        perturb(img, fill, ranks, torch.tensor([1]), "blur")


def test_perturb_erases_all_channels_of_a_pixel() -> None:
    img = torch.rand(2, 3, 4, 4)
    ranks = random_ranks(16, 2)
    out = perturb(img, torch.zeros(1, 3, 1, 1), ranks, torch.tensor([5]), "erase")[0]
    erased = (out == 0).all(dim=1)
    assert erased.flatten(1).sum(1).tolist() == [5, 5]


def test_gaussian_blur_keeps_constants_and_smooths() -> None:
    flat = torch.full((1, 1, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat)
    spike = torch.zeros(1, 1, 21, 21)
    spike[0, 0, 10, 10] = 1
    b = gaussian_blur(spike, 1.5)
    assert b.sum() == pytest.approx(1.0, abs=1e-5)
    assert b[0, 0, 10, 10] < 0.1 and b[0, 0, 10, 11] > 0.01
    assert torch.equal(gaussian_blur(spike, 0), spike)


def test_curve_auc_is_the_mean_height() -> None:
    k = torch.linspace(0, 1, 21, dtype=torch.float64)
    assert float(curve_auc(k, torch.full((21,), 0.7, dtype=torch.float64))) == pytest.approx(0.7)
    assert float(curve_auc(k, 1 - k)) == pytest.approx(0.5)
    two = curve_auc(k, torch.stack([k, k**2]))
    assert two.tolist() == pytest.approx([0.5, 1 / 3], abs=1e-3)


# -- curves ---------------------------------------------------------------------------------------
class TinyConv(nn.Module):
    """A fixed random conv net: any ranking changes its output somewhat."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_inverse_curves_are_the_main_curves_mirrored() -> None:
    """The free inverse control equals evaluating the reversed ranking explicitly."""
    model = TinyConv().eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    ranks = rank_pixels(torch.rand(8, 8, generator=g))
    counts = step_counts(64, 9)
    fill = torch.full((1, 1, 1, 1), 0.5)
    res = peppr_curves(model, images, labels, {"main": (ranks, None),
                                               "inv": (inverse_ranks(ranks), None)},
                       counts, fill, identity, batch_size=4)
    for mode, other in (("erase", "restore"), ("restore", "erase")):
        mirrored = mirror_result(res["main"][other])
        assert torch.allclose(mirrored.probs, res["inv"][mode].probs, atol=1e-6)


def test_batching_does_not_change_the_curves() -> None:
    model = TinyConv().eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.tensor([0, 1, 2, 0, 1])
    local = rank_pixels(torch.rand(5, 8, 8, generator=g))
    blur = gaussian_blur(images.float() / 255, 1.0)
    rankings = {"local": (local, None), "rnd": (random_ranks(64), None),
                "cls": (rank_pixels(torch.rand(3, 8, 8, generator=g)), labels)}
    counts = step_counts(64, 6)
    small = peppr_curves(model, images, labels, rankings, counts, blur, identity, batch_size=2)
    big = peppr_curves(model, images, labels, rankings, counts, blur, identity, batch_size=1000)
    clean = predict_batched(model, images, identity, 2).softmax(-1)
    given = peppr_curves(model, images, labels, rankings, counts, blur, identity, batch_size=4,
                         clean_probs=clean)
    for name in rankings:
        for mode in ("erase", "restore"):
            assert torch.allclose(small[name][mode].probs, big[name][mode].probs, atol=1e-5)
            assert torch.allclose(given[name][mode].probs, big[name][mode].probs, atol=1e-5)


def test_progress_counts_every_perturbed_image() -> None:
    model = TinyConv().eval()
    images = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8)
    done: dict[str, int] = {}

    def progress(name: str, k: int) -> None:
        done[name] = done.get(name, 0) + k

    peppr_curves(model, images, torch.zeros(7, dtype=torch.long), {"a": (random_ranks(64), None)},
                 step_counts(64, 11), torch.zeros(1, 1, 1, 1), identity, batch_size=3,
                 progress=progress)
    assert done == {"a": 7 * 9 * 2}  # the two shared ends are evaluated once, not per ranking


def test_square_model_erasing_the_global_map_first_drops_to_chance() -> None:
    model = SquareModel()
    images, labels = square_data(n=40)
    maps = gradient_saliency(model, images)
    gm = global_explanations(maps, labels, normalize="sum")
    counts = step_counts(SIZE * SIZE, 21)  # 5 % = 29 px < the square's 36
    rankings = {"global": (rank_pixels(gm.overall), None)}
    seeds = [f"random_{s}" for s in range(3)]
    for s, name in enumerate(seeds):
        rankings[name] = (random_ranks(SIZE * SIZE, 1, torch.Generator().manual_seed(s)), None)
    blocks = [f"blocks_{s}" for s in range(3)]  # random 2x2-pixel blocks: also slow
    for s, name in enumerate(blocks):
        g = torch.Generator().manual_seed(s)
        rankings[name] = (random_patch_ranks(SIZE, SIZE, 2, 1, g), None)
    fill = torch.zeros(1, 1, 1, 1)  # an erased square reads as "dark": class 0
    res = peppr_curves(model, images, labels, rankings, counts, fill, identity, batch_size=64)
    res["inverse"] = {"erase": mirror_result(res["global"]["restore"]),
                      "restore": mirror_result(res["global"]["erase"])}
    er, re = res["global"]["erase"].accuracy, res["global"]["restore"].accuracy
    assert er[0] == 1.0 and er[1] == 0.5 and (er[1:] == 0.5).all()  # chance from the 1st step
    assert re[0] == 0.5 and (re[1:] == 1.0).all()  # restoration recovers at once
    for name in seeds + blocks:
        assert res[name]["erase"].accuracy[1] == 1.0  # 5 % random pixels leave the square
        assert res[name]["restore"].accuracy[1] == 0.5
    for name in seeds:  # scattered pixels: the square's mean hardly moves until late
        assert res[name]["erase"].accuracy[4] > 0.9
    # The inverse (least important first) keeps the square until the very end.
    assert (res["inverse"]["erase"].accuracy[:-1] == 1.0).all()

    k = counts.double() / counts[-1]
    summary = summarise_peppr(k, res, seeds)
    assert summary["verdict"]["global"] == "faithful"
    assert summary["verdict"]["inverse"] == "anti-faithful"
    assert summary["verdicts"]["agreement"]["global"] == "faithful"
    assert set(summary["verdicts"]) == set(METRICS)
    gap = summary["gap_to_random"]["global"]
    assert gap["erase"]["accuracy"] > 0.2 and gap["restore"]["accuracy"] > 0.2
    assert summary["auc"]["global"]["peppr"]["accuracy"] > 0.4
    rnd = summary["random"]["erase"]["accuracy"]
    assert rnd["n"] == 3 and rnd["std"] >= 0
    # Random order: erasing k and restoring 1 − k leave the same kind of image.
    assert abs(summary["random"]["restore"]["accuracy"]["mean"]
               - summary["random"]["erase"]["accuracy"]["mean"]) < 0.1
    line = reading("global", summary, "the global map")
    assert "points lower than random" in line and line.endswith("faithful")
    # Agreement with the clean prediction equals accuracy here (the model is always right).
    assert torch.equal(res["global"]["erase"].curve("agreement"), er)
    assert set(summary["auc"]["global"]["erase"]) == set(METRICS)


def test_summary_without_random_control() -> None:
    model = SquareModel()
    images, labels = square_data(n=8)
    res = peppr_curves(model, images, labels, {"g": (random_ranks(SIZE * SIZE), None)},
                       step_counts(SIZE * SIZE, 5), torch.zeros(1, 1, 1, 1), identity)
    s = summarise_peppr(torch.linspace(0, 1, 5), res, [])
    assert "no random control" in s["verdict"]["g"]
    assert "no random control" in reading("g", s)
    with pytest.raises(ValueError, match="metric"):
        summarise_peppr(torch.linspace(0, 1, 5), res, [], metric="f1")


def test_peppr_curves_argument_checks() -> None:
    model = SquareModel()
    images, labels = square_data(n=4)
    counts = step_counts(SIZE * SIZE, 5)
    fill = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="rank_index"):
        peppr_curves(model, images, labels, {"x": (random_ranks(SIZE * SIZE, 2), None)},
                     counts, fill, identity)
    with pytest.raises(ValueError, match="counts"):
        peppr_curves(model, images, labels, {"x": (random_ranks(SIZE * SIZE), None)},
                     counts[:-1], fill, identity)
    with pytest.raises(ValueError, match="labels"):
        peppr_curves(model, images, labels[:2], {}, counts, fill, identity)


def test_region_constant_used_by_tests_is_small() -> None:
    # The square covers less than one 5 % step, which the checks above rely on.
    assert (REGION[0].stop - REGION[0].start) * (REGION[1].stop - REGION[1].start) > 29
    assert (REGION[0].stop - REGION[0].start) * (REGION[1].stop - REGION[1].start) < 58


def _result(p_true: torch.Tensor) -> PerturbationResult:
    """A result whose probability of the true class (class 0) is ``p_true`` (S, N)."""
    probs = torch.stack([p_true, 1 - p_true], dim=-1)
    n = p_true.shape[1]
    return PerturbationResult(probs=probs, labels=torch.zeros(n, dtype=torch.long),
                              reference=torch.zeros(n, dtype=torch.long))


def test_gap_standard_error_over_images_decides_the_verdict() -> None:
    k = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    n = 200
    base = torch.full((3, n), 0.5)
    rnd = {f"r{s}": {"erase": _result(base), "restore": _result(base)} for s in range(2)}
    # Noisy: per-image differences of ±0.3 with a mean of about 0 -> ≈ random.
    noise = (torch.randint(0, 2, (n,), generator=g) * 2 - 1) * 0.3
    noisy = base.clone()
    noisy[1] = 0.5 + noise
    # Consistent: every image 0.1 lower when erased, 0.1 higher when restored -> faithful.
    low, high = base.clone(), base.clone()
    low[1], high[1] = 0.4, 0.6
    results = {**rnd, "noisy": {"erase": _result(noisy), "restore": _result(2 * base - noisy)},
               "good": {"erase": _result(low), "restore": _result(high)}}
    s = summarise_peppr(k, results, list(rnd), metric="p_true")
    # Per-image AUC difference = 0.5 · (random − ranking) at the middle step (trapezoid weight).
    d = 0.5 * -noise.double()
    assert s["gap_se"]["noisy"]["erase"]["p_true"] == pytest.approx(
        float(d.std(correction=1)) / n**0.5, rel=1e-6)
    assert s["gap_to_random"]["noisy"]["erase"]["p_true"] == pytest.approx(float(d.mean()),
                                                                    abs=1e-6)
    assert s["verdicts"]["p_true"]["noisy"] == "≈ random"
    assert s["verdicts"]["p_true"]["good"] == "faithful"
    assert s["gap_to_random"]["good"]["erase"]["p_true"] == pytest.approx(0.05)
    assert s["gap_se"]["good"]["erase"]["p_true"] == pytest.approx(0.0, abs=1e-9)
    assert s["tolerance"]["good"]["erase"] == pytest.approx(0.01)  # the floor
    assert "5.0 ± 0.0 points lower" in reading("good", s)
