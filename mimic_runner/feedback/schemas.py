"""Request bodies and parameters of the feedback API, as pydantic models and annotated
types: validated before the session sees them. ``RetrainIn`` is built from the fields of
:class:`~mimic_runner.feedback.params.RetrainParams` (bounds and help included)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from mimic_runner.feedback.images import SORTS, ImageFilter, parse_region
from mimic_runner.feedback.params import specs
from mimic_runner.feedback.roi import MAX_POLYGON_POINTS, validate_roi
from mimic_runner.feedback.session import MAX_APPLY
from mimic_runner.feedback.store import (
    MAX_ROIS_PER_IMAGE,
    FeedbackInvalid,
)

ImageId = Annotated[str, Field(min_length=1, max_length=256)]
MAX_ID = 2**63 - 1  # SQLite's largest integer: larger ids are refused before any lookup
VersionQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
Author = Annotated[str, Field(max_length=100, description="the reviewer's name (audit log)")]
RequestId = Annotated[str | None, Field(
    None, min_length=1, max_length=100, description="a client-made id (e.g. a UUID): the same "
    "decision sent again with it returns the first answer and does nothing else")]
Split = Literal["train", "val", "test"]
RoiId = Annotated[int, PathParam(ge=1, le=MAX_ID, description="a region's id")]


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


def _retrain_fields() -> dict[str, Any]:
    """One pydantic field per :class:`RetrainParams` setting, with its bounds and help."""
    out: dict[str, Any] = {}
    for spec in specs():
        kind: Any = Literal[spec.choices] if spec.choices else spec.kind  # type: ignore[valid-type]
        if spec.optional:
            kind = kind | None
        out[spec.name] = (kind, Field(spec.default, ge=spec.ge, gt=spec.gt, le=spec.le,
                                      description=spec.help))
    return out


RetrainIn = create_model(  # type: ignore[call-overload]
    "RetrainIn", __config__=ConfigDict(extra="forbid"), **_retrain_fields(),
    replace_candidate=(bool, Field(False, description="retrain although a candidate waits "
                                   "(it is discarded); without it that is a 409")),
    author=(Author, ""))


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    author: Author = ""


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(None, ge=1, le=MAX_ID, description="accept: the candidate "
                                "(default: the pending one)")
    author: Author = ""
    request_id: RequestId = None


class RevertIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, le=MAX_ID, description="an earlier accepted version (an "
                         "ancestor of the current one; GET /api/status lists them as "
                         "revert_targets)")
    author: Author = ""
    request_id: RequestId = None


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




class RoiShapeIn(BaseModel):
    """A region without its image: what ``POST /api/rois/apply`` copies onto many images."""

    model_config = ConfigDict(extra="forbid")
    shape: Literal["rect", "ellipse", "polygon"]
    kind: Literal["include", "exclude"]
    points: list[tuple[float, float]] = Field(min_length=2, max_length=MAX_POLYGON_POINTS)
    weight: float = Field(1.0, gt=0, le=100)

    @field_validator("points")
    @classmethod
    def _inside(cls, points: list[tuple[float, float]]) -> list[tuple[float, float]]:
        return _points_inside(points)


ClassIndex = Annotated[int | None, Field(None, ge=0, le=10_000)]
Region = Annotated[str | None, Field(None, max_length=200, description="x0,y0,x1,y1 in image "
                                     "pixels: the attention share inside it (Σ M inside / Σ M)")]


class ImageFilterIn(BaseModel):
    """Which images of a split (the filters of ``GET /api/images``)."""

    model_config = ConfigDict(extra="forbid")
    label: ClassIndex = None
    predicted: ClassIndex = None
    correct: bool | None = None
    has_rois: bool | None = None
    region: Region = None
    sort: Literal[SORTS] = "id"  # type: ignore[valid-type]
    version: int | None = Field(None, ge=1, le=MAX_ID)

    def to_filter(self) -> ImageFilter:
        return ImageFilter(label=self.label, predicted=self.predicted, correct=self.correct,
                           has_rois=self.has_rois, region=parse_region(self.region),
                           sort=self.sort, version=self.version)


class ApplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roi: RoiShapeIn
    image_ids: list[ImageId] | None = Field(None, min_length=1, max_length=MAX_APPLY)
    filter: ImageFilterIn | None = None
    split: Literal["train"] = "train"
    author: Author = ""


class ErrorOut(BaseModel):
    """Every 4xx/5xx answer: one line for people, and for a 422 where and what."""

    detail: str
    errors: list[dict[str, Any]] | None = None


#: Answers every route can give: a Host not served here or a body that cannot be parsed (400),
#: a missing or wrong access token (401).
ALWAYS = (400, 401)
#: Answers of every request with a body: another origin (403), a body that does not arrive in
#: time (408) or is too large (413), invalid input (422).
WRITE = (403, 408, 413, 422)


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: the error answers it can give, all :class:`ErrorOut`."""
    words = {400: "bad request (a Host not served here, a body that cannot be parsed)",
             401: "missing or wrong access token", 403: "a change from another origin",
             404: "not found", 408: "the request body did not arrive in time",
             409: "conflict with the current state", 413: "request body too large",
             422: "invalid input"}
    return {c: {"model": ErrorOut, "description": words.get(c, "error")}
            for c in sorted({*ALWAYS, *codes})}
