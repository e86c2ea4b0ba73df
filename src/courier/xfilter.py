"""``courier.xfilter`` for filters written for courier-pythonfilter 3.0.6 (synchronous API).

:class:`XFilter` parses the message data file into an :class:`email.message.Message`
(``compat32`` policy, as the original), lets the filter change it, and :meth:`XFilter.submit`
writes it back over the same file.

Differences from the original, all deliberate: the rewrite keeps the file valid at every
moment (new bytes are written over the old ones, then the file is cut to length and
fsynced; the inode stays the same, as Courier requires) instead of truncating first, and
unchanged header lines are written back unfolded-as-read (no re-wrapping at 78 columns).
"""

from __future__ import annotations

import email
import email.generator
import email.policy
import io
from collections.abc import Sequence
from email.message import Message
from typing import Any

from . import control
from ._support import rewrite_in_place

__all__ = ["DummyXFilter", "InitError", "XFilter"]


class InitError(Exception):
    """The message data file could not be read or parsed."""


class XFilter:
    """A message being modified by the filter ``filter_name``."""

    def __init__(self, filter_name: str, body_path: str, control_paths: Sequence[str]) -> None:
        """Parse ``body_path`` and the control files; raises :class:`InitError`."""
        self.filter_name = filter_name
        self.body_path = body_path
        self.control_paths = list(control_paths)
        try:
            with open(body_path, "rb") as handle:
                self.message: Message = email.message_from_binary_file(
                    handle, policy=email.policy.compat32
                )
        except Exception as exc:
            raise InitError(f"Internal failure parsing message data file: {exc}") from exc
        self.control_data: dict[str, Any] = control.get_control_data(self.control_paths)

    def get_message(self) -> Message:
        """The parsed message (change it in place, or replace it with :meth:`set_message`)."""
        return self.message

    def set_message(self, message: Message) -> None:
        """Replace the message that :meth:`submit` writes."""
        self.message = message

    def get_control_data(self) -> dict[str, Any]:
        """The control data dict (see :func:`courier.control.get_control_data`)."""
        return self.control_data

    def flatten(self) -> bytes:
        """The message as bytes, ending with a newline."""
        buffer = io.BytesIO()
        generator = email.generator.BytesGenerator(buffer, mangle_from_=False, maxheaderlen=0)
        generator.flatten(self.message)
        data = buffer.getvalue()
        if not data.endswith(b"\n"):
            data += b"\n"
        return data

    def submit(self) -> str:
        """Write the message over the data file (same inode); returns ``''``."""
        rewrite_in_place(self.body_path, self.flatten())
        return ""

    getMessage = get_message
    setMessage = set_message
    getControlData = get_control_data


class DummyXFilter(XFilter):
    """An :class:`XFilter` whose :meth:`submit` writes nothing (command-line testing)."""

    def submit(self) -> str:
        """Do nothing; returns ``''``."""
        return ""
