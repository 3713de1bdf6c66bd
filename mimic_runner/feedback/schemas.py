"""Request bodies and parameters of the feedback API, as pydantic models and annotated
types: validated before the session sees them."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path as PathParam
from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from mimic_runner.feedback.retrain import TRAIN_PARTS, RetrainParams
from mimic_runner.feedback.roi import MAX_POLYGON_POINTS, TARGET_MODES, validate_roi
from mimic_runner.feedback.store import (
    MAX_ROIS_PER_IMAGE,
    FeedbackInvalid,
)

ImageId = Annotated[str, Field(min_length=1, max_length=256)]
MAX_ID = 2**63 - 1  # SQLite's largest integer: larger ids are refused before any lookup
VersionQuery = Annotated[int | None, Query(ge=1, le=MAX_ID)]
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


