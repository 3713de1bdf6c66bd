"""Saliency metrics vs an independent float64 transcription of the MIT benchmark's MATLAB code.

The ``ref_*`` functions below follow cvzoya/saliency ``code_forMetrics`` (KLdiv.m, NSS.m, CC.m,
similarity.m, AUC_Judd.m with jitter = 0) line by line, with MATLAB semantics: ``std`` with
N−1, ``sort(..., 'descend')``, ``trapz``, ``eps`` = 2^-52. They loop over pixels/thresholds the
way the MATLAB code does, sharing no code with the vectorised implementation. Hand-worked 2x2
cases anchor both on the definitions.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from mimic_runner.metrics.saliency import (
    MATLAB_EPS,
    auc_judd,
    cc,
    confounder_share,
    kld,
    nss,
    nss_from_gaze,
    nss_variant_name,
    sim,
)

TOL = 1e-9
EPS = np.finfo(np.float64).eps


# --- references (MATLAB transcriptions, well-posed inputs only) -------------------------------


def ref_kld(sal: np.ndarray, fix: np.ndarray) -> float:
    map1, map2 = sal.astype(np.float64), fix.astype(np.float64)
    if np.any(map1):
        map1 = map1 / map1.sum()
    if np.any(map2):
        map2 = map2 / map2.sum()
    return float(np.sum(map2 * np.log(EPS + map2 / (map1 + EPS))))


def ref_nss(sal: np.ndarray, fix: np.ndarray) -> float:
    m = sal.astype(np.float64)
    m = (m - m.mean()) / m.std(ddof=1)
    return float(np.mean(m[fix.astype(bool)]))


def _corr2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(np.sum(a * b) / math.sqrt(np.sum(a * a) * np.sum(b * b)))


def ref_cc(m1: np.ndarray, m2: np.ndarray) -> float:
    m1 = (m1 - m1.mean()) / m1.std(ddof=1)
    m2 = (m2 - m2.mean()) / m2.std(ddof=1)
    return _corr2(m2, m1)


def ref_sim(m1: np.ndarray, m2: np.ndarray) -> float:
    m1, m2 = m1.astype(np.float64), m2.astype(np.float64)
    if np.any(m1):
        m1 = (m1 - m1.min()) / (m1.max() - m1.min())
        m1 = m1 / m1.sum()
    if np.any(m2):
        m2 = (m2 - m2.min()) / (m2.max() - m2.min())
        m2 = m2 / m2.sum()
    return float(np.sum(np.minimum(m1, m2)))


def _trapz(x: list[float], y: list[float]) -> float:
    return sum((x[k + 1] - x[k]) * (y[k + 1] + y[k]) / 2 for k in range(len(x) - 1))


def ref_auc_judd(sal: np.ndarray, fix: np.ndarray) -> float:
    s = sal.astype(np.float64)
    s = (s - s.min()) / (s.max() - s.min())
    s_vec, f_vec = s.ravel(order="F"), fix.ravel(order="F")  # MATLAB's (:) is column-major
    sth = s_vec[f_vec > 0]
    n_fix, n_pix = len(sth), len(s_vec)
    allthreshes = -np.sort(-sth)  # sort(..., 'descend')
    tp, fp = [0.0] * (n_fix + 2), [0.0] * (n_fix + 2)
    tp[-1], fp[-1] = 1.0, 1.0
    for i in range(1, n_fix + 1):
        thresh = allthreshes[i - 1]
        aboveth = int(np.sum(s_vec >= thresh))
        tp[i] = i / n_fix
        fp[i] = (aboveth - i) / (n_pix - n_fix)
    return _trapz(fp, tp)


# --- random inputs ---------------------------------------------------------------------------


def _maps(kind: str, rng: np.random.Generator, shape=(4, 17, 23)) -> np.ndarray:
    if kind == "uniform":
        return rng.random(shape)
    if kind == "ties":  # few distinct values: many ties, and exact zeros
        return np.round(rng.random(shape) * 4) / 4
    if kind == "heavy":  # spans many orders of magnitude
        return np.exp(3 * rng.standard_normal(shape))
    raise AssertionError(kind)


def _fixations(kind: str, rng: np.random.Generator, shape=(4, 17, 23)) -> np.ndarray:
    if kind == "sparse":  # a handful of fixations per image
        fix = np.zeros(shape, dtype=bool)
        for b in range(shape[0]):
            idx = rng.choice(shape[1] * shape[2], size=rng.integers(1, 6), replace=False)
            fix[b].flat[idx] = True
        return fix
    return rng.random(shape) < 0.3  # dense


KINDS = ["uniform", "ties", "heavy"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fix_kind", ["sparse", "dense"])
def test_fixation_metrics_match_reference(kind: str, fix_kind: str) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{kind}/{fix_kind}".encode()))
    sal, fix = _maps(kind, rng), _fixations(fix_kind, rng)
    st, ft = torch.from_numpy(sal), torch.from_numpy(fix)
    got_nss, got_auc = nss(st, ft), auc_judd(st, ft)
    assert got_nss.dtype == got_auc.dtype == torch.float64 and got_nss.shape == (4,)
    for b in range(sal.shape[0]):
        assert abs(got_nss[b].item() - ref_nss(sal[b], fix[b])) < TOL
        assert abs(got_auc[b].item() - ref_auc_judd(sal[b], fix[b])) < TOL
        # Single-map form gives the same numbers as 0-d tensors.
        assert nss(st[b], ft[b]).shape == ()
        assert abs(auc_judd(st[b], ft[b]).item() - got_auc[b].item()) < 1e-15


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("gaze_kind", KINDS)
def test_map_metrics_match_reference(kind: str, gaze_kind: str) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{kind}/{gaze_kind}/maps".encode()))
    sal, gaze = _maps(kind, rng), _maps(gaze_kind, rng)
    st, gt = torch.from_numpy(sal), torch.from_numpy(gaze)
    got = {"kld": kld(st, gt), "cc": cc(st, gt), "sim": sim(st, gt)}
    refs = {"kld": ref_kld, "cc": ref_cc, "sim": ref_sim}
    for name, values in got.items():
        assert values.dtype == torch.float64
        for b in range(sal.shape[0]):
            assert abs(values[b].item() - refs[name](sal[b], gaze[b])) < TOL, name


def test_kld_sparse_saliency_with_exact_zeros() -> None:
    rng = np.random.default_rng(7)
    sal = rng.random((3, 9, 11)) * (rng.random((3, 9, 11)) < 0.2)
    gaze = rng.random((3, 9, 11))
    got = kld(torch.from_numpy(sal), torch.from_numpy(gaze))
    for b in range(3):
        assert abs(got[b].item() - ref_kld(sal[b], gaze[b])) < TOL


# --- hand-worked 2x2 cases -------------------------------------------------------------------

A = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)


def test_hand_kld() -> None:
    uniform = torch.ones(2, 2, dtype=torch.float64)
    one_hot = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    # gaze all on one pixel, saliency uniform: log(1 / 0.25)
    assert abs(kld(uniform, one_hot).item() - math.log(4)) < 1e-12
    # s = (.75, .25, 0, 0), g = (.5, .5, 0, 0): .5 log(.5/.75) + .5 log(.5/.25) = .5 log(4/3)
    s = torch.tensor([[3.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    g = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    assert abs(kld(s, g).item() - 0.5 * math.log(4 / 3)) < 1e-12
    assert kld(g, g).item() == pytest.approx(0.0, abs=1e-12)
    # scale-invariant in both maps
    assert abs(kld(7 * s, 0.1 * g).item() - kld(s, g).item()) < 1e-12


def test_hand_nss() -> None:
    # mean 2.5, N-1 std sqrt(5/3): z(4) = 1.5 / sqrt(5/3)
    fix4 = torch.tensor([[False, False], [False, True]])
    assert abs(nss(A, fix4).item() - 1.5 / math.sqrt(5 / 3)) < 1e-12
    fix14 = torch.tensor([[True, False], [False, True]])
    assert abs(nss(A, fix14).item()) < 1e-12
    # numeric fixation map: non-zero = fixated
    assert nss(A, fix4.double() * 3).item() == nss(A, fix4).item()


def test_hand_cc() -> None:
    assert abs(cc(A, 2 * A + 1).item() - 1) < 1e-12
    assert abs(cc(A, A.flip(0).flip(1)).item() + 1) < 1e-12
    assert abs(cc(A, torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)).item()) < 1e-12
    # a0 = (-1.5, -.5, .5, 1.5), b0 = (-.25, -.25, -.25, .75): 1.5 / sqrt(5 * .75) = sqrt(.6)
    b = torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert abs(cc(A, b).item() - math.sqrt(0.6)) < 1e-12
    assert cc(A, b).item() == cc(b, A).item()


def test_hand_sim() -> None:
    # A -> (0, 1/3, 2/3, 1) / 2 = (0, 1/6, 1/3, 1/2); flipped -> (1/2, 1/3, 1/6, 0); Σmin = 1/3
    assert abs(sim(A, A.flip(0).flip(1)).item() - 1 / 3) < 1e-12
    assert abs(sim(A, 5 * A - 2).item() - 1) < 1e-12  # min-max makes it affine-invariant


def test_hand_auc_judd() -> None:
    s = torch.tensor([[0.1, 0.4], [0.35, 0.8]], dtype=torch.float64)
    fix = torch.tensor([[False, False], [True, True]])
    # thresholds .8 (1 above: tp .5, fp 0), .35 (3 above: tp 1, fp 1/2);
    # trapz over (0,0) (0,.5) (.5,1) (1,1) = 0 + .375 + .5
    assert abs(auc_judd(s, fix).item() - 0.875) < 1e-12
    # tie between a fixated and a non-fixated pixel: threshold 1 has 2 above: (1/3, 1)
    t = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    fix0 = torch.tensor([[True, False], [False, False]])
    assert abs(auc_judd(t, fix0).item() - 5 / 6) < 1e-12
    # perfect ranking
    assert abs(auc_judd(A, torch.tensor([[False, False], [False, True]])).item() - 1) < 1e-12


def test_hand_confounder_share_and_nss_from_gaze() -> None:
    mask = torch.tensor([[False, False], [True, True]])
    assert abs(confounder_share(A, mask).item() - 0.7) < 1e-12
    assert confounder_share(A, torch.zeros(2, 2, dtype=torch.bool)).item() == 0.0
    # weighted: Σ z·g / Σ g with z = (a - 2.5) / sqrt(5/3), g = (0, 0, 1, 3): 1.25 / sqrt(5/3)
    g = torch.tensor([[0.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    assert abs(nss_from_gaze(A, g).item() - 1.25 / math.sqrt(5 / 3)) < 1e-12


# --- NSS from gaze ---------------------------------------------------------------------------


def test_nss_from_gaze_variants() -> None:
    rng = np.random.default_rng(11)
    sal, gaze = rng.random((3, 12, 10)), rng.random((3, 12, 10)) ** 4
    st, gt = torch.from_numpy(sal), torch.from_numpy(gaze)
    # weighted == NSS on a binary map
    fix = _fixations("sparse", rng, (3, 12, 10))
    torch.testing.assert_close(
        nss_from_gaze(st, torch.from_numpy(fix).double()), nss(st, torch.from_numpy(fix))
    )
    # weighted, against a direct float64 computation
    z = (sal - sal.mean((1, 2), keepdims=True)) / sal.std((1, 2), ddof=1, keepdims=True)
    expected = (z * gaze).sum((1, 2)) / gaze.sum((1, 2))
    assert np.abs(nss_from_gaze(st, gt).numpy() - expected).max() < TOL
    # quantile: NSS at the top 10% of the gaze map
    got = nss_from_gaze(st, gt, variant="quantile", q=0.9)
    for b in range(3):
        thr = np.quantile(gaze[b], 0.9)
        assert abs(got[b].item() - ref_nss(sal[b], (gaze[b] >= thr) & (gaze[b] > 0))) < TOL
    # positive
    sparse_gaze = gaze * (gaze > np.quantile(gaze, 0.8))
    got = nss_from_gaze(st, torch.from_numpy(sparse_gaze), variant="positive")
    for b in range(3):
        assert abs(got[b].item() - ref_nss(sal[b], sparse_gaze[b] > 0)) < TOL
    assert nss_variant_name("quantile", 0.95) == "quantile@0.95"
    assert nss_variant_name() == "weighted"
    with pytest.raises(ValueError, match="unknown NSS gaze variant"):
        nss_from_gaze(st, gt, variant="median")
    with pytest.raises(ValueError, match="q must be"):
        nss_from_gaze(st, gt, variant="quantile", q=1.5)


def test_quantile_variant_with_mostly_zero_gaze() -> None:
    # 95% zeros: the 0.9-quantile is 0, but zero-gaze pixels are never fixations.
    gaze = torch.zeros(20, 20, dtype=torch.float64)
    gaze[:2, :10] = torch.arange(1, 21, dtype=torch.float64).reshape(2, 10)
    sal = torch.rand(20, 20, dtype=torch.float64)
    got = nss_from_gaze(sal, gaze, variant="quantile", q=0.9)
    assert abs(got.item() - nss(sal, gaze > 0).item()) < 1e-12


# --- degenerate inputs -----------------------------------------------------------------------


def test_constant_saliency() -> None:
    rng = np.random.default_rng(3)
    gaze = torch.from_numpy(rng.random((2, 6, 7)))
    fix = torch.from_numpy(rng.random((2, 6, 7)) < 0.3)
    for c in (0.0, 0.37):
        s = torch.full((2, 6, 7), c, dtype=torch.float64)
        assert torch.equal(nss(s, fix), torch.zeros(2, dtype=torch.float64))
        assert torch.equal(nss_from_gaze(s, gaze), torch.zeros(2, dtype=torch.float64))
        assert torch.equal(cc(s, gaze), torch.zeros(2, dtype=torch.float64))
        assert torch.equal(cc(gaze, s), torch.zeros(2, dtype=torch.float64))
        assert torch.equal(sim(s, gaze), torch.zeros(2, dtype=torch.float64))
        assert torch.equal(auc_judd(s, fix), torch.full((2,), 0.5, dtype=torch.float64))
    # all-zero saliency in KLD: the MATLAB value (finite, large)
    zero = torch.zeros(2, 6, 7, dtype=torch.float64)
    got = kld(zero, gaze)
    assert torch.isfinite(got).all() and got.min() > 30
    for b in range(2):
        assert abs(got[b].item() - ref_kld(zero[b].numpy(), gaze[b].numpy())) < TOL
    # a uniform non-zero saliency map is the uniform distribution for KLD
    assert abs(kld(zero + 2, gaze)[0].item() - ref_kld(zero[0].numpy() + 2, gaze[0].numpy())) < TOL


def test_undefined_targets_give_nan() -> None:
    s = torch.rand(2, 5, 5, dtype=torch.float64)
    nofix = torch.zeros(2, 5, 5, dtype=torch.bool)
    assert torch.isnan(nss(s, nofix)).all()
    assert torch.isnan(auc_judd(s, nofix)).all()
    assert torch.isnan(auc_judd(s, ~nofix)).all()  # every pixel fixated: no negatives
    zero = torch.zeros(2, 5, 5, dtype=torch.float64)
    assert torch.isnan(kld(s, zero)).all()
    for variant in ("weighted", "quantile", "positive"):
        assert torch.isnan(nss_from_gaze(s, zero, variant=variant)).all()
    assert torch.isnan(confounder_share(zero, ~nofix)).all()
    # mixed batch: only the undefined row is NaN
    fix = nofix.clone()
    fix[0, 2, 3] = True
    got = nss(s, fix)
    assert torch.isfinite(got[0]) and torch.isnan(got[1])


def test_shapes_dtypes_and_errors() -> None:
    s32 = torch.rand(3, 4, 4)
    g32 = torch.rand(3, 4, 4)
    for fn in (kld, cc, sim, nss_from_gaze):
        assert fn(s32, g32).dtype == torch.float32
    assert nss(s32, g32 > 0.5).dtype == torch.float32
    assert auc_judd(s32, g32 > 0.5).dtype == torch.float32
    # float32 results agree with float64 to float32 precision
    s64, g64 = s32.double(), g32.double()
    for fn in (kld, cc, sim):
        torch.testing.assert_close(fn(s32, g32).double(), fn(s64, g64), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(3, 4, 4\) and \(3, 8, 8\)"):
        nss(s32, torch.zeros(3, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(H, W\) or \(B, H, W\)"):
        cc(torch.rand(4), torch.rand(4))
    with pytest.raises(ValueError, match="non-negative"):
        kld(s32 - 0.5, g32)
    assert np.finfo(np.float64).eps == MATLAB_EPS
