"""``mimic-explain global``: overall and per-class global maps of a finished run, written to
``global_explanations[_split].h5`` and ``global_maps[_split].png`` with a summary table."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from rich.table import Table
from torch import Tensor

from mimic_runner.analysis.figures import plot_global_maps
from mimic_runner.analysis.maps import (
    check_stored_maps,
    local_maps,
    needs_stored_maps,
    open_run,
    split_mean_image,
    split_reference_maps,
)
from mimic_runner.analysis.options import ExplainOptions, resolve_device
from mimic_runner.explain.global_maps import GlobalMaps, global_explanations
from mimic_runner.io import hdf5_image, write_bytes_atomic
from mimic_runner.log import stdout

log = logging.getLogger(__name__)


def write_global_h5(path: Path, g: GlobalMaps, mean_image: Tensor, attrs: dict[str, Any],
                    reference: dict[str, Tensor] | None = None) -> None:
    def build(f: h5py.File) -> None:
        for key, value in (reference or {}).items():
            f.create_dataset(key, data=value.cpu().numpy().astype(np.float32))
        f.create_dataset("overall", data=g.overall.cpu().numpy().astype(np.float32))
        f.create_dataset("overall_std", data=g.overall_std.cpu().numpy().astype(np.float32))
        f.create_dataset("per_class", data=g.per_class.cpu().numpy().astype(np.float32))
        f.create_dataset("per_class_std", data=g.per_class_std.cpu().numpy().astype(np.float32))
        f.create_dataset("counts", data=g.counts.numpy().astype(np.int64))
        f.create_dataset("mean_image", data=mean_image.cpu().numpy().astype(np.float32))
        f.attrs["class_names"] = np.asarray(g.class_names, dtype=object)
        f.attrs["group_by"] = g.group_by
        f.attrs["normalize"] = g.normalize
        f.attrs["n_images"] = g.n_images
        for k, v in attrs.items():
            f.attrs[k] = v if not isinstance(v, Path) else str(v)

    # Built in memory, then written in one go: a full disk is then one clean OSError.
    write_bytes_atomic(path, hdf5_image(build))


def run_global(opts: ExplainOptions) -> dict[str, Any]:
    """``mimic-explain global``: write global maps (h5 + figure) and return a summary."""
    opts.validate()
    check_stored_maps(opts)
    device = resolve_device(opts.device)
    t0 = time.perf_counter()
    run = open_run(opts.run_dir, need_model=not needs_stored_maps(opts),
                   checkpoint=opts.checkpoint, device=device, split=opts.split)
    loc = local_maps(run, opts, device)
    t_maps = time.perf_counter() - t0
    g = global_explanations(loc.maps, loc.labels, loc.predictions,
                            num_classes=len(run.class_names), normalize=opts.normalize,
                            group_by=opts.group_by, class_names=run.class_names)
    mean_image = split_mean_image(run.datamodule, opts.split, loc.indices)
    notes = run.notes + g.notes
    for note in g.notes:
        log.warning(note)
    h5_path = opts.run.global_maps(opts.split, opts.out_dir)
    fig_path = opts.run.global_figure(opts.split, opts.out_dir)
    attrs = {"split": opts.split, "maps_source": loc.source, "explain_target":
             loc.explain_target, "model": run.model_name, "run_dir": str(opts.run_dir),
             "checkpoint": str(run.checkpoint or ""),
             "aligned": bool(run.datamodule.info.attrs.get("aligned", True)),
             "notes": "\n".join(notes)}
    reference = split_reference_maps(run.datamodule, opts.split, loc.indices)
    write_global_h5(h5_path, g, mean_image, attrs, reference)
    plot_global_maps(fig_path, g, mean_image, title=f"{run.model_name} · {opts.split} · "
                     f"maps of the {loc.explain_target} class, grouped by {opts.group_by}",
                     confounder=reference.get("confounder_frequency"))
    summary = {"global_explanations": str(h5_path), "figure": str(fig_path),
               "n_images": g.n_images, "counts": dict(zip(g.class_names, g.counts.tolist())),
               "maps_source": loc.source, "seconds": round(time.perf_counter() - t0, 2),
               "seconds_maps": round(t_maps, 2), "notes": notes}
    print_global_summary(g, summary)
    return summary


def concentration(g: GlobalMaps, top: float = 0.1) -> dict[str, float]:
    """Share of each (sum-normalised) global map's mass in its top ``top`` of pixels."""
    out = {}
    for name, m in [("overall", g.overall), *zip(g.class_names, g.per_class)]:
        if torch.isnan(m).any():
            out[name] = float("nan")
            continue
        x = m.flatten().clamp_min(0)
        k = max(1, round(top * x.numel()))
        out[name] = float(x.topk(k).values.sum() / x.sum().clamp_min(1e-12))
    return out


def print_global_summary(g: GlobalMaps, summary: dict[str, Any]) -> None:
    table = Table(title=f"global explanations ({summary['maps_source']}, grouped by "
                        f"{g.group_by}, normalised by {g.normalize})")
    table.add_column("map")
    table.add_column("images", justify="right")
    table.add_column("mass in top 10 % px", justify="right")
    conc = concentration(g)
    table.add_row("overall", str(g.n_images), f"{conc['overall']:.3f}")
    for k, name in enumerate(g.class_names):
        c = conc[name]
        table.add_row(name, str(int(g.counts[k])), "—" if np.isnan(c) else f"{c:.3f}")
    stdout.print(table)
    stdout.print(f"wrote {summary['global_explanations']} and {summary['figure']} "
                 f"in {summary['seconds']:.1f} s", markup=False)
