"""Feedback store (SQLite), region rasterisation and the feedback target/loss — no model needed."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
from pathlib import Path

import pytest
import torch

from mimic_runner.feedback.decisions import Decisions
from mimic_runner.feedback.roi import (
    ROI,
    edited_target,
    feedback_loss,
    mass_share,
    rasterize_roi,
    roi_masks,
    validate_roi,
)
from mimic_runner.feedback.store import (
    FeedbackConflict,
    FeedbackInvalid,
    FeedbackNotFound,
    FeedbackStore,
    publish_new,
    sha256_file,
)

RECT = {"image_id": "a", "shape": "rect", "kind": "exclude", "points": [[0.1, 0.1], [0.4, 0.3]]}


# -- regions --------------------------------------------------------------------------------------
def test_rasterise_rect_uses_pixel_centres() -> None:
    # 10x10 map: pixel c covers [c/10, (c+1)/10]; centres at 0.05, 0.15, ...
    m = rasterize_roi(ROI("rect", "include", ((0.2, 0.0), (0.5, 0.3))), 10, 10)
    assert m.dtype == torch.float32 and m.shape == (10, 10)
    rows, cols = torch.nonzero(m, as_tuple=True)
    assert sorted(set(rows.tolist())) == [0, 1, 2]
    assert sorted(set(cols.tolist())) == [2, 3, 4]
    # Corner order does not matter.
    assert torch.equal(m, rasterize_roi(ROI("rect", "include", ((0.5, 0.3), (0.2, 0.0))), 10, 10))


def test_rasterise_ellipse_and_polygon() -> None:
    e = rasterize_roi(ROI("ellipse", "include", ((0.0, 0.0), (1.0, 1.0))), 64, 64)
    assert abs(float(e.mean()) - torch.pi / 4) < 0.02  # inscribed circle covers pi/4
    assert e[32, 32] == 1 and e[0, 0] == 0
    tri = rasterize_roi(ROI("polygon", "include", ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))), 64, 64)
    assert abs(float(tri.mean()) - 0.5) < 0.02
    assert tri[5, 5] == 1 and tri[60, 60] == 0
    # Even-odd rule on a non-convex "C" shape: the notch is outside.
    c_shape = ((0.1, 0.1), (0.9, 0.1), (0.9, 0.3), (0.3, 0.3), (0.3, 0.7), (0.9, 0.7),
               (0.9, 0.9), (0.1, 0.9))
    c = rasterize_roi(ROI("polygon", "include", c_shape), 100, 100)
    assert c[50, 20] == 1 and c[50, 60] == 0 and c[20, 60] == 1


def test_roi_masks_union_and_weight() -> None:
    rois = [ROI("rect", "include", ((0, 0), (0.5, 0.5)), weight=2.0),
            ROI("rect", "include", ((0.25, 0.25), (0.75, 0.75))),
            ROI("ellipse", "exclude", ((0.5, 0.5), (1, 1)))]
    inc, exc, w = roi_masks(rois, 20, 20)
    assert inc.max() == 1 and exc.max() == 1 and w == 2.0
    assert inc[2, 2] == 1 and inc[12, 12] == 1 and inc[18, 2] == 0
    assert exc[17, 17] == 1 and exc[2, 2] == 0


@pytest.mark.parametrize(("roi", "message"), [
    ({"shape": "rect", "kind": "include", "points": [[0, 0], [1.2, 0.5]]}, "outside the image"),
    ({"shape": "rect", "kind": "include", "points": [[-0.1, 0], [0.5, 0.5]]}, "outside"),
    ({"shape": "rect", "kind": "include", "points": [[float("nan"), 0], [0.5, 0.5]]}, "outside"),
    ({"shape": "rect", "kind": "include", "points": [[0, 0], [0.5, 0.5], [0.7, 0.7]]}, "2 points"),
    ({"shape": "ellipse", "kind": "include", "points": [[0.2, 0.2], [0.2, 0.5]]}, "no area"),
    ({"shape": "polygon", "kind": "include", "points": [[0, 0], [0.5, 0.5]]}, "3 to 64"),
    ({"shape": "polygon", "kind": "include", "points": [[0.01 * i, 0.5] for i in range(65)]},
     "3 to 64"),
    ({"shape": "polygon", "kind": "include", "points": [[0, 0], [0.5, 0.5], [1, 1]]}, "no area"),
    ({"shape": "circle", "kind": "include", "points": [[0, 0], [0.5, 0.5]]}, "shape"),
    ({"shape": "rect", "kind": "maybe", "points": [[0, 0], [0.5, 0.5]]}, "kind"),
    ({"shape": "rect", "kind": "include", "points": [[0, 0], [0.5, 0.5]], "weight": 0}, "weight"),
])
def test_validate_roi_rejects(roi: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_roi(roi["shape"], roi["kind"], roi["points"], roi.get("weight", 1.0))


def test_edited_target_modes() -> None:
    m = torch.tensor([[[0.2, 0.9], [0.5, 0.1]]])
    inc = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    exc = torch.tensor([[[0.0, 1.0], [0.0, 0.0]]])
    assert torch.allclose(edited_target(m, inc, exc, "include"),
                          torch.tensor([[[1.0, 0.9], [0.5, 0.1]]]))
    assert torch.allclose(edited_target(m, inc, exc, "exclude"),
                          torch.tensor([[[0.2, 0.0], [0.5, 0.1]]]))
    assert torch.allclose(edited_target(m, inc, exc, "edit"),
                          torch.tensor([[[1.0, 0.0], [0.5, 0.1]]]))
    assert torch.allclose(edited_target(m, inc, exc, "replace"),
                          torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]))
    with pytest.raises(ValueError, match="mode"):
        edited_target(m, inc, exc, "blend")


def test_feedback_loss_and_mass_share() -> None:
    m = torch.zeros(2, 4, 4, requires_grad=True)
    target = torch.ones(2, 4, 4)
    w = torch.tensor([1.0, 3.0])
    loss = feedback_loss(m, target, w)
    assert torch.isclose(loss, torch.tensor(2.0))  # (1·1 + 3·1) / 2 images
    loss.backward()
    assert m.grad is not None and float(m.grad.abs().sum()) > 0
    maps = torch.tensor([[[1.0, 3.0]], [[0.0, 0.0]]])
    mask = torch.tensor([[[0, 1]], [[1, 0]]])
    share = mass_share(maps, mask)
    assert share[0] == 0.75 and torch.isnan(share[1])  # all-zero map: nothing to share


# -- store -----------------------------------------------------------------------------------------
@pytest.fixture
def store(tmp_path: Path) -> FeedbackStore:
    s = FeedbackStore(tmp_path / "ws" / "feedback.sqlite")
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"weights-v1")
    s.initialise(ckpt, {"test/acc": 0.5})
    return s


def _candidate(store: FeedbackStore, payload: bytes) -> dict:
    path = store.next_checkpoint_path()
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_bytes(payload)
    publish_new(tmp, path)
    return store.add_candidate(int(store.current()["id"]), path, {"val/acc": 0.6}, {})


def test_store_initialise_copies_checkpoint(store: FeedbackStore, tmp_path: Path) -> None:
    v1 = store.current()
    assert v1["id"] == 1 and v1["status"] == "accepted" and v1["parent"] is None
    copy = store.checkpoint_path(v1)
    assert copy.read_bytes() == b"weights-v1" and copy != tmp_path / "run.ckpt"
    assert v1["sha256"] == sha256_file(tmp_path / "run.ckpt")
    # Idempotent: a second open does not add a version.
    store.initialise(tmp_path / "run.ckpt", {})
    assert len(store.versions()) == 1
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_rois(store: FeedbackStore) -> None:
    created = store.add_rois([RECT, {**RECT, "kind": "include"}], author="dr. x")
    assert [r["id"] for r in created] == [1, 2] and created[0]["author"] == "dr. x"
    assert len(store.rois("a")) == 2 and store.rois("b") == []
    store.delete_roi(1)
    assert [r["id"] for r in store.rois()] == [2]
    with pytest.raises(FeedbackNotFound):
        store.delete_roi(1)
    # All or none: one bad region rejects the whole payload.
    with pytest.raises(FeedbackInvalid, match="region 1"):
        store.add_rois([RECT, {**RECT, "points": [[0, 0], [2, 2]]}])
    assert len(store.rois()) == 1
    with pytest.raises(FeedbackConflict, match="at most 3"):
        store.add_rois([RECT] * 3, max_per_image=3)
    assert len(store.rois()) == 1
    actions = [e["action"] for e in store.events()]
    assert actions[:3] == ["delete_roi", "add_rois", "initialise"]


def test_version_lifecycle(store: FeedbackStore) -> None:
    with pytest.raises(FeedbackConflict, match="nothing to roll back"):
        Decisions(store).rollback()
    with pytest.raises(FeedbackConflict, match="no candidate"):
        Decisions(store).accept()
    v2 = _candidate(store, b"weights-v2")
    assert v2["status"] == "candidate" and v2["parent"] == 1 and store.current()["id"] == 1
    # Rollback with a pending candidate discards it; version 1 stays current.
    r = Decisions(store).rollback()
    assert r["rolled_back"]["id"] == 2 and r["current"]["id"] == 1
    with pytest.raises(FeedbackConflict, match="rolled back, not a candidate"):
        Decisions(store).accept(2)
    v3 = _candidate(store, b"weights-v3")
    Decisions(store).accept()
    assert store.current()["id"] == v3["id"]
    v4 = _candidate(store, b"weights-v4")
    v5 = _candidate(store, b"weights-v5")  # supersedes v4
    assert store.version(v4["id"])["status"] == "rolled_back"
    Decisions(store).accept(v5["id"])
    # Roll back twice: v5 -> v3 -> v1, each time the nearest accepted ancestor.
    assert Decisions(store).rollback()["current"]["id"] == v3["id"]
    assert Decisions(store).rollback()["current"]["id"] == 1
    with pytest.raises(FeedbackConflict):
        Decisions(store).rollback()
    v1 = store.current()
    assert store.verified_checkpoint(v1).read_bytes() == b"weights-v1"
    statuses = {v["id"]: v["status"] for v in store.versions()}
    assert statuses == {1: "accepted", 2: "rolled_back", 3: "rolled_back", 4: "rolled_back",
                        5: "rolled_back"}


def test_candidate_from_a_stale_parent_is_refused(store: FeedbackStore) -> None:
    v2 = _candidate(store, b"w2")
    Decisions(store).accept(v2["id"])
    path = store.next_checkpoint_path()
    path.write_bytes(b"stale")
    with pytest.raises(FeedbackConflict, match="retrain"):
        store.add_candidate(1, path, {}, {})  # trained from v1, but v2 is current


def test_checkpoints_are_never_overwritten_and_verified(store: FeedbackStore,
                                                         tmp_path: Path) -> None:
    v1 = store.current()
    tmp = tmp_path / "x.tmp"
    tmp.write_bytes(b"evil")
    with pytest.raises(FeedbackConflict, match="never overwritten"):
        publish_new(tmp, store.checkpoint_path(v1))
    assert store.checkpoint_path(v1).read_bytes() == b"weights-v1"
    assert store.next_checkpoint_path() != store.checkpoint_path(v1)
    store.checkpoint_path(v1).write_bytes(b"tampered")
    with pytest.raises(Exception, match="modified"):
        store.verified_checkpoint(v1)


def test_concurrent_threads_respect_the_per_image_cap(store: FeedbackStore) -> None:
    results: list[str] = []

    def worker() -> None:
        for _ in range(5):
            try:
                store.add_rois([RECT, RECT], max_per_image=30)
                results.append("ok")
            except FeedbackConflict:
                results.append("full")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 15 and results.count("full") == 25
    rows = store.rois("a")
    assert len(rows) == 30 and len({r["id"] for r in rows}) == 30


def test_concurrent_accepts_only_one_wins(store: FeedbackStore) -> None:
    v2 = _candidate(store, b"w2")
    outcome: list[str] = []

    def accept() -> None:
        try:
            r = Decisions(store).accept(v2["id"])
            outcome.append("already" if r["already"] else "accepted")
        except FeedbackConflict:
            outcome.append("refused")

    threads = [threading.Thread(target=accept) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcome.count("accepted") == 1 and outcome.count("already") == 5
    assert [e["action"] for e in store.events()].count("accept") == 1


def test_a_repeated_request_id_returns_the_first_answer(store: FeedbackStore) -> None:
    v2 = _candidate(store, b"w2")
    answers: list[dict] = []

    def accept() -> None:
        answers.append(Decisions(store).accept(v2["id"], author="dr. a", request_id="req-1"))

    threads = [threading.Thread(target=accept) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    first = [a for a in answers if not a.get("replayed")]
    assert len(first) == 1 and first[0]["already"] is False
    assert all(a["current"] == first[0]["current"] for a in answers)
    assert sum(bool(a.get("replayed")) for a in answers) == 4
    assert [e["action"] for e in store.events()].count("accept") == 1
    # The same id for another decision is refused; a failed decision records no id.
    with pytest.raises(FeedbackConflict, match="already used for accept"):
        Decisions(store).discard(request_id="req-1")
    with pytest.raises(FeedbackConflict, match="no candidate"):
        Decisions(store).discard(request_id="req-2")
    v3 = _candidate(store, b"w3")
    assert Decisions(store).discard(request_id="req-2")["rolled_back"]["id"] == v3["id"]


def test_revision_grows_with_every_change(store: FeedbackStore) -> None:
    seen = [store.revision()]
    store.add_rois([RECT], author="a")
    seen.append(store.revision())
    store.update_roi(1, {"kind": "include"})
    seen.append(store.revision())
    _candidate(store, b"w2")
    seen.append(store.revision())
    Decisions(store).discard()
    seen.append(store.revision())
    store.log_event("b", "retrain_started", {"run": "x"})
    seen.append(store.revision())
    assert seen == sorted(set(seen)), seen  # strictly increasing
    assert store.images_with_rois() == 1
    latest = store.events(1)[0]
    assert latest["author"] == "b" and latest["time"].endswith("+00:00")


def _process_worker(path: str, n: int, tag: str) -> None:
    s = FeedbackStore(path)
    for i in range(n):
        s.add_rois([{**RECT, "image_id": f"{tag}-{i % 3}"}], author=tag)


def test_concurrent_processes(store: FeedbackStore) -> None:
    # Separate processes, separate SQLite connections (fork: no re-import of torch per child;
    # the store holds no open connection across the fork).
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=_process_worker, args=(str(store.path), 15, f"p{k}"))
             for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    rows = store.rois()
    assert len(rows) == 45 and len({r["id"] for r in rows}) == 45
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
