"""The synthetic-data cache: generated once, reused, safe when several jobs start at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mimic_runner.data import synth_cxr
from mimic_runner.data.cache import ensure_synth, synth_cache_path
from mimic_runner.data.schema import read_dataset
from mimic_runner.errors import UserError

PARAMS = {"n": 60, "size": 48, "seed": 3}

# A sweep job: generation is slowed down and counted, to widen the window in which a second
# job could start generating the same file too.
_JOB = """
import sys, time
from pathlib import Path
import mimic_runner.data.synth_cxr as m
from mimic_runner.data.cache import ensure_synth
original = m.generate_with_truth
def slow_counted(**kw):
    with open(sys.argv[2], "a") as f:
        f.write("generated\\n")
    time.sleep(1.0)
    return original(**kw)
m.generate_with_truth = slow_counted
print(ensure_synth("synth_cxr", {"n": 60, "size": 48, "seed": 3}, sys.argv[1]))
"""


def test_generated_once_then_reused(tmp_path: Path) -> None:
    path = ensure_synth("synth_cxr", PARAMS, tmp_path)
    assert path == synth_cache_path("synth_cxr", PARAMS, tmp_path) and path.exists()
    stamp = path.stat().st_mtime_ns
    assert ensure_synth("synth_cxr", PARAMS, tmp_path) == path
    assert path.stat().st_mtime_ns == stamp
    arrays, info = read_dataset(path)
    assert info.n == 60 and arrays["images"].shape[-1] == 48


def test_concurrent_jobs_generate_once(tmp_path: Path) -> None:
    counter = tmp_path / "count.txt"
    jobs = [subprocess.Popen([sys.executable, "-c", _JOB, str(tmp_path / "cache"), str(counter)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    outs = [job.communicate(timeout=300) for job in jobs]
    assert all(job.returncode == 0 for job in jobs), [err for _, err in outs]
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1
    assert counter.read_text().count("generated") == 1
    # Only the finished file is left: no temporary or partial files beside it.
    left = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock"))
    assert left == [Path(paths.pop()).name]
    read_dataset(tmp_path / "cache" / left[0])


def test_key_changes_with_params_and_generator_version(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    base = synth_cache_path("synth_cxr", PARAMS, tmp_path)
    assert synth_cache_path("synth_cxr", {**PARAMS, "seed": 4}, tmp_path) != base
    monkeypatch.setattr(synth_cxr, "GENERATOR_VERSION", synth_cxr.GENERATOR_VERSION + 1)
    assert synth_cache_path("synth_cxr", PARAMS, tmp_path) != base


def test_bad_params_are_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="synth_cxr"):
        ensure_synth("synth_cxr", {**PARAMS, "no_such_knob": 1}, tmp_path)
    with pytest.raises(UserError, match="unknown synthetic dataset"):
        ensure_synth("synth_nope", PARAMS, tmp_path)
    assert not list(tmp_path.glob("*.h5"))
