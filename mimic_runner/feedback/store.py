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
from mimic_runner.feedback.errors import (
    FeedbackConflict,
    FeedbackInvalid,
    FeedbackNotFound,
)
from mimic_runner.feedback.errors import known_id as _known_id
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
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    action TEXT NOT NULL,
    answer TEXT NOT NULL,
    time TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    who TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
"""


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
                     (now(), who, action, json.dumps(detail, sort_keys=True, default=str)))

    def log_event(self, who: str, action: str, detail: dict[str, Any]) -> None:
        """Append one event to the audit log (its own transaction)."""
        with self.write() as conn:
            self._event(conn, who, action, detail)

    def events(self, limit: int = 100, actions: Sequence[str] | None = None
               ) -> list[dict[str, Any]]:
        """The latest events, newest first (only ``actions`` when given); each with ``time``
        (ISO UTC), ``author`` (and its older name ``who``), ``action`` and ``detail``."""
        with self.read() as conn:
            if actions:
                marks = ",".join("?" * len(actions))
                rows = conn.execute(f"SELECT * FROM events WHERE action IN ({marks}) "
                                    "ORDER BY id DESC LIMIT ?", (*actions, limit))
            else:
                rows = conn.execute("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
            return [{**dict(r), "author": r["who"], "detail": json.loads(r["detail"])}
                    for r in rows]

    def revision(self) -> int:
        """A number that grows with every change: the id of the latest audit event (every
        change of regions, versions and retrainings writes one, from any process)."""
        with self.read() as conn:
            return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])

    def images_with_rois(self) -> int:
        with self.read() as conn:
            return int(conn.execute("SELECT COUNT(DISTINCT image_id) FROM rois").fetchone()[0])

    @staticmethod
    def current_id(conn: sqlite3.Connection) -> int | None:
        row = conn.execute("SELECT value FROM meta WHERE key='current_version'").fetchone()
        return int(row[0]) if row else None

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

    @staticmethod
    def _roi_in(conn: sqlite3.Connection, roi_id: int) -> sqlite3.Row:
        row = conn.execute("SELECT * FROM rois WHERE id=?", (roi_id,)).fetchone()
        if row is None:
            raise FeedbackNotFound(f"region {roi_id} does not exist (GET /api/rois lists them)")
        return row

    def roi(self, roi_id: int) -> dict[str, Any]:
        """One stored region (404 when there is none)."""
        _known_id("region", roi_id)
        with self.read() as conn:
            return _roi_row(self._roi_in(conn, roi_id))

    def delete_roi(self, roi_id: int, author: str = "") -> dict[str, Any]:
        _known_id("region", roi_id)
        with self.write() as conn:
            row = self._roi_in(conn, roi_id)
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
            old = _roi_row(self._roi_in(conn, roi_id))
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
            current = self.current_id(conn)
            rows = [_version_row(r) for r in conn.execute("SELECT * FROM versions ORDER BY id")]
        for r in rows:
            r["current"] = r["id"] == current
        return rows

    def version(self, version_id: int) -> dict[str, Any]:
        _known_id("version", version_id)
        with self.read() as conn:
            row = conn.execute("SELECT * FROM versions WHERE id=?", (version_id,)).fetchone()
            current = self.current_id(conn)
        if row is None:
            raise FeedbackNotFound(f"version {version_id} does not exist")
        d = _version_row(row)
        d["current"] = d["id"] == current
        return d

    def current(self) -> dict[str, Any]:
        with self.read() as conn:
            vid = self.current_id(conn)
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
                return self.version_in(conn, self.current_id(conn) or 1)
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
        d["current"] = FeedbackStore.current_id(conn) == version_id
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
            current = self.current_id(conn)
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
