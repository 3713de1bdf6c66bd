"""Retraining with feedback: candidates, determinism, frozen parts, effect, locking, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli_helpers import feedback_cli
from feedback_runs import untrained_run
from filelock import FileLock

from mimic_runner.analysis.load import LoadedRun, load_run
from mimic_runner.feedback.diff import compare_versions, feedback_masks, forward_maps, mean_inside
from mimic_runner.feedback.models import state_sha256
from mimic_runner.feedback.retrain import RetrainParams, retrain
from mimic_runner.feedback.session import FeedbackSession
from mimic_runner.feedback.store import FeedbackConflict, FeedbackInvalid, sha256_file

OVERRIDES = ["model=attention_branch", "data.synth.params.n=240", "data.image_size=64"]
TINY = {"epochs": 1, "max_batches": 2}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("retrain-run"), OVERRIDES)


@pytest.fixture(scope="module")
def loaded(run_dir: Path) -> LoadedRun:
    return load_run(run_dir)


def _session(run_dir: Path, loaded: LoadedRun, ws: Path) -> FeedbackSession:
    return FeedbackSession(run_dir, workspace=ws, loaded=loaded)


@pytest.fixture
def session(run_dir: Path, loaded: LoadedRun, tmp_path: Path) -> FeedbackSession:
    return _session(run_dir, loaded, tmp_path / "ws")


def _feedback(session: FeedbackSession, n: int = 4) -> list[str]:
    ids = [str(session.dm.ids["train"][k]) for k in range(n)]
    rois = []
    for i in ids:
        rois.append({"image_id": i, "shape": "rect", "kind": "exclude",
                     "points": [[0.0, 0.0], [0.35, 0.35]]})
        rois.append({"image_id": i, "shape": "ellipse", "kind": "include",
                     "points": [[0.4, 0.4], [0.9, 0.9]]})
    session.add_rois(rois)
    return ids


def test_retrain_makes_a_candidate_and_never_touches_the_accepted_file(
        session: FeedbackSession) -> None:
    _feedback(session)
    v1 = session.store.current()
    v1_path = session.store.checkpoint_path(v1)
    stat = v1_path.stat()
    progress: list[float] = []
    cand = retrain(session, RetrainParams(**TINY), progress=lambda s: progress.append(s.fraction))
    assert cand["status"] == "candidate" and cand["parent"] == 1 and cand["id"] == 2
    assert session.store.current()["id"] == 1  # a candidate is not current until accepted
    cand_path = session.store.checkpoint_path(cand)
    assert cand_path != v1_path and cand_path.exists()
    assert sha256_file(cand_path) == cand["sha256"]
    assert v1_path.stat().st_mtime_ns == stat.st_mtime_ns
    assert sha256_file(v1_path) == v1["sha256"]
    assert progress[0] == 0.0 and progress[-1] == 1.0 and progress == sorted(progress)
    assert cand["params"]["feedback_images"] == 4 and cand["params"]["feedback_rois"] == 8
    assert cand["metrics"]["heldout_split"] == "val" and "val/acc" in cand["metrics"]
    saved = torch.load(cand_path, map_location="cpu", weights_only=False)
    assert saved["parent"] == 1 and set(saved["state_dict"]) == set(
        session.model(1).state_dict())


def test_retraining_is_deterministic(run_dir: Path, loaded: LoadedRun, tmp_path: Path) -> None:
    hashes = []
    for k in range(2):
        s = _session(run_dir, loaded, tmp_path / f"ws{k}")
        _feedback(s)
        cand = retrain(s, RetrainParams(**TINY, seed=3))
        hashes.append(state_sha256(s.model(int(cand["id"]))))
    assert hashes[0] == hashes[1]


@pytest.mark.parametrize(("part", "frozen", "trained"), [
    ("attention", ("backbone", "head"), ("attention_branch",)),
    ("perception", ("attention_branch",), ("backbone", "head")),
])
def test_only_the_chosen_part_trains(session: FeedbackSession, part: str,
                                     frozen: tuple[str, ...], trained: tuple[str, ...]) -> None:
    _feedback(session)
    cand = retrain(session, RetrainParams(**TINY, train=part, lr=1e-2))
    before = session.model(1).net
    after = session.model(int(cand["id"])).net
    for name in frozen:  # weights and BatchNorm statistics alike
        a, b = getattr(before, name).state_dict(), getattr(after, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    for name in trained:
        a, b = getattr(before, name).state_dict(), getattr(after, name).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), name


def test_feedback_moves_attention_out_of_excluded_regions(session: FeedbackSession) -> None:
    ids = _feedback(session, n=6)
    cand = retrain(session, RetrainParams(epochs=3, max_batches=2, gamma=200.0, lr=5e-3,
                                          train="attention"))
    images = session.batch(ids)["image"]
    inc, exc, _ = feedback_masks(session, ids)
    _, m_before = forward_maps(session.model(1), images)
    _, m_after = forward_maps(session.model(int(cand["id"])), images)
    exc_before, exc_after = mean_inside(m_before, exc).mean(), mean_inside(m_after, exc).mean()
    inc_before, inc_after = mean_inside(m_before, inc).mean(), mean_inside(m_after, inc).mean()
    assert exc_after < exc_before - 0.05, (exc_before, exc_after)
    assert inc_after > inc_before, (inc_before, inc_after)
    diff = compare_versions(session, 1, int(cand["id"]), heldout="val")
    assert diff["feedback"]["exclude_attention"]["delta"] < 0
    assert diff["heldout"]["n_images"] == len(session.dm.ids["val"])


def test_retrain_refusals(session: FeedbackSession) -> None:
    with pytest.raises(FeedbackInvalid, match="no feedback"):
        retrain(session, RetrainParams(**TINY))
    _feedback(session, n=1)
    for bad in (RetrainParams(epochs=0), RetrainParams(lr=0), RetrainParams(train="head"),
                RetrainParams(mode="blend"), RetrainParams(gamma=float("nan")),
                RetrainParams(heldout="train")):
        with pytest.raises(FeedbackInvalid, match="retrain"):
            retrain(session, bad)
    # Another process holding the workspace's lock: refused, nothing recorded.
    lock = FileLock(str(session.workspace / "retrain.lock"))
    with lock, pytest.raises(FeedbackConflict, match="already running"):
        retrain(session, RetrainParams(**TINY))
    assert len(session.store.versions()) == 1


def test_accept_then_rollback_restores_identical_weights(session: FeedbackSession) -> None:
    _feedback(session)
    start = session.status()["weights_sha256"]
    cand = retrain(session, RetrainParams(**TINY))
    session.accept()
    assert session.status()["weights_sha256"] == state_sha256(session.model(int(cand["id"])))
    assert session.status()["weights_sha256"] != start
    result = session.rollback()
    assert result["current"]["id"] == 1
    assert session.status()["weights_sha256"] == start  # reloaded from the verified file


_cli = feedback_cli


@pytest.mark.slow
def test_cli_round_trip(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                        ) -> None:
    """add-roi, rois, retrain, diff, accept, rollback, status: the scripting equivalents."""
    ws = ["--workspace", str(tmp_path / "ws")]
    run = str(run_dir)
    image = str(load_run(run_dir).datamodule.ids["train"][0])
    code, _, err = _cli(capsys, "rollback", run, *ws)
    assert code == 2 and err.startswith("error: nothing to roll back")
    code, _, err = _cli(capsys, "add-roi", run, *ws, "--image", image, "--shape", "rect",
                        "--kind", "exclude", "--points", "0.1,0.1", "1.5,0.4")
    assert code == 2 and "outside the image" in err
    code, _, err = _cli(capsys, "add-roi", run, *ws, "--image", "../../etc/passwd",
                        "--shape", "rect", "--kind", "exclude", "--points", "0.1,0.1", "0.5,0.4")
    assert code == 2 and "unknown image id" in err
    rois = tmp_path / "rois.json"
    rois.write_text(json.dumps([{"image_id": image, "shape": "polygon", "kind": "include",
                                 "points": [[0.3, 0.3], [0.8, 0.3], [0.5, 0.9]]}]))
    assert _cli(capsys, "add-roi", run, *ws, "--image", image, "--shape", "rect", "--kind",
                "exclude", "--points", "0.1,0.1", "0.5,0.4")[0] == 0
    assert _cli(capsys, "add-roi", run, *ws, "--json", str(rois))[0] == 0
    listed = json.loads(_cli(capsys, "rois", run, *ws)[1])
    assert [r["shape"] for r in listed] == ["rect", "polygon"]
    code, out, err = _cli(capsys, "retrain", run, *ws, "--epochs", "1", "--max-batches", "1")
    assert code == 0, err
    assert "candidate version 2" in out
    code, out, _ = _cli(capsys, "diff", run, *ws, "--json")
    assert code == 0 and json.loads(out)["after_version"] == 2
    assert "v1 -> v2" in _cli(capsys, "diff", run, *ws)[1]
    assert _cli(capsys, "accept", run, *ws)[0] == 0
    status = json.loads(_cli(capsys, "status", run, *ws, "--json")[1])
    assert status["current"]["id"] == 2
    code, out, _ = _cli(capsys, "rollback", run, *ws)
    assert code == 0 and "version 1 is current" in out
    status = json.loads(_cli(capsys, "status", run, *ws, "--json")[1])
    assert status["current"]["id"] == 1 and status["current"]["sha256"] == sha256_file(
        run_dir / "checkpoints" / "last.ckpt")
    assert "v2" in _cli(capsys, "status", run, *ws)[1]


@pytest.mark.slow
def test_console_script_exits_2_without_traceback(run_dir: Path, tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "mimic-feedback"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mimic_runner.cli.feedback"]
    r = subprocess.run([*cmd, "rollback", str(run_dir), "--workspace", str(tmp_path / "ws")],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert r.returncode == 2 and r.stderr.startswith("error: nothing to roll back")
    assert "Traceback" not in r.stderr
