"""A feedback workspace opened on a finished run: data, model versions, regions, decisions.

The one object behind the CLI, the web API and the scripted study, so that every entry point
validates the same way and changes the store the same way.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mimic_runner.analysis.load import LoadedRun
from mimic_runner.data.schema import SPLITS
from mimic_runner.errors import UserError
from mimic_runner.feedback.diff import evaluate_version
from mimic_runner.feedback.roi import ROI, rasterize_roi, validate_roi
from mimic_runner.feedback.store import (
    FeedbackInvalid,
    FeedbackNotFound,
    FeedbackStore,
    roi_from_row,
    sha256_file,
)
from mimic_runner.training.modules import AttentionBranchModule

#: Splits whose images may carry feedback: retraining learns from them, so held-out images
#: (val, test) stay untouched and the differences measured on them stay honest.
FEEDBACK_SPLITS = ("train",)
MODEL_CACHE = 3  # versions kept in memory (current, candidate, one more for diffs)


@dataclass(frozen=True)
class ImageRef:
    """Where an image id lives: its split and row in that split."""

    image_id: str
    split: str
    row: int


def state_sha256(module: torch.nn.Module) -> str:
    """sha256 over a module's state dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


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
        self._models: OrderedDict[int, AttentionBranchModule] = OrderedDict()
        self._weights_sha: dict[int, tuple[int, str]] = {}
        self._lock = threading.RLock()
        if not self.store.versions():
            # Version 1 gets the run's metrics plus the held-out measures that candidates
            # record, so that the history compares like with like.
            metrics = {**(loaded.metrics or {}), **evaluate_version(self, loaded.module, "val")}
            self.store.initialise(loaded.checkpoint, metrics, author=author)
        first = self.store.version(1)
        self._models[1] = self._prepare(loaded.module, first)

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

    def images(self, split: str = "train", offset: int = 0, limit: int = 50
               ) -> dict[str, Any]:
        if split not in SPLITS:
            raise FeedbackInvalid(f"split '{split}': use one of {', '.join(SPLITS)}")
        ids = self.dm.ids[split]
        labels = self.dm.splits[split].tensors["label"]
        counts: dict[str, int] = {}
        for r in self.store.rois():
            counts[r["image_id"]] = counts.get(r["image_id"], 0) + 1
        items = []
        for row in range(offset, min(offset + limit, len(ids))):
            image_id = str(ids[row])
            label = int(labels[row])
            items.append({"id": image_id, "label": label, "label_name": self.class_names[label],
                          "n_rois": counts.get(image_id, 0)})
        return {"split": split, "total": len(ids), "offset": offset, "limit": limit,
                "items": items}

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
    def _prepare(self, module: AttentionBranchModule, version: dict[str, Any]
                 ) -> AttentionBranchModule:
        module.eval()
        module.feedback_version = version["id"]  # type: ignore[attr-defined]
        return module

    def build_module(self) -> AttentionBranchModule:
        from mimic_runner.training.builders import build_module

        module = build_module(self.cfg, self.dm)
        assert isinstance(module, AttentionBranchModule)
        return module

    def model(self, version_id: int | None = None) -> AttentionBranchModule:
        """The module of a version (default: the current one), weights from its checkpoint."""
        version = self.store.current() if version_id is None else self.store.version(version_id)
        vid = int(version["id"])
        with self._lock:
            if vid in self._models:
                self._models.move_to_end(vid)
                return self._models[vid]
        path = self.store.verified_checkpoint(version)
        module = self.build_module()
        state = torch.load(path, map_location="cpu", weights_only=False)
        module.load_state_dict(state["state_dict"])
        module = self._prepare(module, version)
        with self._lock:
            self._models[vid] = module
            while len(self._models) > MODEL_CACHE:
                self._models.popitem(last=False)
        return module

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
    def add_rois(self, rois: list[dict[str, Any]], author: str | None = None
                 ) -> list[dict[str, Any]]:
        """Validate (ids, splits, coverage) and store regions; all or none."""
        for i, r in enumerate(rois):
            if not isinstance(r, dict) or "image_id" not in r:
                raise FeedbackInvalid(f"region {i}: a region is an object with image_id, shape, "
                                      "kind and points")
            ref = self.ref(str(r["image_id"]))
            if ref.split not in FEEDBACK_SPLITS:
                raise FeedbackInvalid(
                    f"region {i}: image '{ref.image_id}' is in the {ref.split} split, held out: "
                    f"regions are taken on {', '.join(FEEDBACK_SPLITS)} images only, so that the "
                    "checks on held-out images stay honest")
            try:
                roi = ROI(shape=r["shape"], kind=r["kind"],
                          points=tuple((float(x), float(y)) for x, y in r["points"]))
                validate_roi(roi.shape, roi.kind, roi.points, float(r.get("weight", 1.0)))
            except (ValueError, TypeError, KeyError) as exc:
                raise FeedbackInvalid(f"region {i}: {exc}") from None
            if not bool(rasterize_roi(roi, self.height, self.width).any()):
                raise FeedbackInvalid(f"region {i} covers no pixel of the {self.height}x"
                                      f"{self.width} image; draw a larger region")
        return self.store.add_rois(rois, author=self.author if author is None else author)

    def update_roi(self, roi_id: int, changes: dict[str, Any], author: str | None = None
                   ) -> dict[str, Any]:
        """Move, reshape or switch the kind of a stored region (validated like a new one)."""
        rows = [r for r in self.store.rois() if r["id"] == roi_id]
        if rows and "points" in changes:
            row = rows[0]
            try:
                points = tuple((float(x), float(y)) for x, y in changes["points"])
                validate_roi(row["shape"], changes.get("kind", row["kind"]), points,
                             float(changes.get("weight", row["weight"])))
            except (ValueError, TypeError) as exc:
                raise FeedbackInvalid(f"region {roi_id}: {exc}") from None
            roi = ROI(shape=row["shape"], kind=row["kind"], points=points)
            if not bool(rasterize_roi(roi, self.height, self.width).any()):
                raise FeedbackInvalid(f"region {roi_id} would cover no pixel of the "
                                      f"{self.height}x{self.width} image; make it larger")
        return self.store.update_roi(roi_id, changes,
                                     author=self.author if author is None else author)

    def rois_by_image(self) -> dict[str, list[ROI]]:
        """Regions on feedback-split images, grouped by image id (in insertion order)."""
        grouped: dict[str, list[ROI]] = {}
        for row in self.store.rois():
            ref = self.index.get(row["image_id"])
            if ref is None or ref.split not in FEEDBACK_SPLITS:
                continue  # e.g. a store reused with another dataset
            grouped.setdefault(row["image_id"], []).append(roi_from_row(row))
        return grouped

    # -- decisions ---------------------------------------------------------------------------
    def weights_sha256(self, version_id: int) -> str:
        """sha256 of the served weights of a version (recomputed whenever it is reloaded)."""
        module = self.model(version_id)
        with self._lock:
            cached = self._weights_sha.get(version_id)
            if cached is None or cached[0] != id(module):
                cached = (id(module), state_sha256(module))
                self._weights_sha[version_id] = cached
            return cached[1]

    def status(self) -> dict[str, Any]:
        versions = self.store.versions()
        current = next(v for v in versions if v["current"])
        candidate = next((v for v in reversed(versions) if v["status"] == "candidate"), None)
        return {"current": current, "candidate": candidate, "versions": versions,
                "revert_targets": self.store.revert_targets(),
                "n_rois": len(self.store.rois()),
                "weights_sha256": self.weights_sha256(int(current["id"]))}

    def accept(self, version_id: int | None = None, author: str | None = None
               ) -> dict[str, Any]:
        version = self.store.accept(version_id, author=self.author if author is None else author)
        self.store.verified_checkpoint(version)
        return version

    def discard(self, author: str | None = None) -> dict[str, Any]:
        """Discard the pending candidate; the current version stays."""
        return self.store.discard(author=self.author if author is None else author)

    def revert(self, version_id: int, author: str | None = None) -> dict[str, Any]:
        """Return to an earlier accepted version, served from its sha256-checked file."""
        result = self.store.revert(version_id, author=self.author if author is None else author)
        self.store.verified_checkpoint(result["current"])
        with self._lock:
            self._models.pop(int(result["current"]["id"]), None)
        return result

    def rollback(self, author: str | None = None) -> dict[str, Any]:
        result = self.store.rollback(author=self.author if author is None else author)
        # Serve the restored version from its file, checked against the sha256 recorded when
        # it was added: byte-identical weights, not an in-memory copy.
        self.store.verified_checkpoint(result["current"])
        with self._lock:
            self._models.pop(int(result["current"]["id"]), None)
        return result
