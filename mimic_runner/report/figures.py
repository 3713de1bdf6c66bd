"""The paper's figures from run folders, as PNG (matplotlib's object API: no pyplot state).

Each ``figure_*`` function returns the path it wrote or raises :class:`FigureSkipped` with the
reason (a missing run or file), which the report prints as a note instead of failing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mimic_runner.data.schema import read_dataset
from mimic_runner.errors import UserError
from mimic_runner.plotting import HEAT_CMAP, display_image, new_figure, overlay, save_png
from mimic_runner.report.collect import PAPER_ENSEMBLE_SIZE, Run
from mimic_runner.report.tables import PaperValues, model_order
from mimic_runner.rundir import RunDir


class FigureSkipped(Exception):
    """A figure's inputs are missing; the message says which."""


# -- Figure 1: KLD and NSS per ensemble size ---------------------------------------------------

def figure_boxplots(runs: Sequence[Run], out: Path, paper: PaperValues | None = None) -> Path:
    """Boxplots of KLD and NSS per ensemble size over seeds (Table 2's runs); with ``paper``,
    the published distribution beside each reproduced one."""
    finished = [r for r in runs if r.status == "finished"]
    sizes = sorted({r.ensemble_size for r in finished})
    if not sizes:
        raise FigureSkipped("no finished Table 2 run (sweep=table2)")
    fig = new_figure(4.2 * 2, 3.6)
    for ax, key, label in zip(fig.subplots(1, 2), ("test/kld", "test/nss"), ("KLD", "NSS")):
        data = [[float(r.metrics[key]) for r in finished if r.ensemble_size == s
                 and r.metrics.get(key) is not None and math.isfinite(r.metrics[key])]
                for s in sizes]
        pos = np.arange(len(sizes), dtype=float)
        width = 0.35 if paper else 0.6
        shift = width / 2 + 0.02 if paper else 0.0
        _boxes(ax, data, pos - shift, width, "tab:blue")
        handles = [("reproduced", "tab:blue")]
        if paper:
            pkey = label.lower()
            pdata = [[v[pkey] for (g, _), v in paper.items() if g == s] for s in sizes]
            _boxes(ax, pdata, pos + shift, width, "tab:orange")
            handles.append(("paper", "tab:orange"))
            for name, color in handles:
                ax.plot([], [], color=color, lw=6, alpha=0.5, label=name)
            ax.legend(frameon=False, fontsize=8)
        ax.set_xticks(pos, [str(s) for s in sizes])
        ax.set_xlabel("ensemble size")
        ax.set_ylabel(label)
        ax.set_title(f"{label} ({'lower' if label == 'KLD' else 'higher'} is better)")
    fig.suptitle("Figure 1: explanation ensemble, agreement with gaze per ensemble size")
    return save_png(fig, out)


def _boxes(ax, data: list[list[float]], pos: np.ndarray, width: float, color: str) -> None:  # type: ignore[no-untyped-def]
    keep = [i for i, d in enumerate(data) if d]
    if not keep:
        return
    bp = ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=width,
                    patch_artist=True, manage_ticks=False)
    for box in bp["boxes"]:
        box.set(facecolor=color, alpha=0.5)
    for median in bp["medians"]:
        median.set(color="black")


# -- Figure 2: test samples, gaze and the models' Grad-CAM --------------------------------------

def pick_runs_for_samples(runs: Sequence[Run], models: Sequence[str] | None = None
                          ) -> dict[str, Run]:
    """One finished run with ``explanations.h5`` per model (``models``, or every model whose
    traits put it in the sample figure), all of one seed when possible, in report order.

    Table 1's ensembles (the paper's size) are preferred to other sizes.
    """
    usable = [r for r in runs if r.status == "finished"
              and (r.model in models if models is not None else r.traits.sample_figure)
              and RunDir(r.path).explanations.exists()]
    usable.sort(key=lambda r: (r.traits.is_ensemble and r.ensemble_size != PAPER_ENSEMBLE_SIZE,
                               str(r.path)))
    by_model: dict[str, list[Run]] = {}
    for r in usable:
        by_model.setdefault(r.model, []).append(r)
    seed_sets = [{r.seed for r in v} for v in by_model.values()]
    common = sorted(set.intersection(*seed_sets), key=str) if seed_sets else []
    picked = {}
    for model in model_order(usable):
        candidates = by_model[model]
        same_seed = [r for r in candidates if common and r.seed == common[0]]
        picked[model] = (same_seed or candidates)[0]
    return picked


def _read_explanations(run: Run) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """ids -> row, maps (N, H, W), predictions of a run's ``explanations.h5``."""
    try:
        e = RunDir(run.path).read_explanations()
    except UserError as exc:
        raise FigureSkipped(str(exc)) from None
    return {str(i): k for k, i in enumerate(e.ids)}, e.maps, e.predictions


def figure_samples(runs: Sequence[Run], out: Path, n_samples: int = 5, seed: int = 0) -> Path:
    """Figure 2: random test images with the gaze heatmap, then each model's Grad-CAM overlay.

    Images and gaze come from the dataset file named in the runs' ``metrics.json``
    (``dataset_path``); maps from each run's ``explanations.h5``, matched by image id.
    """
    picked = pick_runs_for_samples(runs)
    if not picked:
        raise FigureSkipped("no finished run of a model shown in Figure 2 (traits: "
                            "sample_figure) with explanations.h5")
    expl = {m: _read_explanations(r) for m, r in picked.items()}
    common = sorted(set.intersection(*(set(e[0]) for e in expl.values())))
    if not common:
        raise FigureSkipped("the runs' explanations.h5 share no test image id "
                            "(different datasets?)")
    dataset = next((r.metrics.get("dataset_path") for r in picked.values()
                    if r.metrics.get("dataset_path")), None)
    if not dataset or not Path(dataset).exists():
        raise FigureSkipped(f"dataset file {dataset!r} (metrics.json dataset_path) not found")
    try:
        data, info = read_dataset(dataset, split="test", require_splits=())
    except (UserError, OSError, KeyError) as exc:
        raise FigureSkipped(f"dataset {dataset}: {exc}") from None
    row_of = {str(i): k for k, i in enumerate(data["ids"])}
    common = [i for i in common if i in row_of]
    if not common:
        raise FigureSkipped(f"none of the explained test ids is in {dataset}")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(common), size=min(n_samples, len(common)), replace=False))
    sample_ids = [common[k] for k in chosen]
    models = list(picked)
    ncols = 1 + len(models)
    fig = new_figure(2.3 * ncols, 2.4 * len(sample_ids))
    axes = np.asarray(fig.subplots(len(sample_ids), ncols, squeeze=False))
    classes = info.class_names
    for i, sid in enumerate(sample_ids):
        k = row_of[sid]
        img = display_image(data["images"][k])
        label = classes[int(data["labels"][k])] if classes else str(data["labels"][k])
        gaze = data["gaze"][k] if "gaze" in data else None
        overlay(axes[i, 0], img, gaze)
        axes[i, 0].set_ylabel(f"{sid}\n{label}", fontsize=7)
        if i == 0:
            axes[i, 0].set_title("image + gaze" if gaze is not None else "image (no gaze)",
                                 fontsize=9)
        for j, m in enumerate(models, start=1):
            ids, maps, preds = expl[m]
            overlay(axes[i, j], img, maps[ids[sid]])
            pred = int(preds[ids[sid]])
            axes[i, j].set_xlabel(f"pred: {classes[pred] if classes else pred}", fontsize=7)
            if i == 0:
                r = picked[m]
                axes[i, j].set_title(f"{r.label}\n(seed {r.seed})", fontsize=9)
    fig.suptitle("Figure 2: test samples, human gaze and Grad-CAM", fontsize=10)
    return save_png(fig, out)


# -- Figures 3-4: each sub-model's mean Grad-CAM at the saved epochs ---------------------------

def pick_member_cam_run(runs: Sequence[Run], model: str, prefer_seed: int | None = None
                        ) -> Run | None:
    """A finished ``model`` run with ``member_cams.h5``: the paper's ensemble size and
    ``prefer_seed`` first."""
    usable = [r for r in runs if r.model == model and r.status == "finished"
              and RunDir(r.path).member_cams.exists()]
    usable.sort(key=lambda r: (r.ensemble_size != PAPER_ENSEMBLE_SIZE, r.seed != prefer_seed,
                               str(r.path)))
    return usable[0] if usable else None


def figure_member_cams(run: Run | None, out: Path, title: str) -> Path:
    """Rows: the saved epochs; columns: the sub-models' mean validation Grad-CAM."""
    if run is None:
        raise FigureSkipped("no finished run with member_cams.h5")
    path = RunDir(run.path).member_cams
    try:
        cams, mean_image = RunDir(run.path).read_member_cams()
    except (OSError, KeyError, ValueError) as exc:
        raise FigureSkipped(f"{path}: unreadable ({exc})") from None
    epochs = sorted(cams)
    if not epochs:
        raise FigureSkipped(f"{path}: no epoch_<e> dataset")
    n_members = max(c.shape[0] for c in cams.values())
    bg = None
    if mean_image is not None:
        span = float(mean_image.max() - mean_image.min())
        bg = (mean_image - mean_image.min()) / span if span > 0 else mean_image * 0
    fig = new_figure(1.7 * n_members + 0.6, 1.8 * len(epochs) + 0.6)
    axes = np.asarray(fig.subplots(len(epochs), n_members, squeeze=False))
    for i, e in enumerate(epochs):
        for j in range(n_members):
            ax = axes[i, j]
            if j < cams[e].shape[0]:
                if bg is not None:
                    overlay(ax, bg, cams[e][j])
                else:
                    ax.imshow(cams[e][j], cmap=HEAT_CMAP)
                    ax.set_xticks([])
                    ax.set_yticks([])
            else:
                ax.set_axis_off()
            if i == 0:
                ax.set_title(f"sub-model {j + 1}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"epoch {e}", fontsize=8)
    fig.suptitle(f"{title} (seed {run.seed}, N={run.ensemble_size})", fontsize=10)
    return save_png(fig, out)
