"""Rich tables of a ``mimic-bench`` result (the dict of :func:`mimic_runner.bench.suite.run`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mimic_runner.log import stdout


def _ms(stats: dict[str, float]) -> str:
    return f"{stats['median'] * 1e3:.1f}"


def _spread(stats: dict[str, float], scale: float = 1e3, fmt: str = ".1f") -> str:
    return f"{stats['q1'] * scale:{fmt}}–{stats['q3'] * scale:{fmt}}"


def render(result: dict[str, Any], console: Console | None = None) -> None:
    """Print the sections present in ``result``."""
    console = console or stdout
    meta = result.get("meta", {})
    if meta:
        console.print(f"[bold]mimic-bench[/] {meta.get('date')}  torch {meta.get('torch')}  "
                      f"cpu {meta.get('cpu')} x{meta.get('cpu_count')}  "
                      f"gpus {meta.get('gpus') or 'none'}  load {meta.get('load_average_start')}"
                      f" -> {result.get('load_average_end')}")
    if result.get("steps"):
        t = Table(title="Training step (median of interleaved repeats; IQR = q1–q3)")
        for col in ("device", "backbone", "case", "ms", "IQR ms", "n", "img/s", "TFLOP/s"):
            t.add_column(col, justify="right" if col in ("ms", "n", "img/s") else "left")
        mfu = {(m["device"], m["backbone"], m["case"]): m for m in result.get("mfu", [])}
        for r in result["steps"]:
            case = r["model"] if r["n"] is None else f"{r['model']} N={r['n']} {r['impl']}"
            case += f" [{r['precision']}{' +cl' if r['channels_last'] else ''}]"
            m = mfu.get((r["device"], r["backbone"], case))
            tf = "" if m is None else f"{m['achieved_tflops']:.3f}" + (
                f" ({m['mfu']:.1%})" if m.get("mfu") is not None else "")
            t.add_row(r["device"], r["backbone"], escape(case), _ms(r["seconds"]),
                      _spread(r["seconds"]), str(r["seconds"]["n"]), f"{r['images_per_s']:.1f}", tf)
        console.print(t)
    if result.get("ratios"):
        t = Table(title="Paired ratios (per round, median and IQR)")
        for col in ("device", "backbone", "ratio", "numerator / denominator", "median", "IQR"):
            t.add_column(col)
        for r in result["ratios"]:
            s = r["stats"]
            t.add_row(r["device"], r["backbone"], r["ratio"], escape(f"{r['num']} / {r['den']}"),
                      f"{s['median']:.2f}", _spread(s, 1, ".2f"))
        console.print(t)
    for g in result.get("gradcam") or []:
        t = Table(title=f"Grad-CAM evaluation, {g['backbone']} batch {g['batch_size']} at "
                        f"{g['image_size']} px on {g['device']} ({g['device_name']}); max |diff| "
                        f"{g['max_abs_diff']:.1e}")
        for col in ("implementation", "ms/batch", "IQR ms", "img/s"):
            t.add_column(col)
        for name, v in g["impls"].items():
            t.add_row(name, _ms(v["seconds"]), _spread(v["seconds"]), f"{v['images_per_s']:.1f}")
        s = g["speedup"]
        t.add_row("ours speed-up (paired)", f"{s['median']:.2f}x", _spread(s, 1, ".2f"), "")
        console.print(t)
    d = result.get("data")
    if d:
        s = d["images_per_s"]
        t = Table(title=f"Data loading: {d['dataset']} train loader, batch {d['batch_size']}, "
                        f"{d['num_workers']} workers: {s['median']:.0f} img/s "
                        f"(IQR {s['q1']:.0f}–{s['q3']:.0f}); setup {d['setup_seconds']:.1f} s")
        for col in ("device", "consumer (training step)", "backbone", "model img/s",
                    "data / model"):
            t.add_column(col)
        for c in d["consumers"]:
            t.add_row(c.get("device", ""), escape(c["case"]), c["backbone"],
                      f"{c['images_per_s']:.1f}", f"{c['data_over_model']:.0f}x")
        console.print(t)
