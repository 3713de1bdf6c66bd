"""The one figure style of mimic-runner: matplotlib's object API (no pyplot state, safe in
threads and servers), PNG written atomically, one heat colour map over the anatomy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mimic_runner.io import atomic_path

DPI = 120
# Perceptually uniform and readable in grey: importance maps and gaze alike.
HEAT_CMAP = "inferno"


def new_figure(width: float, height: float, **kwargs: Any) -> Figure:
    """A figure with constrained layout (colour bars and titles find their room)."""
    kwargs.setdefault("layout", "constrained")
    return Figure(figsize=(width, height), **kwargs)


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` as PNG (temporary name, then rename)."""
    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def display_image(img: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 -> (H, W) grey or (H, W, 3) RGB in [0, 1]."""
    x = img.astype(np.float32) / 255.0
    return x[0] if x.shape[0] == 1 else np.transpose(x[:3], (1, 2, 0))


def overlay(ax: Any, img: np.ndarray, heat: np.ndarray | None, vmax: float | None = None,
            alpha_power: float = 0.7) -> Any:
    """The image in grey with ``heat`` on top; the heat's opacity grows with its value, so the
    anatomy stays visible where the map is low. Without ``vmax`` the heat is min-max scaled.
    Returns the heat's image (for a colour bar) or None."""
    # Both layers share one extent, so maps at another resolution than the image still align.
    extent = (0.0, 1.0, 1.0, 0.0)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, extent=extent, vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
    if heat is None:
        return None
    h = np.asarray(heat, dtype=np.float32)
    if vmax is None:
        span = float(h.max() - h.min())
        h = (h - h.min()) / span if span > 0 else np.zeros_like(h)
        vmax = 1.0
    alpha = np.clip(h / max(vmax, 1e-12), 0, 1) ** alpha_power * 0.85 + 0.05
    return ax.imshow(h, cmap=HEAT_CMAP, alpha=alpha, extent=extent, vmin=0, vmax=vmax)
