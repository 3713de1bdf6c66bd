"""Run a file reader in a child process that must keep making progress, so that a damaged
file can neither hang nor crash the caller.

libhdf5 can loop for ever on some corrupted files (a damaged global heap made h5py's
``attrs.__getitem__`` spin for minutes while holding the GIL), and can crash the interpreter
outright on others. Neither can be interrupted from Python in the same process: no signal
handler runs while the C library holds the GIL. So the reader runs in a child process and
reports each step it reaches; a child that reports nothing for :func:`stall_seconds` is killed,
and the caller gets a one-line :class:`~mimic_runner.errors.DatasetError` naming the step (the
key or attribute being read). A bound on progress rather than on the total time lets a large
but healthy file take as long as it needs.

The child is a ``fork`` of the caller when the caller runs a single Python thread (fast: no
imports); otherwise a fresh interpreter (a fork would copy locks held by other threads).
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

STALL_ENV = "MIMIC_READ_STALL_S"
DEFAULT_STALL_S = 8.0
_START_S = 120.0  # a fresh interpreter's imports, before the first step (a loaded machine)
_HEADER = struct.Struct("!cI")  # frame: kind (b"P" progress, b"R" result), payload length

Progress = Callable[[str], None]


def stall_seconds() -> float:
    """The longest a reader may go without reaching its next step: ``MIMIC_READ_STALL_S`` when
    set to a positive number, else 8 s (every step reads at most about 64 MiB)."""
    try:
        value = float(os.environ.get(STALL_ENV, ""))
    except ValueError:
        return DEFAULT_STALL_S
    return value if 0 < value < float("inf") else DEFAULT_STALL_S


def _send(fd: int, kind: bytes, payload: bytes | memoryview) -> None:
    """One frame; a large payload is written from its own memory, never copied."""
    _write_all(fd, _HEADER.pack(kind, len(payload)))
    _write_all(fd, memoryview(payload).cast("B"))


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class Reporter:
    """What the reader in the child is given as ``progress``: call it with the step about to
    be read; :meth:`array` sends an array to the caller as soon as it is read (so that neither
    process holds the whole dataset twice)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self, step: str) -> None:
        _send(self.fd, b"P", step.encode("utf-8", "replace")[:500])

    def array(self, key: str, arr: np.ndarray) -> None:
        if arr.dtype.hasobject:  # strings: small, pickled
            _send(self.fd, b"O", pickle.dumps((key, arr)))
            return
        arr = np.ascontiguousarray(arr)
        header = {"key": key, "dtype": arr.dtype.str, "shape": list(arr.shape)}
        _send(self.fd, b"H", json.dumps(header).encode())
        _send(self.fd, b"D", memoryview(arr).cast("B") if arr.size else b"")


def _child(fd: int, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
    """Run ``fn`` reporting progress on ``fd``; send its result or its error, never raise."""
    from mimic_runner.errors import UserError

    faulthandler.disable()  # a crash is reported by the parent in one line, not dumped here
    try:
        outcome: tuple = ("ok", fn(*args, progress=Reporter(fd), **kwargs))
    except UserError as exc:
        outcome = ("user", type(exc), str(exc))
    except BaseException as exc:  # everything goes back to the parent, in words
        outcome = ("crash", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
    try:
        payload = pickle.dumps(outcome)
    except Exception as exc:  # an unpicklable result is a bug, said in words
        payload = pickle.dumps(("crash", f"result not picklable ({type(exc).__name__})"))
    _send(fd, b"R", payload)


def spawned_main() -> None:
    """Entry point of a fresh-interpreter child: the caller's ``sys.path`` (one JSON line), then
    the pickled call on stdin; frames on stdout."""
    paths = json.loads(sys.stdin.buffer.readline())
    sys.path[:0] = [p for p in paths if p not in sys.path]
    fn, args, kwargs = pickle.loads(sys.stdin.buffer.read())
    out = sys.stdout.fileno()
    _child(out, fn, args, kwargs)


class _Frames:
    """Reads frames from a pipe; every read must come within ``stall`` seconds (the first
    within ``first``), or TimeoutError."""

    def __init__(self, fd: int, stall: float, first: float) -> None:
        self.fd, self.stall, self.buf = fd, stall, bytearray()
        self.deadline = time.monotonic() + first

    def _wait(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            raise TimeoutError

    def _fill(self) -> bool:
        """Read more bytes into the buffer; False at end of file."""
        self._wait()
        chunk = os.read(self.fd, 1 << 16)
        self.buf += chunk
        return bool(chunk)

    def _into(self, view: memoryview) -> bool:
        """Fill ``view`` (buffered bytes first, then straight from the pipe); False at end of
        file. Data still flowing is progress: each read moves the deadline."""
        done = min(len(self.buf), len(view))
        view[:done] = self.buf[:done]
        del self.buf[:done]
        while done < len(view):
            self._wait()
            got = os.readv(self.fd, [view[done:]])
            if not got:
                return False
            done += got
            self.deadline = time.monotonic() + self.stall
        return True

    def next(self, into: np.ndarray | None = None) -> tuple[bytes, bytes] | None:
        """The next (kind, payload), or None when the child closed the pipe first. With
        ``into``, a data frame's payload goes straight into that array (payload ``b""``)."""
        while len(self.buf) < _HEADER.size:
            if not self._fill():
                return None
        kind, size = _HEADER.unpack_from(self.buf)
        del self.buf[:_HEADER.size]
        if into is not None and kind == b"D":
            if size != into.nbytes or not self._into(memoryview(into).cast("B")):
                return None
            payload = b""
        else:
            out = bytearray(size)
            if not self._into(memoryview(out)):
                return None
            payload = bytes(out)
        self.deadline = time.monotonic() + self.stall
        return kind, payload


def _widen(fd: int) -> None:
    """A 1 MiB pipe buffer where Linux allows it (arrays pass with fewer wake-ups)."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass


class _Child:
    """The child process running the reader: a fork, or a fresh interpreter."""

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.stderr: Any = None  # a fresh interpreter's last words
        if hasattr(os, "fork") and threading.active_count() == 1:
            r, w = os.pipe()
            _widen(w)
            self.pid = os.fork()
            if self.pid == 0:  # the child: never return into the caller's code
                try:
                    os.close(r)
                    if threading.current_thread() is threading.main_thread():
                        signal.signal(signal.SIGINT, signal.SIG_DFL)
                    _child(w, fn, args, kwargs)
                finally:
                    os._exit(0)
            os.close(w)
            self.fd, self.start_s = r, 0.0
            return
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed by reap()
        self.proc = subprocess.Popen(
            [sys.executable, "-c",
             "from mimic_runner.data.watchdog import spawned_main; spawned_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        _widen(self.proc.stdout.fileno())
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(json.dumps(sys.path).encode() + b"\n")
            self.proc.stdin.write(pickle.dumps((fn, args, kwargs)))
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        self.fd, self.start_s = self.proc.stdout.fileno(), _START_S

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def reap(self) -> tuple[int, str]:
        """Close the pipe and wait: the exit status (negative: the signal that ended the child)
        and the last line it wrote to stderr (a fresh interpreter's traceback)."""
        if self.proc is not None:
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            status = self.proc.wait()
        else:
            os.close(self.fd)
            status = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        lines: list[str] = []
        if self.stderr is not None:
            self.stderr.seek(0)
            lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
            self.stderr.close()
        return status, (lines[-1][:200] if lines else "")


def run_bounded(fn: Callable[..., Any], *args: Any, what: str, stall_s: float | None = None,
                arrays: dict[str, np.ndarray] | None = None, **kwargs: Any) -> Any:
    """``fn(*args, progress=..., **kwargs)`` in a child process; its result, or its
    :class:`~mimic_runner.errors.UserError` raised again here.

    ``fn`` must be a module-level function (a fresh interpreter imports it by name), call
    ``progress(step)`` at least every ``stall_s`` seconds (``step`` names what it reads next)
    and return something picklable. Arrays it sends with ``progress.array(key, arr)``
    (:class:`Reporter`) are put into ``arrays``, received straight into their own memory.
    ``what`` starts the error message (the file, as the user named it). A child that stalls
    is killed; one that dies (a crash inside a C library) or fails unexpectedly becomes a
    :class:`~mimic_runner.errors.DatasetError` too.
    """
    from mimic_runner.errors import DatasetError

    stall = stall_s if stall_s is not None else stall_seconds()
    child = _Child(fn, args, kwargs)
    frames = _Frames(child.fd, stall, max(stall, child.start_s))
    step, outcome, killed = "opening it", None, False
    pending: tuple[str, np.ndarray] | None = None  # an array whose bytes come next
    try:
        while True:
            try:
                frame = frames.next(pending[1] if pending else None)
            except TimeoutError:
                child.kill()
                killed = True
                break
            if frame is None:
                break
            kind, payload = frame
            if kind == b"R":
                outcome = pickle.loads(payload)
                break
            if kind == b"P":
                step = payload.decode("utf-8", "replace")
            elif kind == b"H":
                header = json.loads(payload)
                pending = (header["key"], np.empty(header["shape"], np.dtype(header["dtype"])))
            elif kind == b"D" and pending is not None:
                if arrays is not None:
                    arrays[pending[0]] = pending[1]
                pending = None
            elif kind == b"O" and arrays is not None:
                key, value = pickle.loads(payload)
                arrays[key] = value
    except BaseException:
        child.kill()
        raise
    finally:
        status, last_words = child.reap()
    if killed:
        raise DatasetError(f"{what}: {step}: no progress for {stall:g} s, stuck inside the "
                           "HDF5 library; the file is damaged: copy or generate it again "
                           f"(a slow disk: raise {STALL_ENV})")
    if outcome is None:
        how = f"exit status {status}"
        if status < 0:
            try:
                how = f"signal {signal.Signals(-status).name}"
            except ValueError:
                how = f"signal {-status}"
        tail = f": {last_words}" if last_words else ""
        raise DatasetError(f"{what}: {step}: the reader died ({how}{tail}); the file is "
                           "damaged: copy or generate it again")
    if outcome[0] == "ok":
        return outcome[1]
    if outcome[0] == "user":
        raise outcome[1](outcome[2])
    raise DatasetError(f"{what}: {step}: cannot be read ({outcome[1]}); the file is damaged or "
                       "not in the schema (see README)")
