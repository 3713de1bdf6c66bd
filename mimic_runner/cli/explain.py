"""`mimic-explain`: global explanations of a finished run and PEPPR to check they are faithful.

    mimic-explain global runs/model=baseline
    mimic-explain peppr runs/model=baseline --fill mean --steps 21 --random-seeds 3

Outputs go into the run directory (or --out): global_explanations.h5 + global_maps.png, and
peppr.csv + peppr.json + peppr.png (a suffix _<split> for splits other than test).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mimic_runner.analysis.options import (
    DEVICES,
    FILLS,
    MAX_STEPS,
    MIN_STEPS,
    RANKINGS,
    ExplainOptions,
    PepprOptions,
)
from mimic_runner.data.schema import SPLITS
from mimic_runner.errors import exit_on_user_error
from mimic_runner.explain.global_maps import GROUP_BY, NORMALIZATIONS
from mimic_runner.explain.peppr import METRICS
from mimic_runner.io import check_output_dir
from mimic_runner.log import setup_cli_logging


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", type=Path, help="a finished mimic-run run directory")
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="images to explain (default test: reuses explanations.h5)")
    p.add_argument("--group-by", default="label", choices=GROUP_BY,
                   help="class maps over images of each true label or each prediction")
    p.add_argument("--normalize", default="sum", choices=NORMALIZATIONS,
                   help="per-image normalisation before averaging (default sum to 1)")
    p.add_argument("--checkpoint", default="best", help="best, last or a checkpoint path")
    p.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} or cuda:N")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--recompute", action="store_true",
                   help="recompute the test maps with the model instead of explanations.h5")
    p.add_argument("--max-images", type=int, default=None,
                   help="a seeded random subset of this many images (default all)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN_DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimic-explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("global", help="overall and per-class global explanation maps")
    _common(g)
    p = sub.add_parser("peppr", help="progressive erasing plus progressive restoration")
    _common(p)
    p.add_argument("--fill", default="mean", choices=FILLS,
                   help="what erased pixels become (default: training-set mean intensity)")
    p.add_argument("--blur-sigma", type=float, default=None,
                   help="Gaussian sigma in pixels for --fill blur (default H/16)")
    p.add_argument("--steps", type=int, default=21,
                   help=f"grid points from 0 to 100 %% of the pixels, {MIN_STEPS}..{MAX_STEPS} "
                        "(default 21 = every 5 %%)")
    p.add_argument("--random-seeds", type=int, default=3,
                   help="random-order controls (default 3)")
    p.add_argument("--random-patch", type=int, default=None,
                   help="the random control erases blocks of this many pixels square "
                        "(default about 1/16 of the image side; 1 = pixel-wise)")
    p.add_argument("--ranking", default="global", choices=RANKINGS,
                   help="overall global map, the predicted class's global map, or each "
                        "image's own map")
    p.add_argument("--local-control", action=argparse.BooleanOptionalAction, default=True,
                   help="also evaluate the per-image (local) maps as a ranking")
    p.add_argument("--metric", default="accuracy",
                   choices=METRICS,
                   help="curve the verdict is based on (all are written); agreement = "
                        "prediction unchanged from the clean image")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_cli_logging()
    # Refused before the model is loaded and the maps computed.
    if args.out is not None:
        check_output_dir(args.out, "--out")
    elif args.run_dir.is_dir():
        check_output_dir(args.run_dir, "the run folder (pass --out DIR to write elsewhere)")
    from mimic_runner.analysis.global_explain import run_global
    from mimic_runner.analysis.peppr import run_peppr

    common = dict(run_dir=args.run_dir, split=args.split, group_by=args.group_by,
                  normalize=args.normalize, checkpoint=args.checkpoint, device=args.device,
                  batch_size=args.batch_size, recompute=args.recompute, out_dir=args.out,
                  max_images=args.max_images)
    if args.command == "global":
        run_global(ExplainOptions(**common))
    else:
        run_peppr(PepprOptions(**common, fill=args.fill, steps=args.steps,
                               random_seeds=args.random_seeds, ranking=args.ranking,
                               local_control=args.local_control, blur_sigma=args.blur_sigma,
                               metric=args.metric, random_patch=args.random_patch))


if __name__ == "__main__":
    main()
