"""Serving the feedback app: the listening socket (bound before the model loads, so a bad or
busy port fails at once), the access token off loopback, and uvicorn."""

from __future__ import annotations

import ipaddress
import secrets
import socket
from collections.abc import Callable

from mimic_runner.errors import UserError
from mimic_runner.log import console

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listen(host: str, port: int) -> socket.socket:
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


def serve(open_session: Callable[[], object], host: str = "127.0.0.1", port: int = 8000,
          token: str | None = None, no_token: bool = False, log_level: str = "warning") -> None:
    """Bind ``host:port``, open the session (``open_session()``: slow, after the bind), and
    serve the page and API until Ctrl+C. Off loopback a token is generated unless ``no_token``.
    """
    import uvicorn

    from mimic_runner.feedback.app import create_app
    from mimic_runner.feedback.middleware import allowed_hosts_for

    loopback = is_loopback(host)
    if not loopback and token is None and not no_token:
        token = secrets.token_urlsafe(24)  # never serve the network without a token by default
    sock = listen(host, port)
    try:
        bound = sock.getsockname()[1]
        session = open_session()
        app = create_app(session, token=token,  # type: ignore[arg-type]
                         allowed_hosts=allowed_hosts_for(host))
        name = host.strip("[]")
        shown = f"[{name}]" if ":" in name else name
        url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
        console.print(f"mimic-feedback: serving {session.run_dir} "  # type: ignore[attr-defined]
                      f"(workspace {session.workspace})")  # type: ignore[attr-defined]
        console.print(f"open [bold]{url}[/bold]   (API reference: /docs; Ctrl+C stops)")
        if not loopback and not token:
            console.print("[red]warning[/red]: serving the network without an access token")
        # Idle keep-alive connections are closed after 5 s; a request body that does not
        # arrive is cut by the app's BodyLimit (408).
        config = uvicorn.Config(app, host=name, port=bound, log_level=log_level,
                                timeout_keep_alive=5)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
