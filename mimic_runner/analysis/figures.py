"""Figures of ``mimic-explain``: global maps over the mean image, PEPPR curves (the project's
one figure style, :mod:`mimic_runner.plotting`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from mimic_runner.explain.global_maps import GlobalMaps
from mimic_runner.explain.peppr import MODES, PerturbationResult
from mimic_runner.plotting import HEAT_CMAP, new_figure, save_png


def plot_global_maps(path: Path, g: GlobalMaps, mean_image: Tensor, title: str = "",
                     confounder: Tensor | None = None) -> None:
    """Overall and per-class global maps over the mean image (top row) and their pixel-wise
    standard deviation (bottom row), one colour scale per row. Sum-normalised maps are shown
    relative to a uniform map (1 = average importance). The overlay's opacity grows with the
    value, so the anatomy stays visible where the map is low; ``confounder`` (share of images
    with the shortcut artefact per pixel) is outlined in cyan."""
    h, w = g.overall.shape
    scale = float(h * w) if g.normalize == "sum" else 1.0
    maps = [g.overall, *g.per_class]
    stds = [g.overall_std, *g.per_class_std]
    names = [f"overall (n={g.n_images})"] + [
        f"{c} (n={int(n)})" for c, n in zip(g.class_names, g.counts)]
    finite = [m for m in maps if not torch.isnan(m).any()]
    vmax = max(float(m.max()) for m in finite) * scale
    smax = max(float(s.max()) for s, m in zip(stds, maps) if not torch.isnan(m).any()) * scale
    grey = mean_image.mean(0).cpu().numpy()
    outline = None
    if confounder is not None and float(confounder.max()) > 0:
        outline = confounder.cpu().numpy()
    fig = new_figure(3.1 * len(maps), 6.2)
    axes = np.asarray(fig.subplots(2, len(maps), squeeze=False))
    unit = "× uniform" if g.normalize == "sum" else g.normalize
    for i, (row, top) in enumerate(((maps, vmax), (stds, smax))):
        im = None
        for j, arr in enumerate(row):
            ax = axes[i, j]
            ax.imshow(grey, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if torch.isnan(arr).any():
                ax.text(0.5, 0.5, "no images", ha="center", va="center", color="w",
                        transform=ax.transAxes)
            else:
                v = arr.cpu().numpy() * scale
                alpha = np.clip(v / max(top, 1e-12), 0, 1) ** 0.7 * 0.85 + 0.05
                im = ax.imshow(v, cmap=HEAT_CMAP, alpha=alpha, vmin=0, vmax=top)
                if outline is not None and i == 0:
                    ax.contour(outline, levels=[0.5 * float(outline.max())], colors="cyan",
                               linewidths=0.7, linestyles="--")
            ax.set_title(names[j] if i == 0 else "pixel-wise std", fontsize=9)
        if im is not None:
            fig.colorbar(im, ax=axes[i, :].tolist(), shrink=0.8,
                         label=unit if i == 0 else f"std ({unit})")
    if outline is not None:
        title += "\ncyan dashes: where the dataset's shortcut artefact lies (confounder)"
    fig.suptitle(title, fontsize=10)
    save_png(fig, path)


_METRIC_LABELS = {"accuracy": "accuracy", "p_true": "p(true class)",
                  "agreement": "agreement with clean prediction"}


def plot_peppr(path: Path, fractions: Tensor, results: dict[str, dict[str, PerturbationResult]],
               random_names: list[str], main: str, ends: dict[str, float], title: str = ""
               ) -> None:
    """Erasing (left) and restoration (right) curves of accuracy, the mean probability of the
    true class and the agreement with the clean prediction (rows): the main ranking, its
    inverse, the local control and the random seeds' mean ± one standard deviation."""
    k = fractions.numpy() * 100
    rows = list(_METRIC_LABELS)
    fig = new_figure(10, 3.3 * len(rows), layout="tight")
    axes = np.asarray(fig.subplots(len(rows), 2, sharex=True, squeeze=False))
    styles = {main: ("C0", "-"), "local": ("C2", ":"), "inverse": ("C3", "--")}
    for col, mode in enumerate(MODES):
        for row, metric in enumerate(rows):
            ax = axes[row, col]
            if random_names:
                v = torch.stack([results[n][mode].curve(metric) for n in random_names])
                mu = v.mean(0).numpy()
                sd = (v.std(0, correction=1) if len(v) > 1 else torch.zeros_like(v[0])).numpy()
                ax.plot(k, mu, color="0.4", lw=1.5, label=f"random ({len(random_names)} seeds)")
                ax.fill_between(k, mu - sd, mu + sd, color="0.6", alpha=0.3)
            for name, (color, ls) in styles.items():
                if name in results:
                    ax.plot(k, results[name][mode].curve(metric).numpy(), color=color, ls=ls,
                            lw=2, marker="o" if name == main else None, ms=3,
                            label=name if name != "inverse" else f"inverse of {main}")
            ax.axhline(ends[f"{metric}_fully_erased"], color="k", lw=0.8, ls=(0, (2, 2)),
                       label="fully erased image")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            what = "progressive erasing" if mode == "erase" else "progressive restoration"
            ax.set_title(f"{what} · {_METRIC_LABELS[metric]}", fontsize=10)
            if row == len(rows) - 1:
                ax.set_xlabel("% of pixels " + ("erased" if mode == "erase" else "restored")
                              + " (most important first)")
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    save_png(fig, path)
