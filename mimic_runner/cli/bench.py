"""`mimic-bench`: time the real training code side by side and write a JSON record.

    mimic-bench --quick                       # a minute: small_cnn, N=5, few repeats
    mimic-bench --backbones small_cnn --sizes 10 --models normal_ensemble,expl_ensemble
    mimic-bench --sections gradcam,data --out bench.json

See BENCHMARKS.md for the figures and how they were taken.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from mimic_runner.errors import exit_on_user_error

SECTIONS = ("steps", "gradcam", "data", "mfu")


def _list(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _ints(s: str) -> list[int]:
    return [int(x) for x in _list(s)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mimic-bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_list, help="comma list (default: all four)")
    p.add_argument("--backbones", type=_list, help="comma list (default: small_cnn,resnet18)")
    p.add_argument("--sizes", type=_ints, help="ensemble sizes N (default: 5,10)")
    p.add_argument("--impls", type=_list,
                   help="ensemble strategies, of loop,wide,vmap,batched,auto "
                   "(default: loop,wide,vmap)")
    p.add_argument("--devices", type=_list, help="cpu,cuda (default: every device present)")
    p.add_argument("--precisions", type=_list, help="32-true,bf16-mixed (default: 32-true)")
    p.add_argument("--channels-last", choices=("off", "on", "both"), default="off",
                   help="also time channels-last memory format (default: off)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--repeats", type=int, help="timed rounds (default 10; --quick: 3)")
    p.add_argument("--warmup", type=int, help="untimed rounds (default 1; 3 on a GPU)")
    p.add_argument("--sections", type=_list, default=list(SECTIONS),
                   help=f"comma list of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--cam-backbone", default="resnet18")
    p.add_argument("--cam-batch", type=int, help="Grad-CAM batch (default: 64 GPU, 16 CPU)")
    p.add_argument("--cam-size", type=int, help="Grad-CAM image size (default: 224 GPU, 128 CPU)")
    p.add_argument("--data-epochs", type=int, default=3)
    p.add_argument("--data-override", action="append", default=[], metavar="KEY=VALUE",
                   help="Hydra override for the data section (repeatable), e.g. data=malaria")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true",
                   help="small_cnn only, N=5, 3 repeats: a fast check that everything runs")
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    p.add_argument("--config-dir", type=Path, action="append", default=[], dest="config_dirs",
                   help="a config folder with more model options (as mimic-run --config-dir)")
    return p


def options_from_args(args: argparse.Namespace, console: Console):  # type: ignore[no-untyped-def]
    """Translate the command line into :class:`mimic_runner.bench.suite.BenchOptions`."""
    from mimic_runner.bench.env import available_devices
    from mimic_runner.bench.steps import PRECISIONS, model_options
    from mimic_runner.bench.suite import BenchOptions
    from mimic_runner.errors import UserError
    from mimic_runner.models.ensemble import IMPLS

    # Case names hold "[...]": print them literally, not as rich markup.
    opt = BenchOptions(log=lambda msg: console.print(msg, style="dim", markup=False))
    if args.quick:
        opt.backbones, opt.sizes, opt.repeats = ["small_cnn"], [5], 3
        opt.data_epochs = 1
    for name in ("models", "backbones", "sizes", "impls", "precisions", "sections"):
        if getattr(args, name):
            setattr(opt, name, getattr(args, name))
    opt.devices = args.devices or available_devices()
    if args.repeats:
        opt.repeats = args.repeats
    opt.warmup = args.warmup if args.warmup is not None else (
        3 if "cuda" in opt.devices else 1)
    opt.channels_last = {"off": [False], "on": [True], "both": [False, True]}[args.channels_last]
    opt.batch_size, opt.image_size = args.batch_size, args.image_size
    opt.cam_backbone, opt.cam_batch, opt.cam_size = args.cam_backbone, args.cam_batch, args.cam_size
    opt.data_epochs = args.data_epochs if not args.quick else opt.data_epochs
    opt.flops = not args.no_flops
    opt.data_overrides = list(args.data_override)
    opt.config_dirs = list(args.config_dirs)
    models = model_options(opt.config_dirs)
    for value, allowed, what in ((opt.models, models, "model"), (opt.impls, IMPLS, "impl"),
                                 (opt.precisions, PRECISIONS, "precision"),
                                 (opt.sections, SECTIONS, "section"),
                                 (opt.devices, ("cpu", "cuda"), "device")):
        bad = [v for v in value if v not in allowed]
        if bad:
            raise UserError(f"unknown {what} {', '.join(bad)}; choose from {', '.join(allowed)}")
    if "cuda" in opt.devices and "cuda" not in available_devices():
        raise UserError("--devices cuda: no CUDA device is available")
    return opt


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    import torch

    from mimic_runner.bench import suite
    from mimic_runner.bench.env import environment
    from mimic_runner.bench.report import render
    from mimic_runner.errors import UserError
    from mimic_runner.io import check_output_file, write_json
    from mimic_runner.log import console, stdout

    args = parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        opt = options_from_args(args, console)
        if args.out:  # refused before the minutes of timing, not after
            check_output_file(args.out, "--out")
    except UserError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    meta = environment([sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    result = {"meta": meta, **suite.run(opt)}
    # Wide enough for the tables when piped to a file (rich defaults to 80 columns).
    render(result, stdout)
    if args.out:
        write_json(args.out, result)
        console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
