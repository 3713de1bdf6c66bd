"""The routes of the feedback API, each a thin call into the one
:class:`~mimic_runner.feedback.session.FeedbackSession` it is given: images, regions,
retraining, versions and decisions. Every error answer a route can give is declared in its
``responses=`` (:func:`~mimic_runner.feedback.schemas.errors`), so the published schema is true.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Body, FastAPI, Query
from fastapi.responses import Response

from mimic_runner.feedback.images import SORTS, ImageFilter, parse_region
from mimic_runner.feedback.params import RetrainParams
from mimic_runner.feedback.schemas import (
    MAX_ID,
    WRITE,
    ApplyIn,
    CancelIn,
    DecisionIn,
    RetrainIn,
    RevertIn,
    RoiId,
    RoiPatch,
    RoisIn,
    Split,
    VersionQuery,
    errors,
)
from mimic_runner.feedback.session import FeedbackSession
from mimic_runner.feedback.store import FeedbackInvalid

ClassQuery = Annotated[int | None, Query(ge=0, le=10_000, description="a class index")]
AuthorQuery = Annotated[str, Query(max_length=100, description="the reviewer's name")]


def png(array: np.ndarray, size: int | None = None) -> bytes:
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


def image_routes(r: FastAPI, session: FeedbackSession) -> None:
    """Run information, the image list (filters, sort), images, maps and predictions."""

    @r.get("/api/info", summary="Run, dataset and class names", responses=errors())
    def info() -> dict[str, Any]:
        return session.info()

    @r.get("/api/images", summary="List the images of a split (filtered, sorted, paged)",
           responses=errors(404, 422))
    def images(split: Split = "train", offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
               limit: Annotated[int, Query(ge=1, le=500)] = 50,
               label: ClassQuery = None, predicted: ClassQuery = None,
               correct: bool | None = None, has_rois: bool | None = None,
               sort: Literal[SORTS] = "id",  # type: ignore[valid-type]
               region: Annotated[str | None, Query(max_length=200, description="x0,y0,x1,y1 "
                                                   "in image pixels")] = None,
               version: VersionQuery = None) -> dict[str, Any]:
        f = ImageFilter(label=label, predicted=predicted, correct=correct, has_rois=has_rois,
                        region=parse_region(region), sort=sort, version=version)
        return session.images(split, offset, limit, f)

    @r.get("/api/images/{image_id:path}/image.png", summary="The image as PNG",
           response_class=Response, responses=errors(404))
    def image_png(image_id: str) -> Response:
        return Response(png(session.image_uint8(image_id)), media_type="image/png")

    @functools.lru_cache(maxsize=1024)
    def _thumb(image_id: str, size: int) -> bytes:
        return png(session.image_uint8(image_id), size)

    @r.get("/api/images/{image_id:path}/thumb.png", response_class=Response,
           summary="A small copy of the image (longest side at most `size` pixels)",
           responses=errors(404, 422))
    def thumb_png(image_id: str, size: Annotated[int, Query(ge=8, le=256)] = 48) -> Response:
        session.ref(image_id)  # 404 before the cache sees an unknown id
        return Response(_thumb(image_id, size), media_type="image/png",
                        headers={"cache-control": "private, max-age=3600"})

    @r.get("/api/images/{image_id:path}/attention.png", response_class=Response,
           summary="The attention map M(x) of a version as a grey PNG (value/255 = M)",
           responses=errors(404, 422))
    def attention_png(image_id: str, version: VersionQuery = None) -> Response:
        m = session.attention(image_id, version)
        return Response(png(np.clip(np.rint(m * 255), 0, 255).astype(np.uint8)),
                        media_type="image/png")

    @r.get("/api/images/{image_id:path}/attention", responses=errors(404, 422),
           summary="The attention map M(x) of a version as float32 values (base64)")
    def attention_values(image_id: str, version: VersionQuery = None) -> dict[str, Any]:
        _, maps, vid = session.predict([image_id], version)
        m = maps[0].float().numpy().astype("<f4")
        return {"image_id": image_id, "version": vid, "height": int(m.shape[0]),
                "width": int(m.shape[1]), "dtype": "float32", "byte_order": "little",
                "values": base64.b64encode(m.tobytes()).decode("ascii"),
                "min": float(m.min()), "max": float(m.max())}

    @r.get("/api/images/{image_id:path}/prediction", summary="Class and probabilities",
           responses=errors(404, 422))
    def prediction(image_id: str, version: VersionQuery = None) -> dict[str, Any]:
        return session.prediction(image_id, version)



def roi_routes(r: FastAPI, session: FeedbackSession) -> None:
    """Regions of interest: list, add, copy onto many images, edit, delete."""

    @r.get("/api/rois", summary="Regions of interest (all, or of one image)",
           responses=errors(404, 422))
    def rois(image_id: Annotated[str | None, Query(max_length=256)] = None
             ) -> list[dict[str, Any]]:
        return session.rois(image_id)

    @r.post("/api/rois", status_code=201, summary="Add regions of interest (all or none)",
            responses=errors(404, 409, *WRITE))
    def add_rois(payload: RoisIn) -> list[dict[str, Any]]:
        for roi in payload.rois:
            roi.check()
        return session.add_rois([r.model_dump() for r in payload.rois], author=payload.author)

    @r.post("/api/rois/apply", status_code=201, responses=errors(404, 409, *WRITE),
            summary="Copy one region onto many images (listed, filtered, or all; all or none)")
    def apply_roi(payload: ApplyIn) -> dict[str, Any]:
        f = payload.filter.to_filter() if payload.filter is not None else None
        return session.apply_roi(payload.roi.model_dump(), payload.image_ids, f,
                                 payload.split, author=payload.author)

    @r.patch("/api/rois/{roi_id}", summary="Move, resize or switch the kind of a region",
             responses=errors(404, *WRITE))
    def update_roi(roi_id: RoiId, payload: RoiPatch) -> dict[str, Any]:
        changes = payload.model_dump(exclude_none=True)
        author = changes.pop("author", "")
        if not changes:
            raise FeedbackInvalid("a region update changes points, kind or weight; got nothing")
        return session.update_roi(roi_id, changes, author=author)

    @r.delete("/api/rois/{roi_id}", summary="Delete a region of interest",
              responses=errors(404, 422))
    def delete_roi(roi_id: RoiId, author: AuthorQuery = "") -> dict[str, Any]:
        return session.delete_roi(roi_id, author=author)



def _params(payload: Any) -> tuple[RetrainParams, dict[str, Any]]:
    body = (payload or RetrainIn()).model_dump()
    return RetrainParams.from_mapping(body), body


def retrain_routes(r: FastAPI, session: FeedbackSession) -> None:
    """Retraining: start, estimate, cancel, progress; differences between versions."""

    @r.post("/api/retrain", status_code=202, responses=errors(409, *WRITE),
            summary="Start retraining with the feedback (409 while one runs or a candidate "
            "waits without replace_candidate)")
    def start_retrain(payload: Annotated[RetrainIn | None, Body()] = None) -> dict[str, Any]:
        params, body = _params(payload)
        return session.start_retrain(params, author=body["author"],
                                     replace_candidate=body["replace_candidate"])

    @r.post("/api/retrain/estimate", responses=errors(*WRITE),
            summary="How long a retraining with these settings takes here (one timed step)")
    def estimate(payload: Annotated[RetrainIn | None, Body()] = None) -> dict[str, Any]:
        return session.estimate_retrain(_params(payload)[0])

    @r.post("/api/retrain/cancel", status_code=202, responses=errors(409, *WRITE),
            summary="Stop the running retraining (within a batch; no candidate is made)")
    def cancel(payload: Annotated[CancelIn | None, Body()] = None) -> dict[str, Any]:
        return session.cancel_retrain(author=(payload or CancelIn()).author)

    @r.get("/api/retrain", summary="Progress of the current or last retraining",
           responses=errors())
    def retrain_status() -> dict[str, Any]:
        return session.retrain_status()

    @r.get("/api/diff", responses=errors(404, 409, 422),
           summary="Differences between two versions (default: the candidate and the version "
           "it was trained from)")
    def diff(before: VersionQuery = None, after: VersionQuery = None,
             heldout: Literal["val", "test"] = "val") -> dict[str, Any]:
        return session.diff(before, after, heldout)



def version_routes(r: FastAPI, session: FeedbackSession) -> None:
    """Decisions (idempotent with a request_id), history, status and the audit log."""
    decision = errors(404, 409, *WRITE)

    @r.post("/api/accept", responses=decision,
            summary="Accept the candidate: it becomes the current version")
    def accept(payload: Annotated[DecisionIn | None, Body()] = None) -> dict[str, Any]:
        p = payload or DecisionIn()
        result = session.accept(p.version, author=p.author, request_id=p.request_id)
        return {**result, "status": session.status()}

    @r.post("/api/discard", responses=decision,
            summary="Discard the waiting candidate (kept in the history)")
    def discard(payload: Annotated[DecisionIn | None, Body()] = None) -> dict[str, Any]:
        p = payload or DecisionIn()
        if p.version is not None:
            raise FeedbackInvalid("discard takes no version: it discards the pending candidate")
        return {**session.discard(author=p.author, request_id=p.request_id),
                "status": session.status()}

    @r.post("/api/revert", responses=decision,
            summary="Return to an earlier accepted version (chosen from the history)")
    def revert(payload: RevertIn) -> dict[str, Any]:
        result = session.revert(payload.version, author=payload.author,
                                request_id=payload.request_id)
        return {**result, "status": session.status()}

    @r.post("/api/rollback", responses=decision, summary="Discard the candidate, or return "
            "to the previous accepted version (one step back)")
    def rollback(payload: Annotated[DecisionIn | None, Body()] = None) -> dict[str, Any]:
        p = payload or DecisionIn()
        if p.version is not None:
            raise FeedbackInvalid("rollback takes no version: it undoes the latest step "
                                  "(POST /api/revert returns to a chosen version)")
        return {**session.rollback(author=p.author, request_id=p.request_id),
                "status": session.status()}

    @r.get("/api/versions", responses=errors(), summary="Version history: every version "
           "(rolled back ones too) with its status, parameters and measures")
    def versions() -> list[dict[str, Any]]:
        return session.versions()

    @r.get("/api/status", responses=errors(), summary="Revision (grows with every change), "
           "current and candidate version, revert targets, regions, weights hash, retraining")
    def status() -> dict[str, Any]:
        return session.status()

    @r.get("/api/events", summary="Audit log (who did what, when; times in UTC)",
           responses=errors(422))
    def events(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
        return session.events(limit)

