"""`mimic-report`: the paper's Tables 1-2 and Figures 1-4 from a folder of runs.

    mimic-report runs --compare-paper
    mimic-report runs/table1 --out report1 --format md,csv --seed-for-samples 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mimic_runner.errors import exit_on_user_error


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mimic-report",
        description="Collect the runs under RUNS_DIR (any folder with .hydra/config.yaml) and "
                    "write the paper's Tables 1-2 (rows, mean ± std, 95% CI, paired t-tests) "
                    "and Figures 1-4; missing and failed runs are listed, not fatal.")
    p.add_argument("runs_dir", metavar="RUNS_DIR", type=Path)
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: RUNS_DIR/report)")
    p.add_argument("--compare-paper", action="store_true",
                   help="put the published values beside the reproduced ones")
    p.add_argument("--paper-dir", default=None, metavar="DIR",
                   help="folder with the published table1.csv and table2.csv (default: the "
                        "copy shipped with the package)")
    p.add_argument("--format", default="md,csv,tex", metavar="LIST",
                   help="comma-separated table formats: md, csv, tex (default: all)")
    p.add_argument("--seed-for-samples", type=int, default=0, metavar="S",
                   help="random seed choosing Figure 2's test samples (default: 0)")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from mimic_runner.io import check_output_dir
    from mimic_runner.report.report import make_report, parse_formats, print_report

    # Refused before the runs are read and the figures drawn (minutes on a large sweep).
    if args.out is not None:
        check_output_dir(args.out, "--out")
    elif args.runs_dir.is_dir():
        check_output_dir(args.runs_dir / "report",
                         "the report folder (pass --out DIR to write elsewhere)")

    report = make_report(args.runs_dir, out_dir=args.out, compare_paper=args.compare_paper,
                         paper_dir=args.paper_dir, formats=parse_formats(args.format),
                         seed_for_samples=args.seed_for_samples)
    print_report(report)


if __name__ == "__main__":
    main()
