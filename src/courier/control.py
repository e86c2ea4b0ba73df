"""``courier.control`` for filters written for courier-pythonfilter 3.0.6 (synchronous API).

Reads and appends to a message's control files with the parser and record writers of
:mod:`courier_pyfilter.control`; the return shapes are the original's (recipients as
``[r, R, N]`` lists, the control data dict with the same keys and defaults).

Values are decoded as UTF-8; a value that is not valid UTF-8 is returned as the original
did: ``(malformed utf8):`` followed by the URL-quoted (``quote_plus``) bytes, ``@`` kept.

Differences from the original, all deliberate: ``get_lines``' ``max_lines`` limits the
total over all files (the original only stopped inside one file); values written by
``add_recipient``/``add_recipient_data`` are checked (no line breaks, valid DSN flags) and
bad ones raise :class:`ControlError` (a ``ValueError``); appends are flushed to disk.
"""

from __future__ import annotations

import ipaddress
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from courier_pyfilter.control import (
    ControlFile,
    ControlFileError,
    add_recipient_records,
    parse_control,
    remove_recipient_records,
)

from ._support import append_bytes

__all__ = [
    "REMOVE_REASON",
    "ControlError",
    "addRecipient",
    "addRecipientData",
    "add_recipient",
    "add_recipient_data",
    "delRecipient",
    "delRecipientData",
    "del_recipient",
    "del_recipient_data",
    "getAuthUser",
    "getControlData",
    "getRecipients",
    "getRecipientsData",
    "getSender",
    "getSendersIP",
    "getSendersMta",
    "get_auth_user",
    "get_control_data",
    "get_lines",
    "get_recipients",
    "get_recipients_data",
    "get_sender",
    "get_senders_ip",
    "get_senders_mta",
]

REMOVE_REASON = "Removed by courier.control.py"
"""The reason written in the delivery record of a recipient removed by this module."""

_STRING_KEYS = ("s", "f", "e", "M", "i", "t", "E", "p", "W", "v", "X", "U", "u")
_STRING_DEFAULTS = {"s": "", "f": "", "U": ""}
_FLAG_KEYS = ("w", "8", "m", "V", "T")


class ControlError(ValueError):
    """A control file cannot be read or a record cannot be written."""


def _text(value: str) -> str:
    """The original's form of a decoded value (see the module docstring)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogateescape")
        return "(malformed utf8):" + urllib.parse.quote_plus(raw, safe="@")
    return value


def _parse(path: str, index: int) -> ControlFile:
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ControlError(f"cannot read control file {path}: {exc}") from exc
    try:
        return parse_control(data, file_index=index)
    except ControlFileError as exc:
        raise ControlError(f"{path}: {exc}") from exc


def _files(control_paths: Sequence[str]) -> list[ControlFile]:
    return [_parse(path, index) for index, path in enumerate(control_paths)]


def get_lines(control_paths: Sequence[str], key: str, max_lines: int = 0) -> list[str]:
    """Values of every record with letter ``key`` across the files, in order.

    ``max_lines`` > 0 stops after that many values in total.
    """
    result: list[str] = []
    for control in _files(control_paths):
        for record in control.records:
            if record.key == key:
                result.append(_text(record.value))
                if max_lines and len(result) >= max_lines:
                    return result
    return result


def _first(control_paths: Sequence[str], key: str) -> str | None:
    found = get_lines(control_paths, key, 1)
    return found[0] if found else None


def get_sender(control_paths: Sequence[str]) -> str | None:
    """The envelope sender (``''`` for ``<>``), or ``None`` without an ``s`` record."""
    return _first(control_paths, "s")


def get_senders_mta(control_paths: Sequence[str]) -> str | None:
    """The ``f`` record (``dns; helo (rdns [ip])``), or ``None``."""
    return _first(control_paths, "f")


def get_senders_ip(control_paths: Sequence[str]) -> str | None:
    """The client's IP address from ``OTCPREMOTEIP=``, or ``None``.

    An IPv4-mapped IPv6 address is returned as IPv4, IPv6 in compressed form.  An invalid
    address raises ``ValueError``, as in the original.
    """
    for value in get_lines(control_paths, "O"):
        if value.startswith("TCPREMOTEIP="):
            address = ipaddress.ip_address(value[len("TCPREMOTEIP=") :])
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(address)
    return None


def get_auth_user(control_paths: Sequence[str], body_path: str | None = None) -> str | None:
    """The SMTP AUTH user name (``i`` record), or ``None``.  ``body_path`` is unused."""
    return _first(control_paths, "i")


def _pending(control_paths: Sequence[str]) -> list[tuple[int, int, list[str]]]:
    """``(file number, recipient number, [r, R, N])`` of every undelivered recipient."""
    result: list[tuple[int, int, list[str]]] = []
    for number, control in enumerate(_files(control_paths)):
        for rcpt in control.recipients:
            if rcpt.done or not rcpt.address:
                continue
            data = [_text(rcpt.address), _text(rcpt.original), _text(rcpt.notify)]
            result.append((number, rcpt.index, data))
    return result


def get_recipients_data(control_paths: Sequence[str]) -> list[list[str]]:
    """Undelivered recipients of all files as ``[address, original, dsn_flags]`` lists."""
    return [data for _, _, data in _pending(control_paths)]


def get_recipients(control_paths: Sequence[str]) -> list[str]:
    """Addresses of the undelivered recipients of all files."""
    return [data[0] for data in get_recipients_data(control_paths)]


def get_control_data(control_paths: Sequence[str]) -> dict[str, Any]:
    """The message's control data as the original's dict.

    Keys ``s f e M i t E p W v X U u`` hold strings (``s``, ``f`` and ``U`` default to
    ``''``, the others to ``None``) taken from the first file (the last record of a letter
    wins); ``w 8 m V T`` are booleans (a record with that letter exists); ``r`` is
    :func:`get_recipients_data` over all files.
    """
    data: dict[str, Any] = {key: _STRING_DEFAULTS.get(key) for key in _STRING_KEYS}
    data.update(dict.fromkeys(_FLAG_KEYS, False))
    if control_paths:
        first = _parse(control_paths[0], 0)
        for record in first.records:
            if record.key in data and record.key not in _FLAG_KEYS:
                data[record.key] = _text(record.value)
            elif record.key in _FLAG_KEYS:
                data[record.key] = True
    data["r"] = get_recipients_data(control_paths)
    return data


def add_recipient_data(control_paths: Sequence[str], data: Sequence[str]) -> None:
    """Append a recipient ``[address, original, dsn_flags]`` to the last control file."""
    if len(data) != 3:
        raise ControlError("recipient data must have exactly 3 items: [address, original, flags]")
    if not control_paths:
        raise ControlError("the message has no control file")
    address, original, notify = data
    try:
        records = add_recipient_records(address, original, notify)
    except ControlFileError as exc:
        raise ControlError(str(exc)) from exc
    append_bytes(control_paths[-1], records)


def add_recipient(control_paths: Sequence[str], address: str) -> None:
    """Append recipient ``address`` (no original address, default DSN) to the last file."""
    add_recipient_data(control_paths, [address, "", ""])


def _remove(control_paths: Sequence[str], match: Any, *, whole: bool) -> bool:
    for number, index, data in _pending(control_paths):
        if (list(match) == data) if whole else (data[0] == match):
            try:
                records = remove_recipient_records(index, time.time(), REMOVE_REASON)
            except ControlFileError as exc:  # pragma: no cover - constant reason
                raise ControlError(str(exc)) from exc
            append_bytes(control_paths[number], records)
            return True
    return False


def del_recipient(control_paths: Sequence[str], address: str) -> bool:
    """Mark the first undelivered recipient ``address`` as delivered (Courier skips it).

    Returns whether a recipient was found (the original returned nothing).
    """
    return _remove(control_paths, address, whole=False)


def del_recipient_data(control_paths: Sequence[str], data: Sequence[str]) -> bool:
    """Like :func:`del_recipient`, matching the whole ``[address, original, flags]`` list."""
    if len(data) != 3:
        raise ControlError("recipient data must have exactly 3 items: [address, original, flags]")
    return _remove(control_paths, data, whole=True)


# -- the original's camelCase names ---------------------------------------------------------

getSender = get_sender
getSendersMta = get_senders_mta
getSendersIP = get_senders_ip
getAuthUser = get_auth_user
getRecipients = get_recipients
getRecipientsData = get_recipients_data
getControlData = get_control_data
addRecipient = add_recipient
addRecipientData = add_recipient_data
delRecipient = del_recipient
delRecipientData = del_recipient_data
