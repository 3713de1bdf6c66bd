"""Same parameters and seed, same synthetic data: on every BLAS kernel and numpy SIMD level.

Each case runs the generators in a fresh interpreter, because OpenBLAS reads
``OPENBLAS_CORETYPE`` and numpy reads ``NPY_DISABLE_CPU_FEATURES`` once, at load time. Before
the generators avoided BLAS and numpy's SIMD transcendental functions, OpenBLAS's Haswell kernel
(what AVX2 machines select) and its SkylakeX kernel (AVX-512 machines) gave different gaze maps,
and numpy's AVX-512 ``power`` rounded some pixels differently from its AVX2 one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# Every generator and variant whose arithmetic differs: the default with its marker, the clean
# and cue variants (gaze focus, cues), noise, and the blood-smear generator.
_SCRIPT = r"""
import hashlib, json
import numpy as np
from mimic_runner.data import synth_cxr, synth_smear

def digest(data):
    h = hashlib.sha256()
    for key in sorted(data):
        a = data[key]
        if isinstance(a, np.ndarray) and a.dtype != object:
            h.update(key.encode()); h.update(str(a.dtype).encode()); h.update(str(a.shape).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    h.update("\n".join(map(str, data["ids"])).encode())
    return h.hexdigest()

print(json.dumps({
    "synth_cxr": digest(synth_cxr.generate(n=48, size=64, seed=3)),
    "synth_cxr noisy": digest(synth_cxr.generate(n=24, size=48, seed=0, confounder_strength=0.5,
                                                 noise=0.1)),
    "synth_cxr_clean": digest(synth_cxr.generate(n=48, size=64, seed=2, marker=False,
                                                 gaze_finding_focus=0.8)),
    "synth_cxr_cues": digest(synth_cxr.generate(n=36, size=64, seed=5, marker=False, cues=6,
                                                cue_strength=0.5, gaze_finding_focus=0.8)),
    "synth_smear": digest(synth_smear.generate(n=32, size=64, seed=1)),
}))
"""


def _avx512_features() -> str | None:
    """numpy's dispatchable AVX-512 targets on this CPU, comma-separated (None if it has none)."""
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    names = [f for f in __cpu_dispatch__
             if __cpu_features__.get(f) and ("AVX512" in f or f == "X86_V4")]
    return ",".join(names) or None


def _digests(env: dict[str, str]) -> dict[str, str]:
    full = {**os.environ, **env}
    full.pop("OPENBLAS_L2_SIZE", None)  # set together with OPENBLAS_CORETYPE on some hosts
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=full, capture_output=True,
                         text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_generators_are_bit_identical_across_blas_kernels_and_simd_levels():
    variants = {"OpenBLAS Haswell (AVX2)": {"OPENBLAS_CORETYPE": "Haswell"},
                "OpenBLAS SkylakeX (AVX-512)": {"OPENBLAS_CORETYPE": "SkylakeX"}}
    avx512 = _avx512_features()
    if avx512:
        variants["numpy without AVX-512"] = {"OPENBLAS_CORETYPE": "SkylakeX",
                                             "NPY_DISABLE_CPU_FEATURES": avx512}
    results = {name: _digests(env) for name, env in variants.items()}
    first_name, first = next(iter(results.items()))
    for name, digests in results.items():
        differ = [k for k in first if digests[k] != first[k]]
        assert not differ, f"{name} vs {first_name}: {differ} differ"


def test_sum_of_outer_products_is_the_batched_matrix_product():
    from mimic_runner.data._synth_common import sum_of_outer_products
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 5, 7)), rng.random((3, 5, 4))
    got = sum_of_outer_products(a, b)
    assert got.dtype == np.float32 and got.shape == (3, 7, 4)
    np.testing.assert_allclose(got, np.matmul(a.transpose(0, 2, 1), b), rtol=1e-6)


@pytest.mark.parametrize("name", ["exp", "sin", "cos", "log"])
def test_portable_math_matches_numpy(name):
    from mimic_runner.data import _portable_math as pm
    x = np.linspace(0.01 if name == "log" else -50, 50, 20001)
    np.testing.assert_allclose(getattr(pm, name)(x), getattr(np, name)(x), rtol=1e-14,
                               atol=1e-15)
    assert getattr(pm, name)(x.astype(np.float32)).dtype == np.float32


def test_portable_arctan2_power_and_filter_match_numpy_and_scipy():
    from scipy import ndimage

    from mimic_runner.data import _portable_math as pm
    rng = np.random.default_rng(1)
    y, x = rng.normal(size=5000), rng.normal(size=5000)
    np.testing.assert_allclose(pm.arctan2(y, x), np.arctan2(y, x), atol=1e-14)
    for yy, xx in [(0.0, 1.0), (0.0, -1.0), (1.0, 0.0), (-1.0, 0.0), (0.0, 0.0)]:
        assert pm.arctan2(yy, xx) == pytest.approx(np.arctan2(yy, xx), abs=1e-15)
    base, expo = rng.random(5000), rng.uniform(0.3, 3, 5000)
    np.testing.assert_allclose(pm.power(base, expo), np.power(base, expo), rtol=1e-13)
    assert pm.power(0.0, 2.0) == 0.0
    field = rng.normal(size=(2, 30, 40))
    for mode in ("wrap", "reflect", "constant", "nearest", "mirror"):
        np.testing.assert_allclose(pm.gaussian_filter(field, (0, 1.7, 2.2), mode=mode),
                                   ndimage.gaussian_filter(field, (0, 1.7, 2.2), mode=mode),
                                   atol=1e-13)
