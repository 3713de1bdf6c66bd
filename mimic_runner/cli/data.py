"""`mimic-data`: make, prepare and inspect datasets in the HDF5 schema."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mimic_runner.data.schema import SPLITS, DatasetInfo, validate_dataset
from mimic_runner.errors import exit_on_user_error
from mimic_runner.log import stdout as console


def _shown(value: object) -> str:
    """A value read from the file, safe to print: rich markup escaped (a class name such as
    '[/]' would otherwise be a markup error), control characters as escapes."""
    text = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(value))
    return escape(text)


def render_info(info: DatasetInfo, out: Console = console) -> None:
    """Print what :func:`validate_dataset` learned about a file (``mimic-data info``) on
    ``out`` (the results console)."""
    console = out
    console.print(f"[bold]{_shown(info.path)}[/bold]  schema v"
                  f"{_shown(info.attrs.get('schema_version'))}  "
                  f"source={_shown(info.attrs.get('source', ''))}  "
                  f"aligned={_shown(info.attrs.get('aligned'))}")
    console.print(f"{info.n} images, {info.channels} channel(s), {info.height}x{info.width} px; "
                  f"maps: {', '.join(info.maps) or 'none'}")
    table = Table(title="images per split and class")
    table.add_column("split")
    for name in info.class_names:
        table.add_column(_shown(name), justify="right")
    table.add_column("total", justify="right")
    for split in SPLITS:
        counts = info.class_counts[split]
        table.add_row(split, *[str(counts[c]) for c in info.class_names],
                      str(info.split_counts[split]))
    console.print(table)
    other = {k: v for k, v in info.attrs.items()
             if k not in ("class_names", "schema_version", "source", "aligned")}
    if other:
        console.print("attributes: " + ", ".join(f"{_shown(k)}={_shown(v)}"
                                                 for k, v in sorted(other.items())))
    empty = [s for s in SPLITS if info.split_counts[s] == 0]
    if empty:
        console.print(f"[yellow]warning: empty split(s): {', '.join(empty)}; mimic-run needs "
                      "train, val and test[/yellow]")


def _info(args: argparse.Namespace) -> None:
    # deep: read every block once, so that a damaged chunk is reported here, not mid-training.
    render_info(validate_dataset(args.file, require_splits=(), deep=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimic-data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="summarise a dataset file and validate it")
    p.add_argument("file")
    p.set_defaults(func=_info)

    from mimic_runner.cli.data_synth import add_synth_parsers

    add_synth_parsers(sub)
    try:
        from mimic_runner.cli.data_prepare import add_prepare_parser
    except ImportError:  # preparers not built yet
        pass
    else:
        add_prepare_parser(sub)
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
