"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a missing file, a bad HDF5 key, an unknown
model). The CLIs print its message as one line and exit non-zero, without a traceback; anything
else is a bug and keeps its traceback — except a full disk, which no code can fix and which
:func:`exit_on_user_error` reports in one line too.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

# errno of a write refused for lack of room, in words.
_NO_ROOM = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for the file system or the process's file-size limit",
}


class UserError(Exception):
    """An error caused by user input; its message names the thing and what to do."""


class DatasetError(UserError):
    """A dataset file (or a source tree being prepared) is missing or malformed."""


class RunInUse(UserError):
    """Another process holds the run folder's lock (two runs would overwrite each other)."""


def no_room(exc: BaseException) -> str | None:
    """What went wrong, in words, when ``exc`` is a write refused for lack of room (full disk,
    quota, file-size limit); None for any other error."""
    if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
        return _NO_ROOM[exc.errno]
    return None


def no_room_message(exc: OSError, where: object = None, atomic: bool = True) -> str:
    """One line for a full disk: the file (or ``where`` when the error names none), the cause
    and what to do. ``atomic``: the write went through a temporary file (ours all do), so
    nothing partial is left; say so."""
    name = where if where is not None else (exc.filename or "an output file")
    left = "no partial file was left" if atomic else "a file being written may be incomplete"
    return (f"{name}: cannot write ({no_room(exc) or exc.strerror}); {left}. Free some space "
            "or choose another output folder")


def exit_on_user_error(func: F) -> F:
    """Decorate a CLI entry point: a :class:`UserError` (or a full disk) becomes one line on
    stderr and exit 2; Ctrl+C exits 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except OSError as exc:
            if no_room(exc) is None:
                raise
            print(f"error: {no_room_message(exc)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
