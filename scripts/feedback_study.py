#!/usr/bin/env python
"""Scripted feedback study: does feedback on attention move it off a shortcut artefact?

On synthetic chest X-rays whose training split carries a class-correlated corner marker (the
``confounder``), train ``model=attention_branch`` with ``mimic-run``; then, as a scripted
"expert", add feedback on a few dozen training images — exclude the marker (the bounding box of
the ``confounder`` mask) and include the finding (the bounding box of the gaze heatmap's high
region) — retrain from the accepted version, and measure on the test split, before and after:
accuracy, the attention share on the artefact (Σ M·conf / Σ M) and the mean attention on it.
A control retraining with γ = 0 (same data, epochs and seed, no feedback term) separates the
effect of the feedback from that of training longer; it is rolled back.

    python scripts/feedback_study.py --out study            # trains, then retrains (minutes)
    python scripts/feedback_study.py --run-dir RUN --out study   # reuse a trained run

Writes ``OUT/feedback_study.json`` and prints a table. Every number is measured by this run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def bbox(mask: np.ndarray, pad: int = 1) -> list[list[float]] | None:
    """Image-normalised corners of a boolean mask's bounding box (padded by ``pad`` pixels)."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    h, w = mask.shape
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + 1 + pad, h)
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + 1 + pad, w)
    return [[c0 / w, r0 / h], [c1 / w, r1 / h]]


def scripted_feedback(session: Any, n_images: int, gaze_quantile: float, seed: int
                      ) -> list[dict[str, Any]]:
    """Exclude the artefact and include the gaze's high region on ``n_images`` train images."""
    train = session.dm.splits["train"].tensors
    if "confounder" not in train or "gaze" not in train:
        raise SystemExit("the dataset needs 'confounder' and 'gaze' maps for this study")
    ids = session.dm.ids["train"]
    order = np.random.default_rng(seed).permutation(len(ids))
    rois = []
    chosen = 0
    for row in order:
        conf = train["confounder"][row].numpy()
        gaze = train["gaze"][row].numpy()
        exclude = bbox(conf)
        high = gaze >= gaze_quantile * gaze.max() if gaze.max() > 0 else None
        include = bbox(high) if high is not None else None
        if exclude is None or include is None:
            continue
        rois.append({"image_id": str(ids[row]), "shape": "rect", "kind": "exclude",
                     "points": exclude})
        rois.append({"image_id": str(ids[row]), "shape": "rect", "kind": "include",
                     "points": include})
        chosen += 1
        if chosen == n_images:
            break
    return rois


def measure(session: Any, before: int, after: int) -> dict[str, Any]:
    from mimic_runner.feedback.diff import compare_versions

    return compare_versions(session, before, after, heldout="test")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="feedback-study", help="study folder")
    p.add_argument("--run-dir", default=None, help="reuse this attention_branch run")
    p.add_argument("--data", default="synth_cxr", help="a synthetic data config with gaze and "
                   "a confounder: synth_cxr (default) or synth_smear")
    p.add_argument("--n", type=int, default=1200, help="synthetic images (train 70%%)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=6, help="initial training epochs")
    p.add_argument("--feedback-images", type=int, default=36)
    p.add_argument("--gaze-quantile", type=float, default=0.5,
                   help="the finding = pixels with gaze >= this fraction of the image's max")
    p.add_argument("--gamma", type=float, default=30.0)
    p.add_argument("--retrain-epochs", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train", default="all", choices=("attention", "perception", "all"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-control", action="store_true", help="skip the γ = 0 control")
    args = p.parse_args(argv)

    from mimic_runner.feedback.retrain import RetrainParams, retrain
    from mimic_runner.feedback.runs import train_run
    from mimic_runner.feedback.session import FeedbackSession

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        print(f"training model=attention_branch ({args.n} images, {args.image_size} px, "
              f"{args.epochs} epochs) ...", file=sys.stderr)
        run_dir = train_run(out / "train", [
            "model=attention_branch", f"data={args.data}", f"data.synth.params.n={args.n}",
            f"data.image_size={args.image_size}", f"trainer.max_epochs={args.epochs}",
            f"seed={args.seed}"])
    train_seconds = time.perf_counter() - t0

    workspace = out / "workspace"
    shutil.rmtree(workspace, ignore_errors=True)  # the study's own store: start clean
    session = FeedbackSession(run_dir, workspace=workspace, author="feedback_study.py")
    rois = scripted_feedback(session, args.feedback_images, args.gaze_quantile, args.seed)
    session.add_rois(rois)
    n_fb = len({r["image_id"] for r in rois})
    print(f"feedback: {len(rois)} regions on {n_fb} training images", file=sys.stderr)

    params = dict(epochs=args.retrain_epochs, lr=args.lr, train=args.train, heldout="test",
                  seed=args.seed)
    results: dict[str, Any] = {"run_dir": str(run_dir), "feedback_images": n_fb,
                               "feedback_regions": len(rois), "args": vars(args),
                               "initial_training_seconds": round(train_seconds, 1)}
    if not args.no_control:
        t = time.perf_counter()
        control = retrain(session, RetrainParams(gamma=0.0, **params))  # type: ignore[arg-type]
        results["control"] = measure(session, 1, int(control["id"]))
        results["control"]["retrain_seconds"] = round(time.perf_counter() - t, 1)
        session.rollback()
    t = time.perf_counter()
    cand = retrain(session, RetrainParams(gamma=args.gamma, **params))  # type: ignore[arg-type]
    results["feedback"] = measure(session, 1, int(cand["id"]))
    results["feedback"]["retrain_seconds"] = round(time.perf_counter() - t, 1)
    session.accept(int(cand["id"]))
    results["total_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "feedback_study.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print_table(results)


def print_table(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    fb = results["feedback"]
    ctrl = results.get("control")
    table = Table(title=f"feedback study — test split ({fb['heldout']['n_images']} images); "
                  f"feedback on {results['feedback_images']} training images")
    table.add_column("measure")
    table.add_column("v1 (trained)", justify="right")
    if ctrl:
        table.add_column("γ=0 control", justify="right")
    table.add_column(f"feedback (γ={results['args']['gamma']})", justify="right")

    def row(label: str, block: str, key: str) -> None:
        b = fb[block].get(key)
        if b is None:
            return
        cells = [label, f"{b['before']:.4f}"]
        if ctrl:
            c = ctrl[block].get(key)
            cells.append(f"{c['after']:.4f}" if c else "-")
        cells.append(f"{b['after']:.4f}")
        table.add_row(*cells)

    row("test accuracy", "heldout", "accuracy")
    row("test: attention share on the artefact", "heldout", "confounder_share")
    row("test: mean attention on the artefact", "heldout", "confounder_attention")
    row("test: mean attention overall", "heldout", "attention_mean")
    row("feedback images: mean attention in 'not here'", "feedback", "exclude_attention")
    row("feedback images: mean attention in 'look here'", "feedback", "include_attention")
    row("feedback images: share in 'not here'", "feedback", "exclude_share")
    row("feedback images: share in 'look here'", "feedback", "include_share")
    Console().print(table)
    print(f"test predictions changed by the feedback retraining: "
          f"{fb['heldout']['prediction_changes']}; total {results['total_seconds']} s")


if __name__ == "__main__":
    main()
