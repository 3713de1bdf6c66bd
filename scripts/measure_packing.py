#!/usr/bin/env python3
"""Measure packed CPU sweeps and channels-last on this machine, side by side; print the ratios.

Run it on a quiet machine (nothing else training): every figure is a wall time.

1. The Table 1 smoke grid (``mimic-run -m sweep=table1 trainer=smoke``, 40 runs): serial (the
   basic launcher, torch's default threads) vs packed (``launcher=local``: cores /
   ``launcher.cpu_threads_per_job`` jobs at once, one thread each by default).
2. A small real grid (default data and models, fewer epochs: ``sweep=table1
   model=baseline,normal_ensemble seed=1735,2948 trainer.max_epochs=2``, 4 runs), the same two
   ways.
3. Channels-last on the CPU: ``mimic-bench`` training steps of small_cnn (baseline and the
   ensembles at N = 10, loop) in NCHW and NHWC, interleaved, one thread; and one whole
   baseline run (2 epochs) with ``++model.channels_last=false`` vs the default (on).

Serial and packed alternate (serial, packed, packed, serial with ``--repeats 2``) so that a
change of load hits both; each measurement starts from an empty runs folder (nothing skipped)
and the synthetic data is generated once before any timing. Results: a table on stdout and
``<out>/packing.json``.

    python scripts/measure_packing.py                    # everything (~25 min on 2 cores)
    python scripts/measure_packing.py --only smoke,cl    # parts
    python scripts/measure_packing.py --quick            # a few minutes: check that it runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent  # the environment's console scripts
PARTS = ("smoke", "real", "cl")

GRIDS = {
    "smoke": ["-m", "sweep=table1", "trainer=smoke"],
    "real": ["-m", "sweep=table1", "model=baseline,normal_ensemble", "seed=1735,2948",
             "trainer.max_epochs=2"],
}
# --quick: the same commands on a tiny grid and tiny data, to check the script itself.
QUICK_DATA = ["data.synth.params.n=240", "data.image_size=64"]
QUICK_GRIDS = {
    "smoke": ["-m", "sweep=table1", "trainer=smoke", "model=baseline,normal_ensemble",
              "seed=1735,2948", "model.ensemble_size=2", *QUICK_DATA],
    "real": ["-m", "sweep=table1", "model=baseline", "seed=1735,2948", "trainer.max_epochs=1",
             *QUICK_DATA],
}
LAUNCHERS = {"serial": [], "packed": ["launcher=local"]}


def run(argv: list[str], env: dict[str, str], log: Path) -> float:
    """Run a command, its output into ``log``; its wall seconds. Stops at a failure."""
    t0 = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    log.write_text("$ " + " ".join(argv) + "\n" + text)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(argv[:4])} ... exited {proc.returncode}; see {log}")
    return seconds


def _runs(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("metrics.json"))]


def measure_grid(name: str, grid: list[str], out: Path, env: dict[str, str], repeats: int
                 ) -> dict[str, Any]:
    order = ["serial", "packed"] if repeats == 1 else \
        (["serial", "packed", "packed", "serial"] * repeats)[:2 * repeats]
    times: dict[str, list[float]] = {k: [] for k in LAUNCHERS}
    per_run: dict[str, list[float]] = {k: [] for k in LAUNCHERS}
    loads = []
    for i, how in enumerate(order):
        runs_dir = out / f"{name}-{how}-{i}"
        shutil.rmtree(runs_dir, ignore_errors=True)
        argv = [str(BIN / "mimic-run"), *grid, *LAUNCHERS[how], f"paths.runs_dir={runs_dir}"]
        load0 = os.getloadavg()[0]
        print(f"{name}: {how} ({i + 1}/{len(order)}) ...", flush=True)
        seconds = run(argv, env, out / f"{name}-{how}-{i}.log")
        runs = _runs(runs_dir)  # a fresh folder: every run found trained in this command
        folders = {p.parent for p in runs_dir.rglob(".hydra")}
        if not runs or len(runs) != len(folders):
            sys.exit(f"error: {name} {how}: {len(folders) - len(runs)} of {len(folders)} runs "
                     f"did not finish (see {out}/{name}-{how}-{i}.log)")
        times[how].append(seconds)
        per_run[how] += [r["wall_seconds"] for r in runs]
        loads.append([load0, os.getloadavg()[0]])
        print(f"{name}: {how}: {len(runs)} runs in {seconds:.1f} s", flush=True)
    serial, packed = statistics.median(times["serial"]), statistics.median(times["packed"])
    return {"command": ["mimic-run", *grid],
            "runs": len(per_run["serial"]) // len(times["serial"]), "seconds": times,
            "median_run_seconds": {k: statistics.median(v) for k, v in per_run.items()},
            "serial_over_packed": serial / packed, "load_average": loads}


def measure_channels_last(out: Path, env: dict[str, str], quick: bool) -> dict[str, Any]:
    bench_json = out / "channels_last_bench.json"
    bench = [str(BIN / "mimic-bench"), "--threads", "1", "--devices", "cpu", "--backbones",
             "small_cnn", "--models", "baseline,normal_ensemble,expl_ensemble", "--sizes",
             "2" if quick else "10", "--impls", "loop", "--channels-last", "both", "--sections",
             "steps", "--repeats", "2" if quick else "10", "--out", str(bench_json)]
    if quick:
        bench += ["--batch-size", "4", "--image-size", "32", "--warmup", "0"]
    print("channels-last: mimic-bench steps ...", flush=True)
    run(bench, env, out / "channels_last_bench.log")
    result = json.loads(bench_json.read_text())
    steps = {r["num"]: r["stats"] for r in result["ratios"]
             if r["ratio"].startswith("fp32/") and "+cl" in r["ratio"]}
    # One whole run (training, validation, test with Grad-CAM) each way, interleaved.
    runs: dict[str, list[float]] = {"nchw": [], "channels_last": []}
    extra = [*QUICK_DATA, "trainer.max_epochs=1"] if quick else ["trainer.max_epochs=2"]
    for how in ("nchw", "channels_last", "channels_last", "nchw"):
        flag = "false" if how == "nchw" else "true"
        runs_dir = out / f"cl-run-{how}"
        shutil.rmtree(runs_dir, ignore_errors=True)
        print(f"channels-last: a baseline run, {how} ...", flush=True)
        run([str(BIN / "mimic-run"), "model=baseline", *extra, f"++model.channels_last={flag}",
             f"paths.runs_dir={runs_dir}"], env, out / f"cl-run-{how}.log")
        runs[how].append(_runs(runs_dir)[0]["train_seconds"])
    train = {k: statistics.median(v) for k, v in runs.items()}
    return {"bench_command": bench, "step_speedup": steps, "baseline_train_seconds": train,
            "run_speedup": train["nchw"] / train["channels_last"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("measure-packing"),
                   help="working folder for runs, logs and packing.json")
    p.add_argument("--only", default=",".join(PARTS), help="comma list of smoke,real,cl")
    p.add_argument("--repeats", type=int, default=1,
                   help="serial/packed pairs per grid (2: serial, packed, packed, serial)")
    p.add_argument("--quick", action="store_true", help="tiny grids and data: check the script")
    args = p.parse_args(argv)
    parts = [x for x in args.only.split(",") if x]
    if set(parts) - set(PARTS) or args.repeats < 1:
        print(f"error: --only takes {','.join(PARTS)}; --repeats a positive number",
              file=sys.stderr)
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MIMIC_CACHE_DIR": str(out / "cache"), "PYTHONUNBUFFERED": "1"}
    # Generate the synthetic data once, outside every timing.
    print("generating the data (not timed) ...", flush=True)
    warm = [str(BIN / "mimic-run"), "trainer=smoke", f"paths.runs_dir={out / 'warm'}"]
    run(warm + (QUICK_DATA if args.quick else []), env, out / "warm.log")
    grids = QUICK_GRIDS if args.quick else GRIDS
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "cpus": os.cpu_count(), "quick": args.quick}
    for part in parts:
        if part in grids:
            result[part] = measure_grid(part, grids[part], out, env, args.repeats)
        else:
            result["channels_last"] = measure_channels_last(out, env, args.quick)
    (out / "packing.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{result['cpus']} cores, {result['date']}" + (" (--quick: not a measurement)"
                                                         if args.quick else ""))
    for part in ("smoke", "real"):
        if part in result:
            r = result[part]
            serial, packed = (statistics.median(r["seconds"][k]) for k in ("serial", "packed"))
            print(f"{part} grid ({r['runs']} runs): serial {serial:.1f} s, packed {packed:.1f} s"
                  f" -> serial/packed {r['serial_over_packed']:.2f}x (goal >= 1.7x on 2 cores)")
    cl = result.get("channels_last")
    if cl:
        for case, st in cl["step_speedup"].items():
            print(f"channels-last step speed-up, {case}: {st['median']:.2f}x "
                  f"(IQR {st['q1']:.2f}-{st['q3']:.2f})")
        print(f"channels-last whole baseline run (train seconds): {cl['run_speedup']:.2f}x "
              "(> 1: the default, on, wins)")
    print(f"details: {out / 'packing.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
