"""The benchmark suite behind ``mimic-bench``: plans, runs and summarises every section.

Sections (``BenchOptions.sections``):

* ``steps``: training-step time per model, backbone, ensemble size and execution strategy, with
  the paired ratios expl_ensemble / normal_ensemble (same N and strategy) and loop / batched;
* ``gradcam``: images/s of our ``grad_cam`` vs pytorch-grad-cam's ``GradCAM``;
* ``data``: images/s of the train loader vs the images/s the measured steps consume;
* ``mfu``: model FLOPs of each measured step and, on a GPU with a known peak, the utilisation.

Cases compared with each other are built together and timed round-robin (``timing``): all
non-ensembles of one (device, backbone), and all ensembles of one (device, backbone, N).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mimic_runner.bench import timing
from mimic_runner.bench.env import device_name
from mimic_runner.bench.steps import DEFAULT_MODELS, make_step, model_traits

SECTIONS = ("steps", "gradcam", "data", "mfu")


@dataclass
class BenchOptions:
    """What to measure. Defaults: the issue's matrix at the default image and batch size."""

    devices: list[str] = field(default_factory=lambda: ["cpu"])
    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    backbones: list[str] = field(default_factory=lambda: ["small_cnn", "resnet18"])
    sizes: list[int] = field(default_factory=lambda: [5, 10])
    impls: list[str] = field(default_factory=lambda: ["loop", "wide", "vmap"])
    precisions: list[str] = field(default_factory=lambda: ["32-true"])
    channels_last: list[bool] = field(default_factory=lambda: [False])
    batch_size: int = 32
    image_size: int = 128
    repeats: int = 10
    warmup: int = 1
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    cam_backbone: str = "resnet18"
    cam_batch: int | None = None  # default per device: 64 on GPU, 16 on CPU
    cam_size: int | None = None  # default per device: 224 on GPU, 128 on CPU
    data_epochs: int = 3
    data_overrides: list[str] = field(default_factory=list)  # Hydra overrides, e.g. data=...
    flops: bool = True
    log: Callable[[str], None] = print
    config_dirs: list[Path] = field(default_factory=list)  # --config-dir: more model options


def _variant(precision: str, channels_last: bool) -> str:
    return precision + (" +cl" if channels_last else "")


def _case_name(model: str, n: int | None, impl: str | None, precision: str,
               channels_last: bool) -> str:
    base = model if n is None else f"{model} N={n} {impl}"
    return f"{base} [{_variant(precision, channels_last)}]"


def _groups(opt: BenchOptions, device: str, backbone: str) -> list[list[dict[str, Any]]]:
    """Cases to time together: the non-ensembles, then the ensembles per N."""
    variants = [(p, cl) for p in opt.precisions for cl in opt.channels_last]
    ensemble = {m: model_traits(m, opt.config_dirs).is_ensemble for m in opt.models}
    singles = [dict(model=m, n=None, impl=None, precision=p, channels_last=cl)
               for m in opt.models if not ensemble[m] for p, cl in variants]
    groups = [singles] if singles else []
    for n in opt.sizes:
        g = [dict(model=m, n=n, impl=i, precision=p, channels_last=cl)
             for m in opt.models if ensemble[m] for i in opt.impls for p, cl in variants]
        if g:
            groups.append(g)
    return groups


def run_steps(opt: BenchOptions, device: str, backbone: str) -> tuple[list[dict], list[dict]]:
    """Time the training steps of one (device, backbone); returns (rows, paired ratios)."""
    rows: list[dict] = []
    ratios: list[dict] = []
    for group in _groups(opt, device, backbone):
        steps = {}
        for c in group:
            name = _case_name(c["model"], c["n"], c["impl"], c["precision"], c["channels_last"])
            try:
                steps[name] = make_step(c["model"], backbone, device, ensemble_size=c["n"],
                                        impl=c["impl"], batch_size=opt.batch_size,
                                        size=opt.image_size, precision=c["precision"],
                                        channels_last=c["channels_last"],
                                        config_dirs=opt.config_dirs)
                c["name"] = name
            except NotImplementedError as exc:
                opt.log(f"  skip {backbone} {name}: {exc}")
        group = [c for c in group if "name" in c]
        if not steps:
            continue
        opt.log(f"[{device}] {backbone}: timing {', '.join(steps)}")
        load0 = timing.load_average()
        times = timing.interleaved(steps, opt.repeats, opt.warmup, device)
        load1 = timing.load_average()
        flops: dict[tuple, int] = {}
        for c in group:
            st = timing.summarize(times[c["name"]])
            row = {"device": device, "device_name": device_name(device), "backbone": backbone,
                   **{k: c[k] for k in ("model", "n", "impl", "precision", "channels_last")},
                   "batch_size": opt.batch_size, "image_size": opt.image_size,
                   "seconds": st.as_dict(), "times": times[c["name"]],
                   "images_per_s": opt.batch_size / st.median,
                   "load_average": [load0, load1]}
            if opt.flops and "mfu" in opt.sections:
                # Model FLOPs: counted once per model/N/precision on the loop (same maths for
                # every strategy; the counter's grouped-conv backward formula over-counts).
                key = (c["model"], c["n"], c["precision"])
                if key not in flops:
                    flops[key] = _model_flops(c, backbone, device, opt)
                row["flops"] = flops[key]
            rows.append(row)
        ratios += _paired_ratios(group, times, device, backbone)
        del steps
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return rows, ratios


def _model_flops(c: dict[str, Any], backbone: str, device: str, opt: BenchOptions) -> int:
    from mimic_runner.bench.mfu import count_flops

    step = make_step(c["model"], backbone, device, ensemble_size=c["n"],
                     impl="loop" if c["n"] else None, batch_size=opt.batch_size,
                     size=opt.image_size, precision=c["precision"],
                     config_dirs=opt.config_dirs)
    return count_flops(step)


def _paired_ratios(group: list[dict], times: dict[str, list[float]], device: str,
                   backbone: str) -> list[dict]:
    """expl/normal at the same N, strategy and variant; loop/other strategy per model."""
    by_key = {(c["model"], c["n"], c["impl"], c["precision"], c["channels_last"]): c["name"]
              for c in group}
    out = []

    def add(kind: str, num: str, den: str, **labels: Any) -> None:
        st = timing.paired_ratio(times[num], times[den])
        out.append({"device": device, "backbone": backbone, "ratio": kind, "num": num,
                    "den": den, **labels, "stats": st.as_dict()})

    for (model, n, impl, prec, cl), name in by_key.items():
        if model == "expl_ensemble" and ("normal_ensemble", n, impl, prec, cl) in by_key:
            add("expl/normal", name, by_key[("normal_ensemble", n, impl, prec, cl)],
                n=n, impl=impl, variant=_variant(prec, cl))
        if impl != "loop" and (model, n, "loop", prec, cl) in by_key:
            add(f"loop/{impl}", by_key[(model, n, "loop", prec, cl)], name, model=model, n=n,
                variant=_variant(prec, cl))
        if (prec, cl) != ("32-true", False) and (model, n, impl, "32-true", False) in by_key:
            add(f"fp32/{_variant(prec, cl)}", by_key[(model, n, impl, "32-true", False)], name,
                model=model, n=n, impl=impl)
    return out


def run_gradcam(opt: BenchOptions, device: str) -> dict[str, Any]:
    """Images/s of ours vs pytorch-grad-cam on one batch (interleaved repeats)."""
    from mimic_runner.bench.gradcam import build_classifier, cases

    gpu = device == "cuda"
    b = opt.cam_batch or (64 if gpu else 16)
    s = opt.cam_size or (224 if gpu else 128)
    net = build_classifier(opt.cam_backbone).to(device)
    x = torch.randn(b, 3, s, s, generator=torch.Generator().manual_seed(0)).to(device)
    fns, diff = cases(net, x)
    opt.log(f"[{device}] Grad-CAM {opt.cam_backbone} batch {b} at {s} px")
    times = timing.interleaved(fns, opt.repeats, opt.warmup, device)
    res: dict[str, Any] = {"device": device, "device_name": device_name(device),
                           "backbone": opt.cam_backbone, "batch_size": b, "image_size": s,
                           "channels": 3, "max_abs_diff": diff,
                           "load_average": timing.load_average(), "impls": {}}
    for name, t in times.items():
        st = timing.summarize(t)
        res["impls"][name] = {"seconds": st.as_dict(), "images_per_s": b / st.median}
    res["speedup"] = timing.paired_ratio(times["pytorch-grad-cam"], times["ours"]).as_dict()
    return res


def run_data(opt: BenchOptions, step_rows: list[dict]) -> dict[str, Any]:
    """Train-loader images/s (default data) against what the measured steps consume.

    The loader runs in the training process on the host (``num_workers`` of the config), so
    its rate is compared with every measured step, CPU or GPU.
    """
    from mimic_runner.bench.data import build_datamodule, epoch_seconds

    dm = build_datamodule([*opt.data_overrides, f"data.batch_size={opt.batch_size}"])
    opt.log(f"data: {opt.data_epochs} epochs of the train loader")
    per_epoch = []
    for e in range(opt.data_epochs + 1):
        sec, n = epoch_seconds(dm, epoch=e)
        if e:  # the first pass warms up
            per_epoch.append(n / sec)
    st = timing.summarize(per_epoch)
    res: dict[str, Any] = {"dataset": dm.name, "batch_size": opt.batch_size,
                           "num_workers": dm.num_workers, "train_images": len(dm.splits["train"]),
                           "setup_seconds": dm.setup_seconds, "images_per_s": st.as_dict(),
                           "load_average": timing.load_average(), "consumers": []}
    for row in step_rows:
        if row["model"] in ("baseline", "expl_ensemble"):
            res["consumers"].append({"device": row["device"],
                "case": _case_name(row["model"], row["n"], row["impl"], row["precision"],
                                   row["channels_last"]),
                "backbone": row["backbone"], "images_per_s": row["images_per_s"],
                "data_over_model": st.median / row["images_per_s"]})
    return res


def run_mfu(opt: BenchOptions, step_rows: list[dict]) -> list[dict]:
    """Achieved TFLOP/s of every measured step with counted FLOPs; MFU where a peak is known."""
    from mimic_runner.bench.mfu import peak_tflops, utilisation

    out = []
    for row in step_rows:
        if "flops" not in row:
            continue
        peak = peak_tflops(row["device_name"], row["precision"]) if row["device"] == "cuda" \
            else None
        out.append({"device": row["device"], "device_name": row["device_name"],
                    "case": _case_name(row["model"], row["n"], row["impl"], row["precision"],
                                       row["channels_last"]),
                    "backbone": row["backbone"], "flops": row["flops"],
                    **utilisation(row["flops"], row["seconds"]["median"], peak)})
    return out


def run(opt: BenchOptions) -> dict[str, Any]:
    """Every requested section on every requested device; the JSON-ready result."""
    result: dict[str, Any] = {"options": {k: v for k, v in vars(opt).items() if k != "log"},
                              "steps": [], "ratios": [], "gradcam": [], "data": None,
                              "mfu": []}
    for device in opt.devices:
        if "steps" in opt.sections or "mfu" in opt.sections:
            for backbone in opt.backbones:
                rows, ratios = run_steps(opt, device, backbone)
                result["steps"] += rows
                result["ratios"] += ratios
        if "gradcam" in opt.sections:
            result["gradcam"].append(run_gradcam(opt, device))
    if "data" in opt.sections:
        result["data"] = run_data(opt, result["steps"])
    if "mfu" in opt.sections:
        result["mfu"] = run_mfu(opt, result["steps"])
    result["load_average_end"] = timing.load_average()
    return result
