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
import ipaddress
import json
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mimic_runner.errors import UserError, exit_on_user_error

console = Console()
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def _is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one clear line (before any slow work)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: use a port number from 1 to 65535 (0 picks a free one)")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc})") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise UserError(f"cannot listen on {host}:{port}: {reason}; choose another --port "
                        "(or --host)") from None
    sock.set_inheritable(True)
    return sock


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
    import uvicorn

    from mimic_runner.feedback.app import create_app
    from mimic_runner.feedback.middleware import allowed_hosts_for

    token = args.token
    loopback = _is_loopback(args.host)
    if not loopback and token is None and not args.no_token:
        token = secrets.token_urlsafe(24)  # never serve the network without a token by default
    sock = _listen(args.host, args.port)  # a bad or busy port fails before the model loads
    try:
        port = sock.getsockname()[1]
        session = _session(args)
        app = create_app(session, token=token, allowed_hosts=allowed_hosts_for(args.host))
        host = args.host.strip("[]")
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{port}/"
        if token:
            url += f"?token={token}"
        console.print(f"mimic-feedback: serving {session.run_dir} (workspace "
                      f"{session.workspace})")
        console.print(f"open [bold]{url}[/bold]   (API reference: /docs; Ctrl+C stops)")
        if not loopback and not token:
            console.print("[red]warning[/red]: serving the network without an access token")
        config = uvicorn.Config(app, host=host, port=port, log_level=args.log_level)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


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
        console.print(f"added region {r['id']}: {r['shape']} {r['kind']} on {r['image_id']}")


def _read_rois(path: Path) -> list[dict[str, Any]]:
    """The regions of a JSON file (a list, or ``{"rois": [...]}``), or one clear line."""
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
                          / "feedback.sqlite")
    _print_json(store.rois(args.image))


def cmd_delete_roi(args: argparse.Namespace) -> None:
    row = _session(args).store.delete_roi(args.roi_id, author=args.author)
    console.print(f"deleted region {row['id']} on {row['image_id']}")


def cmd_retrain(args: argparse.Namespace) -> None:
    from rich.progress import Progress

    from mimic_runner.feedback.retrain import RetrainParams, retrain

    params = RetrainParams(gamma=args.gamma, epochs=args.epochs, lr=args.lr, train=args.train,
                           mode=args.mode, max_batches=args.max_batches,
                           batch_size=args.batch_size, heldout=args.heldout, seed=args.seed)
    session = _session(args)
    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("retraining", total=1.0)
        version = retrain(session, params,
                          progress=lambda f, m: bar.update(task, completed=f, description=m))
    m = version["metrics"]
    split = m["heldout_split"]
    console.print(f"candidate version {version['id']} (parent v{version['parent']}): "
                  f"{split} acc {m[f'{split}/acc']:.4f}; accept or roll back after "
                  "`mimic-feedback diff`")


def cmd_diff(args: argparse.Namespace) -> None:
    from mimic_runner.feedback.diff import compare_versions

    session = _session(args)
    before = args.before or int(session.store.current()["id"])
    after = args.after
    if after is None:
        cand = session.store.candidate()
        if cand is None:
            raise UserError("diff: no candidate to compare; retrain first or pass --after N")
        after = int(cand["id"])
    d = compare_versions(session, before, after, args.heldout)
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
    console.print(table)


def cmd_accept(args: argparse.Namespace) -> None:
    v = _session(args).accept(args.version)
    console.print(f"accepted: version {v['id']} is current (sha256 {v['sha256'][:12]}…)")


def cmd_discard(args: argparse.Namespace) -> None:
    r = _session(args).discard()
    console.print(f"discarded candidate version {r['rolled_back']['id']}: version "
                  f"{r['current']['id']} stays current")


def cmd_revert(args: argparse.Namespace) -> None:
    r = _session(args).revert(args.to)
    undone = ", ".join(f"v{v}" for v in r["rolled_back"])
    console.print(f"reverted to version {r['current']['id']} (sha256 "
                  f"{r['current']['sha256'][:12]}…); rolled back: {undone}")


def cmd_rollback(args: argparse.Namespace) -> None:
    r = _session(args).rollback()
    console.print(f"rolled back version {r['rolled_back']['id']}: version {r['current']['id']} "
                  f"is current (sha256 {r['current']['sha256'][:12]}…)")


def cmd_status(args: argparse.Namespace) -> None:
    status = _session(args).status()
    if args.json:
        _print_json(status)
        return
    console.print(_versions_table(status))
    cand = status["candidate"]
    console.print(f"current: v{status['current']['id']} · candidate: "
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

    from mimic_runner.feedback.retrain import TRAIN_PARTS, RetrainParams
    from mimic_runner.feedback.roi import TARGET_MODES

    d = RetrainParams()
    p = command("retrain", cmd_retrain, "retrain the current version with the feedback")
    p.add_argument("--gamma", type=float, default=d.gamma, help="weight of the feedback loss")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--train", choices=TRAIN_PARTS, default=d.train,
                   help="which parts are trained")
    p.add_argument("--mode", choices=TARGET_MODES, default=d.mode,
                   help="how the corrected map is built from the regions")
    p.add_argument("--max-batches", type=int, default=None,
                   help="training batches per epoch (default: the whole train split)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--heldout", choices=("val", "test"), default=d.heldout)
    p.add_argument("--seed", type=int, default=d.seed)

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
