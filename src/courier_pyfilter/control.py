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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import ipaddress

    IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

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


def __getattr__(name: str) -> Any:
    # ``ipaddress`` is imported on first use: a chain that never looks at the client's
    # address does not keep it in memory.
    if name == "IPAddress":
        import ipaddress

        return ipaddress.IPv4Address | ipaddress.IPv6Address
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DEFAULT_MAX_SIZE = 4 * 1024 * 1024
"""Largest control file accepted by default (bytes).  Real ones are a few hundred bytes
per recipient and Courier splits at ``batchsize`` (default 100) recipients."""

DEFAULT_MAX_RECORDS = 100_000
"""Most records accepted in one control file by default."""

NOTIFY_LETTERS = frozenset("SFDN")
"""The DSN NOTIFY letters Courier writes in ``N`` records: Success, Failure, Delay, Never."""

_WS = b" \t\r\v\f"
_WS_STR = " \t\r\v\f"
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


class ControlRecord(NamedTuple):
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


class ControlFile:
    """One parsed control file: a read-only view that decodes records when asked.

    Parsing only splits the lines and indexes the first record of each letter; records
    and recipients are built on first access, so a filter chain that reads two values
    does not pay for the rest.
    """

    __slots__ = ("_first", "_lines", "_recipients", "_records", "complete", "file_index")

    def __init__(self, file_index: int, lines: Sequence[bytes], complete: bool = True) -> None:
        self.file_index = file_index
        """Position of this file in the message's list of control files."""
        self.complete = complete
        """False when the data did not end with ``\\n`` (the last record may be cut off)."""
        self._lines = tuple(lines)
        # first line of each key byte: build reversed so the first occurrence wins
        self._first: dict[bytes, bytes] = {line[:1]: line for line in reversed(self._lines)}
        self._records: tuple[ControlRecord, ...] | None = None
        self._recipients: tuple[Recipient, ...] | None = None

    def __repr__(self) -> str:
        return f"ControlFile(file_index={self.file_index}, records={len(self._lines)})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlFile):
            return NotImplemented
        return (self.file_index, self._lines, self.complete) == (
            other.file_index,
            other._lines,
            other.complete,
        )

    def __hash__(self) -> int:
        return hash((self.file_index, self._lines, self.complete))

    @property
    def records(self) -> tuple[ControlRecord, ...]:
        """Every non-empty line, in file order."""
        if self._records is None:
            self._records = tuple(_record(line) for line in self._lines)
        return self._records

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        """All recipients of this file in Courier's numbering, delivered ones included."""
        if self._recipients is None:
            self._recipients = self._build_recipients()
        return self._recipients

    def _build_recipients(self) -> tuple[Recipient, ...]:
        rcpts: list[list[str]] = []
        done: set[int] = set()
        for line in self._lines:
            key = line[:1]
            if key == b"r":
                rcpts.append([_value(line), "", ""])
            elif key == b"R":
                if rcpts:
                    rcpts[-1][1] = _value(line)
            elif key == b"N":
                if rcpts:
                    rcpts[-1][2] = _value(line)
            elif key == b"S" or key == b"F":
                idx = _delivery_index(_value(line))
                if idx is not None:
                    done.add(idx)
        return tuple(
            Recipient(addr, orig, notify, self.file_index, i, i in done)
            for i, (addr, orig, notify) in enumerate(rcpts)
        )

    def values(self, key: str) -> tuple[str, ...]:
        """The values of every record with this key letter, in file order."""
        k = encode_value(key)[:1]
        return tuple(_value(line) for line in self._lines if line[:1] == k)

    def first(self, key: str) -> str | None:
        """The value of the first record with this key letter, or None."""
        line = self._first.get(_key_bytes(key))
        return None if line is None else _value(line)

    def has(self, key: str) -> bool:
        """True when a record with this key letter exists."""
        return _key_bytes(key) in self._first


_KEY_BYTES: dict[str, bytes] = {}


def _key_bytes(key: str) -> bytes:
    try:
        return _KEY_BYTES[key]
    except KeyError:
        raw = encode_value(key)[:1] if key else b""
        if len(_KEY_BYTES) < 1024:
            _KEY_BYTES[key] = raw
        return raw


def _value(line: bytes) -> str:
    """A record's value: everything after the key byte, stripped, decoded."""
    return line[1:].strip(_WS).decode("utf-8", "surrogateescape")


def _record(line: bytes) -> ControlRecord:
    return ControlRecord(decode_value(line[:1]), _value(line), line)


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
    if not isinstance(data, bytes):
        if not isinstance(data, bytearray | memoryview):
            raise ControlFileError(f"control data must be bytes, not {type(data).__name__}")
        data = bytes(data)
    if len(data) > max_size:
        raise ControlFileError(f"control file too large: {len(data)} > {max_size} bytes")
    complete = not data or data.endswith(b"\n")
    lines = [line for line in data.split(b"\n") if line]
    if len(lines) > max_records:
        raise ControlFileError(f"control file has more than {max_records} records")
    return ControlFile(file_index, lines, complete)


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


_IP_CACHE: dict[str, IPAddress | None] = {}


def _parse_ip(raw: str | None) -> IPAddress | None:
    if raw is None:
        return None
    try:
        return _IP_CACHE[raw]
    except KeyError:
        pass
    ip = _parse_ip_uncached(raw)
    if len(_IP_CACHE) >= 4096:
        _IP_CACHE.clear()
    _IP_CACHE[raw] = ip
    return ip


def _parse_ip_uncached(raw: str) -> IPAddress | None:
    import ipaddress

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


class ControlData:
    """Typed read-only view of a message's control file(s).

    Message-level values come from the first control file (the first record with the
    letter; Courier writes each once); recipients come from all files.  Build one with
    :meth:`from_files` or :func:`parse_controls`.  Every attribute is computed on first
    access and cached.
    """

    __slots__ = ("_all_recipients", "_from_mta_cache", "_options", "_recipients", "files")

    def __init__(self, files: Sequence[ControlFile] = ()) -> None:
        self.files: tuple[ControlFile, ...] = tuple(files)
        """The parsed control files, in the order submit listed them."""
        self._from_mta_cache: tuple[str | None, str | None] | None = None
        self._options: Mapping[str, str] | None = None
        self._all_recipients: tuple[Recipient, ...] | None = None
        self._recipients: tuple[Recipient, ...] | None = None

    @classmethod
    def from_files(cls, files: Sequence[ControlFile]) -> ControlData:
        """Combine the parsed control files of one message."""
        return cls(files)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ControlData):
            return NotImplemented
        return self.files == other.files

    def __hash__(self) -> int:
        return hash(self.files)

    def __repr__(self) -> str:
        return f"ControlData(sender={self.sender!r}, recipients={len(self.recipients)})"

    def _first(self, key: str) -> str | None:
        return self.files[0].first(key) if self.files else None

    def _has(self, key: str) -> bool:
        return self.files[0].has(key) if self.files else False

    @property
    def sender(self) -> str | None:
        """Envelope sender (``s``); ``''`` for the null sender ``<>``; None without ``s``."""
        return self._first("s")

    @property
    def received_from(self) -> str | None:
        """The ``f`` record, ``dns; HELO (RDNS [IP])``; None without one."""
        return self._first("f")

    def _from_mta(self) -> tuple[str | None, str | None]:
        if self._from_mta_cache is None:
            self._from_mta_cache = _parse_from_mta(self.received_from)
        return self._from_mta_cache

    @property
    def helo(self) -> str | None:
        """The HELO/EHLO name: second word of the ``f`` record."""
        return self._from_mta()[0]

    @property
    def rdns(self) -> str | None:
        """The client's reverse-DNS name when the ``f`` record has one before ``[IP]``."""
        return self._from_mta()[1]

    @property
    def client_ip(self) -> IPAddress | None:
        """Client address from ``OTCPREMOTEIP=`` (IPv4-mapped IPv6 becomes IPv4); None when
        absent or invalid (see :attr:`client_ip_raw`)."""
        return _parse_ip(self.client_ip_raw)

    @property
    def client_ip_raw(self) -> str | None:
        """The ``TCPREMOTEIP`` value exactly as written; None without one."""
        value: str | None = self.options.get("TCPREMOTEIP")
        return value

    @property
    def envid(self) -> str | None:
        """DSN ENVID (``e``); None when absent or empty."""
        return _empty_to_none(self._first("e"))

    @property
    def dsn_ret(self) -> str | None:
        """DSN RET (``t``): ``"F"`` (full) or ``"H"`` (headers); None when absent or empty."""
        return _empty_to_none(self._first("t"))

    @property
    def msgid(self) -> str | None:
        """Courier's queue id (``M``)."""
        return self._first("M")

    @property
    def auth_user(self) -> str | None:
        """SMTP AUTH user (``i``); None when the client did not authenticate."""
        return self._first("i")

    @property
    def source(self) -> str | None:
        """Message source (``u``): ``smtp``, ``authsmtp``, ``local``, ..."""
        return self._first("u")

    @property
    def expires(self) -> int | None:
        """Expiry time, epoch seconds (``E``)."""
        return _parse_int(self._first("E"))

    @property
    def fax_expires(self) -> int | None:
        """Fax-module expiry, epoch seconds (``p``)."""
        return _parse_int(self._first("p"))

    @property
    def warning_time(self) -> int | None:
        """When a delay warning is due, epoch seconds (``W``)."""
        return _parse_int(self._first("W"))

    @property
    def eightbit(self) -> bool:
        """``8``: the body has 8-bit content."""
        return self._has("8")

    @property
    def smtputf8(self) -> bool:
        """``m``: SMTPUTF8 message (8-bit headers)."""
        return self._has("m")

    @property
    def verp(self) -> bool:
        """``V``: VERP the sender."""
        return self._has("V")

    @property
    def track(self) -> bool:
        """``T``: address tracking (backscatter suppression)."""
        return self._has("T")

    @property
    def warning_sent(self) -> bool:
        """``w``: the delay warning was sent already."""
        return self._has("w")

    @property
    def vhost(self) -> str | None:
        """Virtual host (``v``)."""
        return self._first("v")

    @property
    def security(self) -> str | None:
        """Requested security level (``U``), e.g. ``STARTTLS``."""
        return self._first("U")

    @property
    def cancelled(self) -> str | None:
        """Cancellation reason (``X``)."""
        return self._first("X")

    @property
    def options(self) -> Mapping[str, str]:
        """Environment options from ``ONAME=value`` records (first file; later ones win)."""
        if self._options is None:
            options: dict[str, str] = {}
            if self.files:
                for value in self.files[0].values("O"):
                    name, _, val = value.partition("=")
                    options[name] = val
            self._options = MappingProxyType(options)
        return self._options

    @property
    def all_recipients(self) -> tuple[Recipient, ...]:
        """Every recipient of every file, delivered ones included."""
        if self._all_recipients is None:
            self._all_recipients = tuple(r for f in self.files for r in f.recipients)
        return self._all_recipients

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        """Recipients still to be delivered (not ``done``, non-empty address)."""
        if self._recipients is None:
            self._recipients = tuple(r for r in self.all_recipients if not r.done and r.address)
        return self._recipients

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
