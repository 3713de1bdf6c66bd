"""Fault injection for the data layer: every malformed dataset file, and every output that
cannot be written, ends in one ``error:`` line (exit 2, no traceback) before any large
allocation or any work; a full disk leaves no file behind."""

from __future__ import annotations

import errno
import functools
import os
import resource
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from cli_helpers import dataset_arrays

from mimic_runner.cli.data import main as data_main
from mimic_runner.data import schema
from mimic_runner.data.cache import ensure_synth
from mimic_runner.data.datamodule import HDF5DataModule
from mimic_runner.data.schema import read_dataset, validate_dataset, write_dataset
from mimic_runner.errors import DatasetError, UserError


def _arrays(n: int = 12, size: int = 8) -> dict:
    return dataset_arrays(n, size, fixated=0.5)


@pytest.fixture
def good(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data.h5", **_arrays())


def _edit(path: Path, edit: Callable[[h5py.File], None]) -> Path:
    with h5py.File(path, "a") as f:
        edit(f)
    return path


def _replace(key: str, **create: object) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        del f[key]
        f.create_dataset(key, **create)

    return edit


def _bad_ids(f: h5py.File) -> None:
    del f["ids"]
    raw = np.array([b"\xff\xfe%d" % i for i in range(12)], dtype=object)
    f.create_dataset("ids", data=raw, dtype=h5py.string_dtype("utf-8"))


def _tiny(side: int) -> Callable[[h5py.File], None]:
    def edit(f: h5py.File) -> None:
        for key in ("images", "gaze", "fixations", "confounder"):
            del f[key]
        f.create_dataset("images", data=np.zeros((12, 1, side, side), np.uint8))

    return edit


def _huge(f: h5py.File) -> None:
    # Declared, never written: the file stays a few kB, reading it would need terabytes.
    for key in ("images", "gaze", "fixations", "confounder"):
        del f[key]
    f.create_dataset("images", shape=(12, 1, 100_000, 100_000), dtype=np.uint8,
                     chunks=(1, 1, 256, 256))
    f.create_dataset("gaze", shape=(12, 100_000, 100_000), dtype=np.float32,
                     chunks=(1, 256, 256))


def _to_dir(path: Path) -> Path:
    path.unlink()
    path.mkdir()
    return path


def _corrupt_chunk(path: Path, key: str, chunk: int = 0) -> Path:
    """Overwrite one compressed chunk of ``key`` with garbage (h5py then raises OSError)."""
    with h5py.File(path, "r") as f:
        info = f[key].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff\x00garbage" * (info.size // 9 + 1))
    return path


# name -> (make the bad file from a good one, text the one error line must hold)
BAD_FILES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "schema_version not an integer": (
        lambda p: _edit(p, lambda f: f.attrs.__setitem__("schema_version", "abc")),
        "attribute 'schema_version' is 'abc' (str); expected the integer 1"),
    "schema_version a float": (
        lambda p: _edit(p, lambda f: f.attrs.__setitem__("schema_version", 1.5)),
        "attribute 'schema_version' is 1.5 (float)"),
    "ids not UTF-8": (lambda p: _edit(p, _bad_ids),
                      "key 'ids': row 0 is not valid UTF-8"),
    "class_names a plain string": (
        lambda p: _edit(p, lambda f: f.attrs.__setitem__("class_names", "NormalCHFpneumonia")),
        "attribute 'class_names' is the single string 'NormalCHFpneumonia'; store one string "
        "per class"),
    "class_names not strings": (
        lambda p: _edit(p, lambda f: f.attrs.__setitem__("class_names", np.array([1, 2, 3]))),
        "expected a list of strings"),
    "corrupted gaze chunk": (lambda p: _corrupt_chunk(p, "gaze"),
                             "key 'gaze': the stored data cannot be read"),
    "1x1 images": (lambda p: _edit(p, _tiny(1)), "images are 1x1 px; mimic-runner needs at "
                                                 "least 8x8"),
    "7x7 images": (lambda p: _edit(p, _tiny(7)), "images are 7x7 px"),
    "absurd declared size": (lambda p: _edit(p, _huge),
                             "the file declares 12 images of 1x100000x100000 px"),
    "directory": (lambda p: _to_dir(p), "is a directory, not a dataset file"),
    "map is a group": (lambda p: _edit(p, lambda f: (f.__delitem__("confounder"),
                                                     f.create_group("confounder"))),
                       "key 'confounder': is a group"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_is_one_clear_error_before_large_allocations(good: Path, case: str) -> None:
    make, message = BAD_FILES[case]
    bad = make(good)
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as exc:
            read_dataset(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    text = str(exc.value)
    assert message in text and str(bad) in text and "\n" not in text
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB allocated before refusing"


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_info_cli_prints_one_line(good: Path, case: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = BAD_FILES[case][0](good)
    with pytest.raises(SystemExit) as exc:
        data_main(["info", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert BAD_FILES[case][1] in err


def test_a_damaged_map_that_validation_skips_is_caught_when_read(good: Path,
                                                                  capsys: pytest.CaptureFixture[
                                                                      str]) -> None:
    """Quick validation reads only gaze; the loader and `mimic-data info` read everything."""
    _corrupt_chunk(good, "fixations", chunk=3)
    validate_dataset(good)
    with pytest.raises(DatasetError, match="key 'fixations': the stored data cannot be read"):
        read_dataset(good)
    dm = HDF5DataModule(name="folder", path=str(good))
    with pytest.raises(DatasetError, match="key 'fixations'"):
        dm.setup()
    with pytest.raises(SystemExit):
        data_main(["info", str(good)])
    assert "key 'fixations': the stored data cannot be read" in capsys.readouterr().err


def test_memory_check_counts_every_array(good: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mimic_runner.data.validate.available_memory", lambda: 1000)
    with pytest.raises(DatasetError, match=r"needs .* of memory but only .* is available"):
        validate_dataset(good)
    monkeypatch.setattr("mimic_runner.data.validate.available_memory", lambda: None)  # unknown
    assert validate_dataset(good).n == 12


def test_available_memory_is_positive_or_unknown() -> None:
    free = schema.available_memory()
    assert free is None or free > 0


def test_eight_pixels_are_enough(tmp_path: Path) -> None:
    assert validate_dataset(write_dataset(tmp_path / "ok.h5", **_arrays(size=8))).height == 8


def test_datamodule_refuses_bad_sizes(good: Path) -> None:
    for kwargs, message in (({"batch_size": 0}, "data.batch_size=0"),
                            ({"eval_batch_size": -1}, "data.eval_batch_size=-1"),
                            ({"image_size": 0}, "data.image_size=0"),
                            ({"image_size": 4}, "at least 8 px"),
                            ({"num_workers": -2}, "data.num_workers=-2")):
        with pytest.raises(UserError, match=message):
            HDF5DataModule(name="folder", path=str(good), **kwargs)


# -- outputs ------------------------------------------------------------------------------------


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    def enospc(path: Path, data: bytes) -> None:
        with open(path, "wb") as fh:  # a partial file first, as a real full disk leaves
            fh.write(data[: len(data) // 3])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    # The dataset writer puts its in-memory file image into the temporary file with this call.
    monkeypatch.setattr(Path, "write_bytes", enospc)
    out = tmp_path / "cxr.h5"
    with pytest.raises(SystemExit) as exc:
        data_main(["synth-cxr", "--out", str(out), "--n", "30", "--size", "48"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {out}: cannot write the dataset (no space left on the device); "
                   "nothing was written. Free some space or choose another output folder")
    assert not out.exists() and _no_temp_files(tmp_path)
    # The same for the generated-data cache of mimic-run.
    with pytest.raises(UserError, match="no space left on the device"):
        ensure_synth("synth_cxr", {"n": 30, "size": 48}, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.h5")) and _no_temp_files(tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*.lock"))  # no empty lock file either


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_FSIZE semantics are Linux's")
def test_real_write_failure_does_not_crash_the_interpreter(tmp_path: Path) -> None:
    """A file-size limit makes the kernel refuse writes (EFBIG) as a full disk would (ENOSPC):
    HDF5 writing straight to disk used to end in a segmentation fault after the traceback."""
    out = tmp_path / "cxr.h5"
    limit = 200_000  # bytes: far less than the file

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    exe = Path(sys.executable).parent / "mimic-data"
    proc = subprocess.run([str(exe), "synth-cxr", "--out", str(out), "--n", "60", "--size", "64"],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert err.startswith(f"error: {out}: cannot write the dataset") and len(err.splitlines()) == 1
    assert not out.exists() and _no_temp_files(tmp_path)


def test_unwritable_outputs_are_refused_before_generating(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str],
                                                          ) -> None:
    from mimic_runner.data import synth_cxr

    @functools.wraps(synth_cxr.generate)  # keeps the signature the CLI reads its knobs from
    def never(*_: object, **__: object) -> None:
        raise AssertionError("generated although the output cannot be written")

    monkeypatch.setattr(synth_cxr, "generate", never)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases = [(blocker / "sub" / "x.h5",
              f"cannot create the folder {blocker / 'sub'}: {blocker} is a file"),
             (tmp_path, "output is a directory")]
    if os.geteuid() != 0:  # root writes anywhere, so a read-only folder only stops others
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        cases.append((ro / "x.h5", f"the folder {ro} is not writable"))
    for out, message in cases:
        with pytest.raises(SystemExit) as exc:
            data_main(["synth-cxr", "--out", str(out), "--n", "30"])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1 and err.startswith("error: ")


def test_unwritable_cache_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"set paths\.cache_dir to a writable folder"):
        ensure_synth("synth_cxr", {"n": 30, "size": 48}, blocker / "cache")


def test_prepare_refuses_an_unwritable_output(tmp_path: Path) -> None:
    from mimic_runner.data.prepare._common import check_output

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        check_output(blocker / "out.h5", overwrite=False)


# -- the same through mimic-run (one process per case: a few seconds each) --------------------


@pytest.mark.parametrize("case", ["directory", "absurd declared size"])
def test_mimic_run_prints_one_line(good: Path, case: str, cli) -> None:  # type: ignore[no-untyped-def]
    bad = BAD_FILES[case][0](good)
    proc = cli("mimic-run", "data=folder", f"data.path={bad}", "trainer=smoke")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and BAD_FILES[case][1] in errors[0]
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- non-regular files


def test_require_regular_file_refuses_what_is_not_a_file(tmp_path: Path) -> None:
    import socket

    from mimic_runner.io import require_regular_file

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path, kind in [(fifo, "a FIFO"), (tmp_path, "a folder"), (sock_path, "a socket"),
                           (tmp_path / "missing.h5", "does not exist"),
                           (tmp_path / ("x" * 300 + ".h5"), "too long")]:
            with pytest.raises(UserError, match=kind) as exc:
                require_regular_file(path, "data.path")
            assert str(exc.value).startswith("data.path: ") and "\n" not in str(exc.value)
    finally:
        sock.close()
    regular = tmp_path / "ok.h5"
    regular.write_bytes(b"x")
    link = tmp_path / "link.h5"
    link.symlink_to(regular)
    assert require_regular_file(link, "data.path") == link


def test_overwrite_never_replaces_a_fifo(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's `--out /dev/null --overwrite` as root, on a FIFO made here (never the real
    /dev/null): refused in one line before any work, the FIFO still a FIFO."""
    import stat

    from mimic_runner.io import atomic_path, write_json

    fifo = tmp_path / "out.h5"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as exc:
        data_main(["synth-cxr", "--out", str(fifo), "--n", "30", "--overwrite"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "FIFO" in err and len(err.splitlines()) == 1
    with pytest.raises(UserError, match="FIFO"):
        write_json(fifo, {"a": 1})
    with pytest.raises(UserError, match="FIFO"), atomic_path(fifo, overwrite=True):
        pass
    link = tmp_path / "link.json"  # a link to a FIFO is judged by what it points to
    link.symlink_to(fifo)
    with pytest.raises(UserError, match="FIFO"):
        write_json(link, {"a": 1})
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.json", "out.h5"]


# --------------------------------------------------------------------------- bounded reading


@pytest.mark.parametrize("spawn", [False, True], ids=["fork", "fresh-interpreter"])
def test_watchdog_turns_a_stuck_or_dying_reader_into_one_line(spawn: bool) -> None:
    """Forked when the caller runs one thread; a fresh interpreter when it runs several."""
    from watchdog_probes import answer, crash, refuse, stuck

    from mimic_runner.data.watchdog import run_bounded

    def call(fn: Callable[..., object], *args: object) -> object:
        if not spawn:
            return run_bounded(fn, *args, what="f.h5", stall_s=1)
        box: dict[str, object] = {}

        def target() -> None:
            try:
                box["value"] = run_bounded(fn, *args, what="f.h5", stall_s=1)
            except BaseException as exc:
                box["error"] = exc

        thread = threading.Thread(target=target)
        thread.start()
        thread.join(120)
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]

    assert call(answer, 21) == 42
    for fn, message in ((stuck, "f.h5: key 'x': no progress for 1 s"),
                        (crash, "f.h5: key 'y': the reader died (signal SIGSEGV"),
                        (refuse, "f.h5: key 'z': refused in words")):
        start = time.monotonic()
        with pytest.raises(DatasetError) as exc:
            call(fn)
        assert str(exc.value).startswith(message) and "\n" not in str(exc.value)
        assert time.monotonic() - start < 60


def test_a_damaged_heap_that_makes_libhdf5_loop_is_refused(good: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str],
                                                           ) -> None:
    """The issue's hang: a global-heap object whose size was changed (here the class name
    'pneumonia', 9 bytes, said to be 123) kept h5py's attrs.__getitem__ busy for minutes."""
    monkeypatch.setenv("MIMIC_READ_STALL_S", "2")
    data = bytearray(good.read_bytes())
    at = data.find(b"pneumonia")
    assert at > 8 and data[at - 8] == 9  # the object's size field, just before its bytes
    data[at - 8] = 123
    good.write_bytes(bytes(data))
    for read in (lambda: validate_dataset(good, deep=True), lambda: read_dataset(good),
                 lambda: HDF5DataModule(name="folder", path=str(good)).setup()):
        start = time.monotonic()
        with pytest.raises(DatasetError, match=r"attribute 'class_names'") as exc:
            read()
        assert str(good) in str(exc.value) and "\n" not in str(exc.value)
        assert time.monotonic() - start < 30
    with pytest.raises(SystemExit) as stop:
        data_main(["info", str(good)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "class_names" in err


def test_links_and_special_files_are_refused_before_reading(good: Path, tmp_path: Path) -> None:
    """Soft and external links in place of a key are refused, not followed (an external link
    to a FIFO would block); a FIFO, a device or a too-long name as the file is refused before
    it is opened."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cases = {
        "soft link": (lambda f: (f.__delitem__("gaze"),
                                 f.__setitem__("gaze", h5py.SoftLink("/nowhere"))),
                      "key 'gaze': is a soft link to '/nowhere'"),
        "soft link to a key": (lambda f: (f.__delitem__("labels"),
                                          f.__setitem__("labels", h5py.SoftLink("/split"))),
                               "key 'labels': is a soft link to '/split'"),
        "external link to a FIFO": (
            lambda f: (f.__delitem__("images"),
                       f.__setitem__("images", h5py.ExternalLink(str(fifo), "/images"))),
            "key 'images': is an external link to '/images' in"),
    }
    for name, (edit, message) in cases.items():
        bad = tmp_path / f"{name.replace(' ', '_')}.h5"
        bad.write_bytes(good.read_bytes())
        _edit(bad, edit)
        with pytest.raises(DatasetError, match=message):
            validate_dataset(bad, deep=True)
        with pytest.raises(DatasetError, match=message):
            read_dataset(bad)
    long_name = tmp_path / ("x" * 300 + ".h5")
    for path, message in ((fifo, "is a FIFO"), (long_name, "the path is too long"),
                          (Path("/dev/zero"), "is a character device")):
        with pytest.raises(DatasetError, match=message):
            validate_dataset(path)
        with pytest.raises(DatasetError, match=message):
            HDF5DataModule(name="folder", path=str(path)).setup()


def test_a_fifo_as_a_source_csv_is_refused(tmp_path: Path) -> None:
    from mimic_runner.data.prepare._common import csv_rows

    fifo = tmp_path / "labels.csv"
    os.mkfifo(fifo)
    with pytest.raises(DatasetError, match=r"labels\.csv: is a FIFO \(named pipe\), not a "
                                           r"regular file"):
        list(csv_rows(fifo, ["path"]))
    with pytest.raises(DatasetError, match=r"File name too long"):
        list(csv_rows(tmp_path / ("x" * 300 + ".csv"), ["path"]))


def test_over_long_names_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 300-character component (OSError: File name too long) in --out, --root or the file
    of `mimic-data info`: one line each, nothing made."""
    long = "x" * 300
    for argv in (["synth-cxr", "--n", "30", "--out", str(tmp_path / f"{long}.h5")],
                 ["synth-cxr", "--n", "30", "--out", str(tmp_path / "new" / long / "a.h5")],
                 ["prepare", "folder", "--root", str(tmp_path / long), "--out",
                  str(tmp_path / "a.h5")],
                 ["info", str(tmp_path / f"{long}.h5")]):
        with pytest.raises(SystemExit) as exc:
            data_main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "too long" in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
