"""``mimic-explain peppr``: progressive erasing plus progressive restoration (PEPPR) of a
finished run, with random, inverse and local controls, written to ``peppr[_split].csv|json|png``.
The curves and their reading are computed by :mod:`mimic_runner.explain.peppr`."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import Tensor

from mimic_runner.analysis.figures import plot_peppr
from mimic_runner.analysis.maps import (
    LocalMaps,
    check_stored_maps,
    local_maps,
    open_run,
)
from mimic_runner.analysis.options import PepprOptions, resolve_device
from mimic_runner.data.datamodule import HDF5DataModule
from mimic_runner.explain.global_maps import GlobalMaps, global_explanations
from mimic_runner.explain.peppr import (
    METRICS,
    MODES,
    PerturbationResult,
    gaussian_blur,
    inverse_ranks,
    is_symmetric,
    mirror_result,
    peppr_curves,
    predict_batched,
    random_patch_ranks,
    rank_pixels,
    reading,
    step_counts,
    summarise_peppr,
)
from mimic_runner.io import atomic_path, write_json
from mimic_runner.log import progress_bar, stdout


def make_fill(kind: str, images: Tensor, dm: HDF5DataModule, blur_sigma: float | None
              ) -> tuple[Tensor, dict[str, Any]]:
    """What erased pixels become, in [0, 1] input units, and a description for peppr.json.

    ``mean``: the per-channel mean of the *training* split (a flat grey; 0 after the default
    dataset normalisation). ``mean_image``: the training split's pixel-wise mean image.
    ``zero``: black. ``blur``: the image itself, Gaussian-blurred (sigma default H/16).
    """
    train = dm.splits["train"].tensors["image"]
    c, h, w = images.shape[1:]
    if kind == "mean":
        mean = torch.stack([train[:, i].float().mean() for i in range(c)]) / 255
        return mean.view(1, c, 1, 1).to(images.device), {"fill": kind,
                                                         "fill_value": mean.tolist()}
    if kind == "mean_image":
        return (train.float().mean(0, keepdim=True) / 255).to(images.device), {"fill": kind}
    if kind == "zero":
        return torch.zeros(1, c, 1, 1, device=images.device), {"fill": kind, "fill_value": 0.0}
    sigma = blur_sigma if blur_sigma is not None else max(1.0, min(h, w) / 16)
    blurred = torch.cat([gaussian_blur(images[i:i + 64].float() / 255, sigma)
                         for i in range(0, len(images), 64)])
    return blurred, {"fill": kind, "blur_sigma": sigma}


def random_patch_size(opts: PepprOptions, height: int, width: int) -> int:
    """The random control's block side: ``--random-patch`` or about 1/16 of the image side
    (8 px at 128 px, about a Grad-CAM cell of a stride-8 backbone)."""
    if opts.random_patch is not None:
        return opts.random_patch
    return max(1, round(min(height, width) / 16))


def build_rankings(opts: PepprOptions, g: GlobalMaps, loc: LocalMaps, clean_pred: Tensor,
                   device: torch.device) -> tuple[dict[str, tuple[Tensor, Tensor | None]],
                                                  list[str], str, str]:
    """Rankings to evaluate: main, optional local control and random seeds.

    Returns ``(rankings, random_names, main_name, main_description)``; the inverse control is
    mirrored from the main ranking afterwards (:func:`~mimic_runner.explain.peppr.mirror_result`).
    """
    h, w = loc.maps.shape[-2:]
    patch = random_patch_size(opts, h, w)
    rankings: dict[str, tuple[Tensor, Tensor | None]] = {}
    gen = torch.Generator().manual_seed(0)  # tie-breaking order, fixed
    if opts.ranking == "global":
        rankings["global"] = (rank_pixels(g.overall, generator=gen).to(device), None)
        what = "the overall global map"
    elif opts.ranking == "class":
        maps = torch.stack([g.class_map_or_overall(k) for k in range(len(g.class_names))])
        rankings["class"] = (rank_pixels(maps, generator=gen).to(device), clean_pred.to(device))
        what = "the global map of each image's predicted class"
    else:
        rankings["local"] = (rank_pixels(loc.maps, generator=gen).to(device), None)
        what = "each image's own explanation"
    main = opts.ranking
    if opts.local_control and main != "local":
        rankings["local"] = (rank_pixels(loc.maps, generator=gen).to(device), None)
    random_names = []
    for seed in range(opts.random_seeds):
        name = f"random_{seed}"
        gen_seed = torch.Generator().manual_seed(seed)
        rankings[name] = (random_patch_ranks(h, w, patch, 1, gen_seed).to(device), None)
        random_names.append(name)
    return rankings, random_names, main, what


def run_peppr(opts: PepprOptions) -> dict[str, Any]:
    """``mimic-explain peppr``: PEPPR curves of a run, written to csv/json/png; the summary."""
    opts.validate()
    check_stored_maps(opts)
    device = resolve_device(opts.device)
    t0 = time.perf_counter()
    run = open_run(opts.run_dir, need_model=True, checkpoint=opts.checkpoint, device=device,
                   split=opts.split)
    dm, module = run.datamodule, run.module
    loc = local_maps(run, opts, device)
    g = global_explanations(loc.maps, loc.labels, loc.predictions,
                            num_classes=len(run.class_names), normalize=opts.normalize,
                            group_by=opts.group_by, class_names=run.class_names)
    images = dm.splits[opts.split].tensors["image"][loc.indices].to(device)
    labels = loc.labels.to(device)

    # NHWC is 1.5-2x faster for these convolutions on CPU (oneDNN), and no slower on GPU.
    module.to(memory_format=torch.channels_last)

    def predict(x: Tensor) -> Tensor:
        return module(x.contiguous(memory_format=torch.channels_last)).logits

    def normalise(x: Tensor) -> Tensor:
        assert dm.mean is not None and dm.std is not None
        return (x - dm.mean.to(x.device)) / dm.std.to(x.device)

    clean_probs = predict_batched(predict, images, normalise, opts.batch_size).softmax(-1).cpu()
    clean_pred = clean_probs.argmax(-1)
    t_prep = time.perf_counter() - t0
    fill, fill_info = make_fill(opts.fill, images, dm, opts.blur_sigma)
    rankings, random_names, main, what = build_rankings(opts, g, loc, clean_pred, device)
    p = images.shape[-1] * images.shape[-2]
    counts = step_counts(p, opts.steps)
    fractions = counts.double() / p

    # Least important first: the main ranking reversed. On a symmetric grid its curves are the
    # main ones mirrored (no evaluation); otherwise (odd steps and odd pixel count) evaluate it.
    mirrored = is_symmetric(counts)
    if not mirrored:
        ranks, index = rankings[main]
        rankings["inverse"] = (inverse_ranks(ranks), index)
    t1 = time.perf_counter()
    per_pass = len(loc.maps) * (opts.steps - 2)
    with progress_bar() as progress:
        task = progress.add_task("PEPPR", total=per_pass * len(MODES) * len(rankings))

        def advance(name: str, k: int) -> None:
            progress.update(task, advance=k, description=f"PEPPR · {name}")

        results = peppr_curves(predict, images, labels, rankings, counts, fill, normalise,
                               batch_size=opts.batch_size, progress=advance,
                               clean_probs=clean_probs)
    t_eval = time.perf_counter() - t1
    if mirrored:
        results["inverse"] = {"erase": mirror_result(results[main]["restore"]),
                              "restore": mirror_result(results[main]["erase"])}
    summary = summarise_peppr(fractions, results, random_names, metric=opts.metric)
    lines = {main: reading(main, summary, what)}
    if "local" in results and main != "local":
        lines["local"] = reading("local", summary, "each image's own explanation")
    lines["inverse"] = reading("inverse", summary, f"the reverse of {what}")

    csv_path, json_path, fig_path = (opts.run.peppr(ext, opts.split, opts.out_dir)
                                     for ext in ("csv", "json", "png"))
    write_peppr_csv(csv_path, fractions, counts, results, random_names)
    ends = {f"{m}_{end}": float(results[main]["erase"].curve(m)[i])
            for m in METRICS for end, i in (("clean", 0), ("fully_erased", -1))}
    record: dict[str, Any] = {
        "run_dir": str(opts.run_dir), "checkpoint": str(run.checkpoint), "model":
        run.model_name, "split": opts.split, "n_images": len(loc.maps), "maps_source":
        loc.source, "explain_target": loc.explain_target, "ranking": main, "ranking_means": what,
        "group_by": opts.group_by, "normalize": opts.normalize, "steps": opts.steps,
        "random_seeds": opts.random_seeds, "batch_size": opts.batch_size, "device": str(device),
        "metric": opts.metric, "random_patch": random_patch_size(opts, *images.shape[-2:]),
        **fill_info, "fractions": fractions.tolist(), **ends,
        "summary": summary, "reading": lines,
        "notes": run.notes + g.notes, "seconds": {"prepare": round(t_prep, 2), "evaluate":
                                                 round(t_eval, 2), "total": round(
                                                     time.perf_counter() - t0, 2)},
        "forward_passes": len(loc.maps) * (2 + len(rankings) * len(MODES) * (opts.steps - 2)),
    }
    span = ends["accuracy_clean"] - ends["accuracy_fully_erased"]
    if span < 0.05 and opts.metric == "accuracy":
        record["notes"].append(
            f"accuracy barely depends on the image (clean {ends['accuracy_clean']:.3f}, fully "
            f"erased {ends['accuracy_fully_erased']:.3f}): accuracy curves cannot show "
            "faithfulness; read the agreement verdict (--metric agreement)")
    write_json(json_path, record)
    plot_peppr(fig_path, fractions, results, random_names, main, ends,
               title=f"PEPPR · {run.model_name} · {opts.split} ({len(loc.maps)} images) · "
                     f"fill={opts.fill}")
    record.update(csv=str(csv_path), json=str(json_path), figure=str(fig_path))
    print_peppr_summary(record, summary, random_names)
    return record


def write_peppr_csv(path: Path, fractions: Tensor, counts: Tensor,
                    results: dict[str, dict[str, PerturbationResult]],
                    random_names: list[str]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["ranking", "seed", "mode", "step", "fraction", "n_pixels", *METRICS])
        for name, res in results.items():
            seed = name.split("_", 1)[1] if name in random_names else ""
            ranking = "random" if name in random_names else name
            for mode, r in res.items():
                curves = [r.curve(m).tolist() for m in METRICS]
                for i in range(len(counts)):
                    wr.writerow([ranking, seed, mode, i, f"{float(fractions[i]):.6f}",
                                 int(counts[i]), *(f"{c[i]:.6f}" for c in curves)])


def print_peppr_summary(record: dict[str, Any], summary: dict[str, Any],
                        random_names: list[str]) -> None:
    out = stdout
    metric = record["metric"]
    table = Table(title=f"PEPPR · {record['split']} · {record['n_images']} images · "
                        f"fill={record['fill']} · {record['steps']} steps · {metric} AUC "
                        "over k in [0, 1]")
    for col in ("ranking", "erase ↓", "restore ↑", "PEPPR ↑", "gap erase", "gap restore",
                "verdict"):
        table.add_column(col, justify="left" if col in ("ranking", "verdict") else "right",
                         no_wrap=True)
    auc, gaps = summary["auc"], summary.get("gap_to_random", {})
    ses = summary.get("gap_se", {})

    def gap(name: str, mode: str) -> str:
        if name not in gaps:
            return "—"
        return f"{gaps[name][mode][metric]:+.3f}±{ses[name][mode][metric]:.3f}"

    for name in auc:
        if name in random_names:
            continue
        a = auc[name]
        table.add_row(name, f"{a['erase'][metric]:.3f}", f"{a['restore'][metric]:.3f}",
                      f"{a['peppr'][metric]:+.3f}", gap(name, "erase"), gap(name, "restore"),
                      summary["verdict"].get(name, ""))
    if "random" in summary:
        r = summary["random"]
        table.add_row(f"random ×{len(random_names)}",
                      f"{r['erase'][metric]['mean']:.3f}±{r['erase'][metric]['std']:.3f}",
                      f"{r['restore'][metric]['mean']:.3f}±{r['restore'][metric]['std']:.3f}",
                      "", "", "", "control")
    out.print(table)
    out.print(f"clean: accuracy {record['accuracy_clean']:.3f}, p(true) "
              f"{record['p_true_clean']:.3f}; fully erased: accuracy "
              f"{record['accuracy_fully_erased']:.3f}, agreement "
              f"{record['agreement_fully_erased']:.3f}; evaluation "
              f"{record['seconds']['evaluate']:.1f} s on {record['device']}")
    if "verdicts" in summary:
        main = record["ranking"]
        out.print(f"verdict of '{main}' by metric: " + "; ".join(
            f"{k} {v[main]}" for k, v in summary["verdicts"].items()))
    for line in record["reading"].values():
        out.print(f"• {line}")
    for note in record["notes"]:
        out.print(f"note: {note}", markup=False)
    out.print(f"wrote {record['csv']}, {record['json']} and {record['figure']}", markup=False)
