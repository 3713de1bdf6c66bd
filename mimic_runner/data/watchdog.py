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


def _send(fd: int, kind: bytes, payload: bytes) -> None:
    data = _HEADER.pack(kind, len(payload)) + payload
    while data:
        data = data[os.write(fd, data):]


def _child(fd: int, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
    """Run ``fn`` reporting progress on ``fd``; send its result or its error, never raise."""
    from mimic_runner.errors import UserError

    faulthandler.disable()  # a crash is reported by the parent in one line, not dumped here

    def progress(step: str) -> None:
        _send(fd, b"P", step.encode("utf-8", "replace")[:500])

    try:
        outcome: tuple = ("ok", fn(*args, progress=progress, **kwargs))
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
    """Reads frames from a pipe with a deadline per frame."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buf = fd, b""

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False at end of file, TimeoutError past ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            raise TimeoutError
        chunk = os.read(self.fd, 1 << 16)
        self.buf += chunk
        return bool(chunk)

    def next(self, deadline: float) -> tuple[bytes, bytes] | None:
        """The next (kind, payload), or None when the child closed the pipe first."""
        while len(self.buf) < _HEADER.size:
            if not self._fill(deadline):
                return None
        kind, size = _HEADER.unpack_from(self.buf)
        while len(self.buf) < _HEADER.size + size:
            # a result is one frame: allow it the time to arrive once it has begun
            if not self._fill(max(deadline, time.monotonic() + _START_S)):
                return None
        payload = self.buf[_HEADER.size:_HEADER.size + size]
        self.buf = self.buf[_HEADER.size + size:]
        return kind, payload


class _Child:
    """The child process running the reader: a fork, or a fresh interpreter."""

    def __init__(self, fn: Callable[..., Any], args: tuple, kwargs: dict[str, Any]) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.stderr: Any = None  # a fresh interpreter's last words
        if hasattr(os, "fork") and threading.active_count() == 1:
            r, w = os.pipe()
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
                **kwargs: Any) -> Any:
    """``fn(*args, progress=..., **kwargs)`` in a child process; its result, or its
    :class:`~mimic_runner.errors.UserError` raised again here.

    ``fn`` must be a module-level function (a fresh interpreter imports it by name), call
    ``progress(step)`` at least every ``stall_s`` seconds (``step`` names what it reads next)
    and return something picklable. ``what`` starts the error message (the file, as the user
    named it). A child that stalls is killed; one that dies (a crash inside a C library) or
    fails unexpectedly becomes a :class:`~mimic_runner.errors.DatasetError` too.
    """
    from mimic_runner.errors import DatasetError

    stall = stall_s if stall_s is not None else stall_seconds()
    child = _Child(fn, args, kwargs)
    frames = _Frames(child.fd)
    step, outcome, killed = "opening it", None, False
    deadline = time.monotonic() + max(stall, child.start_s)
    try:
        while True:
            try:
                frame = frames.next(deadline)
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
            step = payload.decode("utf-8", "replace")
            deadline = time.monotonic() + stall
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
        how = (f"signal {signal.Signals(-status).name}" if status < 0
               else f"exit status {status}")
        tail = f": {last_words}" if last_words else ""
        raise DatasetError(f"{what}: {step}: the reader died ({how}{tail}); the file is "
                           "damaged: copy or generate it again")
    if outcome[0] == "ok":
        return outcome[1]
    if outcome[0] == "user":
        raise outcome[1](outcome[2])
    raise DatasetError(f"{what}: {step}: cannot be read ({outcome[1]}); the file is damaged or "
                       "not in the schema (see README)")
