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

import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import Tensor

from mimic_runner.data.datamodule import EpochSeededSampler
from mimic_runner.feedback.diff import evaluate_version, feedback_masks, forward_maps
from mimic_runner.feedback.params import TRAIN_PARTS, RetrainParams
from mimic_runner.feedback.roi import edited_target, feedback_loss
from mimic_runner.feedback.store import FeedbackConflict, FeedbackInvalid, publish_new
from mimic_runner.training.modules import AttentionBranchModule, attention_maps

#: A :class:`~mimic_runner.feedback.session.FeedbackSession` (not imported: the session
#: imports this module).
FeedbackSession = Any

__all__ = ["TRAIN_PARTS", "CancelFlag", "RetrainCancelled", "RetrainParams", "Step", "retrain"]

#: Audit events that end a retraining (each names the ``run`` of its ``retrain_started``).
END_EVENTS = ("retrain_finished", "retrain_failed", "retrain_cancelled", "retrain_lost")
TRAIN_SHARE = 0.9  # of the progress bar: training; the rest is the held-out evaluation


@dataclass(frozen=True)
class Step:
    """Progress of a retraining: training steps done of all, the overall fraction, a message."""

    done_steps: int
    total_steps: int
    fraction: float
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"done_steps": self.done_steps, "total_steps": self.total_steps,
                "fraction": round(self.fraction, 4)}


Progress = Callable[[Step], None]


class CancelFlag(threading.Event):
    """Set by :meth:`request` (with who asked); the training loop checks it every batch."""

    author: str = ""

    def request(self, author: str = "") -> None:
        self.author = author
        self.set()


class RetrainCancelled(Exception):
    """Raised inside the training loop once its :class:`CancelFlag` is set."""


def steps_per_pass(n_train: int, batch_size: int, max_batches: int | None) -> int:
    """Training steps (batches) in one pass over ``n_train`` images."""
    n = max(1, n_train // batch_size) if n_train > batch_size else 1
    return n if max_batches is None else min(n, max_batches)


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


WAITING = ("a candidate is waiting; accept, discard, or retrain with replace_candidate=true "
           "(it is then discarded)")


def retrain(session: FeedbackSession, params: RetrainParams, progress: Progress | None = None,
            author: str | None = None, cancel: CancelFlag | None = None,
            replace_candidate: bool = False) -> dict[str, Any]:
    """Retrain the current version with the stored feedback; record and return the candidate.

    Holds the workspace's ``retrain.lock`` throughout: a second retraining, from this or any
    other process, is refused with :class:`FeedbackConflict`; so is one over a waiting
    candidate unless ``replace_candidate``. The audit log gets ``retrain_started`` and one of
    ``retrain_finished``, ``retrain_failed`` or ``retrain_cancelled`` (after ``cancel`` was
    set: :class:`RetrainCancelled` is raised and no candidate is made).
    """
    params.validate()
    who = session.author if author is None else author
    if not session.rois_by_image():
        raise FeedbackInvalid("no feedback to learn from: draw regions on training images first")
    if not replace_candidate and session.store.candidate() is not None:
        raise FeedbackConflict(WAITING)
    lock = FileLock(str(session.workspace / "retrain.lock"), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FeedbackConflict("a retraining is already running in this workspace; wait for it "
                               "to finish (GET /api/retrain shows its progress)") from None
    try:
        return _audited(session, params, progress or (lambda step: None), who, cancel)
    finally:
        lock.release()


def retraining_running(session: FeedbackSession) -> bool:
    """Whether some process holds the workspace's retraining lock now."""
    lock = FileLock(str(session.workspace / "retrain.lock"), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    lock.release()
    return False


def _audited(session: FeedbackSession, params: RetrainParams, progress: Progress, author: str,
             cancel: CancelFlag | None) -> dict[str, Any]:
    """:func:`_train_and_record` between its start and end events in the audit log."""
    run = uuid.uuid4().hex[:12]
    last = [Step(0, 0, 0.0, "starting")]

    def report(step: Step) -> None:
        last[0] = step
        progress(step)

    settings = params.as_dict()
    t0 = time.perf_counter()
    session.store.log_event(author, "retrain_started", {
        "run": run, "params": settings, "parent": int(session.store.current()["id"])})
    try:
        version = _train_and_record(session, params, report, author, cancel)
    except RetrainCancelled:
        who = cancel.author if cancel is not None else ""
        session.store.log_event(who, "retrain_cancelled", {
            "run": run, "params": settings, "progress": last[0].as_dict(),
            "started_by": author, "seconds": round(time.perf_counter() - t0, 3)})
        raise
    except BaseException as exc:
        session.store.log_event(author, "retrain_failed", {
            "run": run, "params": settings, "progress": last[0].as_dict(),
            "error": f"{type(exc).__name__}: {exc}"})
        raise
    session.store.log_event(author, "retrain_finished", {
        "run": run, "version": int(version["id"]), "params": settings,
        "seconds": round(time.perf_counter() - t0, 3)})
    return version


def _train_and_record(session: FeedbackSession, params: RetrainParams, report: Progress,
                      author: str, cancel: CancelFlag | None) -> dict[str, Any]:
    t0 = time.perf_counter()
    parent = session.store.current()
    grouped = session.rois_by_image()
    fb_ids = sorted(grouped)
    bs = params.batch_size or session.dm.batch_size
    total = params.epochs * steps_per_pass(len(session.dm.splits["train"]), bs,
                                           params.max_batches)

    def check() -> None:
        if cancel is not None and cancel.is_set():
            raise RetrainCancelled

    report(Step(0, total, 0.0, f"building the corrected maps of {len(fb_ids)} feedback images"))
    torch.manual_seed(params.seed)
    start = session.model(int(parent["id"]))
    module = session.build_module()
    module.load_state_dict(start.state_dict())
    feedback = feedback_targets(session, start, fb_ids, params.mode)
    history = _train(session, module, params, feedback, report, check)

    module.eval()
    report(Step(total, total, TRAIN_SHARE + 0.02,
                f"evaluating the candidate on the {params.heldout} split"))
    metrics = evaluate_version(session, module, params.heldout, check=check)
    metrics["retrain_seconds"] = round(time.perf_counter() - t0, 3)
    metrics["history"] = history
    check()

    path = session.store.next_checkpoint_path()
    record = params.as_dict()
    record["feedback_images"] = len(fb_ids)
    record["feedback_rois"] = sum(len(v) for v in grouped.values())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    torch.save({"state_dict": module.state_dict(), "feedback": record,
                "parent": int(parent["id"])}, tmp)
    publish_new(Path(tmp), path)
    try:
        version = session.store.add_candidate(int(parent["id"]), path, metrics, record,
                                              author=author)
    except BaseException:
        path.unlink(missing_ok=True)  # never recorded: not a version, nothing refers to it
        raise
    report(Step(total, total, 1.0, f"candidate version {version['id']} ready"))
    return version


Feedback = tuple[Tensor, Tensor, Tensor]  # images (n, C, H, W), targets (n, H, W), weights (n,)


def _step(module: AttentionBranchModule, optimizer: torch.optim.Optimizer,
          batch: dict[str, Tensor], feedback: Feedback, sel: Tensor, gamma: float
          ) -> dict[str, float]:
    """One optimiser step on a training batch with the feedback images ``sel`` appended (one
    forward pass, one set of BatchNorm statistics); the loss terms as floats."""
    fb_images, fb_targets, fb_weights = feedback
    x = torch.cat([batch["image"], fb_images[sel]])
    out = module.net(x)
    n = len(batch["image"])
    task_out = type(out)(logits=out.logits[:n], features=out.features[:n],
                         extras={k: v[:n] for k, v in out.extras.items()})
    task, _ = module.loss(task_out, batch)
    fb = feedback_loss(attention_maps(out)[n:], fb_targets[sel], fb_weights[sel])
    loss = task + gamma * fb
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {"loss": float(loss.detach()), "task": float(task.detach()),
            "feedback": float(fb.detach())}


def _train(session: FeedbackSession, module: AttentionBranchModule, params: RetrainParams,
           feedback: Feedback, report: Progress, check: Callable[[], None]
           ) -> list[dict[str, float]]:
    """The training passes; per pass the mean loss terms. ``check`` runs before every batch."""
    optimizer = torch.optim.Adam(trainable_parameters(module, params.train), lr=params.lr)
    train = session.dm.splits["train"]
    bs = params.batch_size or session.dm.batch_size
    n_batches = steps_per_pass(len(train), bs, params.max_batches)
    total = params.epochs * n_batches
    sampler = EpochSeededSampler(len(train), params.seed)
    n_fb = len(feedback[0])
    fbs = params.feedback_batch_size
    history: list[dict[str, float]] = []
    step = 0
    for epoch in range(params.epochs):
        sampler.set_epoch(epoch)
        order = list(sampler)
        sums = {"loss": 0.0, "task": 0.0, "feedback": 0.0}
        for b in range(n_batches):
            check()
            idx = torch.tensor(order[b * bs:(b + 1) * bs])
            batch = {k: v[idx] for k, v in train.tensors.items()}
            batch["image"] = session.dm.normalise(batch["image"])
            # Feedback images in round-robin chunks.
            j = (step * fbs) % n_fb
            sel = torch.arange(j, j + min(fbs, n_fb)) % n_fb
            values = _step(module, optimizer, batch, feedback, sel, params.gamma)
            step += 1
            for k, v in values.items():
                sums[k] += v
            report(Step(step, total, step / total * TRAIN_SHARE,
                        f"epoch {epoch + 1}/{params.epochs}, batch {b + 1}/{n_batches}: loss "
                        f"{values['loss']:.4f} (feedback {values['feedback']:.5f})"))
        history.append({k: v / n_batches for k, v in sums.items()})
    return history


def measure_speed(session: FeedbackSession, params: RetrainParams, steps: int = 1
                  ) -> dict[str, float]:
    """Seconds of one training step and of one evaluation batch with these settings, timed on
    this machine on a copy of the current version (after an untimed warm-up step on two
    images, which pays for the first allocations without costing a full step)."""
    module = session.build_module()
    module.load_state_dict(session.model().state_dict())
    optimizer = torch.optim.Adam(trainable_parameters(module, params.train), lr=params.lr)
    train = session.dm.splits["train"]
    bs = min(params.batch_size or session.dm.batch_size, len(train))
    ids = sorted(session.rois_by_image()) or [str(i) for i in session.dm.ids["train"][:1]]
    fb_ids = [ids[k % len(ids)] for k in range(min(params.feedback_batch_size, len(ids)))]
    images = session.batch(fb_ids)["image"]
    shape = (len(fb_ids), *forward_maps(module, images[:1])[1].shape[1:])
    feedback = (images, torch.zeros(shape), torch.ones(len(fb_ids)))
    batch = {k: v[:bs] for k, v in train.tensors.items()}
    batch["image"] = session.dm.normalise(batch["image"])
    sel = torch.arange(len(fb_ids))
    _step(module, optimizer, {k: v[:2] for k, v in batch.items()}, feedback, sel[:1],
          params.gamma)
    t = time.perf_counter()
    for _ in range(steps):
        _step(module, optimizer, batch, feedback, sel, params.gamma)
    step_s = (time.perf_counter() - t) / steps
    held = session.dm.splits[params.heldout]
    x = session.dm.normalise(held.tensors["image"][:session.dm.batch_size])
    t = time.perf_counter()
    forward_maps(module, x)
    return {"step_s": step_s, "eval_batch_s": time.perf_counter() - t}
