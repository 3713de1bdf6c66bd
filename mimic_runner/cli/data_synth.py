"""`mimic-data synth-cxr` and `mimic-data synth-smear`: write a synthetic dataset file."""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from mimic_runner.config.limits import check_synth_fits
from mimic_runner.data import synth_cxr, synth_smear
from mimic_runner.data.schema import SPLITS, check_output_file, write_dataset
from mimic_runner.errors import UserError

GENERATORS: dict[str, tuple[ModuleType, str]] = {
    "synth-cxr": (synth_cxr, "synthetic chest X-rays (Normal / CHF / pneumonia) with simulated "
                             "eye-gaze and a corner-marker shortcut"),
    "synth-smear": (synth_smear, "synthetic blood-smear cells (Parasitized / Uninfected) with "
                                 "parasite attention maps and a corner-marker shortcut"),
}
# Knobs that have their own option; --set may not repeat them.
_OPTIONS = {"n": "--n", "size": "--size", "seed": "--seed",
            "confounder_strength": "--confounder-strength"}
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# The benchmark variants of conf/data, as knobs (keep in step with those files).
_VARIANTS = {
    "synth-cxr": (
        "benchmark variants (mimic-run data=...; the same data as a file with these knobs):\n"
        "  synth_cxr_clean  no shortcut, gaze dwells on the finding:\n"
        "                   --set marker=false gaze_finding_focus=0.8\n"
        "  synth_cxr_cues   six weak class-correlated cues instead of the marker:\n"
        "                   --set marker=false cues=6 cue_strength=0.5 gaze_finding_focus=0.8\n"
        "Every file also holds `finding`, the finding's true mask.\n"),
}


def knob_defaults(generate: Callable[..., Any]) -> dict[str, Any]:
    """The generator's parameters and their (scalar) defaults, in signature order."""
    return {name: par.default for name, par in inspect.signature(generate).parameters.items()}


def parse_knob(name: str, text: str, default: Any) -> Any:
    """Convert ``text`` to the type of ``default`` (bool, int, float or str)."""
    kind = type(default)
    if kind is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise UserError(f"--set {name}={text}: expected a boolean (true/false)")
    try:
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise UserError(f"--set {name}={text}: expected {kind.__name__}") from None
    return text


def resolve_knobs(args: argparse.Namespace, generate: Callable[..., Any]) -> dict[str, Any]:
    """The full parameter set: defaults, then the dedicated options, then ``--set`` pairs."""
    defaults = knob_defaults(generate)
    params = dict(defaults)
    for name in _OPTIONS:
        value = getattr(args, name)
        if value is not None:
            params[name] = value
    seen: set[str] = set()
    for item in args.knobs:
        name, sep, text = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise UserError(f"--set {item!r}: expected KNOB=VALUE")
        if name not in defaults:
            raise UserError(f"--set {item}: unknown knob '{name}'; knobs: "
                            + ", ".join(k for k in defaults if k not in _OPTIONS))
        if name in seen:
            raise UserError(f"--set {name} given twice")
        if name in _OPTIONS and getattr(args, name) is not None:
            raise UserError(f"{name} given both as {_OPTIONS[name]} and in --set")
        seen.add(name)
        params[name] = parse_knob(name, text.strip(), defaults[name])
    return params


def _run(module: ModuleType, args: argparse.Namespace) -> None:
    # Fail before spending time on generation: existing file, a folder, an unwritable place.
    out = check_output_file(args.out, args.overwrite)
    params = resolve_knobs(args, module.generate)
    if isinstance(params.get("n"), int) and isinstance(params.get("size"), int):
        check_synth_fits(params["n"], params["size"], "--n ", "--size")  # before allocating
    start = time.perf_counter()
    data = module.generate(**params)
    generated = time.perf_counter()
    write_dataset(out, overwrite=args.overwrite, **data)
    done = time.perf_counter()
    images = data["images"]
    shortcut = (f"confounder_strength {params['confounder_strength']:g}" if params["marker"]
                else "no marker")
    if params.get("cues"):
        shortcut += f", {params['cues']} weak cues (cue_strength {params['cue_strength']:g})"
    counts = "/".join(str(int((data["split"] == i).sum())) for i in range(len(SPLITS)))
    print(f"wrote {out}: {images.shape[0]} images {images.shape[1]}x{images.shape[2]}x"
          f"{images.shape[3]}, classes {'/'.join(data['class_names'])}, "
          f"train/val/test {counts}, seed {params['seed']}, {shortcut} "
          f"in {done - start:.1f} s (generate {generated - start:.1f} s, "
          f"write {done - generated:.1f} s)")


def add_synth_parsers(subparsers: Any) -> None:
    """Add the ``synth-cxr`` and ``synth-smear`` subcommands to ``mimic-data``'s subparsers."""
    for command, (module, what) in GENERATORS.items():
        defaults = knob_defaults(module.generate)
        knob_help = "\n".join(f"  {k} = {v!r}" for k, v in defaults.items() if k not in _OPTIONS)
        p = subparsers.add_parser(
            command, help=f"generate {what}",
            description=f"Generate {what} into an HDF5 dataset file.",
            epilog=f"knobs for --set (defaults):\n{knob_help}\n{_VARIANTS.get(command, '')}"
                   f"See mimic_runner.data.{module.__name__.rsplit('.', 1)[-1]}.generate.",
            formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--out", required=True, metavar="FILE", help="output .h5 file")
        p.add_argument("--n", type=int, default=None,
                       help=f"number of images (default {defaults['n']})")
        p.add_argument("--size", type=int, default=None,
                       help=f"image side in pixels (default {defaults['size']})")
        p.add_argument("--seed", type=int, default=None,
                       help=f"random seed (default {defaults['seed']})")
        p.add_argument("--confounder-strength", dest="confounder_strength", type=float,
                       default=None, metavar="X",
                       help="train-split probability that the marker sits in its class's "
                            f"corner, otherwise random; 0 = no shortcut "
                            f"(default {defaults['confounder_strength']})")
        p.add_argument("--set", dest="knobs", action="extend", nargs="+", default=[],
                       metavar="KNOB=VALUE", help="set any other generator knob (see below)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing FILE")
        p.set_defaults(func=lambda args, module=module: _run(module, args))
