"""The decisions on model versions of a feedback workspace: accept a candidate, discard it,
undo the last decision, revert to an earlier version. A mixin of
:class:`~mimic_runner.feedback.store.FeedbackStore`, whose transactions and events it uses."""

from __future__ import annotations

import sqlite3
from typing import Any

from mimic_runner.feedback.errors import FeedbackConflict, FeedbackNotFound, known_id


class VersionDecisions:
    """Status changes of the ``versions`` table, one transaction each."""

    @staticmethod
    def _current_id(conn: sqlite3.Connection) -> int | None:
        row = conn.execute("SELECT value FROM meta WHERE key='current_version'").fetchone()
        return int(row[0]) if row else None

    def accept(self, version_id: int | None = None, author: str = "") -> dict[str, Any]:
        """Make the (given or pending) candidate the current version."""
        with self.write() as conn:
            if version_id is None:
                row = conn.execute("SELECT id FROM versions WHERE status='candidate' "
                                   "ORDER BY id DESC LIMIT 1").fetchone()
                if row is None:
                    raise FeedbackConflict("there is no candidate to accept; retrain first")
                version_id = int(row[0])
            known_id("version", version_id)
            row = conn.execute("SELECT * FROM versions WHERE id=?", (version_id,)).fetchone()
            if row is None:
                raise FeedbackNotFound(f"version {version_id} does not exist")
            if row["status"] != "candidate":
                raise FeedbackConflict(f"version {version_id} is {row['status']}, not a "
                                       "candidate; only a candidate can be accepted")
            current = VersionDecisions._current_id(conn)
            if row["parent"] != current:
                raise FeedbackConflict(f"candidate {version_id} was trained from version "
                                       f"{row['parent']} but version {current} is current; "
                                       "retrain")
            conn.execute("UPDATE versions SET status='accepted' WHERE id=?", (version_id,))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)",
                         (str(version_id),))
            self._event(conn, author, "accept", {"version": version_id, "previous": current})
            return self.version_in(conn, version_id)

    def rollback(self, author: str = "") -> dict[str, Any]:
        """Discard the pending candidate, or else return to the previous accepted version.

        Returns ``{"rolled_back": <version>, "current": <version>}``.
        """
        with self.write() as conn:
            cand = conn.execute("SELECT id FROM versions WHERE status='candidate' "
                                "ORDER BY id DESC LIMIT 1").fetchone()
            current = VersionDecisions._current_id(conn)
            if cand is not None:
                undone = int(cand[0])
                conn.execute("UPDATE versions SET status='rolled_back' WHERE id=?", (undone,))
            else:
                row = conn.execute("SELECT parent FROM versions WHERE id=?",
                                   (current,)).fetchone()
                parent = row["parent"] if row else None
                while parent is not None:
                    p = conn.execute("SELECT id, parent, status FROM versions WHERE id=?",
                                     (parent,)).fetchone()
                    if p["status"] == "accepted":
                        break
                    parent = p["parent"]
                if parent is None:
                    raise FeedbackConflict(f"nothing to roll back: version {current} is the "
                                           "first accepted version and no candidate is pending")
                undone = int(current)  # type: ignore[arg-type]
                conn.execute("UPDATE versions SET status='rolled_back' WHERE id=?", (undone,))
                conn.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', ?)",
                             (str(parent),))
                current = int(parent)
            self._event(conn, author, "rollback", {"rolled_back": undone, "current": current})
            return {"rolled_back": self.version_in(conn, undone),
                    "current": self.version_in(conn, int(current))}  # type: ignore[arg-type]


    def discard(self, author: str = "") -> dict[str, Any]:
        """Discard the pending candidate (it stays in the history as ``rolled_back``).

        Returns ``{"rolled_back": <version>, "current": <version>}``; 409 without a candidate.
        """
        with self.write() as conn:
            cand = conn.execute("SELECT id FROM versions WHERE status='candidate' "
                                "ORDER BY id DESC LIMIT 1").fetchone()
            if cand is None:
                raise FeedbackConflict("there is no candidate to discard")
            undone = int(cand[0])
            current = int(VersionDecisions._current_id(conn) or 1)
            conn.execute("UPDATE versions SET status='rolled_back' WHERE id=?", (undone,))
            self._event(conn, author, "discard", {"rolled_back": undone, "current": current})
            return {"rolled_back": self.version_in(conn, undone),
                    "current": self.version_in(conn, current)}

    @staticmethod
    def _revert_targets(conn: sqlite3.Connection) -> list[int]:
        """The accepted ancestors of the current version, nearest first."""
        current = VersionDecisions._current_id(conn)
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

    def revert_targets(self) -> list[int]:
        """Versions :meth:`revert` accepts: the accepted ancestors of the current version."""
        with self.read() as conn:
            return self._revert_targets(conn)

    def revert(self, version_id: int, author: str = "") -> dict[str, Any]:
        """Make an earlier accepted version (an ancestor of the current one) current again.

        The versions after it on the current line, and a pending candidate, become
        ``rolled_back`` (kept, viewable, never deleted). Returns ``{"rolled_back": [ids],
        "current": <version>}``.
        """
        known_id("version", version_id)
        with self.write() as conn:
            row = conn.execute("SELECT id, status FROM versions WHERE id=?",
                               (version_id,)).fetchone()
            if row is None:
                raise FeedbackNotFound(f"version {version_id} does not exist")
            current = int(VersionDecisions._current_id(conn) or 1)
            if version_id == current:
                raise FeedbackConflict(f"version {version_id} is already the version in use")
            targets = self._revert_targets(conn)
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
            self._event(conn, author, "revert", {"current": version_id, "previous": current,
                                                 "rolled_back": sorted(undone)})
            return {"rolled_back": sorted(undone), "current": self.version_in(conn, version_id)}
