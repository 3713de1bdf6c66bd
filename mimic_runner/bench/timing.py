"""Timing on a shared, noisy machine: warm-up, interleaved repeats, medians and IQR.

Variants compared with each other are timed in turn (A, B, A, B, ...) so that a burst of load
from other processes hits all of them alike; ratios are taken per round (paired) and summarised
by their median, which is far less sensitive to contention than a ratio of two medians.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch


@dataclass
class Stats:
    """Summary of repeated measurements (seconds, or any unit): median, quartiles, spread."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "iqr": self.iqr}


def summarize(values: list[float]) -> Stats:
    """Median, quartiles (linear interpolation, as numpy's default), min, max of ``values``."""
    if not values:
        raise ValueError("no measurements")
    xs = sorted(values)
    if len(xs) == 1:
        return Stats(xs[0], xs[0], xs[0], xs[0], xs[0], 1)
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return Stats(statistics.median(xs), q[0], q[2], xs[0], xs[-1], len(xs))


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels, so a host timer measures the device's work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(cases: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1,
                device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Time each case ``repeats`` times, round-robin, after ``warmup`` untimed rounds.

    Returns seconds per call, per case, in round order (so ``out[a][i]`` and ``out[b][i]`` were
    measured back to back and can be paired).
    """
    for _ in range(warmup):
        for fn in cases.values():
            fn()
        synchronize(device)
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            out[name].append(time.perf_counter() - t0)
    return out


def paired_ratio(num: list[float], den: list[float]) -> Stats:
    """Per-round ratios ``num[i] / den[i]`` summarised (both measured in the same round)."""
    return summarize([a / b for a, b in zip(num, den)])


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - Windows
        return None
