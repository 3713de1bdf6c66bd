"""The feedback store's errors (each a :class:`UserError` with an HTTP status in the app) and
the id bound they share."""

from __future__ import annotations

from mimic_runner.errors import UserError


class FeedbackConflict(UserError):
    """The request is well-formed but the store's state forbids it (HTTP 409)."""


class FeedbackNotFound(UserError):
    """The named region, version or image does not exist (HTTP 404)."""


class FeedbackInvalid(UserError):
    """A region or parameter is malformed (HTTP 422)."""


MAX_ID = 2**63 - 1  # SQLite's largest integer


def known_id(what: str, value: int) -> int:
    """An id SQLite can look up; out of range is "does not exist", never an OverflowError."""
    if not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise FeedbackNotFound(f"{what} {value} does not exist")
    return value
