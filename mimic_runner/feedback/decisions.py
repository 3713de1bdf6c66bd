"""The decisions on model versions of a feedback workspace: accept a candidate, discard it,
undo the last decision, revert to an earlier version — each one transaction of the
:class:`~mimic_runner.feedback.store.FeedbackStore` it is given, with its audit event.

Decisions are idempotent by request id: a decision sent again with the same ``request_id`` (a
double-click, a retried request) returns the first answer and changes nothing; the id and the
answer are recorded in the same transaction as the decision, so two racing copies cannot both act.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from mimic_runner.feedback.errors import FeedbackConflict, FeedbackNotFound, known_id
from mimic_runner.feedback.store import FeedbackStore, now

Action = Callable[[sqlite3.Connection], dict[str, Any]]


class Decisions:
    """Status changes of the ``versions`` table of ``store``."""

    def __init__(self, store: FeedbackStore) -> None:
        self.store = store

    def _once(self, action: str, request_id: str | None, act: Action) -> dict[str, Any]:
        """Run ``act`` in one write transaction, or return the answer already recorded for
        ``request_id`` (with ``"replayed": true``)."""
        with self.store.write() as conn:
            if request_id:
                row = conn.execute("SELECT action, answer FROM requests WHERE id=?",
                                   (request_id,)).fetchone()
                if row is not None:
                    if row["action"] != action:
                        raise FeedbackConflict(f"request_id {request_id!r} was already used for "
                                               f"{row['action']}; send a new id")
                    return {**json.loads(row["answer"]), "replayed": True}
            answer = act(conn)
            if request_id:
                conn.execute("INSERT INTO requests (id, action, answer, time) VALUES "
                             "(?, ?, ?, ?)", (request_id, action, json.dumps(answer), now()))
            return answer

    def answered(self, request_id: str | None, action: str) -> dict[str, Any] | None:
        """The recorded answer of an earlier decision with this id, or None."""
        if not request_id:
            return None
        with self.store.read() as conn:
            row = conn.execute("SELECT action, answer FROM requests WHERE id=?",
                               (request_id,)).fetchone()
        if row is None or row["action"] != action:
            return None
        return {**json.loads(row["answer"]), "replayed": True}

    def accept(self, version_id: int | None = None, author: str = "",
               request_id: str | None = None) -> dict[str, Any]:
        """Make the (given or pending) candidate the current version.

        Returns ``{"current": <version>, "already": bool}``; ``already`` when ``version_id`` is
        the current version (nothing to do, not an error).
        """

        def act(conn: sqlite3.Connection) -> dict[str, Any]:
            vid = version_id
            if vid is None:
                row = conn.execute("SELECT id FROM versions WHERE status='candidate' "
                                   "ORDER BY id DESC LIMIT 1").fetchone()
                if row is None:
                    raise FeedbackConflict("there is no candidate to accept; retrain first")
                vid = int(row[0])
            known_id("version", vid)
            row = conn.execute("SELECT * FROM versions WHERE id=?", (vid,)).fetchone()
            if row is None:
                raise FeedbackNotFound(f"version {vid} does not exist")
            current = FeedbackStore.current_id(conn)
            if vid == current:
                return {"current": FeedbackStore.version_in(conn, vid), "already": True}
            if row["status"] != "candidate":
                raise FeedbackConflict(f"version {vid} is {row['status'].replace('_', ' ')}, "
                                       "not a candidate; only the waiting candidate can be "
                                       "accepted")
            if row["parent"] != current:
                raise FeedbackConflict(f"candidate {vid} was trained from version "
                                       f"{row['parent']} but version {current} is current; "
                                       "retrain")
            conn.execute("UPDATE versions SET status='accepted' WHERE id=?", (vid,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)", (str(vid),))
            FeedbackStore._event(conn, author, "accept", {"version": vid, "previous": current})
            return {"current": FeedbackStore.version_in(conn, vid), "already": False}

        return self._once("accept", request_id, act)

    def rollback(self, author: str = "", request_id: str | None = None) -> dict[str, Any]:
        """Discard the pending candidate, or else return to the previous accepted version.

        Returns ``{"rolled_back": <version>, "current": <version>}``.
        """

        def act(conn: sqlite3.Connection) -> dict[str, Any]:
            cand = conn.execute("SELECT id FROM versions WHERE status='candidate' "
                                "ORDER BY id DESC LIMIT 1").fetchone()
            current = FeedbackStore.current_id(conn)
            if cand is not None:
                undone = int(cand[0])
                conn.execute("UPDATE versions SET status='rolled_back' WHERE id=?", (undone,))
            else:
                targets = _revert_targets(conn)
                if not targets:
                    raise FeedbackConflict(f"nothing to roll back: version {current} is the "
                                           "first accepted version and no candidate is pending")
                undone = int(current)  # type: ignore[arg-type]
                conn.execute("UPDATE versions SET status='rolled_back' WHERE id=?", (undone,))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)",
                             (str(targets[0]),))
                current = targets[0]
            FeedbackStore._event(conn, author, "rollback", {"rolled_back": undone,
                                                            "current": current})
            return {"rolled_back": FeedbackStore.version_in(conn, undone),
                    "current": FeedbackStore.version_in(conn, int(current))}  # type: ignore[arg-type]

        return self._once("rollback", request_id, act)

    def discard(self, author: str = "", request_id: str | None = None) -> dict[str, Any]:
        """Discard the pending candidate (it stays in the history as ``rolled_back``).

        Returns ``{"rolled_back": <version>, "current": <version>}``; 409 without a candidate.
        """

        def act(conn: sqlite3.Connection) -> dict[str, Any]:
            cand = conn.execute("SELECT id FROM versions WHERE status='candidate' "
                                "ORDER BY id DESC LIMIT 1").fetchone()
            if cand is None:
                raise FeedbackConflict("there is no candidate to discard")
            undone = int(cand[0])
            current = int(FeedbackStore.current_id(conn) or 1)
            conn.execute("UPDATE versions SET status='rolled_back' WHERE id=?", (undone,))
            FeedbackStore._event(conn, author, "discard", {"rolled_back": undone,
                                                           "current": current})
            return {"rolled_back": FeedbackStore.version_in(conn, undone),
                    "current": FeedbackStore.version_in(conn, current)}

        return self._once("discard", request_id, act)

    def revert_targets(self) -> list[int]:
        """Versions :meth:`revert` accepts: the accepted ancestors of the current version."""
        with self.store.read() as conn:
            return _revert_targets(conn)

    def revert(self, version_id: int, author: str = "", request_id: str | None = None
               ) -> dict[str, Any]:
        """Make an earlier accepted version (an ancestor of the current one) current again.

        The versions after it on the current line, and a pending candidate, become
        ``rolled_back`` (kept, viewable, never deleted). Returns ``{"rolled_back": [ids],
        "current": <version>}``.
        """
        known_id("version", version_id)

        def act(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT id, status FROM versions WHERE id=?",
                               (version_id,)).fetchone()
            if row is None:
                raise FeedbackNotFound(f"version {version_id} does not exist")
            current = int(FeedbackStore.current_id(conn) or 1)
            if version_id == current:
                raise FeedbackConflict(f"version {version_id} is already the version in use")
            targets = _revert_targets(conn)
            if version_id not in targets:
                raise FeedbackConflict(
                    f"version {version_id} ({row['status'].replace('_', ' ')}) is not an "
                    f"earlier accepted version of version {current}; revert to one of "
                    f"{', '.join(map(str, targets)) or 'none (nothing to revert to)'}")
            undone: list[int] = []
            vid: int | None = current
            while vid is not None and vid != version_id:
                undone.append(vid)
                vid = conn.execute("SELECT parent FROM versions WHERE id=?",
                                   (vid,)).fetchone()["parent"]
            undone += [int(r[0]) for r in conn.execute(
                "SELECT id FROM versions WHERE status='candidate'")]
            marks = ",".join("?" * len(undone))
            conn.execute(f"UPDATE versions SET status='rolled_back' WHERE id IN ({marks})",
                         undone)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)",
                         (str(version_id),))
            FeedbackStore._event(conn, author, "revert", {
                "current": version_id, "previous": current, "rolled_back": sorted(undone)})
            return {"rolled_back": sorted(undone),
                    "current": FeedbackStore.version_in(conn, version_id)}

        return self._once("revert", request_id, act)


def _revert_targets(conn: sqlite3.Connection) -> list[int]:
    """The accepted ancestors of the current version, nearest first."""
    current = FeedbackStore.current_id(conn)
    row = conn.execute("SELECT parent FROM versions WHERE id=?", (current,)).fetchone()
    parent = row["parent"] if row else None
    found: list[int] = []
    while parent is not None:
        p = conn.execute("SELECT id, parent, status FROM versions WHERE id=?",
                         (parent,)).fetchone()
        if p is None:
            break
        if p["status"] == "accepted":
            found.append(int(p["id"]))
        parent = p["parent"]
    return found
