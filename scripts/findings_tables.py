"""The tables of docs/findings.md from the runs of scripts/findings_sweep.sh.

    python scripts/findings_tables.py runs/findings > findings_tables.md

Per dataset (Table 1 runs): every model's mean ± std over seeds for the gaze-agreement measures
and their diagnostics, the reference maps, the cost per run; paired comparisons over seeds (mean
difference, its 95 % t-interval, the paired t-test): explanation vs normal ensemble, gaze-guided
vs normal, explanation+gaze vs gaze-guided, the authors' recipe vs normal, and the guided
ensemble against the mean-gaze references of the same test images; the averaging curve (one
member vs all N, averaged over members). Table 2 runs: KLD, NSS and accuracy by ensemble size.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

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
MODELS = ["baseline", "normal_ensemble", "expl_ensemble", "gaze_guided_ensemble",
          "expl_gaze_ensemble", "expl_ensemble_authors", "gaze_guided", "improved_unet"]
# (a, b): a − b paired over seeds; "ref:<name>" is a reference map on the same test images.
COMPARISONS = [("expl_ensemble", "normal_ensemble"), ("gaze_guided_ensemble", "normal_ensemble"),
               ("expl_gaze_ensemble", "gaze_guided_ensemble"),
               ("expl_gaze_ensemble", "normal_ensemble"),
               ("expl_ensemble_authors", "normal_ensemble"),
               ("gaze_guided_ensemble", "ref:mean_gaze"),
               ("gaze_guided_ensemble", "ref:mean_gaze_grid")]
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
    root = args.runs_dir
    table1 = root / "table1" if (root / "table1").is_dir() else root
    runs = [r for r in collect_runs(table1) if r.status == "finished"]
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
                      "val/acc", "train_seconds", "wall_seconds"):
                v = r.metrics.get(k)
                if isinstance(v, (int, float)):
                    val[(r.model, k)][r.seed] = float(v) * (100 if k.endswith("acc") else 1)
            for ref in REFS:
                for m in ("kld", "nss"):
                    v = r.metrics.get(f"ref/{ref}/{m}")
                    if isinstance(v, (int, float)):
                        val[(f"ref:{ref}", m)][r.seed] = float(v)
                        val[(f"ref:{ref}", f"test/{m}")][r.seed] = float(v)
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
            if not val[(m, "test/acc")]:
                continue
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
        out.write("\nPaired over seeds (n, mean difference a − b [95 % CI], paired t-test "
                  "p):\n\n| a − b | measure | n | Δ | 95 % CI | p |\n"
                  "|---|---|---:|---:|---:|---:|\n")
        for a, b in COMPARISONS:
            for k, lbl, _ in MEASURES:
                if b.startswith("ref:") and k not in ("test/kld", "test/nss"):
                    continue
                n, d, lo, hi, p = paired(val[(a, k)], val[(b, k)])
                if n:
                    out.write(f"| {a} − {b} | {lbl} | {n} | {_f(d)} | [{_f(lo)}, {_f(hi)}] | "
                              f"{_f(p, 4)} |\n")
        out.write("\nCost per run (seconds, mean ± std; training / whole run):\n\n"
                  "| model | train | wall |\n|---|---:|---:|\n")
        for m in MODELS:
            if val[(m, "train_seconds")]:
                out.write(f"| {m} | {_ms(list(val[(m, 'train_seconds')].values()), 0)} | "
                          f"{_ms(list(val[(m, 'wall_seconds')].values()), 0)} |\n")
        out.write("\nAveraging alone: KLD and NSS of one member's map (k = 1) and of the mean of "
                  "all N (k = N):\n\n| model | KLD k=1 | KLD k=N | NSS k=1 | NSS k=N |\n"
                  "|---|---:|---:|---:|---:|\n")
        for m in MODELS:
            if not val[(m, "kld@1")]:
                continue
            out.write(f"| {m} | " + " | ".join(_ms(list(val[(m, k)].values()))
                                             for k in ("kld@1", "kld@N", "nss@1", "nss@N"))
                      + " |\n")
        out.write("\nCheckpoint rules (best val/acc from 40 % of the epochs on vs the last "
                  "epoch):\n\n| model | tested epoch (0-based) | acc best | acc last | "
                  "KLD best | KLD last | NSS best | NSS last |\n|---|---:|---:|---:|---:|---:|"
                  "---:|---:|\n")
        for m in MODELS:
            if not val[(m, "test/acc")]:
                continue
            out.write(f"| {m} | {_ms(list(val[(m, 'tested_epoch')].values()), 1)} | "
                      + " | ".join(_ms(list(val[(m, k)].values()), 1 if "acc" in k else 3)
                                   for k in ("test/acc", "test_last/acc", "test/kld",
                                             "test_last/kld", "test/nss", "test_last/nss"))
                      + " |\n")

    if (root / "table2").is_dir():
        table2(root / "table2", out, extra=by_data.get("synth_cxr_clean", []))


def table2(folder: Path, out: Any, extra: list | None = None) -> None:
    """Table 2's question at the reduced scale: the scores by ensemble size. ``extra``: Table 1
    runs of the same models and seeds (their N = 5) to complete the sizes."""
    runs = [r for r in collect_runs(folder) if r.status == "finished"]
    models, seeds = {r.model for r in runs}, {r.seed for r in runs}
    runs += [r for r in extra or () if r.model in models and r.seed in seeds]
    cells: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        size = int(r.metrics.get("ensemble_size") or 1)
        for key in ("test/acc", "test/kld", "test/nss"):
            v = r.metrics.get(key)
            if isinstance(v, (int, float)):
                cells[(r.model, size)][key].append(float(v) * (100 if key == "test/acc" else 1))
    seeds = sorted({r.seed for r in runs})
    out.write(f"\n## Table 2: ensemble size ({len(runs)} runs, seeds "
              f"{', '.join(map(str, seeds))})\n\n| model | N | acc | KLD | NSS |\n"
              "|---|---:|---:|---:|---:|\n")
    for (model, size), v in sorted(cells.items(), key=lambda kv: (MODELS.index(kv[0][0])
                                                                  if kv[0][0] in MODELS else 99,
                                                                  kv[0][1])):
        out.write(f"| {model} | {size} | {_ms(v['test/acc'], 1)} | {_ms(v['test/kld'])} | "
                  f"{_ms(v['test/nss'])} |\n")


if __name__ == "__main__":
    main()
