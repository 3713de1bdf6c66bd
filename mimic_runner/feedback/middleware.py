"""ASGI middleware of the feedback app: security headers on every response, a request body
limit, and the guard (access token, same-origin writes, Host check against DNS rebinding)."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fastapi.responses import RedirectResponse

MAX_BODY = 1 << 20  # 1 MiB: far above any real region payload (100 polygons of 64 points)
#: Seconds a request's whole body may take to arrive; a client that declares a body and never
#: sends it gets a 408 and the connection is closed, instead of holding it open.
BODY_TIMEOUT = 10.0
TOKEN_COOKIE = "mimic_feedback_token"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Sent with every response: nothing may frame the page (clickjacking), and the page loads
#: scripts, styles, images and data from this server only. 'unsafe-eval' is allowed because
#: browser automation compiles its string predicates with eval (Playwright's wait_for_function);
#: the page's own code never evaluates strings, and scripts still come from this server only.
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self'; "
     b"img-src 'self' data: blob:; connect-src 'self'; font-src 'self'; object-src 'none'; "
     b"base-uri 'none'; "
     b"form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]

log = logging.getLogger("mimic_runner.feedback")


def allowed_hosts_for(bind_host: str) -> list[str] | None:
    """Host header names to answer when bound to ``bind_host``: None (any) off loopback.

    On a loopback address (any of 127.0.0.0/8, ::1, localhost) the bound address itself and the
    usual loopback names are served, and nothing else (against DNS rebinding).
    """
    name = bind_host.strip("[]").lower()
    try:
        loopback = name == "localhost" or ipaddress.ip_address(name).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    own = [name, f"[{name}]"] if ":" in name else [name]
    return sorted({*LOOPBACK_NAMES, *own})


# -- middleware (plain ASGI, so it sees every request before routing) ---------------------------
class SecurityHeaders:
    """Outermost layer: security headers on every response (errors, static files and /docs
    included), and a one-line JSON 500 instead of a bare error page for an unexpected error."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_secured(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except Exception as exc:
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if started:
                raise  # too late for an error response: the connection is closed
            await _send_json(send_secured, 500, f"internal error ({type(exc).__name__}); the "
                             "server's log has the details")


async def _send_json(send: Any, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 (by header, or while reading), and
    bodies not complete within ``timeout`` seconds with 408."""

    def __init__(self, app: Any, limit: int = MAX_BODY, timeout: float = BODY_TIMEOUT) -> None:
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        msg = f"request body too large: at most {self.limit} bytes are accepted"
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _send_json(send, 413, msg)
        # Read the (bounded) body here and replay it: chunked uploads are capped too.
        chunks, size, more = [], 0, True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                return await _send_json(send, 408, f"the request body did not arrive within "
                                        f"{self.timeout:g} s", [(b"connection", b"close")])
            if message["type"] != "http.request":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_json(send, 413, msg)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Guard:
    """Access token, same-origin check for writes, and an optional Host allow-list."""

    def __init__(self, app: Any, token: str | None, allowed_hosts: list[str] | None) -> None:
        self.app, self.token = app, token
        self.allowed_hosts = {h.lower() for h in allowed_hosts} if allowed_hosts else None

    def _token_ok(self, headers: dict[bytes, bytes]) -> bool:
        assert self.token is not None
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(
                auth[7:].strip().encode(), self.token.encode()):
            return True
        for part in headers.get(b"cookie", b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == TOKEN_COOKIE and hmac.compare_digest(value.encode(), self.token.encode()):
                return True
        return False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1").lower()
        if self.allowed_hosts is not None:
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.allowed_hosts:
                return await _send_json(send, 400, f"Host '{host}' is not served here; open the "
                                        "address that mimic-feedback serve printed")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            # Browsers send Origin with cross-site writes (a form on another site, a sandboxed
            # "null" origin); scripts and the CLI's clients send none.
            origin = headers.get(b"origin")
            if origin is not None and urlsplit(origin.decode("latin-1")).netloc.lower() != host:
                return await _send_json(send, 403, "cross-origin request refused: changes are "
                                        "only accepted from this server's page")
        if self.token is None:
            return await self.app(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if scope["path"] == "/" and "token" in query:
            given = query["token"][0]
            if hmac.compare_digest(given.encode(), self.token.encode()):
                cookie = (f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict")
                response = RedirectResponse("/", status_code=303,
                                            headers={"set-cookie": cookie})
                return await response(scope, receive, send)
            return await _send_json(send, 401, "wrong access token in ?token=; use the one "
                                    "mimic-feedback serve printed")
        if not self._token_ok(headers):
            return await _send_json(send, 401, "missing or wrong access token: send "
                                    "'Authorization: Bearer <token>' or open /?token=<token> once",
                                    [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


