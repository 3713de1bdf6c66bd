#!/usr/bin/env python3
"""`make gpu-check`: everything that needs a CUDA device, in one prepared run of < 10 minutes.

Steps, each a subprocess with its own time limit (and all of them within ``--budget``):

1. ``pytest -m gpu``: the CUDA-only tests;
2. one timed Table 1 run at full settings: ``mimic-run model=expl_ensemble seed=1735
   trainer=gpu`` (default data, 10 epochs, N = 10);
3. ``mimic-bench`` ensembles: normal vs explanation ensemble and loop vs batched at N = 10, for
   small_cnn and resnet18, with the data loader against what the steps consume;
4. ``mimic-bench`` Grad-CAM: ``grad_cam`` vs pytorch-grad-cam (resnet18, batch 64, 224 px);
5. ``mimic-bench`` MFU: the resnet18 steps per model in fp32 (TF32) and bf16-mixed.

It writes ``summary.json`` and ``summary.md`` (the figures BENCHMARKS.md's pending rows ask for,
each with the command that produced it) and every step's log and JSON into the output folder:
``--out``, else ``$OUT/gpu-check`` when ``$OUT`` is set, else ``gpu-check/``. A step that fails
or runs out of time is recorded as such; the others still run. Without CUDA it prints one line
and exits 0, so that it can sit in any checklist.

    make gpu-check                      # = python scripts/gpu_check.py
    python scripts/gpu_check.py --budget 480 --out /tmp/gpu
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the environment's console scripts (mimic-run, mimic-bench)
NO_CUDA = "gpu-check: no CUDA device (torch.cuda.is_available() is False); nothing to measure"
TABLE1 = ["model=expl_ensemble", "seed=1735", "trainer=gpu"]


@dataclass
class Step:
    name: str
    what: str
    argv: list[str]
    timeout: float
    json_out: str | None = None  # file name (in the output folder) the step writes
    rc: int | None = None
    seconds: float | None = None
    timed_out: bool = False
    skipped: str | None = None
    log: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def plan(out: Path) -> list[Step]:
    """The steps and their time limits (seconds; the sum stays under 10 minutes)."""
    bench = [str(BIN / "mimic-bench"), "--devices", "cuda"]
    return [
        Step("pytest", "CUDA-only tests", [sys.executable, "-m", "pytest", "-q", "-m", "gpu",
                                           "-p", "no:cacheprovider", str(ROOT / "tests")], 100),
        Step("table1_run", "one Table 1 run at full settings",
             [str(BIN / "mimic-run"), *TABLE1, f"paths.runs_dir={out / 'runs'}"], 200),
        Step("bench_ensembles", "normal vs explanation ensemble, loop vs batched, N=10",
             [*bench, "--backbones", "small_cnn,resnet18", "--models",
              "normal_ensemble,expl_ensemble", "--sizes", "10", "--impls", "loop,batched",
              "--sections", "steps,data", "--repeats", "10", "--data-epochs", "2", "--out",
              str(out / "bench_ensembles.json")], 150, "bench_ensembles.json"),
        Step("bench_gradcam", "grad_cam vs pytorch-grad-cam",
             [*bench, "--sections", "gradcam", "--repeats", "10", "--out",
              str(out / "bench_gradcam.json")], 60, "bench_gradcam.json"),
        Step("bench_mfu", "resnet18 steps per model, fp32 and bf16-mixed, with MFU",
             [*bench, "--backbones", "resnet18", "--models",
              "baseline,improved_unet,normal_ensemble,expl_ensemble", "--sizes", "10",
              "--impls", "batched", "--precisions", "32-true,bf16-mixed", "--sections",
              "steps,mfu", "--repeats", "10", "--out", str(out / "bench_mfu.json")],
             110, "bench_mfu.json"),
    ]


def run_step(step: Step, out: Path, deadline: float) -> None:
    """Run one step with its own limit, cut to what is left of the budget."""
    left = deadline - time.monotonic()
    if left < 20:
        step.skipped = "no time left in the budget"
        return
    limit = min(step.timeout, left)
    step.log = f"{step.name}.log"
    t0 = time.monotonic()
    print(f"gpu-check: {step.name} ({step.what}), at most {limit:.0f} s", flush=True)
    with (out / step.log).open("w") as log:
        log.write("$ " + " ".join(step.argv) + "\n")
        log.flush()
        proc = subprocess.Popen(step.argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                start_new_session=True)
        try:
            step.rc = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            step.timed_out = True
            os.killpg(proc.pid, 15)  # the step's own process group: its workers too
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
            step.rc = proc.returncode
    step.seconds = round(time.monotonic() - t0, 1)
    print(f"gpu-check: {step.name}: " + ("timed out" if step.timed_out else f"exit {step.rc}")
          + f" after {step.seconds} s", flush=True)


# -- reading the results back -------------------------------------------------------------------

def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def pytest_counts(log_text: str) -> dict[str, int]:
    """``{passed: 3, skipped: 1, ...}`` from pytest's closing line."""
    found = re.findall(r"(\d+) (passed|failed|skipped|deselected|error|errors)", log_text)
    return {kind.rstrip("s") if kind == "errors" else kind: int(n) for n, kind in found}


def _ratio_rows(bench: dict[str, Any] | None, kind_prefix: str) -> list[dict[str, Any]]:
    rows = []
    for r in (bench or {}).get("ratios", []):
        if r["ratio"].startswith(kind_prefix):
            st = r["stats"]
            rows.append({"backbone": r["backbone"], "ratio": r["ratio"], "num": r["num"],
                         "den": r["den"], "median": st.get("median"), "q1": st.get("q1"),
                         "q3": st.get("q3")})
    return rows


def _step_rows(bench: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    for r in (bench or {}).get("steps", []):
        case = r["model"] + (f" N={r['n']} {r['impl']}" if r.get("n") else "")
        rows.append({"backbone": r["backbone"], "case": case, "precision": r["precision"],
                     "ms": 1000 * r["seconds"]["median"], "ms_q1": 1000 * r["seconds"]["q1"],
                     "ms_q3": 1000 * r["seconds"]["q3"], "images_per_s": r["images_per_s"]})
    return rows


def summarise(steps: list[Step], out: Path, device: str, meta: dict[str, Any]
              ) -> dict[str, Any]:
    """The figures of every step that finished, keyed by what BENCHMARKS.md asks."""
    by = {s.name: s for s in steps}
    res: dict[str, Any] = {"device": device, **meta,
                           "steps": [asdict(s) for s in steps]}
    s = by.get("pytest")
    if s and s.log and (out / s.log).exists():
        res["pytest"] = pytest_counts((out / s.log).read_text()[-3000:])
    s = by.get("table1_run")
    metrics_files = sorted((out / "runs").glob("*/metrics.json"))
    if s and s.rc == 0 and metrics_files:
        m = _load(metrics_files[0]) or {}
        res["table1_run"] = {k: m.get(k) for k in (
            "model", "seed", "ensemble_size", "epochs", "wall_seconds", "train_seconds",
            "eval_seconds", "test/acc", "test/kld", "test/nss", "test/cam_disagreement",
            "device")}
        res["table1_run"]["command_seconds"] = s.seconds
    ens = _load(out / "bench_ensembles.json")
    res["expl_over_normal"] = _ratio_rows(ens, "expl/normal")
    res["loop_over_batched"] = _ratio_rows(ens, "loop/")
    res["ensemble_steps"] = _step_rows(ens)
    if ens and ens.get("data"):
        d = ens["data"]
        res["data"] = {"loader_images_per_s": d["images_per_s"]["median"],
                       "consumers": d["consumers"]}
    cam = _load(out / "bench_gradcam.json")
    if cam and cam.get("gradcam"):
        g = cam["gradcam"][0]
        res["gradcam"] = {"batch_size": g["batch_size"], "image_size": g["image_size"],
                          "ours_images_per_s": g["impls"]["ours"]["images_per_s"],
                          "pytorch_grad_cam_images_per_s":
                              g["impls"]["pytorch-grad-cam"]["images_per_s"],
                          "speedup": g["speedup"]["median"], "speedup_q1": g["speedup"]["q1"],
                          "speedup_q3": g["speedup"]["q3"], "max_abs_diff": g["max_abs_diff"]}
    mfu = _load(out / "bench_mfu.json")
    res["model_steps"] = _step_rows(mfu)
    res["fp32_over_bf16"] = _ratio_rows(mfu, "fp32/")
    res["mfu"] = [{"case": r["case"], "backbone": r["backbone"], "gflop": r["flops"] / 1e9,
                   "achieved_tflops": r["achieved_tflops"], "peak_tflops": r["peak_tflops"],
                   "mfu": r["mfu"]} for r in (mfu or {}).get("mfu", [])]
    return res


def _f(v: Any, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def markdown(res: dict[str, Any]) -> str:
    """summary.md: one block per pending row of BENCHMARKS.md."""
    lines = [f"# GPU check: {res['device']}", "",
             f"{res.get('date', '')}, torch {res.get('torch', '?')}, CUDA "
             f"{res.get('cuda', '?')}; commands and logs: summary.json and *.log beside this.",
             "", "| step | result | seconds |", "|---|---|---|"]
    for s in res["steps"]:
        status = s["skipped"] or ("timed out" if s["timed_out"] else f"exit {s['rc']}")
        lines.append(f"| {s['name']} ({s['what']}) | {status} | {_f(s['seconds'], '.1f')} |")
    if "pytest" in res:
        lines += ["", "**CUDA-only tests:** " + ", ".join(
            f"{n} {k}" for k, n in res["pytest"].items())]
    t = res.get("table1_run")
    if t:
        lines += ["", "## One Table 1 run (`mimic-run " + " ".join(TABLE1) + "`)", "",
                  f"wall {_f(t['wall_seconds'], '.1f')} s (train {_f(t['train_seconds'], '.1f')}"
                  f" s, evaluation {_f(t['eval_seconds'], '.1f')} s; the command "
                  f"{_f(t['command_seconds'], '.1f')} s with start-up), {t['epochs']} epochs, "
                  f"N = {t['ensemble_size']}; test acc {_f(t['test/acc'], '.3f')}, KLD "
                  f"{_f(t['test/kld'], '.2f')}, NSS {_f(t['test/nss'], '.3f')}, "
                  f"disagreement {_f(t['test/cam_disagreement'], '.4f')}"]
    for key, title in (("expl_over_normal", "expl_ensemble / normal_ensemble step (target ≤ 1.3)"),
                       ("loop_over_batched", "loop / batched step at N = 10 (targets ≥ 3 small_cnn,"
                                             " ≥ 1.5 resnet18)"),
                       ("fp32_over_bf16", "fp32 / bf16-mixed step")):
        if res.get(key):
            lines += ["", f"## {title}", "", "| backbone | ratio | cases | median (IQR) |",
                      "|---|---|---|---|"]
            lines += [f"| {r['backbone']} | {r['ratio']} | {r['num']} ÷ {r['den']} | "
                      f"**{_f(r['median'])}** ({_f(r['q1'])}–{_f(r['q3'])}) |" for r in res[key]]
    for key, title in (("ensemble_steps", "Ensemble steps"),
                       ("model_steps", "Steps per model")):
        if res.get(key):
            lines += ["", f"## {title}", "", "| backbone | case | precision | ms/step (IQR) | "
                      "img/s |", "|---|---|---|---|---|"]
            lines += [f"| {r['backbone']} | {r['case']} | {r['precision']} | {_f(r['ms'], '.1f')} "
                      f"({_f(r['ms_q1'], '.1f')}–{_f(r['ms_q3'], '.1f')}) | "
                      f"{_f(r['images_per_s'], '.0f')} |" for r in res[key]]
    g = res.get("gradcam")
    if g:
        lines += ["", f"## Grad-CAM, resnet18, batch {g['batch_size']}, {g['image_size']} px "
                  "(target ≥ 2x)", "",
                  f"ours {_f(g['ours_images_per_s'], '.0f')} img/s, pytorch-grad-cam "
                  f"{_f(g['pytorch_grad_cam_images_per_s'], '.0f')} img/s: **"
                  f"{_f(g['speedup'])}x** ({_f(g['speedup_q1'])}–{_f(g['speedup_q3'])}); maps "
                  f"agree to {_f(g['max_abs_diff'], '.1e')}"]
    d = res.get("data")
    if d:
        lines += ["", "## Data loading against the GPU steps (target ≥ 5x)", "",
                  f"loader {_f(d['loader_images_per_s'], '.0f')} img/s; "
                  + "; ".join(f"{c['case']} ({c['backbone']}) {_f(c['images_per_s'], '.0f')} "
                              f"img/s → {_f(c['data_over_model'], '.1f')}x"
                              for c in d["consumers"])]
    if res.get("mfu"):
        lines += ["", "## Model FLOPs utilisation", "", "| backbone | case | GFLOP/step | "
                  "TFLOP/s | peak | MFU |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['backbone']} | {r['case']} | {_f(r['gflop'], '.1f')} | "
                  f"{_f(r['achieved_tflops'], '.1f')} | {_f(r['peak_tflops'], '.0f')} | "
                  f"{_f(None if r['mfu'] is None else 100 * r['mfu'], '.1f')} % |"
                  for r in res["mfu"]]
    return "\n".join(lines) + "\n"


def default_out() -> Path:
    return Path(os.environ["OUT"]) / "gpu-check" if os.environ.get("OUT") else Path("gpu-check")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="output folder (default: $OUT/gpu-check or "
                   "gpu-check/)")
    p.add_argument("--budget", type=float, default=560,
                   help="seconds for all steps together (default 560: under 10 minutes with "
                   "start-up)")
    p.add_argument("--only", help="comma list of steps to run (pytest, table1_run, "
                   "bench_ensembles, bench_gradcam, bench_mfu)")
    args = p.parse_args(argv)

    import torch  # here: --help works anywhere, and the check below is the first thing done

    if not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    t0 = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = (args.out or default_out()).resolve()
    if (out / "runs").exists():  # a fresh timed run, never a skipped finished one
        shutil.rmtree(out / "runs")
    out.mkdir(parents=True, exist_ok=True)
    steps = plan(out)
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {s.name for s in steps}
        if unknown:
            print(f"error: --only: no step {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        steps = [s for s in steps if s.name in wanted]
    deadline = t0 + args.budget
    for step in steps:
        run_step(step, out, deadline)
    meta = {"date": started,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "total_seconds": round(time.monotonic() - t0, 1)}
    res = summarise(steps, out, torch.cuda.get_device_name(0), meta)
    (out / "summary.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / "summary.md").write_text(markdown(res))
    print(f"gpu-check: wrote {out / 'summary.md'} and summary.json "
          f"({res['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
