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
    python scripts/feedback_study.py --run-dir RUN --out study --page-walk shortcut
        # the TNO task walked on the page in Chromium: page time and actions

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
    p.add_argument("--page-walk", choices=("per-image", "shortcut"), default=None,
                   help="instead of the study: walk the TNO task on the page in Chromium and "
                   "time it (per-image: both regions drawn on every image; shortcut: the "
                   "marker found and applied once)")
    p.add_argument("--walk-images", type=int, default=10, help="images marked in the walk")
    p.add_argument("--viewport", default="1280x720", help="the walk's window, WIDTHxHEIGHT")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args(argv)

    from mimic_runner.feedback.retrain import RetrainParams, retrain
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from feedback_runs import train_run  # the test fixtures' run builder

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
    if args.page_walk:
        width, height = (int(v) for v in args.viewport.split("x"))
        walked = page_walk(run_dir, out, args.walk_images, width, height, args.chromium,
                           args.page_walk)
        walked["run_dir"] = str(run_dir)
        name = f"page_walk_{args.page_walk}_{args.viewport}.json"
        (out / name).write_text(json.dumps(walked, indent=2) + "\n")
        print(json.dumps(walked))
        return

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


# -- the TNO task walked in a real browser, timed ------------------------------------------------
class Walker:
    """Drive the page like a reviewer and count what a person would do (clicks, drags, keys,
    typed fields); time is page time from the first load to the last decision shown."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.counts = {"clicks": 0, "drags": 0, "keys": 0, "typed": 0, "scrolls": 0}

    def click(self, sel: str) -> None:
        self.page.click(sel)
        self.counts["clicks"] += 1

    def key(self, key: str) -> None:
        self.page.keyboard.press(key)
        self.counts["keys"] += 1

    def fill(self, sel: str, text: str) -> None:
        self.page.fill(sel, text)
        self.counts["typed"] += 1

    def select(self, sel: str, value: str) -> None:
        self.page.select_option(sel, value)
        self.counts["clicks"] += 2  # open the list, pick an entry

    def drag(self, canvas: str, box: list[list[float]]) -> None:
        (x0, y0), (x1, y1) = box
        to = "([s, x, y]) => window.mimicFeedback.imageToClient(s, x, y)"
        # Below the sticky header and above the window's bottom, or a person scrolls first.
        inside = ("([s, y]) => { const p = window.mimicFeedback.imageToClient(s, 0.5, y); "
                  "const top = document.querySelector('header').getBoundingClientRect().bottom; "
                  "return p[1] > top + 4 && p[1] < window.innerHeight - 4; }")
        if not all(self.page.evaluate(inside, [canvas, y]) for y in (y0, y1)):
            self.page.evaluate("s => { const c = document.querySelector(s).getBoundingClientRect();"
                               " const top = document.querySelector('header')"
                               ".getBoundingClientRect().bottom;"
                               " window.scrollBy(0, c.top - top - 8); }", canvas)
            self.counts["scrolls"] += 1
        a = self.page.evaluate(to, [canvas, x0, y0])
        b = self.page.evaluate(to, [canvas, x1, y1])
        m = self.page.mouse
        m.move(*a)
        m.down()
        m.move((a[0] + b[0]) / 2, (a[1] + b[1]) / 2, steps=3)
        m.move(*b, steps=3)
        m.up()
        self.counts["drags"] += 1

    def n_rois(self, n: int) -> None:
        self.page.wait_for_function(
            "n => document.querySelectorAll('#roi-list li').length === n", arg=n, timeout=60_000)


def walk_boxes(session: Any, ids: list[str], n: int) -> list[tuple[str, Any, Any]]:
    """The first ``n`` of ``ids`` (list order) with a marker: (id, marker box, finding box)."""
    train = session.dm.splits["train"].tensors
    row_of = {str(i): r for r, i in enumerate(session.dm.ids["train"])}
    out = []
    for image_id in ids:
        row = row_of[image_id]
        conf = train["confounder"][row].numpy()
        gaze = train["gaze"][row].numpy()
        marker = bbox(conf)
        finding = bbox(gaze >= 0.5 * gaze.max()) if gaze.max() > 0 else None
        if marker and finding:
            out.append((image_id, marker, finding))
        if len(out) == n:
            break
    return out


def page_walk(run_dir: Path, out: Path, n_images: int, width: int, height: int,
              chromium: str, strategy: str) -> dict[str, Any]:
    """Walk the TNO task on the page: spot the shortcut, mark ``n_images`` images (the marker
    "not here", the finding "look here"), retrain, compare, accept, revert. ``strategy``:
    ``per-image`` draws both regions on every image (all the page offered before issue 21);
    ``shortcut`` finds the marker once (a region, the list sorted by the attention inside it),
    applies it to the images in the list at once, and draws only the findings."""
    import socket
    import threading

    import uvicorn
    from playwright.sync_api import sync_playwright

    from mimic_runner.feedback.app import create_app
    from mimic_runner.feedback.middleware import allowed_hosts_for
    from mimic_runner.feedback.session import FeedbackSession

    workspace = out / f"walk-{strategy}-{width}x{height}"
    shutil.rmtree(workspace, ignore_errors=True)
    session = FeedbackSession(run_dir, workspace=workspace, author="walk")
    app = create_app(session, allowed_hosts=allowed_hosts_for("127.0.0.1"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=srv.run, daemon=True).start()
    while not srv.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/"
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    result: dict[str, Any] = {"strategy": strategy, "viewport": f"{width}x{height}"}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=args, headless=True)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("dialog", lambda d: d.accept())
            w = Walker(page)
            t0 = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            ids = page.eval_on_selector_all("#image-list button", "bs => bs.map(b => b.dataset.id)")
            chosen = walk_boxes(session, ids, n_images)
            try:
                if strategy == "per-image":
                    _walk_per_image(w, chosen)
                else:
                    _walk_shortcut(w, session, chosen)
            except Exception:
                page.screenshot(path=str(out / f"walk-{strategy}-{width}x{height}-failed.png"))
                raise
            result["marking_s"] = round(time.perf_counter() - t0, 1)
            _walk_decisions(w, page, native=strategy == "per-image")
            result["page_s"] = round(time.perf_counter() - t0, 1)
            result.update(w.counts)
            result["actions"] = sum(w.counts.values())
            result["regions"] = len(session.store.rois())
            result["images_with_regions"] = len({r["image_id"] for r in session.store.rois()})
            page.screenshot(path=str(out / f"walk-{strategy}-{width}x{height}.png"))
            browser.close()
    finally:
        srv.should_exit = True
    return result


def _walk_per_image(w: Walker, chosen: list[tuple[str, Any, Any]]) -> None:
    w.click(".tool[data-tool='rect']")
    for image_id, marker, finding in chosen:
        w.click(f"#image-list button[data-id='{image_id}']")
        w.page.wait_for_function(f"() => window.mimicFeedback.state.imageId === '{image_id}'")
        w.click("input[name='kind'][value='exclude']")
        w.drag("#image-canvas", marker)
        w.n_rois(1)
        w.click("input[name='kind'][value='include']")
        w.drag("#image-canvas", finding)
        w.n_rois(2)


def _walk_shortcut(w: Walker, session: Any, chosen: list[tuple[str, Any, Any]]) -> None:
    page = w.page
    first, marker, _ = chosen[0]
    # Spot: a "not here" box on the marker, the list sorted by the attention inside it.
    w.click(f"#image-list button[data-id='{first}']")
    page.wait_for_function(f"() => window.mimicFeedback.state.imageId === '{first}'")
    w.key("r")
    w.key("n")
    w.drag("#image-canvas", marker)
    w.n_rois(1)
    w.click("#roi-list li .find-here")
    page.wait_for_function("() => window.mimicFeedback.state.filters.region !== null")
    # Mark: the box on the images of the list at once (page of 10), then the findings.
    w.select("#page-size", "10")
    page.wait_for_function("() => document.querySelectorAll('#image-list button').length <= 10")
    w.click("#roi-list li .apply-roi")
    w.click("#apply-dialog input[value='page']")
    w.click("#apply-go")
    page.wait_for_function("() => window.mimicFeedback.state.status.images_with_rois >= 10",
                           timeout=60_000)
    ids = page.eval_on_selector_all("#image-list button", "bs => bs.map(b => b.dataset.id)")
    boxes = {i: f for i, _, f in walk_boxes(session, ids, len(ids))}
    w.key("l")
    for image_id in ids:
        if image_id not in boxes:
            continue
        w.click(f"#image-list button[data-id='{image_id}']")
        page.wait_for_function("id => document.querySelector('#image-caption').textContent"
                               ".startsWith(id)", arg=image_id)
        n = len(session.store.rois(image_id))
        w.n_rois(n)  # this image's regions are shown
        w.drag("#image-canvas", boxes[image_id])
        w.n_rois(n + 1)


def _walk_decisions(w: Walker, page: Any, native: bool) -> None:
    """Retrain (1 pass of 5 batches), compare, accept, revert. ``native``: the page confirms
    with the browser's own dialogs (accepted by the handler; one click each), else with its
    own dialog."""

    def confirm() -> None:
        if native:
            w.counts["clicks"] += 1
        else:  # accept asks twice when the accuracy falls
            page.wait_for_selector("#confirm-dialog[open]")
            w.click("#confirm-dialog .confirm-yes")
            page.wait_for_function(
                "() => !document.querySelector('#confirm-dialog').open || "
                "!document.querySelector('#confirm-dialog .confirm-yes').disabled")
            if page.locator("#confirm-dialog[open]").count():
                w.click("#confirm-dialog .confirm-yes")

    w.click("#advanced summary")
    w.fill("#f-max_batches", "5")
    w.click("#retrain")
    page.wait_for_selector("#retrain-message[data-state='done']", timeout=600_000)
    w.click("#show-diff")
    page.wait_for_selector("#diff-summary tr[data-key]", timeout=120_000)
    w.click("#accept")
    confirm()
    page.wait_for_function("() => document.querySelector('#version-badge').dataset.current "
                           "=== '2'", timeout=60_000)
    w.click("#revert")
    confirm()
    page.wait_for_function("() => document.querySelector('#version-badge').dataset.current "
                           "=== '1'", timeout=60_000)


if __name__ == "__main__":
    main()
