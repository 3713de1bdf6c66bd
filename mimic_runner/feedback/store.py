"""The feedback store: regions of interest, model versions and an audit log, in SQLite.

One database file per workspace (``feedback.sqlite``). Every operation opens its own
connection, so the store is safe to share between threads and processes; every write runs in
a ``BEGIN IMMEDIATE`` transaction (the write lock is taken before anything is read, so checks
such as "at most N regions per image" or "only a candidate can be accepted" cannot race), and
the journal is in WAL mode so that readers never block the writer.

Versions: version 1 is the run's trained checkpoint, copied into the workspace and accepted.
Retraining adds a ``candidate`` whose parent is the current version; ``accept`` makes it
current; ``discard`` marks a pending candidate ``rolled_back``; ``revert`` returns to a chosen
earlier accepted version (ancestor of the current one); ``rollback`` (the CLI's one-step undo)
discards a pending candidate, or else marks the current version ``rolled_back`` and makes its
nearest accepted ancestor current again. No version is ever deleted: rolled-back ones stay
viewable. Checkpoint files are never rewritten; their sha256 is recorded when they are added.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mimic_runner.errors import UserError
from mimic_runner.feedback.roi import ROI, validate_roi

SCHEMA_VERSION = 1
STATUSES = ("candidate", "accepted", "rolled_back")
MAX_ROIS_PER_IMAGE = 50
MAX_ROIS_TOTAL = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rois (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_id TEXT NOT NULL,
    shape TEXT NOT NULL CHECK (shape IN ('rect', 'ellipse', 'polygon')),
    kind TEXT NOT NULL CHECK (kind IN ('include', 'exclude')),
    points TEXT NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0,
    author TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rois_image ON rois (image_id);
CREATE TABLE IF NOT EXISTS versions (
    id INTEGER PRIMARY KEY,
    parent INTEGER REFERENCES versions (id),
    checkpoint TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    metrics TEXT NOT NULL DEFAULT '{}',
    params TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL CHECK (status IN ('candidate', 'accepted', 'rolled_back')),
    author TEXT NOT NULL DEFAULT '',
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    who TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
"""


class FeedbackConflict(UserError):
    """The request is well-formed but the store's state forbids it (HTTP 409)."""


class FeedbackNotFound(UserError):
    """The named region, version or image does not exist (HTTP 404)."""


class FeedbackInvalid(UserError):
    """A region or parameter is malformed (HTTP 422)."""


MAX_ID = 2**63 - 1  # SQLite's largest integer


def _known_id(what: str, value: int) -> int:
    """An id SQLite can look up; out of range is "does not exist", never an OverflowError."""
    if not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise FeedbackNotFound(f"{what} {value} does not exist")
    return value


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _roi_row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["points"] = json.loads(d["points"])
    return d


def _version_row(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["metrics"] = json.loads(d["metrics"])
    d["params"] = json.loads(d["params"])
    return d


def roi_from_row(row: dict[str, Any]) -> ROI:
    return ROI(shape=row["shape"], kind=row["kind"],
               points=tuple((float(x), float(y)) for x, y in row["points"]),
               weight=float(row["weight"]), meta={"id": row["id"]})


class FeedbackStore:
    """SQLite store at ``path``; checkpoint paths are stored relative to ``path.parent``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.root = self.path.parent
        self.root.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            with self._tx(conn):
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(stmt)
                conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
            found = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if found is None or int(found[0]) != SCHEMA_VERSION:
                raise UserError(f"{self.path}: feedback store schema {found and found[0]} is not "
                                f"{SCHEMA_VERSION}; use a new --workspace")

    # -- plumbing ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; we issue BEGIN IMMEDIATE ourselves.
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    @staticmethod
    @contextlib.contextmanager
    def _tx(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock from its first statement."""
        with contextlib.closing(self._connect()) as conn, self._tx(conn):
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot for several reads."""
        with contextlib.closing(self._connect()) as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @staticmethod
    def _event(conn: sqlite3.Connection, who: str, action: str, detail: dict[str, Any]) -> None:
        conn.execute("INSERT INTO events (time, who, action, detail) VALUES (?, ?, ?, ?)",
                     (now(), who, action, json.dumps(detail, sort_keys=True)))

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        with self.read() as conn:
            rows = conn.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
            return [{**dict(r), "detail": json.loads(r["detail"])} for r in rows]

    # -- regions of interest -----------------------------------------------------------------
    def add_rois(self, rois: Sequence[dict[str, Any]], author: str = "",
                 max_per_image: int = MAX_ROIS_PER_IMAGE,
                 max_total: int = MAX_ROIS_TOTAL) -> list[dict[str, Any]]:
        """Add regions (dicts with image_id, shape, kind, points[, weight]); all or none.

        Raises :class:`FeedbackInvalid` for a malformed region and :class:`FeedbackConflict`
        when an image would exceed ``max_per_image`` regions or the store ``max_total``.
        """
        for i, r in enumerate(rois):
            try:
                validate_roi(r["shape"], r["kind"], r["points"], r.get("weight", 1.0))
            except (ValueError, TypeError, KeyError) as exc:
                raise FeedbackInvalid(f"region {i}: {exc}") from None
        created: list[int] = []
        with self.write() as conn:
            total = conn.execute("SELECT COUNT(*) FROM rois").fetchone()[0]
            if total + len(rois) > max_total:
                raise FeedbackConflict(f"the store holds {total} regions; at most {max_total} "
                                       "are allowed (delete some first)")
            per_image: dict[str, int] = {}
            for r in rois:
                per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
            for image_id, n in per_image.items():
                have = conn.execute("SELECT COUNT(*) FROM rois WHERE image_id=?",
                                    (image_id,)).fetchone()[0]
                if have + n > max_per_image:
                    raise FeedbackConflict(f"image '{image_id}' has {have} regions; at most "
                                           f"{max_per_image} per image are allowed")
            t = now()
            for r in rois:
                cur = conn.execute(
                    "INSERT INTO rois (image_id, shape, kind, points, weight, author, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (r["image_id"], r["shape"], r["kind"],
                     json.dumps([[float(x), float(y)] for x, y in r["points"]]),
                     float(r.get("weight", 1.0)), author, t))
                created.append(int(cur.lastrowid or 0))
            self._event(conn, author, "add_rois", {"ids": created})
            marks = ",".join("?" * len(created))
            rows = conn.execute(f"SELECT * FROM rois WHERE id IN ({marks}) ORDER BY id", created)
            return [_roi_row(row) for row in rows]

    def delete_roi(self, roi_id: int, author: str = "") -> dict[str, Any]:
        _known_id("region", roi_id)
        with self.write() as conn:
            row = conn.execute("SELECT * FROM rois WHERE id=?", (roi_id,)).fetchone()
            if row is None:
                raise FeedbackNotFound(f"region {roi_id} does not exist (GET /api/rois lists "
                                       "them)")
            conn.execute("DELETE FROM rois WHERE id=?", (roi_id,))
            self._event(conn, author, "delete_roi", {"id": roi_id, "image_id": row["image_id"]})
            return _roi_row(row)

    def update_roi(self, roi_id: int, changes: dict[str, Any], author: str = ""
                   ) -> dict[str, Any]:
        """Change a region's ``points``, ``kind`` and/or ``weight`` (its shape and image stay).

        Returns the updated row; the audit log keeps the previous values.
        """
        allowed = {"points", "kind", "weight"}
        if not changes or set(changes) - allowed:
            raise FeedbackInvalid(f"a region update changes {', '.join(sorted(allowed))}; got "
                                  f"{', '.join(sorted(changes)) or 'nothing'}")
        _known_id("region", roi_id)
        with self.write() as conn:
            row = conn.execute("SELECT * FROM rois WHERE id=?", (roi_id,)).fetchone()
            if row is None:
                raise FeedbackNotFound(f"region {roi_id} does not exist (GET /api/rois lists "
                                       "them)")
            old = _roi_row(row)
            new = {**old, **changes}
            try:
                validate_roi(new["shape"], new["kind"], new["points"], new["weight"])
            except (ValueError, TypeError) as exc:
                raise FeedbackInvalid(f"region {roi_id}: {exc}") from None
            conn.execute("UPDATE rois SET points=?, kind=?, weight=? WHERE id=?",
                         (json.dumps([[float(x), float(y)] for x, y in new["points"]]),
                          new["kind"], float(new["weight"]), roi_id))
            self._event(conn, author, "update_roi", {
                "id": roi_id, "image_id": old["image_id"],
                "before": {k: old[k] for k in changes}, "after": dict(changes)})
            return _roi_row(conn.execute("SELECT * FROM rois WHERE id=?", (roi_id,)).fetchone())

    def rois(self, image_id: str | None = None) -> list[dict[str, Any]]:
        with self.read() as conn:
            if image_id is None:
                rows = conn.execute("SELECT * FROM rois ORDER BY id")
            else:
                rows = conn.execute("SELECT * FROM rois WHERE image_id=? ORDER BY id",
                                    (image_id,))
            return [_roi_row(r) for r in rows]

    # -- versions ----------------------------------------------------------------------------
    def versions(self) -> list[dict[str, Any]]:
        with self.read() as conn:
            current = self._current_id(conn)
            rows = [_version_row(r) for r in conn.execute("SELECT * FROM versions ORDER BY id")]
        for r in rows:
            r["current"] = r["id"] == current
        return rows

    def version(self, version_id: int) -> dict[str, Any]:
        _known_id("version", version_id)
        with self.read() as conn:
            row = conn.execute("SELECT * FROM versions WHERE id=?", (version_id,)).fetchone()
            current = self._current_id(conn)
        if row is None:
            raise FeedbackNotFound(f"version {version_id} does not exist")
        d = _version_row(row)
        d["current"] = d["id"] == current
        return d

    @staticmethod
    def _current_id(conn: sqlite3.Connection) -> int | None:
        row = conn.execute("SELECT value FROM meta WHERE key='current_version'").fetchone()
        return int(row[0]) if row else None

    def current(self) -> dict[str, Any]:
        with self.read() as conn:
            vid = self._current_id(conn)
        if vid is None:
            raise UserError(f"{self.path}: the store has no model version yet")
        return self.version(vid)

    def candidate(self) -> dict[str, Any] | None:
        with self.read() as conn:
            row = conn.execute("SELECT * FROM versions WHERE status='candidate' "
                               "ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else self.version(int(row["id"]))

    def checkpoint_path(self, version: dict[str, Any]) -> Path:
        return self.root / version["checkpoint"]

    def verified_checkpoint(self, version: dict[str, Any]) -> Path:
        """The version's checkpoint file, after checking it still has its recorded sha256."""
        path = self.checkpoint_path(version)
        if not path.exists():
            raise UserError(f"{path}: checkpoint of version {version['id']} is missing")
        digest = sha256_file(path)
        if digest != version["sha256"]:
            raise UserError(f"{path}: checkpoint of version {version['id']} was modified "
                            f"(sha256 {digest[:12]}…, recorded {version['sha256'][:12]}…)")
        return path

    def initialise(self, source_checkpoint: Path, metrics: dict[str, Any],
                   author: str = "") -> dict[str, Any]:
        """Create version 1 from the run's checkpoint (copied), unless the store has versions."""
        with self.write() as conn:
            if conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0]:
                return self.version_in(conn, self._current_id(conn) or 1)
            rel = Path("versions") / "v0001.ckpt"
            dest = self.root / rel
            _copy_new(source_checkpoint, dest)
            digest = sha256_file(dest)
            conn.execute(
                "INSERT INTO versions (id, parent, checkpoint, sha256, metrics, params, status, "
                "author, created) VALUES (1, NULL, ?, ?, ?, ?, 'accepted', ?, ?)",
                (str(rel), digest, json.dumps(metrics, sort_keys=True),
                 json.dumps({"source": str(source_checkpoint)}), author, now()))
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('current_version', '1')")
            self._event(conn, author, "initialise", {"source": str(source_checkpoint),
                                                     "sha256": digest})
            return self.version_in(conn, 1)

    @staticmethod
    def version_in(conn: sqlite3.Connection, version_id: int) -> dict[str, Any]:
        row = conn.execute("SELECT * FROM versions WHERE id=?", (version_id,)).fetchone()
        d = _version_row(row)
        d["current"] = FeedbackStore._current_id(conn) == version_id
        return d

    def next_checkpoint_path(self) -> Path:
        """A fresh file name for the next version's checkpoint (never an existing file)."""
        with self.read() as conn:
            n = conn.execute("SELECT COALESCE(MAX(id), 0) FROM versions").fetchone()[0] + 1
        path = self.root / "versions" / f"v{n:04d}.ckpt"
        k = 1
        while path.exists():  # e.g. left by a retraining that failed after writing its file
            path = self.root / "versions" / f"v{n:04d}-{k}.ckpt"
            k += 1
        return path

    def add_candidate(self, parent: int, checkpoint: Path, metrics: dict[str, Any],
                      params: dict[str, Any], author: str = "") -> dict[str, Any]:
        """Record a retrained checkpoint (already written) as the new candidate.

        A previous pending candidate is discarded (``rolled_back``): there is at most one.
        The parent must still be the current version.
        """
        digest = sha256_file(checkpoint)
        with self.write() as conn:
            current = self._current_id(conn)
            if current != parent:
                raise FeedbackConflict(f"the candidate was trained from version {parent} but "
                                       f"version {current} is current now; retrain")
            old = [r[0] for r in conn.execute("SELECT id FROM versions WHERE status='candidate'")]
            conn.execute("UPDATE versions SET status='rolled_back' WHERE status='candidate'")
            cur = conn.execute(
                "INSERT INTO versions (parent, checkpoint, sha256, metrics, params, status, "
                "author, created) VALUES (?, ?, ?, ?, ?, 'candidate', ?, ?)",
                (parent, str(checkpoint.relative_to(self.root)), digest,
                 json.dumps(metrics, sort_keys=True), json.dumps(params, sort_keys=True),
                 author, now()))
            vid = int(cur.lastrowid or 0)
            self._event(conn, author, "candidate", {"version": vid, "parent": parent,
                                                    "sha256": digest, "discarded": old})
            return self.version_in(conn, vid)

    def accept(self, version_id: int | None = None, author: str = "") -> dict[str, Any]:
        """Make the (given or pending) candidate the current version."""
        with self.write() as conn:
            if version_id is None:
                row = conn.execute("SELECT id FROM versions WHERE status='candidate' "
                                   "ORDER BY id DESC LIMIT 1").fetchone()
                if row is None:
                    raise FeedbackConflict("there is no candidate to accept; retrain first")
                version_id = int(row[0])
            _known_id("version", version_id)
            row = conn.execute("SELECT * FROM versions WHERE id=?", (version_id,)).fetchone()
            if row is None:
                raise FeedbackNotFound(f"version {version_id} does not exist")
            if row["status"] != "candidate":
                raise FeedbackConflict(f"version {version_id} is {row['status']}, not a "
                                       "candidate; only a candidate can be accepted")
            current = self._current_id(conn)
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
            current = self._current_id(conn)
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
            current = int(self._current_id(conn) or 1)
            conn.execute("UPDATE versions SET status='rolled_back' WHERE id=?", (undone,))
            self._event(conn, author, "discard", {"rolled_back": undone, "current": current})
            return {"rolled_back": self.version_in(conn, undone),
                    "current": self.version_in(conn, current)}

    @staticmethod
    def _revert_targets(conn: sqlite3.Connection) -> list[int]:
        """The accepted ancestors of the current version, nearest first."""
        current = FeedbackStore._current_id(conn)
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
        _known_id("version", version_id)
        with self.write() as conn:
            row = conn.execute("SELECT id, status FROM versions WHERE id=?",
                               (version_id,)).fetchone()
            if row is None:
                raise FeedbackNotFound(f"version {version_id} does not exist")
            current = int(self._current_id(conn) or 1)
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


def publish_new(tmp: Path, dest: Path) -> None:
    """Give the finished file ``tmp`` the name ``dest``, failing if ``dest`` exists.

    ``os.link`` refuses to replace an existing name, unlike ``os.replace``: a published
    checkpoint can never be overwritten, even by a racing writer.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise FeedbackConflict(f"{dest} exists; checkpoints are never overwritten") from None
    finally:
        tmp.unlink(missing_ok=True)


def _copy_new(src: Path, dest: Path) -> None:
    """Copy ``src`` to a new file ``dest`` (complete or absent; never replacing a file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    shutil.copyfile(src, tmp)
    publish_new(Path(tmp), dest)
