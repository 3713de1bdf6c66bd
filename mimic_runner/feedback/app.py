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
import io
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from mimic_runner.errors import UserError
from mimic_runner.feedback.diff import compare_versions
from mimic_runner.feedback.middleware import (
    MAX_BODY,
    BodyLimit,
    Guard,
    SecurityHeaders,
)
from mimic_runner.feedback.retrain import RetrainParams, RetrainRunner
from mimic_runner.feedback.schemas import (
    MAX_ID,
    DecisionIn,
    RetrainIn,
    RevertIn,
    RoiId,
    RoiPatch,
    RoisIn,
    VersionQuery,
)
from mimic_runner.feedback.session import FeedbackSession
from mimic_runner.feedback.store import (
    FeedbackConflict,
    FeedbackInvalid,
    FeedbackNotFound,
)

STATIC = Path(str(resources.files("mimic_runner.feedback") / "static"))
log = logging.getLogger("mimic_runner.feedback")


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
