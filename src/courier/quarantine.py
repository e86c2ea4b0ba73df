"""``courier.quarantine`` of courier-pythonfilter 3.0.6: not available yet.

courier-pyfilter's quarantine (storage, notices, release, purge) is built separately; until
it exists, filters importing this module load fine, and calling any of its functions raises
:class:`QuarantineUnavailableError` with a clear message instead of quarantining half-way
(the original could mark recipients delivered and then fail to send the notice).
"""

from __future__ import annotations

from typing import Any, NoReturn

__all__ = [
    "QuarantineUnavailableError",
    "config",
    "init",
    "purge",
    "quarantine",
    "release",
    "sendNotice",
    "send_notice",
]

MESSAGE = "quarantine support arrives with the quarantine issue"

config: dict[str, Any] = {
    "siteid": "local",
    "dir": "/var/lib/pythonfilter/quarantine",
    "days": 14,
}
"""The original's defaults, kept for filters that read them."""


class QuarantineUnavailableError(NotImplementedError):
    """Quarantine functions are not available in this version of courier-pyfilter."""


def _unavailable(name: str) -> NoReturn:
    raise QuarantineUnavailableError(f"courier.quarantine.{name}: {MESSAGE}")


def init(*args: Any, **kwargs: Any) -> NoReturn:
    """Not available yet: raises :class:`QuarantineUnavailableError`."""
    _unavailable("init")


def quarantine(*args: Any, **kwargs: Any) -> NoReturn:
    """Not available yet: raises :class:`QuarantineUnavailableError`."""
    _unavailable("quarantine")


def release(*args: Any, **kwargs: Any) -> NoReturn:
    """Not available yet: raises :class:`QuarantineUnavailableError`."""
    _unavailable("release")


def purge(*args: Any, **kwargs: Any) -> NoReturn:
    """Not available yet: raises :class:`QuarantineUnavailableError`."""
    _unavailable("purge")


def send_notice(*args: Any, **kwargs: Any) -> NoReturn:
    """Not available yet: raises :class:`QuarantineUnavailableError`."""
    _unavailable("send_notice")


sendNotice = send_notice
