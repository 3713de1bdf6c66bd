"""User-facing errors.

A :class:`UserError` is a mistake the user can fix (a missing file, a bad HDF5 key, an unknown
model). The CLIs print its message as one line and exit non-zero, without a traceback; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class UserError(Exception):
    """An error caused by user input; its message names the thing and what to do."""


class DatasetError(UserError):
    """A dataset file (or a source tree being prepared) is missing or malformed."""


def exit_on_user_error(func: F) -> F:
    """Decorate a CLI entry point: a :class:`UserError` becomes one line on stderr and exit 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
