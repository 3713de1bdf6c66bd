"""A feedback workspace opened on a finished run: data, model versions, regions, decisions.

The one object behind the CLI, the web API and the scripted study, so that every entry point
validates the same way and changes the store the same way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mimic_runner.analysis.load import LoadedRun
from mimic_runner.data.schema import SPLITS
from mimic_runner.errors import UserError
from mimic_runner.feedback.decisions import Decisions
from mimic_runner.feedback.diff import DiffService, evaluate_version
from mimic_runner.feedback.errors import FeedbackConflict
from mimic_runner.feedback.images import ImageFilter, SplitPredictions, list_images
from mimic_runner.feedback.models import VersionModels
from mimic_runner.feedback.params import RetrainParams
from mimic_runner.feedback.roi import ROI, checked_roi
from mimic_runner.feedback.store import (
    FeedbackInvalid,
    FeedbackNotFound,
    FeedbackStore,
    roi_from_row,
    sha256_file,
)
from mimic_runner.training.modules import AttentionBranchModule

if TYPE_CHECKING:
    from mimic_runner.feedback.runner import RetrainRunner

MAX_APPLY = 10_000  # images one region may be copied onto in one request

#: Splits whose images may carry feedback: retraining learns from them, so held-out images
#: (val, test) stay untouched and the differences measured on them stay honest.
FEEDBACK_SPLITS = ("train",)


@dataclass(frozen=True)
class ImageRef:
    """Where an image id lives: its split and row in that split."""

    image_id: str
    split: str
    row: int


class FeedbackSession:
    """Open (creating on first use) the feedback workspace of an attention-branch run.

    ``workspace`` defaults to ``RUN_DIR/feedback``. The dataset and the run's config are
    loaded once; model versions are loaded from their checkpoints (sha256-checked) on demand.

    A workspace belongs to the checkpoint it was started on: when the run's checkpoint no longer
    has the sha256 recorded for version 1 (the run was trained again), opening it is refused
    with one line, or, with ``fresh=True``, the old workspace is set aside (renamed
    ``<name>.stale-<time>``, nothing deleted) and a new one is started.
    """

    def __init__(self, run_dir: str | Path, workspace: str | Path | None = None,
                 author: str = "", loaded: LoadedRun | None = None,
                 fresh: bool = False) -> None:
        from mimic_runner.analysis.load import load_run

        self.run_dir = Path(run_dir)
        # ``loaded``: an already loaded run (several workspaces on one run, e.g. in tests).
        loaded = loaded if loaded is not None else load_run(self.run_dir)
        if not isinstance(loaded.module, AttentionBranchModule):
            raise UserError(f"{self.run_dir}: feedback on attention needs a run of "
                            f"model=attention_branch; this run is model={loaded.cfg.model.name}")
        self.cfg = loaded.cfg
        self.dm = loaded.datamodule
        self.workspace = Path(workspace) if workspace else self.run_dir / "feedback"
        self.store = FeedbackStore(self.workspace / "feedback.sqlite")
        self.set_aside: Path | None = None
        self._check_first_version(Path(loaded.checkpoint), fresh)
        self.author = author
        self.class_names = list(self.dm.class_names)
        self.index: dict[str, ImageRef] = {}
        for split in SPLITS:
            for row, image_id in enumerate(self.dm.ids[split]):
                key = image_id.decode() if isinstance(image_id, bytes) else str(image_id)
                self.index[key] = ImageRef(key, split, row)
        self._lock = threading.RLock()
        self.models = VersionModels(self.store, self.build_module, self._lock)
        if not self.store.versions():
            # Version 1 gets the run's metrics plus the held-out measures that candidates
            # record, so that the history compares like with like.
            metrics = {**(loaded.metrics or {}), **evaluate_version(self, loaded.module, "val")}
            self.store.initialise(loaded.checkpoint, metrics, author=author)
        first = self.store.version(1)
        self.models.put(loaded.module, first)
        self.decisions = Decisions(self.store)
        self.diffs = DiffService(self)
        self.predictions = SplitPredictions(self)
        self._runner: RetrainRunner | None = None

    def _check_first_version(self, checkpoint: Path, fresh: bool) -> None:
        """Refuse (or, ``fresh``, set aside) a workspace started on another checkpoint."""
        versions = self.store.versions()
        if not versions:
            return
        recorded = versions[0]["sha256"]
        now = sha256_file(checkpoint)
        if now == recorded:
            return
        if not fresh:
            raise UserError(
                f"{self.workspace}: this feedback workspace was started on another checkpoint "
                f"of the run (version 1 has sha256 {recorded[:12]}…, {checkpoint} now has "
                f"{now[:12]}…: was the run trained again?); add --fresh to set the old "
                "workspace aside and start a new one, or choose another --workspace")
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        aside = self.workspace.with_name(f"{self.workspace.name}.stale-{stamp}")
        k = 1
        while aside.exists():
            aside = self.workspace.with_name(f"{self.workspace.name}.stale-{stamp}-{k}")
            k += 1
        self.workspace.rename(aside)
        self.set_aside = aside
        self.store = FeedbackStore(self.workspace / "feedback.sqlite")

    # -- data --------------------------------------------------------------------------------
    @property
    def height(self) -> int:
        return int(self.dm.splits["train"].tensors["image"].shape[-2])

    @property
    def width(self) -> int:
        return int(self.dm.splits["train"].tensors["image"].shape[-1])

    def info(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir), "workspace": str(self.workspace),
            "dataset": self.dm.name, "class_names": self.class_names,
            "channels": int(self.dm.in_channels), "height": self.height, "width": self.width,
            "maps": list(self.dm.maps),
            "splits": {s: len(self.dm.ids[s]) for s in SPLITS},
            "feedback_splits": list(FEEDBACK_SPLITS),
        }

    def ref(self, image_id: str) -> ImageRef:
        """The image of an id, or a clear 404 (ids never reach the file system)."""
        found = self.index.get(image_id)
        if found is None:
            shown = image_id if len(image_id) <= 80 else image_id[:77] + "..."
            raise FeedbackNotFound(f"unknown image id {shown!r}: not an id of this dataset "
                                   "(GET /api/images lists them)")
        return found

    def split_ids(self, split: str) -> list[str]:
        return [i.decode() if isinstance(i, bytes) else str(i) for i in self.dm.ids[split]]

    def _roi_counts(self, ids: list[str]) -> np.ndarray:
        counts: dict[str, int] = {}
        for r in self.store.rois():
            counts[r["image_id"]] = counts.get(r["image_id"], 0) + 1
        return np.array([counts.get(i, 0) for i in ids], dtype=int)

    def _filtered(self, split: str, f: ImageFilter) -> tuple[list[str], np.ndarray,
                                                               dict[str, np.ndarray], np.ndarray]:
        if split not in SPLITS:
            raise FeedbackInvalid(f"split '{split}': use one of {', '.join(SPLITS)}")
        k = len(self.class_names)
        for name in ("label", "predicted"):
            value = getattr(f, name)
            if value is not None and not 0 <= value < k:
                raise FeedbackInvalid(f"{name}={value}: a class index 0..{k - 1} "
                                      f"({', '.join(self.class_names)})")
        ids = self.split_ids(split)
        counts = self._roi_counts(ids)
        vid = int(self.store.current()["id"]) if f.version is None else \
            int(self.store.version(f.version)["id"])
        rows, cols = list_images(self, split, counts, vid, f, self.predictions)
        return ids, rows, cols, counts

    def images(self, split: str = "train", offset: int = 0, limit: int = 50,
               f: ImageFilter | None = None) -> dict[str, Any]:
        """A page of a split's images that pass ``f``, in its order, with each image's class,
        prediction (of ``f.version``, default the current version) and number of regions."""
        f = f or ImageFilter()
        ids, rows, cols, counts = self._filtered(split, f)
        items = []
        for row in rows[offset:offset + limit]:
            label, pred = int(cols["label"][row]), int(cols["predicted"][row])
            item = {"id": ids[row], "label": label, "label_name": self.class_names[label],
                    "predicted": pred, "predicted_name": self.class_names[pred],
                    "probability": float(cols["probability"][row]),
                    "correct": bool(cols["correct"][row]), "n_rois": int(counts[row])}
            if "attention_share" in cols:
                share = float(cols["attention_share"][row])
                item["attention_share"] = share if np.isfinite(share) else None
            items.append(item)
        return {"split": split, "total": len(rows), "split_total": len(ids), "offset": offset,
                "limit": limit, "items": items}

    def image_uint8(self, image_id: str) -> np.ndarray:
        """The stored image, uint8 (C, H, W)."""
        ref = self.ref(image_id)
        return self.dm.splits[ref.split].tensors["image"][ref.row].numpy()

    def batch(self, image_ids: list[str]) -> dict[str, Tensor]:
        """Normalised images (B, C, H, W), labels and the data's maps of some ids."""
        refs = [self.ref(i) for i in image_ids]
        out: dict[str, list[Tensor]] = {}
        for ref in refs:
            for k, v in self.dm.splits[ref.split].tensors.items():
                out.setdefault(k, []).append(v[ref.row])
        batch = {k: torch.stack(v) for k, v in out.items()}
        batch["image"] = self.dm.normalise(batch["image"])
        return batch

    # -- models ------------------------------------------------------------------------------
    def build_module(self) -> AttentionBranchModule:
        """An untrained module of the run's model (for weights to be loaded into)."""
        from mimic_runner.training.builders import build_module

        module = build_module(self.cfg, self.dm)
        assert isinstance(module, AttentionBranchModule)
        return module

    def model(self, version_id: int | None = None) -> AttentionBranchModule:
        """The module of a version (default: the current one), weights from its checkpoint."""
        return self.models.get(version_id)

    def weights_sha256(self, version_id: int) -> str:
        return self.models.weights_sha256(version_id)

    def predict(self, image_ids: list[str], version_id: int | None = None
                ) -> tuple[Tensor, Tensor, int]:
        """Probabilities (B, K), attention maps (B, H, W) and the version that made them."""
        module = self.model(version_id)
        batch = self.batch(image_ids)
        with self._lock, torch.no_grad():
            probs, maps = module.predict_attention(batch["image"])
        return probs, maps, int(module.feedback_version)  # type: ignore[attr-defined]

    def prediction(self, image_id: str, version_id: int | None = None) -> dict[str, Any]:
        probs, _, vid = self.predict([image_id], version_id)
        p = probs[0].tolist()
        label = int(self.dm.splits[self.ref(image_id).split].tensors["label"][
            self.ref(image_id).row])
        pred = int(np.argmax(p))
        return {"image_id": image_id, "version": vid, "predicted": pred,
                "predicted_name": self.class_names[pred], "label": label,
                "label_name": self.class_names[label],
                "probabilities": dict(zip(self.class_names, p))}

    def attention(self, image_id: str, version_id: int | None = None) -> np.ndarray:
        """The attention map of one image, float32 (H, W) in [0, 1]."""
        _, maps, _ = self.predict([image_id], version_id)
        return maps[0].float().numpy()

    # -- regions -----------------------------------------------------------------------------
    def _checked(self, where: str, image_id: str, shape: str, kind: str, points: Any,
                 weight: Any) -> ROI:
        """The one check of a region, new or edited: a feedback-split image, a well-formed
        region that covers at least one pixel."""
        ref = self.ref(str(image_id))
        if ref.split not in FEEDBACK_SPLITS:
            raise FeedbackInvalid(
                f"{where}: image '{ref.image_id}' is in the {ref.split} split, held out: "
                f"regions are taken on {', '.join(FEEDBACK_SPLITS)} images only, so that the "
                "checks on held-out images stay honest")
        try:
            return checked_roi(shape, kind, points, weight, self.height, self.width)
        except ValueError as exc:
            raise FeedbackInvalid(f"{where}: {exc}") from None

    def _author(self, author: str | None) -> str:
        return self.author if author is None else author

    def rois(self, image_id: str | None = None) -> list[dict[str, Any]]:
        if image_id is not None:
            self.ref(image_id)
        return self.store.rois(image_id)

    def add_rois(self, rois: list[dict[str, Any]], author: str | None = None
                 ) -> list[dict[str, Any]]:
        """Validate (ids, splits, coverage) and store regions; all or none."""
        for i, r in enumerate(rois):
            if not isinstance(r, dict) or "image_id" not in r:
                raise FeedbackInvalid(f"region {i}: a region is an object with image_id, shape, "
                                      "kind and points")
            self._checked(f"region {i}", r["image_id"], r.get("shape", ""), r.get("kind", ""),
                          r.get("points", ()), r.get("weight", 1.0))
        return self.store.add_rois(rois, author=self._author(author))

    def apply_roi(self, roi: dict[str, Any], image_ids: list[str] | None,
                  f: ImageFilter | None, split: str = "train", author: str | None = None
                  ) -> dict[str, Any]:
        """One region copied onto many images (the listed ones, else those passing ``f`` in
        ``split``, else all of ``split``); all or none."""
        if image_ids is None:
            ids, rows, _, _ = self._filtered(split, f or ImageFilter())
            image_ids = [ids[r] for r in rows]
        image_ids = list(dict.fromkeys(image_ids))
        if not image_ids:
            raise FeedbackInvalid("no image to apply the region to (the filter matches none)")
        if len(image_ids) > MAX_APPLY:
            raise FeedbackInvalid(f"{len(image_ids)} images: at most {MAX_APPLY} in one request")
        rows = [{**roi, "image_id": i} for i in image_ids]
        for i in image_ids:
            self._checked("region", i, roi.get("shape", ""), roi.get("kind", ""),
                          roi.get("points", ()), roi.get("weight", 1.0))
        created = self.store.add_rois(rows, author=self._author(author))
        return {"created": len(created), "image_ids": image_ids,
                "ids": [r["id"] for r in created]}

    def update_roi(self, roi_id: int, changes: dict[str, Any], author: str | None = None
                   ) -> dict[str, Any]:
        """Move, reshape or switch the kind of a stored region (validated like a new one)."""
        row = self.store.roi(roi_id)
        new = {**row, **changes}
        self._checked(f"region {roi_id}", row["image_id"], row["shape"], new["kind"],
                      new["points"], new["weight"])
        return self.store.update_roi(roi_id, changes, author=self._author(author))

    def delete_roi(self, roi_id: int, author: str | None = None) -> dict[str, Any]:
        return self.store.delete_roi(roi_id, author=self._author(author))

    def rois_by_image(self) -> dict[str, list[ROI]]:
        """Regions on feedback-split images, grouped by image id (in insertion order)."""
        grouped: dict[str, list[ROI]] = {}
        for row in self.store.rois():
            ref = self.index.get(row["image_id"])
            if ref is None or ref.split not in FEEDBACK_SPLITS:
                continue  # e.g. a store reused with another dataset
            grouped.setdefault(row["image_id"], []).append(roi_from_row(row))
        return grouped

    # -- status and decisions -----------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Versions, regions, the revision (grows with every change) and the retraining."""
        revision = self.store.revision()
        versions = self.store.versions()
        current = next(v for v in versions if v["current"])
        candidate = next((v for v in reversed(versions) if v["status"] == "candidate"), None)
        out = {"revision": revision, "current": current, "candidate": candidate,
               "versions": versions, "revert_targets": self.decisions.revert_targets(),
               "n_rois": len(self.store.rois()),
               "images_with_rois": self.store.images_with_rois(),
               "weights_sha256": self.weights_sha256(int(current["id"]))}
        if self._runner is not None:
            out["retrain"] = self._runner.status()
        return out

    def versions(self) -> list[dict[str, Any]]:
        return self.store.versions()

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        return self.store.events(limit)

    # -- retraining --------------------------------------------------------------------------
    @property
    def retraining(self) -> RetrainRunner:
        """The background retraining of this session (created on first use; creating it
        records a retraining lost with a previous server)."""
        if self._runner is None:
            from mimic_runner.feedback.runner import RetrainRunner

            self._runner = RetrainRunner(self)
        return self._runner

    def start_retrain(self, params: RetrainParams, author: str | None = None,
                      replace_candidate: bool = False) -> dict[str, Any]:
        return self.retraining.start(params, self._author(author), replace_candidate)

    def cancel_retrain(self, author: str | None = None) -> dict[str, Any]:
        return self.retraining.cancel(self._author(author))

    def estimate_retrain(self, params: RetrainParams) -> dict[str, Any]:
        return self.retraining.estimate(params)

    def retrain_status(self) -> dict[str, Any]:
        return self.retraining.status()

    def diff(self, before: int | None = None, after: int | None = None,
             heldout: str = "val") -> dict[str, Any]:
        """The differences between two versions (default: the candidate and its parent)."""
        return self.diffs.diff(before, after, heldout)

    # -- decisions ---------------------------------------------------------------------------
    def _idle(self, what: str) -> None:
        from mimic_runner.feedback.retrain import retraining_running

        if (self._runner is not None and self._runner.active) or retraining_running(self):
            raise FeedbackConflict(f"a retraining is running; wait for it to finish (or cancel "
                                   f"it) before {what}")

    def _serve(self, version: dict[str, Any]) -> None:
        """Serve a version made current again from its file, checked against the sha256
        recorded when it was added: byte-identical weights, not an in-memory copy."""
        self.store.verified_checkpoint(version)
        self.models.forget(int(version["id"]))

    def accept(self, version_id: int | None = None, author: str | None = None,
               request_id: str | None = None) -> dict[str, Any]:
        """Accept the (given or waiting) candidate: ``{"current": <version>, "already"}``."""
        done = self.decisions.answered(request_id, "accept")
        if done is not None:
            return done
        self._idle("accepting")
        result = self.decisions.accept(version_id, self._author(author), request_id)
        self.store.verified_checkpoint(result["current"])
        return result

    def discard(self, author: str | None = None, request_id: str | None = None
                ) -> dict[str, Any]:
        """Discard the waiting candidate; the current version stays."""
        done = self.decisions.answered(request_id, "discard")
        if done is not None:
            return done
        self._idle("discarding the candidate")
        return self.decisions.discard(self._author(author), request_id)

    def revert(self, version_id: int, author: str | None = None,
               request_id: str | None = None) -> dict[str, Any]:
        """Return to an earlier accepted version, served from its sha256-checked file."""
        done = self.decisions.answered(request_id, "revert")
        if done is not None:
            return done
        self._idle("reverting")
        result = self.decisions.revert(version_id, self._author(author), request_id)
        self._serve(result["current"])
        return result

    def rollback(self, author: str | None = None, request_id: str | None = None
                 ) -> dict[str, Any]:
        """Discard the candidate, or else return to the previous accepted version."""
        done = self.decisions.answered(request_id, "rollback")
        if done is not None:
            return done
        self._idle("rolling back")
        result = self.decisions.rollback(self._author(author), request_id)
        self._serve(result["current"])
        return result
