"""The feedback web app: a JSON API over one :class:`FeedbackSession` and one static page.

Safe by default: ``mimic-feedback serve`` binds 127.0.0.1; an optional access token is checked
on every request (``Authorization: Bearer T``, or the cookie that ``/?token=T`` sets); bodies
over ``max_body`` bytes are refused with 413 before they are parsed, and a body that does not
arrive within ``body_timeout`` seconds with 408; state-changing requests from another origin are
refused (403); every response forbids framing (``X-Frame-Options: DENY``,
``Content-Security-Policy: frame-ancestors 'none'``) and loading anything from elsewhere (CSP);
image ids are looked up in the dataset (never used as paths); numeric ids are bounded (a huge id
is a 422, not a database overflow); regions and parameters are validated by pydantic models and
then by the session; an unexpected error is a one-line JSON 500, its traceback in the log. The
routes are in :mod:`~mimic_runner.feedback.routes`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from mimic_runner.errors import UserError
from mimic_runner.feedback.middleware import (
    BODY_TIMEOUT,
    MAX_BODY,
    BodyLimit,
    Guard,
    SecurityHeaders,
)
from mimic_runner.feedback.routes import image_routes, retrain_routes, roi_routes, version_routes
from mimic_runner.feedback.session import FeedbackSession
from mimic_runner.feedback.store import FeedbackConflict, FeedbackInvalid, FeedbackNotFound

STATIC = Path(str(resources.files("mimic_runner.feedback") / "static"))
_STATUS = {FeedbackNotFound: 404, FeedbackConflict: 409, FeedbackInvalid: 422}
DESCRIPTION = ("Human feedback on the attention of an attention-branch model: browse images, "
               "draw regions of interest, retrain, compare, accept, discard or revert. This "
               "reference is served offline at /docs (from /openapi.json).")


def create_app(session: FeedbackSession, token: str | None = None,
               allowed_hosts: list[str] | None = None, max_body: int = MAX_BODY,
               body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    """The ASGI app. ``allowed_hosts``: Host header names to serve (None: any)."""
    app = FastAPI(title="mimic-feedback", description=DESCRIPTION, version="1",
                  docs_url=None, redoc_url=None)
    app.state.session = session
    app.state.runner = session.retraining  # created now: records a retraining lost earlier
    app.add_exception_handler(UserError, _user_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC / "docs.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for routes in (image_routes, roi_routes, retrain_routes, version_routes):
        routes(app, session)
    # Added last = outermost: security headers wrap everything, then the guard, then the body
    # limit, then routing.
    app.add_middleware(BodyLimit, limit=max_body, timeout=body_timeout)
    app.add_middleware(Guard, token=token, allowed_hosts=allowed_hosts)
    app.add_middleware(SecurityHeaders)
    return app


async def _user_error(request: Request, exc: UserError) -> JSONResponse:
    status = next((s for cls, s in _STATUS.items() if isinstance(exc, cls)), 400)
    return JSONResponse({"detail": str(exc)}, status_code=status)


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A 422 as one line (``detail``) and, per problem, where and what (``errors``)."""
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
