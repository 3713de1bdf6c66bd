"""`mimic-feedback` refusals are one `error:` line (exit 2, no traceback), before any slow work;
`serve` on any loopback address answers its own URL; a workspace of an older checkpoint is
refused or set aside (issue 14)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from cli_helpers import feedback_cli
from feedback_runs import untrained_run

from mimic_runner.feedback.store import sha256_file

OVERRIDES = ["model=attention_branch", "data.synth.params.n=240", "data.image_size=64"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return untrained_run(tmp_path_factory.mktemp("cli-run"), OVERRIDES)


_cli = feedback_cli


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("port", ["99999", "-1", "65536"])
def test_serve_refuses_a_port_out_of_range(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           port: str) -> None:
    # The run folder does not even exist: the port is checked before anything is loaded.
    line = _one_error_line(*_cli(capsys, "serve", str(tmp_path / "nope"), "--port", port)[::2])
    assert f"--port {port}" in line and "65535" in line


def test_serve_refuses_a_busy_port_and_bad_arguments(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        line = _one_error_line(*_cli(capsys, "serve", str(tmp_path), "--port", str(port))[::2])
        assert f"127.0.0.1:{port}" in line and "another --port" in line
    line = _one_error_line(*_cli(capsys, "serve", str(tmp_path), "--port", "abc")[::2])
    assert "invalid int value" in line
    line = _one_error_line(*_cli(capsys, "serve", str(tmp_path), "--host",
                                 "no-such-host.invalid")[::2])
    assert "--host" in line
    _one_error_line(*_cli(capsys, "nonsense")[::2])


def test_add_roi_json_problems_are_one_line(capsys: pytest.CaptureFixture[str],
                                            tmp_path: Path) -> None:
    run = str(tmp_path / "run")  # never opened: the file is read first
    bad = tmp_path / "bad.json"
    fifo = tmp_path / "rois.fifo"
    os.mkfifo(fifo)  # would block a reader until someone writes into it
    cases = {
        str(tmp_path / "missing.json"): "does not exist",
        str(tmp_path): "folder",
        str(fifo): "FIFO",
    }
    for path, expected in cases.items():
        line = _one_error_line(*_cli(capsys, "add-roi", run, "--json", path)[::2])
        assert expected in line, line
    for content, expected in ((b'{"rois": [', "not valid JSON"), (b"\xff\xfe", "UTF-8"),
                              (b'{"rois": []}', "non-empty list"), (b'"text"', "non-empty list"),
                              (b"[1, 2]", "non-empty list")):
        bad.write_bytes(content)
        line = _one_error_line(*_cli(capsys, "add-roi", run, "--json", str(bad))[::2])
        assert expected in line, (content, line)


def test_add_roi_json_with_missing_keys(capsys: pytest.CaptureFixture[str], run_dir: Path,
                                        tmp_path: Path) -> None:
    rois = tmp_path / "rois.json"
    rois.write_text('[{"shape": "rect", "kind": "include", "points": [[0, 0], [0.5, 0.5]]}]')
    line = _one_error_line(*_cli(capsys, "add-roi", str(run_dir), "--workspace",
                                 str(tmp_path / "ws"), "--json", str(rois))[::2])
    assert "image_id" in line


def test_discard_and_revert_refusals(capsys: pytest.CaptureFixture[str], run_dir: Path,
                                     tmp_path: Path) -> None:
    ws = ["--workspace", str(tmp_path / "ws")]
    line = _one_error_line(*_cli(capsys, "discard", str(run_dir), *ws)[::2])
    assert "no candidate" in line
    line = _one_error_line(*_cli(capsys, "revert", str(run_dir), *ws, "--to", "1")[::2])
    assert "already the version in use" in line
    line = _one_error_line(*_cli(capsys, "revert", str(run_dir), *ws, "--to",
                                 "99999999999999999999")[::2])
    assert "does not exist" in line


def test_a_retrained_run_never_serves_new_weights_as_version_1(
        capsys: pytest.CaptureFixture[str], run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("feedback*"))
    assert _cli(capsys, "status", str(run))[0] == 0  # workspace created on checkpoint A
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    next(v for v in state["state_dict"].values() if v.is_floating_point()).add_(1.0)
    torch.save(state, ckpt)  # the run is "trained again": checkpoint B
    line = _one_error_line(*_cli(capsys, "status", str(run))[::2])
    assert "another checkpoint" in line and "--fresh" in line
    code, out, err = _cli(capsys, "status", str(run), "--json", "--fresh")
    assert code == 0, err
    assert "old workspace is now" in err and "feedback.stale-" in err
    assert f'"sha256": "{sha256_file(ckpt)}"' in out  # version 1 is the new checkpoint
    assert '"n_rois": 0' in out  # a new workspace
    (aside,) = run.glob("feedback.stale-*")  # the old one, kept whole
    assert (aside / "feedback.sqlite").exists() and (aside / "versions" / "v0001.ckpt").exists()


@pytest.mark.slow
def test_serve_on_another_loopback_address_answers_its_own_url(run_dir: Path,
                                                               tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "mimic-feedback"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mimic_runner.cli.feedback"]
    proc = subprocess.Popen([*cmd, "serve", str(run_dir), "--workspace", str(tmp_path / "ws"),
                             "--host", "127.0.0.2", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    try:
        url = None
        deadline = time.time() + 300
        assert proc.stdout is not None
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            found = re.search(r"open (http://127\.0\.0\.2:\d+/)", line)
            url = found[1] if found else None
        assert url, "serve printed no URL"
        r = httpx.get(url + "api/info", timeout=30)
        assert r.status_code == 200 and r.json()["height"] == 64
        page = httpx.get(url, timeout=30)
        assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
        other = httpx.get(url + "api/info", headers={"host": "evil.example"}, timeout=30)
        assert other.status_code == 400
    finally:
        proc.terminate()
        proc.wait(30)
