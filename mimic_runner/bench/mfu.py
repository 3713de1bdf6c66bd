"""Model FLOPs utilisation: FLOPs of one step (``FlopCounterMode``) over time, over the peak.

FLOPs are counted by PyTorch's ``torch.utils.flop_counter.FlopCounterMode`` on the aten ops of a
real step (matmuls and convolutions, forward, backward and the double backward of the Grad-CAM
term; element-wise ops and the optimizer are not counted), so they are "model FLOPs", not
hardware FLOPs. Peaks are the vendors' dense (no sparsity) figures per device; convolutions in
fp32 run on TF32 tensor cores by default (``torch.backends.cudnn.allow_tf32``), so ``32-true``
is compared with the TF32 peak, ``bf16-mixed`` with the BF16 peak.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# Dense peak TFLOP/s by (device-name substring, checked in order): bf16, tf32, fp32 (non-tensor).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),
    ("H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.2}),
    ("H100 NVL", {"bf16": 835.0, "tf32": 417.5, "fp32": 60.0}),
    ("H100", {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5 (e.g. "H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("L40S", {"bf16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    ("L4", {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    ("A10", {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    ("RTX 4090", {"bf16": 165.2, "tf32": 82.6, "fp32": 82.6}),
]


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The dense peak TFLOP/s of ``device_name`` for a Lightning ``precision`` (None: unknown)."""
    kind = "bf16" if precision.startswith("bf16") else "tf32"
    if kind == "tf32" and not torch.backends.cudnn.allow_tf32:
        kind = "fp32"
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return peaks[kind]
    return None


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of the matmul/conv aten ops that ``fn()`` runs (one call)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def utilisation(flops: int, seconds: float, peak: float | None) -> dict[str, float | None]:
    """Achieved TFLOP/s and its fraction of ``peak`` TFLOP/s (None without a peak)."""
    achieved = flops / seconds / 1e12
    return {"achieved_tflops": achieved, "peak_tflops": peak,
            "mfu": None if peak is None else achieved / peak}
