"""Exception types of the Courier configuration library."""

from __future__ import annotations

__all__ = [
    "CourierConfigError",
    "GdbmError",
    "GdbmFormatError",
    "GdbmUnavailableError",
    "InvalidAddressError",
    "SourceUnavailableError",
]


class CourierConfigError(Exception):
    """Base class of every error raised by :mod:`courier_pyfilter.mta`."""


class GdbmError(CourierConfigError):
    """A GDBM database could not be read."""


class GdbmFormatError(GdbmError):
    """The bytes are not a valid (or not a supported) GDBM database image."""


class GdbmUnavailableError(GdbmError):
    """The requested GDBM backend (for example ``dbm.gnu``) is not importable."""


class SourceUnavailableError(CourierConfigError):
    """Neither the compiled ``.dat`` file nor the text sources of a table exist."""


class InvalidAddressError(CourierConfigError, ValueError):
    """A string that is neither an IPv4 nor an IPv6 address."""
