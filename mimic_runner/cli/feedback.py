"""`mimic-feedback`: human feedback on the attention of an attention-branch run.

    mimic-feedback serve RUN_DIR [--host 127.0.0.1] [--port 8000] [--token T]
    mimic-feedback add-roi RUN_DIR --image ID --shape rect --kind exclude --points 0.1,0.1 0.3,0.3
    mimic-feedback retrain RUN_DIR --epochs 2 --gamma 30
    mimic-feedback diff RUN_DIR
    mimic-feedback accept RUN_DIR | discard RUN_DIR | revert RUN_DIR --to 1 | status RUN_DIR

The workspace (feedback store, version checkpoints) defaults to RUN_DIR/feedback. A workspace
belongs to the checkpoint it was started on: after the run is trained again, commands refuse it
(add --fresh to set it aside and start a new one).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rich.table import Table

from mimic_runner.errors import UserError, exit_on_user_error
from mimic_runner.log import console, stdout


def _points(values: list[str]) -> list[list[float]]:
    pts = []
    for v in values:
        try:
            x, y = (float(t) for t in v.split(","))
        except ValueError:
            raise UserError(f"--points: '{v}' is not 'x,y' (image-normalised, e.g. 0.25,0.6)"
                            ) from None
        pts.append([x, y])
    return pts


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one ``error:`` line (and exit 2), like every other refusal."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _session(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from mimic_runner.feedback.session import FeedbackSession

    session = FeedbackSession(args.run_dir, workspace=args.workspace, author=args.author,
                              fresh=args.fresh)
    if session.set_aside is not None:
        print(f"the run's checkpoint changed: the old workspace is now {session.set_aside}; "
              "started a new one", file=sys.stderr)
    return session


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _versions_table(status: dict[str, Any]) -> Table:
    table = Table(title="versions")
    for col in ("id", "parent", "status", "created", "sha256", "held-out acc"):
        table.add_column(col)
    for v in status["versions"]:
        m = v["metrics"] or {}
        acc = m.get(f"{m['heldout_split']}/acc") if "heldout_split" in m else m.get("test/acc")
        table.add_row(f"v{v['id']}" + (" (current)" if v["current"] else ""),
                      f"v{v['parent']}" if v["parent"] else "-", v["status"],
                      v["created"][:19].replace("T", " "), v["sha256"][:12],
                      f"{acc:.4f}" if isinstance(acc, float) else "-")
    return table


def cmd_serve(args: argparse.Namespace) -> None:
    from mimic_runner.feedback.server import serve

    serve(lambda: _session(args), host=args.host, port=args.port, token=args.token,
          no_token=args.no_token, log_level=args.log_level)


def cmd_add_roi(args: argparse.Namespace) -> None:
    if args.json:
        rois = _read_rois(Path(args.json))
    else:
        if not (args.image and args.shape and args.kind and args.points):
            raise UserError("add-roi: give --image, --shape, --kind and --points, or --json FILE")
        rois = [{"image_id": args.image, "shape": args.shape, "kind": args.kind,
                 "points": _points(args.points), "weight": args.weight}]
    created = _session(args).add_rois(rois)
    for r in created:
        stdout.print(f"added region {r['id']}: {r['shape']} {r['kind']} on {r['image_id']}")


def _read_rois(path: Path) -> list[dict[str, Any]]:
    """The regions of a JSON file (a list, or ``{"rois": [...]}``), or one clear line."""
    from mimic_runner.io import require_regular_file

    require_regular_file(path, "--json")  # a FIFO or device would block the reader
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--json {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"--json {path}: is a folder; give a JSON file of regions") from None
    except PermissionError:
        raise UserError(f"--json {path}: not readable (permission denied)") from None
    except UnicodeDecodeError:
        raise UserError(f"--json {path}: not a UTF-8 text file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--json {path}: not valid JSON (line {exc.lineno}, column "
                        f"{exc.colno}: {exc.msg})") from None
    except OSError as exc:
        raise UserError(f"--json {path}: cannot be read ({exc.strerror or exc})") from None
    rois = data.get("rois") if isinstance(data, dict) else data
    if not isinstance(rois, list) or not rois or not all(isinstance(r, dict) for r in rois):
        raise UserError(f"--json {path}: expected a non-empty list of regions (or "
                        '{"rois": [...]}), each {"image_id", "shape", "kind", "points"}')
    return rois


def cmd_rois(args: argparse.Namespace) -> None:
    from mimic_runner.feedback.store import FeedbackStore

    store = FeedbackStore(Path(args.workspace or Path(args.run_dir) / "feedback")
                          / "feedback.sqlite")  # the regions only: no model to load
    _print_json(store.rois(args.image))


def cmd_delete_roi(args: argparse.Namespace) -> None:
    row = _session(args).delete_roi(args.roi_id)
    stdout.print(f"deleted region {row['id']} on {row['image_id']}")


def cmd_retrain(args: argparse.Namespace) -> None:
    from rich.progress import Progress

    from mimic_runner.feedback.params import from_namespace
    from mimic_runner.feedback.retrain import retrain

    params = from_namespace(args).validate()
    session = _session(args)
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("retraining", total=1.0)
        version = retrain(session, params, replace_candidate=args.replace_candidate,
                          progress=lambda s: bar.update(task, completed=s.fraction,
                                                        description=s.message))
    m = version["metrics"]
    split = m["heldout_split"]
    stdout.print(f"candidate version {version['id']} (parent v{version['parent']}): "
                 f"{split} acc {m[f'{split}/acc']:.4f}; accept or roll back after "
                 "`mimic-feedback diff`")


def cmd_diff(args: argparse.Namespace) -> None:
    d = _session(args).diff(args.before, args.after, args.heldout)
    before, after = d["before_version"], d["after_version"]
    if args.json:
        _print_json(d)
        return
    table = Table(title=f"v{before} -> v{after}")
    for col in ("", f"v{before}", f"v{after}", "delta"):
        table.add_column(col, justify="right" if col else "left")

    def add(label: str, ba: dict[str, Any] | None) -> None:
        if ba:
            table.add_row(label, *(f"{ba[k]:.4f}" if ba[k] is not None else "-"
                                   for k in ("before", "after", "delta")))

    fb, ho = d["feedback"], d["heldout"]
    add(f"feedback ({fb['n_images']} images): share in include regions", fb.get("include_share"))
    add("feedback: share in exclude regions", fb.get("exclude_share"))
    add("feedback: share on the confounder", fb.get("confounder_share"))
    add("feedback: accuracy", fb.get("accuracy"))
    add(f"{ho['split']} ({ho['n_images']} images): accuracy", ho["accuracy"])
    add(f"{ho['split']}: share on the confounder", ho.get("confounder_share"))
    table.add_row(f"{ho['split']}: prediction changes", "", str(ho["prediction_changes"]), "")
    table.add_row(f"{ho['split']}: mean |attention change|", "",
                  f"{ho['mean_abs_attention_change']:.4f}", "")
    acc, dx = d["accuracy"], d["diagnoses"]
    if acc["n"]:
        lo, hi = acc["delta_ci95"]
        table.add_row(f"{ho['split']}: accuracy change, 95% CI ({acc['method']})", "", "",
                      f"{acc['delta']:+.4f} [{lo:+.4f}, {hi:+.4f}]")
    table.add_row(f"{ho['split']}: diagnoses wrong->right / right->wrong / wrong->wrong", "",
                  f"{dx['wrong_to_right']} / {dx['right_to_wrong']} / {dx['wrong_to_wrong']}", "")
    stdout.print(table)


def cmd_accept(args: argparse.Namespace) -> None:
    r = _session(args).accept(args.version)
    v = r["current"]
    already = " already" if r.get("already") else ""
    stdout.print(f"accepted: version {v['id']} is{already} current (sha256 {v['sha256'][:12]}…)")


def cmd_discard(args: argparse.Namespace) -> None:
    r = _session(args).discard()
    stdout.print(f"discarded candidate version {r['rolled_back']['id']}: version "
                  f"{r['current']['id']} stays current")


def cmd_revert(args: argparse.Namespace) -> None:
    r = _session(args).revert(args.to)
    undone = ", ".join(f"v{v}" for v in r["rolled_back"])
    stdout.print(f"reverted to version {r['current']['id']} (sha256 "
                  f"{r['current']['sha256'][:12]}…); rolled back: {undone}")


def cmd_rollback(args: argparse.Namespace) -> None:
    r = _session(args).rollback()
    stdout.print(f"rolled back version {r['rolled_back']['id']}: version {r['current']['id']} "
                  f"is current (sha256 {r['current']['sha256'][:12]}…)")


def cmd_status(args: argparse.Namespace) -> None:
    status = _session(args).status()
    if args.json:
        _print_json(status)
        return
    stdout.print(_versions_table(status))
    cand = status["candidate"]
    stdout.print(f"current: v{status['current']['id']} · candidate: "
                  f"{'v' + str(cand['id']) if cand else 'none'} · regions: {status['n_rois']} · "
                  f"weights sha256 {status['weights_sha256'][:12]}…")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mimic-feedback", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("run_dir", metavar="RUN_DIR", help="a finished model=attention_branch run")
        p.add_argument("--workspace", default=None,
                       help="feedback workspace folder (default: RUN_DIR/feedback)")
        p.add_argument("--author", default="", help="who gives the feedback (audit log)")
        p.add_argument("--fresh", action="store_true",
                       help="if the run was trained again since the workspace was started, set "
                       "the old workspace aside (renamed, kept) and start a new one")
        p.set_defaults(func=func)
        return p

    p = command("serve", cmd_serve, "serve the feedback web page and its JSON API")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000; 0: any "
                   "free port)")
    p.add_argument("--token", default=None, help="access token required by every request "
                   "(generated when --host is not a loopback address)")
    p.add_argument("--no-token", action="store_true",
                   help="serve a non-loopback address without a token (not recommended)")
    p.add_argument("--log-level", default="warning")

    p = command("add-roi", cmd_add_roi, "add a region of interest to a training image")
    p.add_argument("--image", help="image id")
    p.add_argument("--shape", choices=("rect", "ellipse", "polygon"))
    p.add_argument("--kind", choices=("include", "exclude"),
                   help="include: look here; exclude: not here")
    p.add_argument("--points", nargs="+", metavar="X,Y",
                   help="image-normalised points: two box corners (rect, ellipse) or the "
                   "vertices (polygon)")
    p.add_argument("--weight", type=float, default=1.0)
    p.add_argument("--json", help="a JSON file with a list of regions (or {'rois': [...]})")

    p = command("rois", cmd_rois, "list the regions of interest as JSON")
    p.add_argument("--image", default=None)

    p = command("delete-roi", cmd_delete_roi, "delete a region of interest")
    p.add_argument("roi_id", type=int)

    from mimic_runner.feedback.params import add_arguments

    p = command("retrain", cmd_retrain, "retrain the current version with the feedback")
    add_arguments(p)
    p.add_argument("--replace-candidate", action="store_true",
                   help="retrain although a candidate waits (it is discarded)")

    p = command("diff", cmd_diff, "differences between two versions (default: current vs "
                "candidate)")
    p.add_argument("--before", type=int, default=None)
    p.add_argument("--after", type=int, default=None)
    p.add_argument("--heldout", choices=("val", "test"), default="val")
    p.add_argument("--json", action="store_true")

    p = command("accept", cmd_accept, "accept the candidate: it becomes the current version")
    p.add_argument("--version", type=int, default=None)

    command("discard", cmd_discard, "discard the pending candidate (it stays in the history)")
    p = command("revert", cmd_revert, "return to an earlier accepted version")
    p.add_argument("--to", type=int, required=True, metavar="VERSION",
                   help="the version to return to (status lists the versions)")
    command("rollback", cmd_rollback, "discard the candidate, or return to the previous "
            "accepted version")

    p = command("status", cmd_status, "versions, current and candidate, regions")
    p.add_argument("--json", action="store_true")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
