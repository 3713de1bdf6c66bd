"""Retraining with the expert's feedback: the accepted version in, a candidate version out.

Loss per step = the model's usual loss on a batch of training data + γ · the feedback loss
(:func:`~mimic_runner.feedback.roi.feedback_loss`) between the current attention maps of the
feedback images and their corrected maps M' (:func:`~mimic_runner.feedback.roi.edited_target`,
built once from the starting version's maps and the regions rasterised at the map's
resolution). A small manual loop rather than a Lightning Trainer: it runs the same in a
background thread of the web server, from the CLI and in tests, seeds everything it draws
from, and has no callbacks that would write into the run directory.
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from filelock import FileLock, Timeout
from torch import Tensor

from mimic_runner.data.datamodule import EpochSeededSampler
from mimic_runner.feedback.diff import evaluate_version, feedback_masks, forward_maps
from mimic_runner.feedback.roi import TARGET_MODES, edited_target, feedback_loss
from mimic_runner.feedback.store import FeedbackConflict, FeedbackInvalid, publish_new
from mimic_runner.training.modules import AttentionBranchModule, attention_maps

if TYPE_CHECKING:
    from mimic_runner.feedback.session import FeedbackSession

TRAIN_PARTS = ("attention", "perception", "all")
Progress = Callable[[float, str], None]


@dataclass
class RetrainParams:
    """What to retrain and how (every field is also an API/CLI parameter)."""

    gamma: float = 30.0  # weight of the feedback loss
    epochs: int = 1
    lr: float = 1e-3
    train: str = "all"  # attention (branch only) | perception | all
    mode: str = "edit"  # how M' is built; see roi.edited_target
    max_batches: int | None = None  # training batches per epoch (None: the whole train split)
    batch_size: int | None = None  # training batch size (None: the run's data.batch_size)
    feedback_batch_size: int = 16  # feedback images added to every training batch
    heldout: str = "val"  # split evaluated for the candidate's metrics
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> RetrainParams:
        def bad(msg: str) -> FeedbackInvalid:
            return FeedbackInvalid(f"retrain: {msg}")

        if not (math.isfinite(self.gamma) and 0 <= self.gamma <= 1e6):
            raise bad(f"gamma={self.gamma}: use a number in [0, 1e6]")
        if not 1 <= self.epochs <= 1000:
            raise bad(f"epochs={self.epochs}: use 1..1000")
        if not (math.isfinite(self.lr) and 0 < self.lr <= 1):
            raise bad(f"lr={self.lr}: use a number in (0, 1]")
        if self.train not in TRAIN_PARTS:
            raise bad(f"train='{self.train}': use one of {', '.join(TRAIN_PARTS)}")
        if self.mode not in TARGET_MODES:
            raise bad(f"mode='{self.mode}': use one of {', '.join(TARGET_MODES)}")
        if self.max_batches is not None and self.max_batches < 1:
            raise bad(f"max_batches={self.max_batches}: use a positive number or none")
        if self.batch_size is not None and not 1 <= self.batch_size <= 4096:
            raise bad(f"batch_size={self.batch_size}: use 1..4096")
        if not 1 <= self.feedback_batch_size <= 1024:
            raise bad(f"feedback_batch_size={self.feedback_batch_size}: use 1..1024")
        if self.heldout not in ("val", "test"):
            raise bad(f"heldout='{self.heldout}': use val or test")
        return self


def trainable_parameters(module: AttentionBranchModule, part: str) -> list[torch.nn.Parameter]:
    """Freeze all but ``part`` (``attention``, ``perception`` or ``all``); return what trains.

    Frozen sub-networks are put in eval mode too, so that their BatchNorm statistics stay
    exactly those of the starting version.
    """
    owned = {"attention": ("attention_branch",), "perception": ("backbone", "head"),
             "all": ("attention_branch", "backbone", "head")}[part]
    module.train()
    for name, child in module.net.named_children():
        trains = name in owned
        child.train(trains)
        for p in child.parameters():
            p.requires_grad_(trains)
    params = [p for p in module.parameters() if p.requires_grad]
    return params


def feedback_targets(session: FeedbackSession, start: AttentionBranchModule, image_ids: list[str],
                     mode: str) -> tuple[Tensor, Tensor, Tensor]:
    """Normalised images (n, C, H, W), corrected maps M' (n, H, W) and weights (n,)."""
    images = session.batch(image_ids)["image"]
    inc, exc, weights = feedback_masks(session, image_ids)
    _, maps = forward_maps(start, images)
    return images, edited_target(maps, inc, exc, mode), weights


def retrain(session: FeedbackSession, params: RetrainParams, progress: Progress | None = None,
            author: str | None = None) -> dict[str, Any]:
    """Retrain the current version with the stored feedback; record and return the candidate.

    Holds the workspace's ``retrain.lock`` throughout: a second retraining, from this or any
    other process, is refused with :class:`FeedbackConflict`.
    """
    params.validate()
    lock = FileLock(str(session.workspace / "retrain.lock"), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FeedbackConflict("a retraining is already running in this workspace; wait for it "
                               "to finish (GET /api/retrain shows its progress)") from None
    try:
        return _retrain_locked(session, params, progress or (lambda f, m: None), author)
    finally:
        lock.release()


def _retrain_locked(session: FeedbackSession, params: RetrainParams, progress: Progress,
                    author: str | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    parent = session.store.current()
    grouped = session.rois_by_image()
    if not grouped:
        raise FeedbackInvalid("no feedback to learn from: draw regions on training images first")
    fb_ids = sorted(grouped)
    progress(0.0, f"building the corrected maps of {len(fb_ids)} feedback images")

    torch.manual_seed(params.seed)
    start = session.model(int(parent["id"]))
    module = session.build_module()
    module.load_state_dict(start.state_dict())
    fb_images, fb_targets, fb_weights = feedback_targets(session, start, fb_ids, params.mode)

    trainable = trainable_parameters(module, params.train)
    optimizer = torch.optim.Adam(trainable, lr=params.lr)
    train = session.dm.splits["train"]
    bs = params.batch_size or session.dm.batch_size
    n_batches = max(1, len(train) // bs) if len(train) > bs else 1
    if params.max_batches is not None:
        n_batches = min(n_batches, params.max_batches)
    total = params.epochs * n_batches
    sampler = EpochSeededSampler(len(train), params.seed)
    fbs = params.feedback_batch_size
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(params.epochs):
        sampler.set_epoch(epoch)
        order = list(sampler)
        sums = {"loss": 0.0, "task": 0.0, "feedback": 0.0}
        for b in range(n_batches):
            idx = torch.tensor(order[b * bs:(b + 1) * bs])
            batch = {k: v[idx] for k, v in train.tensors.items()}
            batch["image"] = session.dm.normalise(batch["image"])
            # Feedback images in round-robin chunks, appended to the batch: one forward pass,
            # one set of BatchNorm statistics.
            j = (step * fbs) % len(fb_ids)
            sel = torch.arange(j, j + min(fbs, len(fb_ids))) % len(fb_ids)
            x = torch.cat([batch["image"], fb_images[sel]])
            out = module.net(x)
            n = len(idx)
            task_out = type(out)(logits=out.logits[:n], features=out.features[:n],
                                 extras={k: v[:n] for k, v in out.extras.items()})
            task, _ = module.loss(task_out, batch)
            fb_maps = attention_maps(out)[n:]
            fb = feedback_loss(fb_maps, fb_targets[sel], fb_weights[sel])
            loss = task + params.gamma * fb
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            values = {"loss": float(loss.detach()), "task": float(task.detach()),
                      "feedback": float(fb.detach())}
            for k, v in values.items():
                sums[k] += v
            progress(step / total * 0.9, f"epoch {epoch + 1}/{params.epochs}, batch {b + 1}/"
                     f"{n_batches}: loss {values['loss']:.4f} (feedback {values['feedback']:.5f})")
        history.append({k: v / n_batches for k, v in sums.items()})

    module.eval()
    progress(0.92, f"evaluating the candidate on the {params.heldout} split")
    metrics = evaluate_version(session, module, params.heldout)
    metrics["retrain_seconds"] = round(time.perf_counter() - t0, 3)
    metrics["history"] = history

    path = session.store.next_checkpoint_path()
    record = {k: v for k, v in asdict(params).items() if k != "extra"} | params.extra
    record["feedback_images"] = len(fb_ids)
    record["feedback_rois"] = sum(len(v) for v in grouped.values())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    torch.save({"state_dict": module.state_dict(), "feedback": record,
                "parent": int(parent["id"])}, tmp)
    publish_new(Path(tmp), path)
    try:
        version = session.store.add_candidate(int(parent["id"]), path, metrics, record,
                                              author=session.author if author is None
                                              else author)
    except BaseException:
        path.unlink(missing_ok=True)  # never recorded: not a version, nothing refers to it
        raise
    progress(1.0, f"candidate version {version['id']} ready")
    return version


class RetrainRunner:
    """Runs one retraining at a time in a background thread and reports its progress."""

    def __init__(self, session: FeedbackSession) -> None:
        self.session = session
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.state: dict[str, Any] = {"state": "idle", "progress": 0.0, "message": "",
                                      "version": None, "error": None, "started": None,
                                      "finished": None, "params": None}
        # Swappable for tests (e.g. a retraining that waits on an event).
        self.retrain_fn: Callable[..., dict[str, Any]] = retrain

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.state)

    def _update(self, **kw: Any) -> None:
        with self._lock:
            self.state.update(kw)

    def start(self, params: RetrainParams, author: str | None = None) -> dict[str, Any]:
        params.validate()
        with self._lock:
            if self.state["state"] == "running":
                pct = round(100 * self.state["progress"])
                raise FeedbackConflict(f"a retraining is already running (started "
                                       f"{self.state['started']}, {pct}% done); wait for it to "
                                       "finish (GET /api/retrain shows its progress)")
            if not self.session.rois_by_image():
                raise FeedbackInvalid("no feedback to learn from: draw regions on training "
                                      "images first")
            self.state = {"state": "running", "progress": 0.0, "message": "starting",
                          "version": None, "error": None, "started": _now(), "finished": None,
                          "params": asdict(params)}
            self._thread = threading.Thread(target=self._run, args=(params, author),
                                            name="mimic-feedback-retrain", daemon=True)
            self._thread.start()
            return dict(self.state)

    def _run(self, params: RetrainParams, author: str | None) -> None:
        try:
            version = self.retrain_fn(self.session, params,
                                      progress=lambda f, m: self._update(progress=f, message=m),
                                      author=author)
            self._update(state="done", progress=1.0, version=version["id"], finished=_now(),
                         message=f"candidate version {version['id']} ready")
        except Exception as exc:  # reported through the status endpoint, not lost in a thread
            self._update(state="failed", error=f"{type(exc).__name__}: {exc}", finished=_now(),
                         message=str(exc))

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)


def _now() -> str:
    from mimic_runner.feedback.store import now

    return now()
