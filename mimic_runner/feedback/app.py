"""The feedback web app: a JSON API over a :class:`FeedbackSession` and one static page.

Safe by default: ``mimic-feedback serve`` binds 127.0.0.1; an optional access token is checked
on every request (``Authorization: Bearer T``, or the cookie that ``/?token=T`` sets); bodies
over ``max_body`` bytes are refused with 413 before they are parsed; state-changing requests
from another origin are refused (403); every response forbids framing (``X-Frame-Options: DENY``,
``Content-Security-Policy: frame-ancestors 'none'``) and loading anything from elsewhere (CSP);
image ids are looked up in the dataset (never used as paths); numeric ids are bounded (a huge id
is a 422, not a database overflow); regions and parameters are validated by pydantic models and
then by the session; an unexpected error is a one-line JSON 500, its traceback in the log.
"""

from __future__ import annotations

import base64
import functools
import hmac
import io
import ipaddress
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, urlsplit

import numpy as np
from fastapi import Body, FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mimic_runner.errors import UserError
from mimic_runner.feedback.diff import compare_versions
from mimic_runner.feedback.retrain import TRAIN_PARTS, RetrainParams, RetrainRunner
from mimic_runner.feedback.roi import MAX_POLYGON_POINTS, TARGET_MODES, validate_roi
from mimic_runner.feedback.session import FeedbackSession
from mimic_runner.feedback.store import (
    MAX_ROIS_PER_IMAGE,
    FeedbackConflict,
    FeedbackInvalid,
    FeedbackNotFound,
)

MAX_BODY = 1 << 20  # 1 MiB: far above any real region payload (100 polygons of 64 points)
TOKEN_COOKIE = "mimic_feedback_token"
STATIC = Path(str(resources.files("mimic_runner.feedback") / "static"))
ImageId = Annotated[str, Field(min_length=1, max_length=256)]
MAX_ID = 2**63 - 1  # SQLite's largest integer: larger ids are refused before any lookup
VersionQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
RoiId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a region's id")]
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Sent with every response: nothing may frame the page (clickjacking), and the page loads
#: scripts, styles, images and data from this server only. 'unsafe-eval' is allowed because
#: browser automation compiles its string predicates with eval (Playwright's wait_for_function);
#: the page's own code never evaluates strings, and scripts still come from this server only.
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self' 'unsafe-eval'; style-src 'self'; img-src 'self' data: blob:; "
     b"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
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


# -- request and response models -------------------------------------------------------------
def _points_inside(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    for i, (x, y) in enumerate(points):
        for name, v in (("x", x), ("y", y)):
            if not 0.0 <= v <= 1.0:  # also rejects NaN
                raise ValueError(f"points[{i}]: {name}={v} is outside the image; "
                                 "coordinates are image-normalised in [0, 1]")
    return points


class RoiIn(BaseModel):
    """One region of interest in image-normalised coordinates (x right, y down, in [0, 1])."""

    model_config = ConfigDict(extra="forbid")
    image_id: ImageId
    shape: Literal["rect", "ellipse", "polygon"]
    kind: Literal["include", "exclude"]
    points: list[tuple[float, float]] = Field(
        min_length=2, max_length=MAX_POLYGON_POINTS,
        description="rect/ellipse: two opposite corners of the box; polygon: 3..64 vertices")
    weight: float = Field(1.0, gt=0, le=100)

    @field_validator("points")
    @classmethod
    def _inside(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return _points_inside(points)

    def check(self) -> None:
        try:
            validate_roi(self.shape, self.kind, self.points, self.weight)
        except ValueError as exc:
            raise FeedbackInvalid(str(exc)) from None


class RoisIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rois: list[RoiIn] = Field(min_length=1, max_length=MAX_ROIS_PER_IMAGE)
    author: str = Field("", max_length=100)


class RetrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gamma: float = Field(RetrainParams.gamma, ge=0, le=1e6)
    epochs: int = Field(RetrainParams.epochs, ge=1, le=1000)
    lr: float = Field(RetrainParams.lr, gt=0, le=1)
    train: Literal[TRAIN_PARTS] = RetrainParams.train  # type: ignore[valid-type]
    mode: Literal[TARGET_MODES] = RetrainParams.mode  # type: ignore[valid-type]
    max_batches: int | None = Field(None, ge=1, le=100_000)
    batch_size: int | None = Field(None, ge=1, le=4096)
    feedback_batch_size: int = Field(16, ge=1, le=1024)
    heldout: Literal["val", "test"] = "val"
    seed: int = Field(0, ge=0, le=2**31 - 1)
    author: str = Field("", max_length=100)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(None, ge=1, le=MAX_ID, description="accept: the candidate "
                                "(default: the pending one)")
    author: str = Field("", max_length=100)


class RevertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=MAX_ID, description="an earlier accepted version (an "
                         "ancestor of the current one; GET /api/status lists them as "
                         "revert_targets)")
    author: str = Field("", max_length=100)


class RoiPatch(BaseModel):
    """A change to a stored region: new points (move, resize), kind or weight."""

    model_config = ConfigDict(extra="forbid")
    points: list[tuple[float, float]] | None = Field(
        None, min_length=2, max_length=MAX_POLYGON_POINTS)
    kind: Literal["include", "exclude"] | None = None
    weight: float | None = Field(None, gt=0, le=100)
    author: str = Field("", max_length=100)

    @field_validator("points")
    @classmethod
    def _inside(cls, points: list[tuple[float, float]] | None
                ) -> list[tuple[float, float]] | None:
        return None if points is None else _points_inside(points)


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
    """Refuse request bodies over ``limit`` bytes with 413 (by header, or while reading)."""

    def __init__(self, app: Any, limit: int = MAX_BODY) -> None:
        self.app, self.limit = app, limit

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
        while more:
            message = await receive()
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


# -- app -----------------------------------------------------------------------------------------
def _png(array: np.ndarray, size: int | None = None) -> bytes:
    """uint8 (C, H, W) with C in {1, 3}, or (H, W), as PNG bytes (``size``: longest side)."""
    from PIL import Image

    a = np.asarray(array)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))
    image = Image.fromarray(np.ascontiguousarray(a))
    if size is not None and max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


_STATUS = {FeedbackNotFound: 404, FeedbackConflict: 409, FeedbackInvalid: 422}


def create_app(session: FeedbackSession, token: str | None = None,
               allowed_hosts: list[str] | None = None, max_body: int = MAX_BODY) -> FastAPI:
    """The ASGI app. ``allowed_hosts``: Host header names to serve (None: any)."""
    runner = RetrainRunner(session)
    app = FastAPI(
        title="mimic-feedback",
        description="Human feedback on the attention of an attention-branch model: browse "
        "images, draw regions of interest, retrain, compare, accept, discard or revert. This "
        "reference is served offline at /docs (from /openapi.json).",
        version="1", docs_url=None, redoc_url=None)
    app.state.session = session
    app.state.runner = runner
    diff_cache: dict[tuple[Any, ...], dict[str, Any]] = {}

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError) -> JSONResponse:
        status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 400)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        lines = []
        for e in errors[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
            lines.append(f"{where}: {msg}" if where else msg)
        # Only where and what: echoing the input back could be large (or NaN, not JSON).
        brief = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                  "type": str(e.get("type", ""))} for e in errors]
        return JSONResponse({"detail": "; ".join(lines) or "invalid request", "errors": brief},
                            status_code=422)

    # -- page and offline docs -------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -- data ----------------------------------------------------------------------------------
    @app.get("/api/info", summary="Run, dataset and class names")
    def info() -> dict[str, Any]:
        return session.info()

    @app.get("/api/images", summary="List the images of a split (paged)")
    def images(split: Literal["train", "val", "test"] = "train",
               offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
               limit: Annotated[int, Query(ge=1, le=500)] = 50) -> dict[str, Any]:
        return session.images(split, offset, limit)

    @app.get("/api/images/{image_id:path}/image.png", summary="The image as PNG",
             response_class=Response)
    def image_png(image_id: str) -> Response:
        return Response(_png(session.image_uint8(image_id)), media_type="image/png")

    @functools.lru_cache(maxsize=1024)
    def _thumb(image_id: str, size: int) -> bytes:
        return _png(session.image_uint8(image_id), size)

    @app.get("/api/images/{image_id:path}/thumb.png", response_class=Response,
             summary="A small copy of the image (longest side at most `size` pixels)")
    def thumb_png(image_id: str, size: Annotated[int, Query(ge=8, le=256)] = 48) -> Response:
        session.ref(image_id)  # 404 before the cache sees an unknown id
        return Response(_thumb(image_id, size), media_type="image/png",
                        headers={"cache-control": "private, max-age=3600"})

    @app.get("/api/images/{image_id:path}/attention.png", response_class=Response,
             summary="The attention map M(x) of a version as a grey PNG (value/255 = M)")
    def attention_png(image_id: str, version: VersionQuery = None) -> Response:
        m = session.attention(image_id, version)
        png = _png(np.clip(np.rint(m * 255), 0, 255).astype(np.uint8))
        return Response(png, media_type="image/png")

    @app.get("/api/images/{image_id:path}/attention",
             summary="The attention map M(x) of a version as float32 values (base64)")
    def attention_values(image_id: str, version: VersionQuery = None) -> dict[str, Any]:
        _, maps, vid = session.predict([image_id], version)
        m = maps[0].float().numpy().astype("<f4")
        return {"image_id": image_id, "version": vid, "height": int(m.shape[0]),
                "width": int(m.shape[1]), "dtype": "float32", "byte_order": "little",
                "values": base64.b64encode(m.tobytes()).decode("ascii"),
                "min": float(m.min()), "max": float(m.max())}

    @app.get("/api/images/{image_id:path}/prediction", summary="Class and probabilities")
    def prediction(image_id: str, version: VersionQuery = None) -> dict[str, Any]:
        return session.prediction(image_id, version)

    # -- regions -------------------------------------------------------------------------------
    @app.get("/api/rois", summary="Regions of interest (all, or of one image)")
    def rois(image_id: Annotated[str | None, Query(max_length=256)] = None
             ) -> list[dict[str, Any]]:
        if image_id is not None:
            session.ref(image_id)
        return session.store.rois(image_id)

    @app.post("/api/rois", status_code=201, summary="Add regions of interest (all or none)")
    def add_rois(payload: RoisIn) -> list[dict[str, Any]]:
        for roi in payload.rois:
            roi.check()
        return session.add_rois([r.model_dump() for r in payload.rois], author=payload.author)

    @app.patch("/api/rois/{roi_id}", summary="Move, resize or switch the kind of a region")
    def update_roi(roi_id: RoiId, payload: RoiPatch) -> dict[str, Any]:
        changes = payload.model_dump(exclude_none=True)
        author = changes.pop("author", "")
        return session.update_roi(roi_id, changes, author=author)

    @app.delete("/api/rois/{roi_id}", summary="Delete a region of interest")
    def delete_roi(roi_id: RoiId) -> dict[str, Any]:
        return session.store.delete_roi(roi_id)

    # -- retraining and decisions --------------------------------------------------------------
    @app.post("/api/retrain", status_code=202,
              summary="Start retraining with the feedback (409 while one runs)")
    def start_retrain(payload: Annotated[RetrainIn | None, Body()] = None) -> dict[str, Any]:
        p = (payload or RetrainIn()).model_dump()
        author = p.pop("author")
        return runner.start(RetrainParams(**p), author=author)

    @app.get("/api/retrain", summary="Progress of the current or last retraining")
    def retrain_status() -> dict[str, Any]:
        return runner.status()

    @app.get("/api/diff", summary="Differences between any two versions (default: current vs "
             "pending candidate)")
    def diff(before: VersionQuery = None, after: VersionQuery = None,
             heldout: Literal["val", "test"] = "val") -> dict[str, Any]:
        b = int(session.store.current()["id"]) if before is None else before
        if after is None:
            cand = session.store.candidate()
            if cand is None:
                raise FeedbackConflict("there is no candidate to compare; retrain first, or "
                                       "name two versions (?before=1&after=2)")
            after = int(cand["id"])
        session.store.version(b)
        session.store.version(after)
        # Versions are immutable, the regions are not: their content is part of the key.
        key = (b, after, heldout, tuple((r["id"], r["kind"], json.dumps(r["points"]),
                                          r["weight"]) for r in session.store.rois()))
        if key not in diff_cache:
            if len(diff_cache) > 64:
                diff_cache.clear()
            diff_cache[key] = compare_versions(session, b, after, heldout)
        return diff_cache[key]

    def _idle(what: str) -> None:
        if runner.status()["state"] == "running":
            raise FeedbackConflict(f"a retraining is running; wait for it to finish before "
                                   f"{what}")

    @app.post("/api/accept", summary="Accept the candidate: it becomes the current version")
    def accept(payload: Annotated[DecisionIn | None, Body()] = None) -> dict[str, Any]:
        _idle("accepting or rolling back")
        p = payload or DecisionIn()
        version = session.accept(p.version, author=p.author)
        return {"current": version, "status": session.status()}

    @app.post("/api/discard", summary="Discard the pending candidate (kept in the history)")
    def discard(payload: Annotated[DecisionIn | None, Body()] = None) -> dict[str, Any]:
        _idle("discarding the candidate")
        p = payload or DecisionIn()
        if p.version is not None:
            raise FeedbackInvalid("discard takes no version: it discards the pending candidate")
        result = session.discard(author=p.author)
        return {**result, "status": session.status()}

    @app.post("/api/revert", summary="Return to an earlier accepted version (chosen from the "
              "history)")
    def revert(payload: RevertIn) -> dict[str, Any]:
        _idle("reverting")
        result = session.revert(payload.version, author=payload.author)
        return {**result, "status": session.status()}

    @app.post("/api/rollback", summary="Discard the candidate, or return to the previous "
              "accepted version (one step back)")
    def rollback(payload: Annotated[DecisionIn | None, Body()] = None) -> dict[str, Any]:
        _idle("accepting or rolling back")
        p = payload or DecisionIn()
        if p.version is not None:
            raise FeedbackInvalid("rollback takes no version: it undoes the latest step "
                                  "(POST /api/revert returns to a chosen version)")
        result = session.rollback(author=p.author)
        return {**result, "status": session.status()}

    @app.get("/api/versions", summary="Version history: every version (rolled back ones too) "
             "with its status, parameters and measures")
    def versions() -> list[dict[str, Any]]:
        return session.store.versions()

    @app.get("/api/status", summary="Current and candidate version, revert targets, weights "
             "hash, retraining")
    def status() -> dict[str, Any]:
        return {**session.status(), "retrain": runner.status()}

    @app.get("/api/events", summary="Audit log (who did what, when)")
    def events(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return session.store.events(limit)

    # Added last = outermost: security headers wrap everything, then the guard, then the body
    # limit, then routing.
    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts)
    app.add_middleware(SecurityHeaders)
    return app
