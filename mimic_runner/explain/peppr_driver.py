"""Drivers of ``mimic-explain global`` and ``mimic-explain peppr`` on a finished run.

They load a run (its DataModule and, when needed, its trained model), collect the per-image
explanations of a split (stored ``explanations.h5`` for the test split, recomputed with
``module.explain_batch`` otherwise), aggregate them with :mod:`.global_maps`, evaluate PEPPR
with :mod:`.peppr`, and write files, figures and a rich summary. The math lives in those two
modules; this one only wires data, model and outputs.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import Tensor

from mimic_runner.data.schema import SPLITS
from mimic_runner.errors import UserError
from mimic_runner.explain.global_maps import (
    GROUP_BY,
    NORMALIZATIONS,
    GlobalMaps,
    global_explanations,
)
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

if TYPE_CHECKING:  # Lightning is imported only when a run is opened: bad options fail fast
    from mimic_runner.data.datamodule import HDF5DataModule

FILLS = ("mean", "mean_image", "zero", "blur")
RANKINGS = ("global", "class", "local")
MIN_STEPS, MAX_STEPS = 2, 1001

console = Console(stderr=True)


# -- options ------------------------------------------------------------------------------------
@dataclass
class ExplainOptions:
    """What both commands share (the CLI's options, checked by :meth:`validate`)."""

    run_dir: Path
    split: str = "test"
    group_by: str = "label"
    normalize: str = "sum"
    checkpoint: str = "best"
    device: str = "auto"
    batch_size: int = 128
    recompute: bool = False
    out_dir: Path | None = None
    max_images: int | None = None

    def validate(self) -> None:
        if self.split not in SPLITS:
            raise UserError(f"--split {self.split}: use one of {', '.join(SPLITS)}")
        if self.group_by not in GROUP_BY:
            raise UserError(f"--group-by {self.group_by}: use one of {', '.join(GROUP_BY)}")
        if self.normalize not in NORMALIZATIONS:
            raise UserError(f"--normalize {self.normalize}: use one of "
                            f"{', '.join(NORMALIZATIONS)}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.max_images is not None and self.max_images < 1:
            raise UserError(f"--max-images {self.max_images}: must be at least 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UserError(f"--device {self.device}: use auto, cpu or cuda")

    @property
    def out(self) -> Path:
        return self.out_dir if self.out_dir is not None else self.run_dir

    def suffix(self) -> str:
        """File-name suffix: none for the test split, ``_<split>`` otherwise."""
        return "" if self.split == "test" else f"_{self.split}"


@dataclass
class PepprOptions(ExplainOptions):
    fill: str = "mean"
    steps: int = 21
    random_seeds: int = 3
    ranking: str = "global"
    local_control: bool = True
    blur_sigma: float | None = None
    metric: str = "accuracy"
    random_patch: int | None = None  # None: about 1/16 of the image side

    def validate(self) -> None:
        super().validate()
        if not MIN_STEPS <= self.steps <= MAX_STEPS:
            raise UserError(f"--steps {self.steps}: use {MIN_STEPS}..{MAX_STEPS} grid points "
                            "(21 = every 5 %)")
        if self.fill not in FILLS:
            raise UserError(f"--fill {self.fill}: use one of {', '.join(FILLS)}")
        if self.ranking not in RANKINGS:
            raise UserError(f"--ranking {self.ranking}: use one of {', '.join(RANKINGS)}")
        if not 0 <= self.random_seeds <= 100:
            raise UserError(f"--random-seeds {self.random_seeds}: use 0..100")
        if self.blur_sigma is not None and self.blur_sigma <= 0:
            raise UserError(f"--blur-sigma {self.blur_sigma}: must be positive")
        if self.random_patch is not None and self.random_patch < 1:
            raise UserError(f"--random-patch {self.random_patch}: must be at least 1 pixel")
        if self.metric not in METRICS:
            raise UserError(f"--metric {self.metric}: use one of {', '.join(METRICS)}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


# -- loading ------------------------------------------------------------------------------------
@dataclass
class LocalMaps:
    """Per-image explanations of one split, in split order (or a subset of it)."""

    maps: Tensor  # (N, H, W) float32
    labels: Tensor  # (N,)
    predictions: Tensor  # (N,)
    indices: Tensor  # (N,) rows in the split
    ids: np.ndarray
    source: str  # "explanations.h5" or "recomputed"
    explain_target: str


@dataclass
class OpenedRun:
    run_dir: Path
    datamodule: HDF5DataModule
    class_names: list[str]
    module: Any = None
    checkpoint: Path | None = None
    model_name: str = ""
    explain_target: str = "pred"
    notes: list[str] = field(default_factory=list)


def open_run(run_dir: Path, need_model: bool, checkpoint: str, device: torch.device,
             split: str) -> OpenedRun:
    """The run's DataModule (set up) and, if ``need_model``, its trained module on ``device``."""
    from mimic_runner.training.builders import build_datamodule
    from mimic_runner.training.run_io import load_run, load_run_config, run_checkpoint

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    load_run_config(run_dir)  # "not a run directory" before "no checkpoint"
    if need_model:
        run_checkpoint(run_dir, checkpoint)  # fail fast, before reading the data
        loaded = load_run(run_dir, checkpoint=checkpoint, device=device)
        dm, cfg = loaded.datamodule, loaded.cfg
        opened = OpenedRun(run_dir=run_dir, datamodule=dm, class_names=list(dm.class_names),
                           module=loaded.module, checkpoint=loaded.checkpoint,
                           model_name=str(cfg.model.name),
                           explain_target=str(loaded.module.explain_target))
    else:
        cfg = load_run_config(run_dir)
        dm = build_datamodule(cfg)
        dm.setup()
        opened = OpenedRun(run_dir=run_dir, datamodule=dm, class_names=list(dm.class_names),
                           model_name=str(cfg.model.name),
                           explain_target=str(cfg.explain.target))
    if len(dm.splits[split]) == 0:
        raise UserError(f"{dm.resolve_path()}: the '{split}' split is empty; choose another "
                        "--split")
    if not bool(dm.info.attrs.get("aligned", True)):
        opened.notes.append(f"dataset '{dm.name}' is marked aligned=false: pixel positions do "
                            "not mean the same place in every image, so global maps may not "
                            "mean much")
        console.print(f"[yellow]warning:[/yellow] {opened.notes[-1]}")
    return opened


def explanations_path(run_dir: Path) -> Path:
    return run_dir / "explanations.h5"


def needs_stored_maps(opts: ExplainOptions) -> bool:
    return opts.split == "test" and not opts.recompute


def check_stored_maps(opts: ExplainOptions) -> None:
    """Fail early (before any heavy work) when stored maps are needed but missing."""
    if not opts.run_dir.is_dir():
        raise UserError(f"{opts.run_dir}: no such run directory")
    if needs_stored_maps(opts) and not explanations_path(opts.run_dir).exists():
        raise UserError(f"{explanations_path(opts.run_dir)}: missing (the run did not finish its "
                        "test); rerun mimic-run, or pass --recompute to compute the maps from "
                        "the checkpoint")


def subset_indices(n: int, max_images: int | None, seed: int = 0) -> Tensor:
    """All rows, or a seeded random subset of ``max_images`` rows kept in split order."""
    if max_images is None or max_images >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:max_images].sort().values


def read_stored_maps(run: OpenedRun, rows: Tensor) -> LocalMaps:
    path = explanations_path(run.run_dir)
    dm = run.datamodule
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("maps", "labels", "predictions", "ids") if k not in f]
            if missing:
                raise UserError(f"{path}: key '{missing[0]}' missing; rerun mimic-run or pass "
                                "--recompute")
            ids = f["ids"].asstr()[()]
            target = f.attrs.get("explain_target", run.explain_target)
            expected = np.asarray(dm.ids["test"])
            if len(ids) != len(expected) or not np.array_equal(ids, expected):
                raise UserError(f"{path}: its ids do not match the dataset's test split (was the "
                                "dataset regenerated?); pass --recompute")
            idx = rows.numpy()
            maps = torch.from_numpy(f["maps"][()][idx].astype(np.float32))
            labels = torch.from_numpy(f["labels"][()][idx])
            preds = torch.from_numpy(f["predictions"][()][idx])
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file ({exc}); pass --recompute") from None
    h, w = dm.size
    if tuple(maps.shape[1:]) != (h, w):
        raise UserError(f"{path}: maps are {tuple(maps.shape[1:])}, images {h}x{w}; pass "
                        "--recompute")
    return LocalMaps(maps=maps, labels=labels, predictions=preds, indices=rows,
                     ids=ids[rows.numpy()], source="explanations.h5",
                     explain_target=str(target.decode() if isinstance(target, bytes) else target))


def recompute_maps(run: OpenedRun, split: str, rows: Tensor, batch_size: int,
                   device: torch.device) -> LocalMaps:
    """Per-image explanations of ``split`` with the trained model (``module.explain_batch``)."""
    dm, module = run.datamodule, run.module
    assert module is not None
    tensors = dm.splits[split].tensors
    maps, preds = [], []
    with _progress() as progress:
        task = progress.add_task(f"explaining {split}", total=len(rows))
        for start in range(0, len(rows), batch_size):
            idx = rows[start:start + batch_size]
            batch = {k: v[idx].to(device) for k, v in tensors.items()}
            batch["image"] = dm.normalise(batch["image"])
            batch["index"] = idx.to(device)
            out, m, _ = module.explain_batch(batch)
            maps.append(m.float().cpu())
            preds.append(out.logits.argmax(-1).cpu())
            progress.advance(task, len(idx))
    return LocalMaps(maps=torch.cat(maps), labels=tensors["label"][rows].clone(),
                     predictions=torch.cat(preds), indices=rows,
                     ids=np.asarray(dm.ids[split])[rows.numpy()], source="recomputed",
                     explain_target=str(module.explain_target))


def local_maps(run: OpenedRun, opts: ExplainOptions, device: torch.device) -> LocalMaps:
    rows = subset_indices(len(run.datamodule.splits[opts.split]), opts.max_images)
    if needs_stored_maps(opts):
        return read_stored_maps(run, rows)
    return recompute_maps(run, opts.split, rows, opts.batch_size, device)


@contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        yield progress


# -- global ---------------------------------------------------------------------------------------
def split_mean_image(dm: HDF5DataModule, split: str, rows: Tensor) -> Tensor:
    """(C, H, W) mean of the split's images in [0, 1]."""
    return dm.splits[split].tensors["image"][rows].float().mean(0) / 255


def split_reference_maps(dm: HDF5DataModule, split: str, rows: Tensor) -> dict[str, Tensor]:
    """What the dataset itself says about the split, to read the global maps against:
    ``confounder_frequency`` (share of images with the shortcut artefact at each pixel) and
    ``gaze_mean`` (mean of the sum-normalised human gaze maps), when the file has them."""
    t = dm.splits[split].tensors
    out = {}
    if "confounder" in t:
        out["confounder_frequency"] = t["confounder"][rows].float().mean(0)
    if "gaze" in t:
        gaze = t["gaze"][rows].float()
        total = gaze.sum(dim=(-2, -1), keepdim=True)
        out["gaze_mean"] = torch.where(total > 0, gaze / total.clamp_min(1e-12), 0.0).mean(0)
    return out


def write_global_h5(path: Path, g: GlobalMaps, mean_image: Tensor, attrs: dict[str, Any],
                    reference: dict[str, Tensor] | None = None) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
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
        console.print(f"[yellow]note:[/yellow] {note}")
    sfx = opts.suffix()
    h5_path = opts.out / f"global_explanations{sfx}.h5"
    fig_path = opts.out / f"global_maps{sfx}.png"
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


def _stdout_console() -> Console:
    """stdout console; 120 columns when it is not a terminal (logs), so tables do not wrap."""
    out = Console()
    return out if out.is_terminal else Console(width=120)


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
    out = _stdout_console()
    out.print(table)
    out.print(f"wrote {summary['global_explanations']} and {summary['figure']} "
                    f"in {summary['seconds']:.1f} s")


# -- PEPPR ----------------------------------------------------------------------------------------
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
    n = len(loc.maps)
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
    assert n > 0
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
    with _progress() as progress:
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

    sfx = opts.suffix()
    out = opts.out
    csv_path, json_path = out / f"peppr{sfx}.csv", out / f"peppr{sfx}.json"
    fig_path = out / f"peppr{sfx}.png"
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
    out = _stdout_console()
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
        out.print(f"[yellow]note:[/yellow] {note}")
    out.print(f"wrote {record['csv']}, {record['json']} and {record['figure']}")


# -- figures -------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def plot_global_maps(path: Path, g: GlobalMaps, mean_image: Tensor, title: str = "",
                     confounder: Tensor | None = None) -> None:
    """Overall and per-class global maps over the mean image (top row) and their pixel-wise
    standard deviation (bottom row), one colour scale per row. Sum-normalised maps are shown
    relative to a uniform map (1 = average importance). The overlay's opacity grows with the
    value, so the anatomy stays visible where the map is low; ``confounder`` (share of images
    with the shortcut artefact per pixel) is outlined in cyan."""
    plt = _pyplot()
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
    fig, axes = plt.subplots(2, len(maps), figsize=(3.1 * len(maps), 6.2), squeeze=False,
                             layout="constrained")
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
                im = ax.imshow(v, cmap="inferno", alpha=alpha, vmin=0, vmax=top)
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
    _save(fig, path)


_METRIC_LABELS = {"accuracy": "accuracy", "p_true": "p(true class)",
                  "agreement": "agreement with clean prediction"}


def plot_peppr(path: Path, fractions: Tensor, results: dict[str, dict[str, PerturbationResult]],
               random_names: list[str], main: str, ends: dict[str, float], title: str = ""
               ) -> None:
    """Erasing (left) and restoration (right) curves of accuracy, the mean probability of the
    true class and the agreement with the clean prediction (rows): the main ranking, its
    inverse, the local control and the random seeds' mean ± one standard deviation."""
    plt = _pyplot()
    k = fractions.numpy() * 100
    rows = list(_METRIC_LABELS)
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.3 * len(rows)), sharex=True)
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
    fig.tight_layout()
    _save(fig, path)
