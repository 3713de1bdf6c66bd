"""The tables of docs/findings.md from the runs of scripts/findings_sweep.sh.

    python scripts/findings_tables.py runs/findings/table1 > findings_tables.md

Per dataset: every model's mean ± std over seeds for the gaze-agreement measures and their
diagnostics; the explanation ensemble against the normal one, paired over seeds (mean
difference, its 95 % t-interval, the paired t-test); the averaging curve (KLD of the mean map of
the first k members); both checkpoint rules; the reference maps.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

from mimic_runner.report.collect import collect_runs

MEASURES = [("test/acc", "acc", 100.0), ("test/kld", "KLD", 1.0), ("test/nss", "NSS", 1.0),
            ("test/kld_floor", "KLD floored", 1.0), ("test/gaze_on_zero", "gaze on 0 px", 1.0),
            ("test_label/kld", "KLD (label)", 1.0), ("test_label/nss", "NSS (label)", 1.0),
            ("test_correct/kld", "KLD (correct)", 1.0), ("test/finding_share", "finding share",
                                                         1.0),
            ("test/confounder_share", "confounder share", 1.0),
            ("test/cam_disagreement", "disagreement", 1.0)]
MODELS = ["baseline", "improved_unet", "normal_ensemble", "expl_ensemble"]
REFS = ["uniform", "mean_gaze", "mean_gaze_grid", "own_gaze_grid"]


def _f(v: float, d: int = 3) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.{d}f}"


def _ms(xs: list[float], d: int = 3) -> str:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    if not xs:
        return ""
    if len(xs) == 1:
        return _f(xs[0], d)
    return f"{np.mean(xs):.{d}f} ± {np.std(xs, ddof=1):.{d}f}"


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[int, float, float, float, float]:
    """n, mean of a - b, 95 % CI low/high, paired t-test p."""
    seeds = sorted(s for s in a if s in b and math.isfinite(a[s]) and math.isfinite(b[s]))
    d = np.array([a[s] - b[s] for s in seeds])
    if len(d) < 2:
        return len(d), float(d.mean()) if len(d) else math.nan, math.nan, math.nan, math.nan
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    p = stats.ttest_1samp(d, 0.0).pvalue if d.std() > 0 else math.nan
    return len(d), float(d.mean()), float(d.mean() - half), float(d.mean() + half), float(p)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs_dir", type=Path)
    args = ap.parse_args(argv)
    runs = [r for r in collect_runs(args.runs_dir) if r.status == "finished"]
    by_data: dict[str, list] = defaultdict(list)
    for r in runs:
        by_data[str(r.metrics.get("dataset"))].append(r)
    out = sys.stdout
    for data, rs in sorted(by_data.items()):
        val = defaultdict(dict)  # (model, key) -> {seed: value}
        for r in rs:
            for key, _, scale in MEASURES:
                v = r.metrics.get(key)
                if isinstance(v, (int, float)):
                    val[(r.model, key)][r.seed] = float(v) * scale
            for k in ("test_last/acc", "test_last/kld", "test_last/nss", "tested_epoch",
                      "val/acc"):
                v = r.metrics.get(k)
                if isinstance(v, (int, float)):
                    val[(r.model, k)][r.seed] = float(v) * (100 if k.endswith("acc") else 1)
            for ref in REFS:
                for m in ("kld", "nss"):
                    v = r.metrics.get(f"ref/{ref}/{m}")
                    if isinstance(v, (int, float)):
                        val[(f"ref:{ref}", m)][r.seed] = float(v)
            for m in ("kld", "nss"):
                curve = r.metrics.get(f"test/{m}_at_k")
                if isinstance(curve, list) and curve:
                    val[(r.model, f"{m}@1")][r.seed] = float(curve[0] or math.nan)
                    val[(r.model, f"{m}@N")][r.seed] = float(curve[-1] or math.nan)
        seeds = sorted({r.seed for r in rs})
        out.write(f"\n## data={data} ({len(rs)} runs, seeds {', '.join(map(str, seeds))})\n\n")
        out.write("| model | " + " | ".join(lbl for _, lbl, _ in MEASURES) + " |\n")
        out.write("|---|" + "---:|" * len(MEASURES) + "\n")
        for m in MODELS:
            cells = [_ms(list(val[(m, k)].values()), 1 if k == "test/acc" else 3)
                     for k, _, _ in MEASURES]
            out.write(f"| {m} | " + " | ".join(cells) + " |\n")
        for ref in REFS:
            cells = []
            for k, _, _ in MEASURES:
                short = k.split("/")[-1]
                cells.append(_ms(list(val[(f"ref:{ref}", short)].values()))
                             if k in ("test/kld", "test/nss") else "")
            out.write(f"| reference: {ref} | " + " | ".join(cells) + " |\n")
        out.write("\nExplanation ensemble minus normal ensemble, paired over seeds "
                  "(n, mean difference [95 % CI], paired t-test p):\n\n")
        out.write("| measure | n | Δ (expl − normal) | 95 % CI | p |\n|---|---:|---:|---:|---:|\n")
        for k, lbl, _ in MEASURES:
            n, d, lo, hi, p = paired(val[("expl_ensemble", k)], val[("normal_ensemble", k)])
            if n:
                out.write(f"| {lbl} | {n} | {_f(d)} | [{_f(lo)}, {_f(hi)}] | {_f(p, 4)} |\n")
        out.write("\nAveraging alone: KLD and NSS of one member's map (k = 1) and of the mean of "
                  "all N (k = N):\n\n| model | KLD k=1 | KLD k=N | NSS k=1 | NSS k=N |\n"
                  "|---|---:|---:|---:|---:|\n")
        for m in ("normal_ensemble", "expl_ensemble"):
            out.write(f"| {m} | " + " | ".join(_ms(list(val[(m, k)].values()))
                                             for k in ("kld@1", "kld@N", "nss@1", "nss@N"))
                      + " |\n")
        out.write("\nCheckpoint rules (best val/acc from 40 % of the epochs on vs the last "
                  "epoch):\n\n| model | tested epoch (0-based) | acc best | acc last | "
                  "KLD best | KLD last | NSS best | NSS last |\n|---|---:|---:|---:|---:|---:|"
                  "---:|---:|\n")
        for m in MODELS:
            out.write(f"| {m} | {_ms(list(val[(m, 'tested_epoch')].values()), 1)} | "
                      + " | ".join(_ms(list(val[(m, k)].values()), 1 if "acc" in k else 3)
                                   for k in ("test/acc", "test_last/acc", "test/kld",
                                             "test_last/kld", "test/nss", "test_last/nss"))
                      + " |\n")


if __name__ == "__main__":
    main()
