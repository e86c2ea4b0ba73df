"""The store's own exception types.

Every failure of a backend (a lost PostgreSQL connection, a locked or full SQLite file, a
read-only open) surfaces as :class:`StoreError`, so a filter needs exactly one ``except``
clause to turn any storage trouble into a temporary failure.
"""

from __future__ import annotations

__all__ = ["StoreConfigError", "StoreError", "StoreUnavailableError"]


class StoreError(Exception):
    """A store operation failed; filters answer with a temporary failure."""

    log_traceback = False  # the chain logs one line: the message says what failed


class StoreUnavailableError(StoreError):
    """The backend cannot be reached (PostgreSQL down, SQLite file cannot be opened)."""


class StoreConfigError(StoreError):
    """The ``[ttldb]`` configuration is invalid or names an unsupported backend."""
