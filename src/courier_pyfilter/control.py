"""Courier control files: parsing (sans-I/O) and the records a filter may append.

A control file is a list of ``\\n``-terminated records; each record is one key letter
immediately followed by its value (``ssender@example.com``, ``rrcpt@example.net``, ...).
:func:`parse_control` turns the bytes of one file into a :class:`ControlFile`;
:meth:`ControlData.from_files` combines the control files of one message (Courier splits
recipients over several files at ``batchsize``, each file repeating the message-level
records) into the typed read-only view filters use.

Text decoding
    Values are decoded as UTF-8 with the ``surrogateescape`` error handler: valid UTF-8
    (what Courier writes, SMTPUTF8 addresses included) decodes normally, and every invalid
    byte ``0xNN`` becomes the lone surrogate ``U+DCNN``.  The decoding is lossless:
    :func:`encode_value` (``str.encode("utf-8", "surrogateescape")``) restores the exact
    bytes, which is what :func:`add_recipient_records` does, so a recipient read from a
    file can be written back byte for byte.  :attr:`ControlRecord.malformed` tells whether
    a record needed the fallback.  Surrounding ASCII whitespace (including a stray ``\\r``)
    is stripped from values, as the original courier-pythonfilter did.

Recipients
    Courier numbers the recipients of each control file 0, 1, 2, ... in the order of their
    ``r`` records; delivery records ``S<n>`` / ``F<n>`` (and the removal records a filter
    appends) refer to that number.  Every ``r`` record starts a recipient and the ``R``
    (original recipient) and ``N`` (DSN NOTIFY flags) records that follow belong to it.
    For the ``r R N`` triples Courier writes this is the same as the original's rule that
    each ``N`` completes a recipient.  Recipients with an empty ``r`` value are numbered
    but never listed in :attr:`ControlData.recipients`.

Only :class:`ControlFileError` is ever raised by this module.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "DEFAULT_MAX_RECORDS",
    "DEFAULT_MAX_SIZE",
    "NOTIFY_LETTERS",
    "ControlData",
    "ControlFile",
    "ControlFileError",
    "ControlRecord",
    "IPAddress",
    "Recipient",
    "add_recipient_records",
    "decode_value",
    "encode_value",
    "parse_control",
    "parse_controls",
    "remove_recipient_records",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_SIZE = 4 * 1024 * 1024
"""Largest control file accepted by default (bytes).  Real ones are a few hundred bytes
per recipient and Courier splits at ``batchsize`` (default 100) recipients."""

DEFAULT_MAX_RECORDS = 100_000
"""Most records accepted in one control file by default."""

NOTIFY_LETTERS = frozenset("SFDN")
"""The DSN NOTIFY letters Courier writes in ``N`` records: Success, Failure, Delay, Never."""

_WS = b" \t\r\v\f"
_FORBIDDEN_IN_VALUE = ("\n", "\r", "\x00")


class ControlFileError(Exception):
    """A control file that cannot be parsed, or a record that cannot be written."""


def decode_value(raw: bytes) -> str:
    """Decode record bytes losslessly: UTF-8, invalid bytes as lone surrogates."""
    return raw.decode("utf-8", "surrogateescape")


def encode_value(value: str) -> bytes:
    """Inverse of :func:`decode_value`: the exact bytes a value was decoded from.

    Raises :class:`ControlFileError` for a string that no bytes decode to (a surrogate
    outside ``U+DC80``..``U+DCFF``).
    """
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as exc:
        raise ControlFileError(f"value cannot be encoded: {value!r}") from exc


@dataclass(frozen=True, slots=True)
class ControlRecord:
    """One line of a control file."""

    key: str
    """The record letter (first byte of the line)."""
    value: str
    """The rest of the line, decoded (see the module notes) and stripped of whitespace."""
    raw: bytes
    """The line exactly as in the file, without its terminating ``\\n``."""

    @property
    def malformed(self) -> bool:
        """True when the line was not valid UTF-8 (the value holds escaped bytes)."""
        try:
            self.raw.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False


@dataclass(frozen=True, slots=True)
class Recipient:
    """One envelope recipient (an ``r`` record with its ``R`` and ``N`` records)."""

    address: str
    """The canonical (rewritten, alias-expanded) address from the ``r`` record."""
    original: str = ""
    """The ``R`` record: ORCPT or the address before alias expansion; ``''`` if none."""
    notify: str = ""
    """The ``N`` record: DSN NOTIFY letters (``S``, ``F``, ``D``, ``N``); ``''`` = default."""
    file_index: int = 0
    """Which control file of the message it is in (0-based)."""
    index: int = 0
    """Courier's number of the recipient within that control file (0-based)."""
    done: bool = False
    """True when an ``S<n>`` or ``F<n>`` record says its delivery is finished."""

    @property
    def original_address(self) -> str:
        """The original recipient without an ``rfc822;`` prefix, or :attr:`address`."""
        orig = self.original
        if orig[:7].lower() == "rfc822;":
            orig = orig[7:]
        return orig or self.address

    @property
    def wants_success_dsn(self) -> bool:
        """True when the sender asked for a success notification (``S`` in NOTIFY)."""
        return "S" in self.notify


@dataclass(frozen=True, slots=True)
class ControlFile:
    """One parsed control file."""

    file_index: int
    """Position of this file in the message's list of control files."""
    records: tuple[ControlRecord, ...]
    """Every non-empty line, in file order."""
    recipients: tuple[Recipient, ...]
    """All recipients of this file in Courier's numbering, delivered ones included."""
    complete: bool = True
    """False when the data did not end with ``\\n`` (the last record may be cut off)."""

    def values(self, key: str) -> tuple[str, ...]:
        """The values of every record with this key letter, in file order."""
        return tuple(r.value for r in self.records if r.key == key)

    def first(self, key: str) -> str | None:
        """The value of the first record with this key letter, or None."""
        for r in self.records:
            if r.key == key:
                return r.value
        return None

    def has(self, key: str) -> bool:
        """True when a record with this key letter exists."""
        return any(r.key == key for r in self.records)


def _iter_lines(data: bytes) -> Iterator[bytes]:
    start = 0
    n = len(data)
    while start < n:
        end = data.find(b"\n", start)
        if end < 0:
            yield data[start:]
            return
        yield data[start:end]
        start = end + 1


def _delivery_index(value: str) -> int | None:
    """The recipient number of an ``S``/``F`` record value (``"1 1795605936"`` -> 1)."""
    head = value.split(" ", 1)[0].strip()
    if not head.isascii() or not head.isdigit() or len(head) > 9:
        return None
    return int(head)


def parse_control(
    data: bytes,
    *,
    file_index: int = 0,
    max_size: int = DEFAULT_MAX_SIZE,
    max_records: int = DEFAULT_MAX_RECORDS,
) -> ControlFile:
    """Parse the bytes of one control file.

    Empty lines are skipped; a final line without ``\\n`` is still parsed (and
    :attr:`ControlFile.complete` is False).  Unknown record letters are kept in
    :attr:`ControlFile.records`.  Raises :class:`ControlFileError` when ``data`` is longer
    than ``max_size`` bytes or has more than ``max_records`` records.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ControlFileError(f"control data must be bytes, not {type(data).__name__}")
    data = bytes(data)
    if len(data) > max_size:
        raise ControlFileError(f"control file too large: {len(data)} > {max_size} bytes")
    records: list[ControlRecord] = []
    # recipient builder: [address, original, notify] in Courier's numbering
    rcpts: list[list[str]] = []
    done: set[int] = set()
    for line in _iter_lines(data):
        if not line:
            continue
        if len(records) >= max_records:
            raise ControlFileError(f"control file has more than {max_records} records")
        key = decode_value(line[:1])
        value = decode_value(line[1:].strip(_WS))
        records.append(ControlRecord(key, value, line))
        if key == "r":
            rcpts.append([value, "", ""])
        elif key == "R":
            if rcpts:
                rcpts[-1][1] = value
        elif key == "N":
            if rcpts:
                rcpts[-1][2] = value
        elif key in ("S", "F"):
            idx = _delivery_index(value)
            if idx is not None:
                done.add(idx)
    recipients = tuple(
        Recipient(addr, orig, notify, file_index, i, i in done)
        for i, (addr, orig, notify) in enumerate(rcpts)
    )
    return ControlFile(
        file_index=file_index,
        records=tuple(records),
        recipients=recipients,
        complete=not data or data.endswith(b"\n"),
    )


def _parse_int(value: str | None) -> int | None:
    if value is None:
        return None
    v = value.strip()
    if not v.isascii() or len(v) > 20:
        return None
    try:
        return int(v)
    except ValueError:
        return None


def _parse_ip(raw: str | None) -> IPAddress | None:
    if raw is None:
        return None
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text.isascii():
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _parse_from_mta(value: str | None) -> tuple[str | None, str | None]:
    """HELO and reverse-DNS name from ``dns; HELO (RDNS [IP])``."""
    if value is None:
        return None, None
    words = value.split()
    helo = words[1] if len(words) >= 2 else None
    if helo is not None and helo.startswith("("):
        helo = None
    rdns: str | None = None
    open_ = value.find("(")
    if open_ >= 0:
        close = value.find(")", open_)
        inner = value[open_ + 1 : close if close >= 0 else len(value)]
        name = inner.split("[", 1)[0].strip()
        if name:
            rdns = name
    return helo, rdns


def _empty_to_none(value: str | None) -> str | None:
    return value if value else None


@dataclass(frozen=True, slots=True)
class ControlData:
    """Typed read-only view of a message's control file(s).

    Message-level values come from the first control file (the first record with the
    letter; Courier writes each once); recipients come from all files.  Build one with
    :meth:`from_files` or :func:`parse_controls`.
    """

    files: tuple[ControlFile, ...] = ()
    """The parsed control files, in the order submit listed them."""
    sender: str | None = None
    """Envelope sender (``s``); ``''`` for the null sender ``<>``; None without ``s``."""
    received_from: str | None = None
    """The ``f`` record, ``dns; HELO (RDNS [IP])``; None without one."""
    helo: str | None = None
    """The HELO/EHLO name: second word of the ``f`` record."""
    rdns: str | None = None
    """The client's reverse-DNS name when the ``f`` record has one before ``[IP]``."""
    client_ip: IPAddress | None = None
    """Client address from ``OTCPREMOTEIP=`` (IPv4-mapped IPv6 becomes IPv4); None when
    absent or invalid (see :attr:`client_ip_raw`)."""
    client_ip_raw: str | None = None
    """The ``TCPREMOTEIP`` value exactly as written; None without one."""
    envid: str | None = None
    """DSN ENVID (``e``); None when absent or empty."""
    dsn_ret: str | None = None
    """DSN RET (``t``): ``"F"`` (full) or ``"H"`` (headers); None when absent or empty."""
    msgid: str | None = None
    """Courier's queue id (``M``)."""
    auth_user: str | None = None
    """SMTP AUTH user (``i``); None when the client did not authenticate."""
    source: str | None = None
    """Message source (``u``): ``smtp``, ``authsmtp``, ``local``, ..."""
    expires: int | None = None
    """Expiry time, epoch seconds (``E``)."""
    fax_expires: int | None = None
    """Fax-module expiry, epoch seconds (``p``)."""
    warning_time: int | None = None
    """When a delay warning is due, epoch seconds (``W``)."""
    eightbit: bool = False
    """``8``: the body has 8-bit content."""
    smtputf8: bool = False
    """``m``: SMTPUTF8 message (8-bit headers)."""
    verp: bool = False
    """``V``: VERP the sender."""
    track: bool = False
    """``T``: address tracking (backscatter suppression)."""
    warning_sent: bool = False
    """``w``: the delay warning was sent already."""
    vhost: str | None = None
    """Virtual host (``v``)."""
    security: str | None = None
    """Requested security level (``U``), e.g. ``STARTTLS``."""
    cancelled: str | None = None
    """Cancellation reason (``X``)."""
    options: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Environment options from ``ONAME=value`` records (first file; later ones win)."""
    all_recipients: tuple[Recipient, ...] = ()
    """Every recipient of every file, delivered ones included."""

    @classmethod
    def from_files(cls, files: Sequence[ControlFile]) -> ControlData:
        """Combine the parsed control files of one message."""
        files = tuple(files)
        if not files:
            return cls()
        first = files[0]
        options: dict[str, str] = {}
        for value in first.values("O"):
            name, _, val = value.partition("=")
            options[name] = val
        ip_raw = options.get("TCPREMOTEIP")
        received_from = first.first("f")
        helo, rdns = _parse_from_mta(received_from)
        return cls(
            files=files,
            sender=first.first("s"),
            received_from=received_from,
            helo=helo,
            rdns=rdns,
            client_ip=_parse_ip(ip_raw),
            client_ip_raw=ip_raw,
            envid=_empty_to_none(first.first("e")),
            dsn_ret=_empty_to_none(first.first("t")),
            msgid=first.first("M"),
            auth_user=first.first("i"),
            source=first.first("u"),
            expires=_parse_int(first.first("E")),
            fax_expires=_parse_int(first.first("p")),
            warning_time=_parse_int(first.first("W")),
            eightbit=first.has("8"),
            smtputf8=first.has("m"),
            verp=first.has("V"),
            track=first.has("T"),
            warning_sent=first.has("w"),
            vhost=first.first("v"),
            security=first.first("U"),
            cancelled=first.first("X"),
            options=MappingProxyType(options),
            all_recipients=tuple(r for f in files for r in f.recipients),
        )

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        """Recipients still to be delivered (not ``done``, non-empty address)."""
        return tuple(r for r in self.all_recipients if not r.done and r.address)

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses of :attr:`recipients`."""
        return tuple(r.address for r in self.recipients)

    @property
    def client_ip_invalid(self) -> bool:
        """True when a ``TCPREMOTEIP`` option exists but is not an IP address."""
        return self.client_ip_raw is not None and self.client_ip is None

    @property
    def relay_client(self) -> bool:
        """True when the client may relay (``ORELAYCLIENT=`` option present)."""
        return "RELAYCLIENT" in self.options

    def values(self, key: str) -> tuple[str, ...]:
        """Values of every record with this letter in all files, in order."""
        return tuple(v for f in self.files for v in f.values(key))


def parse_controls(
    datas: Iterable[bytes],
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    max_records: int = DEFAULT_MAX_RECORDS,
) -> ControlData:
    """Parse the contents of a message's control files (in order) into :class:`ControlData`."""
    return ControlData.from_files(
        [
            parse_control(d, file_index=i, max_size=max_size, max_records=max_records)
            for i, d in enumerate(datas)
        ]
    )


def _check_value(what: str, value: str) -> bytes:
    if not isinstance(value, str):
        raise ControlFileError(f"{what} must be a str, not {type(value).__name__}")
    for ch in _FORBIDDEN_IN_VALUE:
        if ch in value:
            raise ControlFileError(f"{what} must not contain {ch!r}: {value!r}")
    if value != value.strip(" \t\v\f"):
        raise ControlFileError(f"{what} must not start or end with whitespace: {value!r}")
    return encode_value(value)


def add_recipient_records(address: str, original: str = "", notify: str = "") -> bytes:
    """The ``r``/``R``/``N`` lines that add a recipient when appended to a control file.

    ``address`` must be canonical: Courier does no alias expansion or rewriting for a
    recipient a filter adds.  ``notify`` is a combination of ``S``, ``F``, ``D`` or just
    ``N``; ``''`` means Courier's default.  Raises :class:`ControlFileError` on values that
    would corrupt the file.
    """
    addr = _check_value("recipient address", address)
    if not addr:
        raise ControlFileError("recipient address must not be empty")
    orig = _check_value("original recipient", original)
    if not isinstance(notify, str) or not set(notify) <= NOTIFY_LETTERS:
        raise ControlFileError(f"DSN notify flags must be letters from SFDN: {notify!r}")
    if "N" in notify and notify != "N":
        raise ControlFileError(f"NOTIFY=NEVER cannot be combined with other flags: {notify!r}")
    return b"r" + addr + b"\nR" + orig + b"\nN" + notify.encode("ascii") + b"\n"


def remove_recipient_records(index: int, now: float, reason: str) -> bytes:
    """The lines that mark recipient ``index`` of a control file as done.

    An ``I<n> R 250 Ok - <reason>`` delivery-info line and an ``S<n> <time>`` success
    record: Courier then skips the recipient.  Note that this records a *successful*
    delivery.  Raises :class:`ControlFileError` for a negative index or a bad reason.
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ControlFileError(f"recipient index must be a non-negative int: {index!r}")
    if isinstance(reason, str):
        reason = reason.strip()
    why = _check_value("removal reason", reason)
    stamp = int(now)
    if stamp < 0:
        raise ControlFileError(f"time must not be negative: {now!r}")
    return b"I%d R 250 Ok - %s\nS%d %d\n" % (index, why, index, stamp)
