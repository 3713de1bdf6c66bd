"""The retraining of a served workspace: one at a time in a background thread, its progress,
a cancel that stops it within a batch, a measured estimate of its duration, and the retraining
lost when the server died (found in the audit log at start)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

from mimic_runner.feedback.errors import FeedbackConflict, FeedbackInvalid
from mimic_runner.feedback.params import RetrainParams
from mimic_runner.feedback.retrain import (
    END_EVENTS,
    WAITING,
    CancelFlag,
    RetrainCancelled,
    Step,
    measure_speed,
    retrain,
    retraining_running,
    steps_per_pass,
)
from mimic_runner.feedback.store import now

#: A :class:`~mimic_runner.feedback.session.FeedbackSession` (not imported: the session
#: imports this module).
FeedbackSession = Any

STATES = ("idle", "running", "cancelling", "done", "failed", "cancelled", "lost")
ACTIVE = ("running", "cancelling")
ESTIMATE_CACHE = 32


def _idle() -> dict[str, Any]:
    return {"state": "idle", "started_at": None, "finished_at": None,
            "progress": {"done_steps": 0, "total_steps": 0, "fraction": 0.0},
            "estimate_s": None, "params": None, "author": "", "message": "", "version": None,
            "error": None}


def lost_run(session: FeedbackSession) -> dict[str, Any] | None:
    """The ``retrain_started`` event of a retraining that never ended and that no process is
    running now (the server or command died), or None."""
    events = session.store.events(1000, actions=("retrain_started", *END_EVENTS))
    if not events or events[0]["action"] != "retrain_started":
        return None
    return None if retraining_running(session) else events[0]


class RetrainRunner:
    """Runs one retraining at a time in a background thread and reports its state
    (``STATES``) through :meth:`status`."""

    def __init__(self, session: FeedbackSession) -> None:
        self.session = session
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cancel = CancelFlag()
        self._speed: dict[tuple[Any, ...], dict[str, float]] = {}
        self.state = _idle()
        # Swappable for tests (e.g. a retraining that waits on an event).
        self.retrain_fn: Callable[..., dict[str, Any]] = retrain
        self._recover()

    def _recover(self) -> None:
        """Record a retraining lost with the server (once), and show the last one lost."""
        lost = lost_run(self.session)
        if lost is not None:
            d = lost["detail"]
            self.session.store.log_event(lost["author"], "retrain_lost", {
                "run": d.get("run"), "params": d.get("params"), "started_at": lost["time"]})
        last = self.session.store.events(1, actions=("retrain_started", *END_EVENTS))
        if last and last[0]["action"] == "retrain_lost":
            e = last[0]
            self.state = {**_idle(), "state": "lost", "started_at": e["detail"].get("started_at"),
                          "finished_at": e["time"], "params": e["detail"].get("params"),
                          "author": e["author"],
                          "message": "the retraining started at "
                          f"{e['detail'].get('started_at')} was interrupted when the server "
                          "stopped; no candidate was made. Start it again when ready."}

    # -- state -----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        with self._lock:
            s = dict(self.state)
        s["started"], s["finished"] = s["started_at"], s["finished_at"]  # older names
        return s

    @property
    def active(self) -> bool:
        with self._lock:
            return self.state["state"] in ACTIVE

    def _update(self, **kw: Any) -> None:
        with self._lock:
            self.state.update(kw)

    def _progress(self, step: Step) -> None:
        with self._lock:
            self.state["progress"] = step.as_dict()
            self.state["message"] = step.message
            if self.state["estimate_s"] is None and step.done_steps >= 2 and step.total_steps:
                spent = time.time() - self._t0
                self.state["estimate_s"] = round(spent / step.done_steps * step.total_steps, 1)

    # -- actions ---------------------------------------------------------------------------
    def start(self, params: RetrainParams, author: str = "",
              replace_candidate: bool = False) -> dict[str, Any]:
        params.validate()
        with self._lock:
            if self.state["state"] in ACTIVE:
                pct = round(100 * self.state["progress"]["fraction"])
                raise FeedbackConflict(f"a retraining is already running (started "
                                       f"{self.state['started_at']}, {pct}% done); wait for it "
                                       "to finish or cancel it")
            if not self.session.rois_by_image():
                raise FeedbackInvalid("no feedback to learn from: draw regions on training "
                                      "images first")
            if not replace_candidate and self.session.store.candidate() is not None:
                raise FeedbackConflict(WAITING)
            self._cancel = CancelFlag()
            self._t0 = time.time()
            self.state = {**_idle(), "state": "running", "message": "starting",
                          "started_at": now(), "params": params.as_dict(), "author": author,
                          "estimate_s": self._cached_estimate(params)}
            self._thread = threading.Thread(
                target=self._run, args=(params, author, replace_candidate, self._cancel),
                name="mimic-feedback-retrain", daemon=True)
            self._thread.start()
            return dict(self.state)

    def cancel(self, author: str = "") -> dict[str, Any]:
        """Ask the running retraining to stop (it stops before its next batch)."""
        with self._lock:
            if self.state["state"] != "running":
                raise FeedbackConflict(f"no retraining is running (state: "
                                       f"{self.state['state']}); nothing to cancel")
            self.state["state"] = "cancelling"
            self.state["message"] = "cancelling: stopping after the current batch"
            self._cancel.request(author)
        self.session.store.log_event(author, "retrain_cancel_requested", {
            "progress": self.state["progress"]})
        return self.status()

    def _run(self, params: RetrainParams, author: str, replace: bool, cancel: CancelFlag
             ) -> None:
        try:
            version = self.retrain_fn(self.session, params, progress=self._progress,
                                      author=author, cancel=cancel, replace_candidate=replace)
            self._update(state="done", version=version["id"], finished_at=now(),
                         message=f"candidate version {version['id']} ready")
        except RetrainCancelled:
            self._update(state="cancelled", finished_at=now(),
                         message="cancelled; no candidate was made")
        except Exception as exc:  # reported through the status endpoint, not lost in a thread
            self._update(state="failed", error=f"{type(exc).__name__}: {exc}",
                         finished_at=now(), message=str(exc))

    def join(self, timeout: float | None = None) -> None:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- estimate --------------------------------------------------------------------------
    def _speed_key(self, params: RetrainParams) -> tuple[Any, ...]:
        return (params.train, params.batch_size, params.feedback_batch_size, params.heldout,
                len(self.session.rois_by_image()) > 0)

    def _cached_estimate(self, params: RetrainParams) -> float | None:
        speed = self._speed.get(self._speed_key(params))
        return None if speed is None else self._seconds(params, speed)["seconds"]

    def _seconds(self, params: RetrainParams, speed: dict[str, float]) -> dict[str, Any]:
        dm = self.session.dm
        steps = steps_per_pass(len(dm.splits["train"]), params.batch_size or dm.batch_size,
                               params.max_batches)
        per_pass = speed["step_s"] * steps
        n_fb = len(self.session.rois_by_image())
        eval_batches = (math.ceil(len(dm.splits[params.heldout]) / dm.batch_size)
                        + math.ceil(n_fb / 64))
        seconds = per_pass * params.epochs + speed["eval_batch_s"] * eval_batches
        return {"seconds": round(seconds, 1), "per_pass_s": round(per_pass, 3),
                "passes": params.epochs, "steps_per_pass": steps,
                "step_s": round(speed["step_s"], 4), "measured": True}

    def estimate(self, params: RetrainParams) -> dict[str, Any]:
        """How long a retraining with these settings takes here: one timed training step per
        setting of what affects speed (cached), times the steps."""
        params.validate()
        key = self._speed_key(params)
        cached = key in self._speed
        if not cached:
            if len(self._speed) >= ESTIMATE_CACHE:
                self._speed.clear()
            self._speed[key] = measure_speed(self.session, params)
        return {**self._seconds(params, self._speed[key]), "cached": cached}
