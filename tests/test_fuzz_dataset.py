"""Property test of the dataset reader (issue 23): mutated HDF5 files — structure, dtypes,
shapes, attributes, soft and external links, flipped bytes, truncation — built from a small
valid file, each read by ``validate_dataset(deep=True)`` and by the data module, a subset also
by ``mimic-data info`` in a subprocess. The property: a clean refusal (one
:class:`~mimic_runner.errors.DatasetError` line naming the file; exit 2 and a last line
``error: ...`` at the command line) or a clean acceptance; never another exception, a
traceback, a crash or more than 20 s.

``MIMIC_FUZZ_CASES`` sets the number of cases (default: a CI-sized run); ``make fuzz`` runs
10,000. Each run writes its counts to ``test-artifacts/fuzz_dataset.json`` and prints them
(``-s``); a failing case's file is kept under ``test-artifacts/fuzz-dataset-failures/``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import dataset_arrays
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from mimic_runner.cli.data import render_info
from mimic_runner.data.datamodule import HDF5DataModule
from mimic_runner.data.schema import validate_dataset, write_dataset
from mimic_runner.errors import UserError

CASES = int(os.environ.get("MIMIC_FUZZ_CASES", "60"))
CLI_EVERY = 12  # every CLI_EVERY-th case also goes through `mimic-data info` in a subprocess
CASE_LIMIT_S = 20.0
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
KEYS = ("images", "labels", "split", "ids", "gaze", "fixations", "confounder", "finding",
        "extra")
ATTRS = ("class_names", "schema_version", "source", "aligned", "extra")
DTYPES = ("uint8", "int8", "int64", "uint64", "float16", "float32", "float64", "bool",
          "complex64", "S4", "vlen-str", "vlen-bytes", "compound", "enum", "array")
SIGNATURES = (b"HDF", b"TREE", b"HEAP", b"SNOD", b"GCOL", b"OHDR", b"FRHP", b"BTHD")


# --------------------------------------------------------------------------- mutations


def _typed(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> dict:
    """``create_dataset`` keyword arguments for an array of this dtype name and shape."""
    n = int(np.prod(shape, dtype=np.int64))
    if dtype == "vlen-str":
        data = np.array([f"s{i}" for i in range(n)], dtype=object).reshape(shape)
        return {"data": data, "dtype": h5py.string_dtype("utf-8")}
    if dtype == "vlen-bytes":
        data = np.array([bytes([0xFF, i % 256]) for i in range(n)], dtype=object).reshape(shape)
        return {"data": data, "dtype": h5py.string_dtype("ascii")}
    if dtype == "compound":
        return {"data": np.zeros(shape, dtype=[("a", "i4"), ("b", "f8")])}
    if dtype == "enum":
        return {"data": np.zeros(shape, np.uint8),
                "dtype": h5py.enum_dtype({"A": 0, "B": 1}, basetype="u1")}
    if dtype == "array":
        return {"data": np.zeros(shape, dtype="(2,)f4")}
    data = rng.integers(0, 3, n).reshape(shape).astype(dtype)
    return {"data": data}


def _recreate(f: h5py.File, key: str, **create: object) -> None:
    if key in f or f.get(key, getlink=True) is not None:
        del f[key]
    f.create_dataset(key, **create)


def _attr_value(kind: str) -> object:
    values: dict[str, object] = {
        "str": "NormalCHF", "int": 1, "int2": 2, "float": 1.0, "bool": True,
        "neg": -1, "huge": 2**62, "names1": np.array(["A"], dtype=object),
        "names_dup": np.array(["A", "A"], dtype=object),
        "names_int": np.array([1, 2, 3]), "names_2d": np.array([["A", "B"], ["C", "D"]],
                                                               dtype=object),
        "bytes_bad": np.array([b"\xff\xfe", b"ok"]), "empty": h5py.Empty("f"),
        "empty_list": np.array([], dtype=np.float64), "names_many": np.array(
            [f"c{i}" for i in range(300)], dtype=object),
        "nan": float("nan"), "compound": np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]),
        "markup": np.array(["[/]", "[bold", "a\nb\x1b[31m"], dtype=object),
        "markup_str": "[/bold]\n[link=x]",
    }
    return values[kind]


ATTR_KINDS = ("delete", "str", "int", "int2", "float", "bool", "neg", "huge", "names1",
              "names_dup", "names_int", "names_2d", "bytes_bad", "empty", "empty_list",
              "names_many", "nan", "compound", "markup", "markup_str")


def _apply_structural(f: h5py.File, op: tuple, side: Path) -> None:
    """Apply one structural mutation (an h5py edit) to an open file."""
    kind, key = op[0], op[1]
    rng = np.random.default_rng(len(op))
    if kind == "delete":
        if f.get(key, getlink=True) is not None:
            del f[key]
    elif kind == "dtype":
        old = f.get(key)
        shape = old.shape if isinstance(old, h5py.Dataset) else (12,)
        _recreate(f, key, **_typed(op[2], shape, rng))
    elif kind == "shape":
        old = f.get(key)
        dtype = old.dtype if isinstance(old, h5py.Dataset) and old.dtype.kind != "O" else "u1"
        _recreate(f, key, data=np.zeros(op[2], dtype=dtype))
    elif kind == "empty":
        _recreate(f, key, data=h5py.Empty("u1"))
    elif kind == "group":
        if f.get(key, getlink=True) is not None:
            del f[key]
        f.create_group(key).create_dataset("inner", data=np.zeros(3))
    elif kind == "softlink":
        if f.get(key, getlink=True) is not None:
            del f[key]
        f[key] = h5py.SoftLink(op[2])
    elif kind == "extlink":
        if f.get(key, getlink=True) is not None:
            del f[key]
        target = {"missing": side / "missing.h5", "junk": side / "junk.txt",
                  "fifo": side / "fifo", "base": side / "base.h5"}[op[2]]
        f[key] = h5py.ExternalLink(str(target), "/images")
    elif kind == "values":
        _set_values(f, key, op[2])
    elif kind == "filter":
        old = f.get(key)
        if isinstance(old, h5py.Dataset) and old.dtype.kind != "O" and old.ndim >= 1:
            data = old[()]
            _recreate(f, key, data=data, chunks=(1, *data.shape[1:]), **op[2])
    elif kind == "attr":
        value = op[2]
        if value == "delete":
            if key in f.attrs:
                del f.attrs[key]
        else:
            f.attrs[key] = _attr_value(value)


def _set_values(f: h5py.File, key: str, how: str) -> None:
    """Bad contents with the right dtype and shape (NaN gaze, labels out of range, ...)."""
    ds = f.get(key)
    if not isinstance(ds, h5py.Dataset) or ds.ndim == 0 or ds.shape[0] == 0:
        return
    data = ds[()]
    if data.dtype.kind == "O":
        data = data.astype(object)
        data[-1] = data[0]  # duplicate ids
    elif data.dtype.kind == "f":
        data.flat[0] = {"nan": np.nan, "inf": np.inf, "neg": -1.0, "big": 1e38}.get(how, 0.0)
    elif data.dtype.kind in "iu":
        data.flat[0] = {"nan": 0, "inf": np.iinfo(data.dtype).max, "neg": (
            -1 if data.dtype.kind == "i" else 0), "big": 3}.get(how, 0)
    else:
        data[...] = how == "big"
    create: dict = {"data": data}
    if data.dtype.kind == "O":
        create["dtype"] = h5py.string_dtype("utf-8")
    _recreate(f, key, **create)


def _apply_bytes(data: bytearray, op: tuple, anchors: list[int]) -> bytearray:
    """Apply one byte-level mutation; positions are an anchor (a signature of an HDF5
    structure in the valid file) plus an offset, or a share of the file."""
    kind = op[0]
    if not data:
        return data
    if kind == "truncate":
        return data[: len(data) * op[1] // 1000]
    if kind == "append":
        return data + bytes(op[1])
    pos = (anchors[op[1] % len(anchors)] + op[2]) % len(data)
    if kind == "flip":
        data[pos] ^= 1 << op[3]
    elif kind == "set":
        data[pos] = op[3]
    elif kind == "zero":
        data[pos:pos + op[3]] = bytes(len(data[pos:pos + op[3]]))
    return data


# --------------------------------------------------------------------------- strategies

_keys = st.sampled_from(KEYS)
_shapes = st.lists(st.integers(0, 13), min_size=0, max_size=5).map(tuple).filter(
    lambda s: int(np.prod(s, dtype=np.int64)) <= 20_000)
STRUCTURAL = st.one_of(
    st.tuples(st.just("delete"), _keys),
    st.tuples(st.just("dtype"), _keys, st.sampled_from(DTYPES)),
    st.tuples(st.just("shape"), _keys, _shapes),
    st.tuples(st.just("empty"), _keys),
    st.tuples(st.just("group"), _keys),
    st.tuples(st.just("softlink"), _keys,
              st.sampled_from(["/nowhere", "/images", "/labels", "/grp/x", "gaze"])),
    st.tuples(st.just("extlink"), _keys, st.sampled_from(["missing", "junk", "fifo", "base"])),
    st.tuples(st.just("values"), _keys, st.sampled_from(["nan", "inf", "neg", "big", "dup"])),
    st.tuples(st.just("filter"), _keys, st.sampled_from(
        [{"compression": "gzip"}, {"compression": "lzf"}, {"shuffle": True},
         {"fletcher32": True}, {"scaleoffset": 0}])),
    st.tuples(st.just("attr"), st.sampled_from(ATTRS), st.sampled_from(ATTR_KINDS)),
)
BYTES = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 63), st.integers(0, 400), st.integers(0, 7)),
    st.tuples(st.just("set"), st.integers(0, 63), st.integers(0, 400), st.integers(0, 255)),
    st.tuples(st.just("zero"), st.integers(0, 63), st.integers(0, 400), st.integers(1, 64)),
    st.tuples(st.just("truncate"), st.integers(0, 999)),
    st.tuples(st.just("append"), st.integers(1, 4096)),
)


@dataclasses.dataclass
class Plan:
    structural: list[tuple]
    byte_ops: list[tuple]


PLANS = st.builds(Plan, st.lists(STRUCTURAL, max_size=3), st.lists(BYTES, max_size=4)).filter(
    lambda p: p.structural or p.byte_ops)


# --------------------------------------------------------------------------- the property


@dataclasses.dataclass
class Tally:
    """What the cases did: tried, refused, accepted, failed (with the first failures)."""

    tried: int = 0
    refused: int = 0
    accepted: int = 0
    failed: int = 0
    cli_runs: int = 0
    slowest_s: float = 0.0
    failures: list[dict] = dataclasses.field(default_factory=list)

    def summary(self) -> dict:
        out = dataclasses.asdict(self)
        out["failures"] = self.failures[:20]
        return out


def _one_line_refusal(exc: BaseException, path: Path) -> str | None:
    """None for a clean refusal, else what is wrong with it."""
    if not isinstance(exc, UserError):
        return f"{type(exc).__name__} instead of a DatasetError: {exc!r:.300}"
    text = str(exc)
    if "\n" in text or str(path) not in text:
        return f"refusal not one line naming the file: {text!r:.300}"
    return None


def _read_everything(path: Path) -> tuple[str, str | None]:
    """('accepted' | 'refused', problem or None) after the deep check and the data module."""
    outcome = "accepted"
    try:
        info = validate_dataset(path, require_splits=(), deep=True)
    except Exception as exc:
        problem = _one_line_refusal(exc, path)
        if problem:
            return "failed", f"validate_dataset: {problem}"
        outcome, info = "refused", None
    if info is not None:
        try:  # what `mimic-data info` prints of it (names from the file are not markup)
            render_info(info, Console(file=io.StringIO(), width=120))
        except Exception as exc:
            return "failed", f"mimic-data info's summary: {type(exc).__name__}: {exc}"
    dm = HDF5DataModule(name="fuzz", path=str(path))
    try:
        dm.setup()
    except Exception as exc:
        problem = _one_line_refusal(exc, path)
        if problem:
            return "failed", f"data module: {problem}"
        if info is not None and all(info.split_counts.values()):
            return "failed", f"validated, then the data module refused: {exc}"
        return "refused", None
    if info is None:
        return "failed", "the data module read a file that validation refused"
    return outcome, None


def _info_cli(path: Path) -> str | None:
    """None when `mimic-data info FILE` exits 0, or 2 with a last line `error: ...`."""
    cmd = [sys.executable, "-c", "from mimic_runner.cli.data import main; main()", "info",
           str(path)]
    env = {k: v for k, v in os.environ.items() if k != "MIMIC_READ_STALL_S"}
    env["COLUMNS"] = "200"
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CASE_LIMIT_S, env=env)
    except subprocess.TimeoutExpired:
        return f"mimic-data info ran over {CASE_LIMIT_S:g} s"
    err = proc.stderr.strip().splitlines()
    if proc.returncode == 0 and "Traceback" not in proc.stderr:
        return None
    if proc.returncode == 2 and err and err[-1].startswith("error: ") and len(err) == 1:
        return None
    return f"mimic-data info: exit {proc.returncode}, stderr {proc.stderr[-400:]!r}"


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The valid file and the targets of external links (missing, not HDF5, a FIFO)."""
    folder = tmp_path_factory.mktemp("fuzz-side")
    write_dataset(folder / "base.h5", **dataset_arrays(12, 8, fixated=0.5))
    (folder / "junk.txt").write_text("not an HDF5 file\n")
    os.mkfifo(folder / "fifo")
    return folder


def test_mutated_datasets_are_refused_or_accepted_cleanly(
        side: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MIMIC_READ_STALL_S", "3")  # a stuck case costs 3 s in this process
    base = (side / "base.h5").read_bytes()
    anchors = sorted({0, *[i for sig in SIGNATURES for i in range(len(base))
                            if base.startswith(sig, i)]})
    tally = Tally()
    failures = ARTIFACTS / "fuzz-dataset-failures"

    def run_case(plan: Plan) -> None:
        tally.tried += 1
        path = tmp_path / "case.h5"
        path.write_bytes(base)
        if plan.structural:
            with h5py.File(path, "a") as f:
                for op in plan.structural:  # one h5py cannot make leaves the file as it was
                    with contextlib.suppress(TypeError, ValueError, KeyError, OSError,
                                             RuntimeError):
                        _apply_structural(f, op, side)
        data = bytearray(path.read_bytes())
        for op in plan.byte_ops:
            data = _apply_bytes(data, op, anchors)
        path.write_bytes(bytes(data))
        start = time.monotonic()
        outcome, problem = _read_everything(path)
        took = time.monotonic() - start  # the reader and the data module, in this process
        if problem is None and took > CASE_LIMIT_S:
            problem = f"reading took {took:.1f} s"
        if problem is None and tally.tried % CLI_EVERY == 1:
            tally.cli_runs += 1
            start = time.monotonic()
            problem = _info_cli(path)  # its own limit of CASE_LIMIT_S
            took = max(took, time.monotonic() - start)
        tally.slowest_s = max(tally.slowest_s, took)
        if problem is not None:
            tally.failed += 1
            failures.mkdir(parents=True, exist_ok=True)
            kept = failures / f"case-{tally.tried}.h5"
            shutil.copyfile(path, kept)
            tally.failures.append({"plan": repr(plan), "problem": problem, "file": str(kept)})
        elif outcome == "refused":
            tally.refused += 1
        else:
            tally.accepted += 1

    one: Callable[[], None] = settings(
        max_examples=CASES, deadline=None, database=None, print_blob=True,
        suppress_health_check=list(HealthCheck))(given(PLANS)(run_case))
    one()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "fuzz_dataset.json").write_text(json.dumps(tally.summary(), indent=2) + "\n")
    with capsys.disabled():
        print(f"\nfuzz dataset: {tally.tried} cases tried, {tally.refused} refused, "
              f"{tally.accepted} accepted, {tally.failed} failed ({tally.cli_runs} through "
              f"mimic-data info; slowest {tally.slowest_s:.1f} s)")
    assert tally.tried >= min(CASES, 10)
    assert not tally.failures, json.dumps(tally.failures[:5], indent=2)
