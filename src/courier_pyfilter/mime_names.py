"""Attachment names of a MIME message and member names of the archives it carries.

Pure, synchronous helpers (no asyncio, no I/O, nothing written to disk) used by the
``attachments`` filter, which runs them in a worker thread.  Everything here reads
untrusted data: names are only ever returned as strings to be matched, never used as
paths, and archives are only listed, never extracted.

* :func:`iter_message_names` walks every MIME part of a parsed message (iteratively, so
  deep nesting cannot overflow the stack), yields the ``filename`` / ``name`` parameters
  of its ``Content-Disposition`` / ``Content-Type`` headers (RFC 2231 and RFC 2047
  decoded, read by both the modern and the legacy :mod:`email` parameter parsers), and,
  when asked, the member names of the archives found in the part payloads.
* :func:`iter_archive_names` lists an archive held in memory: zip (central directory and
  local headers, read by this module), tar (streamed with :mod:`tarfile`), gzip, bzip2
  and xz streams (a compressed tar is one archive; a compressed single file contributes
  the original name stored in the gzip header), nested archives within
  :class:`Limits`.
* :func:`archive_kind` recognises archives by their content, never by their name.

Whatever an archive cannot show (encrypted or damaged data, an unsupported format, a
limit reached) is appended to a caller's list as a :class:`Problem`; names that could be
read are yielded all the same.  The only exceptions these functions raise are
:class:`NameScanError` subclasses: :class:`UnparseableMessage` for a message whose MIME
structure cannot be read, :class:`ScanCancelled` when the caller's ``should_stop``
answered true.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import email.header
import email.message
import email.policy
import email.utils
import gzip
import io
import lzma
import quopri
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from email.parser import BytesParser
from typing import IO, Any, Final

__all__ = [
    "ARCHIVE_KINDS",
    "FoundName",
    "Limits",
    "NameScanError",
    "Problem",
    "ScanCancelled",
    "UnparseableMessage",
    "archive_kind",
    "iter_archive_names",
    "iter_message_names",
    "name_variants",
    "parse_message",
    "part_names",
]


class NameScanError(Exception):
    """Base class of the only exceptions raised by this module."""


class UnparseableMessage(NameScanError):
    """The message's MIME structure cannot be read (the text says why)."""


class ScanCancelled(NameScanError):
    """The caller's ``should_stop`` callback asked to stop."""


class _LimitReached(NameScanError):
    """Internal: a per-message budget is spent (never escapes this module)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds of the work done for one message.

    ``max_depth``
        Archive levels opened: an archive attached to the message is level 1, an archive
        inside it level 2, ...  A compressed tar (``.tar.gz``) is one level.  0 disables
        archive inspection (every archive found is then a :class:`Problem`).
    ``max_members``
        Archive members listed per message, all archives together.
    ``max_bytes``
        Bytes decompressed per message, all archives together: tar streams are read
        through (their headers are spread over the data), nested archives are
        decompressed into memory, and the first bytes of each member are decompressed to
        recognise nested archives.
    ``max_parts``
        MIME parts per message; a message with more is :class:`UnparseableMessage`.
    """

    max_depth: int = 4
    max_members: int = 10_000
    max_bytes: int = 64 * 1024 * 1024
    max_parts: int = 10_000


@dataclass(frozen=True, slots=True)
class FoundName:
    """One candidate name to test, and where it was found.

    ``where`` lists the containers from the outside in: the attachment's name (or
    ``MIME part N``) and the names of the nested archives; it is empty for the name of a
    MIME part itself.  ``source`` tells what carried the name: ``filename`` or ``name``
    (MIME parameters), ``zip``, ``tar`` or ``gzip``.
    """

    name: str
    source: str
    where: tuple[str, ...] = ()

    def describe(self) -> str:
        """A log-safe description such as ``'x.exe' in archive 'a.zip' > 'b.zip'``."""
        text = repr(self.name)
        if self.where:
            text += " in archive " + " > ".join(repr(w) for w in self.where)
        return text


@dataclass(frozen=True, slots=True)
class Problem:
    """An archive (``where``, outside in) that could not be fully inspected.

    ``kind`` is ``encrypted``, ``damaged``, ``unsupported``, ``limit`` or ``skipped``
    (archive inspection not done, e.g. for a message above the size limit).
    """

    where: tuple[str, ...]
    kind: str
    reason: str

    def describe(self) -> str:
        """A log-safe description of the problem."""
        return f"archive {' > '.join(repr(w) for w in self.where)}: {self.kind}: {self.reason}"


ARCHIVE_KINDS: Final = frozenset({"zip", "tar", "gzip", "bzip2", "xz", "rar", "7z", "cab"})
"""Values :func:`archive_kind` may return.  ``rar``, ``7z`` and ``cab`` are recognised
but cannot be listed with the standard library: they are reported as ``unsupported``."""

_UNSUPPORTED: Final = frozenset({"rar", "7z", "cab"})
_SNIFF = 512
"""Bytes needed by :func:`archive_kind` (a tar header block)."""

_POLICY: Final = email.policy.default.clone(linesep="\n", raise_on_defect=False)
_COMPAT: Final = email.policy.compat32.clone(linesep="\n")


# -- names ----------------------------------------------------------------------------------


def _windows_form(name: str) -> str:
    """The name as Windows would store it: cut at NUL, trailing dots and spaces dropped."""
    return name.split("\x00", 1)[0].rstrip(" .")


def _redecode(name: str) -> list[str]:
    """Undecodable bytes (surrogate escapes) read again as UTF-8 and as Latin-1."""
    if not any("\udc80" <= ch <= "\udcff" for ch in name):
        return []
    raw = name.encode("utf-8", "surrogateescape")
    return [raw.decode("utf-8", "replace"), raw.decode("latin-1")]


def _decode_words(value: str) -> list[str]:
    """RFC 2047 decodings of ``value`` (strict and lenient), if it has encoded words."""
    if "=?" not in value:
        return []
    out: list[str] = []
    try:
        out.append(str(email.header.make_header(email.header.decode_header(value))))
    except Exception:  # bad base64, unknown charset, ...: the lenient reading below
        pass
    try:
        out.append(str(_POLICY.header_factory("X-Name", value)))
    except Exception:
        pass
    return out


def name_variants(name: str, *, mime: bool = False) -> list[str]:
    """The forms of ``name`` to test, the name itself first, without duplicates.

    Besides the name as found: without surrounding white space (MIME names), with RFC
    2047 encoded words decoded (MIME names), with undecodable bytes read as UTF-8 and
    Latin-1, and each of these as Windows stores it (cut at a NUL character, trailing
    dots and spaces removed).  Empty forms are dropped.
    """
    forms = [name]
    if mime:
        forms.append(name.strip())
        for form in list(forms):
            forms.extend(_decode_words(form))
    for form in list(forms):
        forms.extend(_redecode(form))
    for form in list(forms):
        forms.append(_windows_form(form))
        if mime:
            forms.append(form.strip())
    seen: dict[str, None] = {}
    for form in forms:
        if form and form not in seen:
            seen[form] = None
    return list(seen)


# -- MIME parts -----------------------------------------------------------------------------

_NAME_PARAMS: Final = {"content-disposition": "filename", "content-type": "name"}


def _modern_values(value: str, header: str, param: str) -> list[str]:
    """The parameter as the modern :mod:`email` header parser decodes it."""
    unfolded = value.replace("\r", "").replace("\n", "")
    parsed: Any = _POLICY.header_factory(header, unfolded)
    found = parsed.params.get(param)
    return [] if found is None else [str(found)]


def _compat_values(value: str, header: str, param: str) -> list[str]:
    """Every occurrence of the parameter as the legacy (compat32) parser decodes it.

    Unlike the modern parser it keeps duplicated parameters, and it reads some broken
    forms (an unquoted encoded word) the modern one drops.
    """
    if any("\udc80" <= ch <= "\udcff" for ch in value):
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    legacy = email.message.Message(policy=_COMPAT)
    legacy[header] = value
    out: list[str] = []
    for key, val in legacy.get_params([], header=header, unquote=True):
        if key.lower() != param:
            continue
        text = email.utils.collapse_rfc2231_value(val) if isinstance(val, tuple) else val
        out.append(str(text))
    return out


def part_names(part: email.message.Message) -> list[FoundName]:
    """The ``filename`` and ``name`` parameters of one MIME part, in every form to test.

    Every ``Content-Disposition`` and ``Content-Type`` field of the part is read (a
    duplicated field is not skipped), each by both the modern and the legacy parameter
    parser; the values go through :func:`name_variants`.  Raises
    :class:`UnparseableMessage` when neither parser can read such a field.
    """
    found: dict[tuple[str, str], None] = {}
    for header, value in part.raw_items():
        param = _NAME_PARAMS.get(header.lower())
        if param is None or not isinstance(value, str):
            continue
        values: list[str] = []
        errors: list[Exception] = []
        for reader in (_modern_values, _compat_values):
            try:
                values.extend(reader(value, header, param))
            except Exception as exc:  # the email package on hostile input
                errors.append(exc)
        if len(errors) == 2:
            raise UnparseableMessage(f"Cannot parse the {header} header: {errors[0]}")
        for val in values:
            for form in name_variants(val, mime=True):
                found[(param, form)] = None
    return [FoundName(name, source) for source, name in found]


def parse_message(data: bytes) -> email.message.EmailMessage:
    """Parse message bytes the way the filter does; :class:`UnparseableMessage` on failure."""
    try:
        msg = BytesParser(policy=_POLICY).parsebytes(data)
    except Exception as exc:  # e.g. RecursionError for absurdly deep nesting
        raise UnparseableMessage(str(exc) or type(exc).__name__) from exc
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def _transfer_encoding(part: email.message.Message) -> str:
    return str(part.get("content-transfer-encoding", "")).strip().lower()


def _encoded_message(part: email.message.Message) -> email.message.Message | None:
    """A ``message/*`` part sent base64 or quoted-printable encoded, decoded and parsed.

    RFC 2046 forbids such encodings, so the parser reads the encoded text as if it were
    the embedded message; some mail programs decode it and show its attachments.
    """
    cte = _transfer_encoding(part)
    if cte not in ("base64", "quoted-printable"):
        return None
    payload = part.get_payload()
    if not isinstance(payload, list) or len(payload) != 1:
        return None
    inner = payload[0]
    if not isinstance(inner, email.message.Message):
        return None
    try:
        encoded = inner.as_bytes(policy=_COMPAT) if len(inner) else _payload_bytes(inner)
        data = _b64decode(encoded) if cte == "base64" else quopri.decodestring(encoded)
        return parse_message(data)
    except Exception:  # optional leniency: the encoded text stays what was parsed
        return None


def _payload_bytes(part: email.message.Message) -> bytes:
    payload = part.get_payload()
    if isinstance(payload, str):
        return payload.encode("utf-8", "surrogateescape")
    return b""


def _b64decode(data: bytes) -> bytes:
    """Lenient base64: characters outside the alphabet dropped, missing padding added."""
    clean = data.translate(None, _NOT_B64)
    clean = clean[: len(clean) - len(clean) % 4] if len(clean) % 4 == 1 else clean
    try:
        return base64.b64decode(clean + b"=" * (-len(clean) % 4))
    except (binascii.Error, ValueError):
        return b""


_NOT_B64: Final = bytes(
    set(range(256)) - set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
)


def _payload_head(part: email.message.Message, size: int = _SNIFF) -> bytes:
    """About the first ``size`` decoded bytes of a leaf part, without decoding it all."""
    payload = part.get_payload()
    if not isinstance(payload, str):
        return b""
    cte = _transfer_encoding(part)
    if cte == "base64":
        return _b64decode(payload[: size * 2 + 256].encode("ascii", "ignore"))[:size]
    if cte == "quoted-printable":
        return quopri.decodestring(payload[: size * 4].encode("utf-8", "surrogateescape"))[:size]
    return payload[:size].encode("utf-8", "surrogateescape")


def iter_message_names(
    msg: email.message.Message,
    *,
    problems: list[Problem],
    limits: Limits | None = None,
    inspect_archives: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[FoundName]:
    """Yield every name to test in ``msg``: MIME part names, then their archives' members.

    Parts are visited in order, nested ``message/rfc822`` parts included (also when
    wrongly sent base64 or quoted-printable encoded); ``multipart/*`` containers carry no
    names of their own and are not tested, as in the original.  Each leaf payload that
    :func:`archive_kind` recognises is listed with :func:`iter_archive_names`; with
    ``inspect_archives=False`` archives are only recognised (from the first bytes of the
    payload) and reported as ``skipped`` problems.

    Raises :class:`UnparseableMessage` when the message has more than
    ``limits.max_parts`` parts or the email package fails on a part's headers, and
    :class:`ScanCancelled` as soon as ``should_stop()`` is true.
    """
    lim = limits or Limits()
    budget = _Budget(lim, should_stop)
    stack: list[email.message.Message] = [msg]
    count = 0
    while stack:
        budget.check_stop()
        part = stack.pop()
        count += 1
        if count > lim.max_parts:
            raise UnparseableMessage(f"Message has more than {lim.max_parts} MIME parts")
        try:
            maintype = part.get_content_maintype()
            children: list[email.message.Message] = []
            if part.is_multipart():
                children = [p for p in part.get_payload() if isinstance(p, email.message.Message)]
                if maintype == "message":
                    decoded = _encoded_message(part)
                    if decoded is not None:
                        children.append(decoded)
            container = maintype == "multipart" and part.is_multipart()
            names = [] if container else part_names(part)
        except NameScanError:
            raise
        except Exception as exc:  # the email package on hostile input
            raise UnparseableMessage(f"Cannot parse MIME part {count}: {exc}") from exc
        stack.extend(reversed(children))
        yield from names
        if children or part.is_multipart():
            continue
        label = names[0].name if names else f"MIME part {count}"
        yield from _part_archive(part, label, budget, problems, inspect_archives)


def _part_archive(
    part: email.message.Message,
    label: str,
    budget: _Budget,
    problems: list[Problem],
    inspect: bool,
) -> Iterator[FoundName]:
    """The archive members of one leaf part's payload, if it is an archive."""
    if not inspect:
        try:
            kind = archive_kind(_payload_head(part))
        except Exception:
            return
        if kind is not None:
            problems.append(Problem((label,), "skipped", f"{kind} archive not inspected"))
        return
    try:
        data = part.get_payload(decode=True)
    except Exception:  # the email package failed to decode: nothing to inspect
        return
    if isinstance(data, bytes) and archive_kind(data) is not None:
        yield from _iter_archive(data, 1, (label,), budget, problems)


# -- archives -------------------------------------------------------------------------------


class _Budget:
    """Members and bytes left for one message, and the cancellation check."""

    __slots__ = ("bytes", "limits", "members", "should_stop")

    def __init__(self, limits: Limits, should_stop: Callable[[], bool] | None) -> None:
        self.limits = limits
        self.should_stop = should_stop
        self.members = 0
        self.bytes = 0

    def check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise ScanCancelled("scan cancelled")

    def member(self) -> None:
        self.check_stop()
        if self.members >= self.limits.max_members:
            raise _LimitReached(f"more than {self.limits.max_members} archive members")
        self.members += 1

    def left(self) -> int:
        return max(0, self.limits.max_bytes - self.bytes)

    def take(self, n: int) -> None:
        self.check_stop()
        if self.bytes + n > self.limits.max_bytes:
            self.bytes = self.limits.max_bytes  # spent: later reads of any size fail
            raise _LimitReached(f"more than {self.limits.max_bytes} bytes decompressed")
        self.bytes += n


def _tar_checksum_ok(block: bytes) -> bool:
    if len(block) < 512 or block[0] == 0:
        return False
    field = block[148:156].replace(b"\x00", b" ").strip()
    if not field or any(c not in b"01234567" for c in field):
        return False
    stored = int(field, 8)
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:512])
    signed = (
        sum(struct.unpack("148b", block[:148])) + 256 + sum(struct.unpack("356b", block[156:512]))
    )
    return stored in (unsigned, signed)


def _zip_tail_ok(data: bytes) -> bool:
    try:
        return _zip_directory(data) is not None
    except Exception:
        return False


def archive_kind(data: bytes) -> str | None:
    """The archive format of ``data`` by its content (see :data:`ARCHIVE_KINDS`), or None.

    Given a whole payload, a zip appended to other data (a self-extracting archive) is
    recognised by a valid central directory at the end; given only the first 512 bytes,
    by the signature at the start.
    """
    head = bytes(data[:_SNIFF])
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08PK\x03\x04")):
        return "zip"
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    if (
        head.startswith(b"BZh")
        and head[3:4].isdigit()
        and head[3:4] != b"0"
        and head[4:10] in (b"1AY&SY", b"\x17rE8P\x90")
    ):
        return "bzip2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"Rar!\x1a\x07"):
        return "rar"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head.startswith(b"MSCF\x00\x00\x00\x00"):
        return "cab"
    if head[257:262] == b"ustar" or _tar_checksum_ok(head):
        return "tar"
    if len(data) > _SNIFF and b"PK\x05\x06" in data[-(0xFFFF + 22) :] and _zip_tail_ok(data):
        return "zip"
    return None


def iter_archive_names(
    data: bytes,
    *,
    problems: list[Problem],
    label: str = "archive",
    limits: Limits | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[FoundName]:
    """Yield the member names (in every form to test) of the archive ``data``.

    ``label`` names the archive in ``FoundName.where`` and ``Problem.where``.  Data that is
    not an archive yields nothing.  Nested archives are listed too, within ``limits``
    (fresh for this call).  Raises only :class:`ScanCancelled`.
    """
    budget = _Budget(limits or Limits(), should_stop)
    if archive_kind(data) is not None:
        yield from _iter_archive(data, 1, (label,), budget, problems)


def _iter_archive(
    data: bytes, depth: int, where: tuple[str, ...], budget: _Budget, problems: list[Problem]
) -> Iterator[FoundName]:
    """List one archive (and its nested archives); record its problems."""
    kind = archive_kind(data)
    if kind is None:
        return
    if depth > budget.limits.max_depth:
        reason = (
            "archive inspection disabled"
            if budget.limits.max_depth <= 0
            else f"{kind} archive nested deeper than {budget.limits.max_depth} levels"
        )
        problems.append(Problem(where, "limit", reason))
        return
    if kind in _UNSUPPORTED:
        problems.append(Problem(where, "unsupported", f"{kind} archives cannot be listed"))
        return
    try:
        if kind == "zip":
            yield from _iter_zip(data, depth, where, budget, problems)
        elif kind == "tar":
            reader = _CountingReader(io.BytesIO(data), budget, charge=False)
            yield from _iter_tar(reader, depth, where, budget, problems)
        else:
            yield from _iter_compressed(kind, data, depth, where, budget, problems)
    except ScanCancelled:
        raise
    except _LimitReached as exc:
        problems.append(Problem(where, "limit", str(exc)))
    except Exception as exc:  # library errors on damaged data (zlib, tarfile, lzma, ...)
        problems.append(Problem(where, "damaged", f"{type(exc).__name__}: {exc}"))


def _nested(
    head: bytes,
    read_all: Callable[[int], bytes],
    member: str,
    depth: int,
    where: tuple[str, ...],
    budget: _Budget,
    problems: list[Problem],
) -> Iterator[FoundName]:
    """Open a member whose first bytes show an archive.

    ``read_all(n)`` returns at most ``n`` bytes of the member's content and charges them
    to the budget (which raises :class:`_LimitReached` when spent).
    """
    kind = archive_kind(head)
    if kind is None:
        return
    inner = (*where, member)
    if depth + 1 > budget.limits.max_depth:
        problems.append(
            Problem(
                inner,
                "limit",
                f"{kind} archive nested deeper than {budget.limits.max_depth} levels",
            )
        )
        return
    left = budget.left()
    content = read_all(left + 1)
    if len(content) > left:
        raise _LimitReached(f"more than {budget.limits.max_bytes} bytes decompressed")
    yield from _iter_archive(content, depth + 1, inner, budget, problems)


# zip ---------------------------------------------------------------------------------------

_EOCD: Final = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR: Final = struct.Struct("<4sLQL")
_EOCD64: Final = struct.Struct("<4sQ2H2L4Q")
_CENTRAL: Final = struct.Struct("<4s4B4HL2L5H2L")
_LOCAL: Final = struct.Struct("<4s2B4HL2L2H")
_MAX_COMMENT: Final = 0xFFFF


def _zip_directory(data: bytes) -> tuple[int, int, int] | None:
    """``(start, size, shift)`` of a zip's central directory, or None if not found.

    ``shift`` is the number of bytes prepended to the archive (self-extracting archives),
    to add to the offsets stored in the directory.
    """
    lowest = max(0, len(data) - _EOCD.size - _MAX_COMMENT)
    pos = data.rfind(b"PK\x05\x06", lowest)
    while pos >= 0:
        if pos + _EOCD.size <= len(data):
            found = _zip_directory_at(data, pos)
            if found is not None:
                return found
        pos = data.rfind(b"PK\x05\x06", lowest, pos)
    return None


def _zip_directory_at(data: bytes, pos: int) -> tuple[int, int, int] | None:
    _sig, _disk, _cd_disk, _n_disk, total, size, offset, _comment = _EOCD.unpack_from(data, pos)
    end = pos
    if total == 0xFFFF or size == 0xFFFFFFFF or offset == 0xFFFFFFFF:
        loc = pos - _EOCD64_LOCATOR.size
        rec = loc - _EOCD64.size
        if (
            rec >= 0
            and data[loc : loc + 4] == b"PK\x06\x07"
            and data[rec : rec + 4] == b"PK\x06\x06"
        ):
            fields = _EOCD64.unpack_from(data, rec)
            total, size, offset = fields[7], fields[8], fields[9]
            end = rec
    start = end - size
    if start < 0 or start - offset < 0:
        return None
    if size and data[start : start + 4] != b"PK\x01\x02":
        return None
    if not size and total:
        return None
    return start, size, start - offset


def _zip_name_forms(raw: bytes, flags: int) -> list[str]:
    """A zip member name decoded as zip readers do: UTF-8 if flagged, else CP437 (and UTF-8)."""
    if flags & 0x800:
        return [raw.decode("utf-8", "replace")]
    forms = [raw.decode("cp437")]
    try:
        forms.append(raw.decode("utf-8"))
    except UnicodeDecodeError:
        pass
    return forms


def _zip_extra(extra: bytes) -> dict[int, bytes]:
    """The extra-field blocks by id (the first of each id)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, pos)
        out.setdefault(tag, extra[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return out


def _unicode_path(extra: dict[int, bytes]) -> list[str]:
    """The Info-ZIP Unicode Path (0x7075) name, which many zip tools show instead."""
    block = extra.get(0x7075)
    if block is None or len(block) < 5 or block[0] != 1:
        return []
    return [block[5:].decode("utf-8", "replace")]


@dataclass(slots=True)
class _ZipMember:
    names: list[str]
    flags: int
    method: int
    comp_size: int
    header: int


def _zip_members(data: bytes, start: int, size: int, shift: int) -> Iterator[_ZipMember]:
    """The central directory entries; raises ValueError where the directory is damaged."""
    pos, end = start, start + size
    while pos < end:
        if pos + _CENTRAL.size > len(data) or data[pos : pos + 4] != b"PK\x01\x02":
            raise ValueError(f"bad central directory entry at offset {pos}")
        fields = _CENTRAL.unpack_from(data, pos)
        flags, method = fields[5], fields[6]
        comp_size, name_len, extra_len, comment_len = fields[10], fields[12], fields[13], fields[14]
        header = fields[18]
        name_start = pos + _CENTRAL.size
        raw_name = data[name_start : name_start + name_len]
        extra = _zip_extra(data[name_start + name_len : name_start + name_len + extra_len])
        zip64 = extra.get(0x0001, b"")
        z64: list[int] = [
            v for (v,) in struct.iter_unpack("<Q", zip64[: len(zip64) - len(zip64) % 8])
        ]
        if fields[11] == 0xFFFFFFFF and z64:
            z64.pop(0)  # uncompressed size: not needed
        if comp_size == 0xFFFFFFFF and z64:
            comp_size = z64.pop(0)
        if header == 0xFFFFFFFF and z64:
            header = z64.pop(0)
        names = _zip_name_forms(raw_name, flags) + _unicode_path(extra)
        yield _ZipMember(names, flags, method, comp_size, header + shift)
        pos = name_start + name_len + extra_len + comment_len


def _zip_local(data: bytes, offset: int) -> tuple[list[str], int] | None:
    """Names in the local header at ``offset`` and where the member's data starts."""
    if offset < 0 or offset + _LOCAL.size > len(data) or data[offset : offset + 4] != b"PK\x03\x04":
        return None
    fields = _LOCAL.unpack_from(data, offset)
    flags, name_len, extra_len = fields[3], fields[10], fields[11]
    name_start = offset + _LOCAL.size
    raw = data[name_start : name_start + name_len]
    extra = _zip_extra(data[name_start + name_len : name_start + name_len + extra_len])
    return _zip_name_forms(raw, flags) + _unicode_path(extra), name_start + name_len + extra_len


def _zip_decompressor(method: int, comp: memoryview) -> tuple[Any, memoryview] | None:
    """A decompressor object for a zip compression method (and the data it reads)."""
    if method == 8:
        return zlib.decompressobj(-15), comp
    if method == 12:
        return bz2.BZ2Decompressor(), comp
    if method == 14 and len(comp) >= 9:
        prop_len = int.from_bytes(comp[2:4], "little")
        props = bytes(comp[4 : 4 + prop_len])
        if len(props) < 5 or props[0] >= 9 * 5 * 5:
            raise ValueError("bad LZMA properties")
        pb, rest = divmod(props[0], 45)
        lp, lc = divmod(rest, 9)
        spec = {
            "id": lzma.FILTER_LZMA1,
            "dict_size": int.from_bytes(props[1:5], "little"),
            "lc": lc,
            "lp": lp,
            "pb": pb,
        }
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=[spec]), comp[4 + prop_len :]
    return None


def _zip_read(method: int, comp: memoryview, limit: int) -> bytes:
    """Up to ``limit`` (> 0) bytes of a member's content; ValueError for unknown methods."""
    if method == 0:
        return bytes(comp[:limit])
    made = _zip_decompressor(method, comp)
    if made is None:
        raise ValueError(f"unsupported compression method {method}")
    dec, src = made
    out = bytearray()
    pos = 0
    chunk: bytes | memoryview
    if isinstance(dec, _ZLIB_TYPE):  # unused input comes back in unconsumed_tail
        while len(out) < limit and not dec.eof:
            chunk = dec.unconsumed_tail
            if not chunk:
                chunk = src[pos : pos + _STEP]
                pos += _STEP
            if not chunk:  # input exhausted: what zlib still holds, then stop
                out += dec.decompress(b"", limit - len(out))
                break
            out += dec.decompress(chunk, limit - len(out))
        return bytes(out)
    while len(out) < limit and not dec.eof:  # bz2 / lzma: needs_input
        if dec.needs_input:
            if pos >= len(src):
                break
            chunk = src[pos : pos + _STEP]
            pos += _STEP
        else:
            chunk = b""
        out += dec.decompress(chunk, limit - len(out))
    return bytes(out)


_STEP: Final = 64 * 1024
_ZLIB_TYPE: Final = type(zlib.decompressobj())


def _iter_zip(
    data: bytes, depth: int, where: tuple[str, ...], budget: _Budget, problems: list[Problem]
) -> Iterator[FoundName]:
    view = memoryview(data)
    directory = _zip_directory(data)
    seen_offsets: set[int] = set()
    encrypted = unchecked = False
    damaged: str | None = None
    if directory is None:
        damaged = "no central directory"
    else:
        try:
            for member in _zip_members(data, *directory):
                budget.member()
                seen_offsets.add(member.header)
                local = _zip_local(data, member.header)
                names = list(member.names)
                if local is not None:
                    names += local[0]
                yield from _forms(names, "zip", where)
                if member.flags & 0x41:
                    encrypted = True
                    continue
                if local is None or member.comp_size == 0 or member.names[0].endswith("/"):
                    continue
                if budget.left() <= 0:  # nothing left to look into members with
                    unchecked = True
                    continue
                comp = view[local[1] : local[1] + member.comp_size]
                yield from _zip_nested(member, comp, depth, where, budget, problems)
        except (_LimitReached, ScanCancelled):
            raise
        except Exception as exc:  # damaged directory: fall back to the local headers
            damaged = f"{type(exc).__name__}: {exc}"
    if damaged is not None:
        yield from _zip_scan_local(data, seen_offsets, where, budget)
        problems.append(Problem(where, "damaged", f"zip archive damaged: {damaged}"))
    if encrypted:
        problems.append(Problem(where, "encrypted", "zip archive has encrypted members"))
    if unchecked:
        problems.append(
            Problem(
                where,
                "limit",
                f"members not checked for nested archives: more than "
                f"{budget.limits.max_bytes} bytes decompressed",
            )
        )


def _zip_nested(
    member: _ZipMember,
    comp: memoryview,
    depth: int,
    where: tuple[str, ...],
    budget: _Budget,
    problems: list[Problem],
) -> Iterator[FoundName]:
    """A member that is itself an archive (recognised by its first bytes).

    Problems of the member (damaged data, a limit) are the member's own: the listing of
    the enclosing zip goes on, its names cost no decompression.
    """
    label = member.names[0]

    def read(n: int) -> bytes:
        content = _zip_read(member.method, comp, n)
        budget.take(len(content))
        return content

    try:
        yield from _nested(read(_SNIFF), read, label, depth, where, budget, problems)
    except ScanCancelled:
        raise
    except _LimitReached as exc:
        problems.append(Problem((*where, label), "limit", str(exc)))
    except Exception as exc:  # damaged member data
        problems.append(Problem((*where, label), "damaged", f"{type(exc).__name__}: {exc}"))


def _zip_scan_local(
    data: bytes, skip: set[int], where: tuple[str, ...], budget: _Budget
) -> Iterator[FoundName]:
    """Names of every local header found by its signature (for damaged archives)."""
    pos = data.find(b"PK\x03\x04")
    while pos >= 0:
        if pos not in skip:
            local = _zip_local(data, pos)
            if local is not None:
                budget.member()
                yield from _forms(local[0], "zip", where)
        pos = data.find(b"PK\x03\x04", pos + 4)


def _forms(names: Iterable[str], source: str, where: tuple[str, ...]) -> Iterator[FoundName]:
    """Every form of every name, each once."""
    seen: dict[str, None] = {}
    for name in names:
        for form in name_variants(name):
            seen.setdefault(form, None)
    for form in seen:
        yield FoundName(form, source, where)


# tar and compressed streams ----------------------------------------------------------------


class _CountingReader(io.RawIOBase):
    """A read-only stream that charges what it reads to the budget.

    A stream over bytes already in memory (a plain tar) is not charged (``charge=False``)
    but still checks for cancellation.  Bytes given back with :meth:`unread` are
    returned again first, without a second charge.
    """

    def __init__(self, source: Any, budget: _Budget, *, charge: bool = True) -> None:
        super().__init__()
        self._source = source
        self._budget = budget
        self._charge = charge
        self._pending = b""

    def readable(self) -> bool:
        return True

    def unread(self, data: bytes) -> None:
        """Return ``data`` (just read) to the front of the stream."""
        self._pending = data + self._pending

    def read(self, size: int | None = -1) -> bytes:
        want = self._budget.left() + 1 if size is None or size < 0 else size
        if self._pending:
            out, self._pending = self._pending[:want], self._pending[want:]
            return out
        data = bytes(self._source.read(want))
        self._budget.take(len(data) if self._charge else 0)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _iter_tar(
    stream: _CountingReader,
    depth: int,
    where: tuple[str, ...],
    budget: _Budget,
    problems: list[Problem],
) -> Iterator[FoundName]:
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            budget.member()
            yield from _forms([member.name], "tar", where)
            if not member.isreg() or member.size <= 0:
                continue
            extracted = archive.extractfile(member)
            if extracted is None:
                continue
            fh = extracted
            head = fh.read(_SNIFF)

            def rest(n: int, head: bytes = head, fh: IO[bytes] = fh) -> bytes:
                return head + fh.read(max(0, n - len(head)))

            yield from _nested(head, rest, member.name, depth, where, budget, problems)


def _gzip_name(data: bytes) -> bytes | None:
    """The original file name stored in a gzip header (``FNAME``), if any."""
    if len(data) < 10 or data[:3] != b"\x1f\x8b\x08":
        return None
    flags, pos = data[3], 10
    if flags & 0x04:
        if pos + 2 > len(data):
            return None
        pos += 2 + int.from_bytes(data[pos : pos + 2], "little")
    if not flags & 0x08:
        return None
    end = data.find(b"\x00", pos)
    return data[pos:end] if end >= 0 else None


def _open_stream(kind: str, data: bytes) -> Any:
    """A decompressing file object reading ``data``."""
    if kind == "gzip":
        return gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(io.BytesIO(data))
    return lzma.LZMAFile(io.BytesIO(data))


def _iter_compressed(
    kind: str,
    data: bytes,
    depth: int,
    where: tuple[str, ...],
    budget: _Budget,
    problems: list[Problem],
) -> Iterator[FoundName]:
    member = where[-1]
    if kind == "gzip":
        raw_name = _gzip_name(data)
        if raw_name:
            budget.member()
            forms = [raw_name.decode("latin-1")]
            try:
                forms.append(raw_name.decode("utf-8"))
            except UnicodeDecodeError:
                pass
            yield from _forms(forms, "gzip", where)
            member = forms[-1]
    with _open_stream(kind, data) as source:
        reader = _CountingReader(source, budget)
        head = reader.read(_SNIFF)
        if archive_kind(head) == "tar":  # a compressed tar is one archive
            reader.unread(head)
            yield from _iter_tar(reader, depth, where, budget, problems)
            return

        def rest(n: int) -> bytes:
            return head + reader.read(max(0, n - len(head)))

        yield from _nested(head, rest, member, depth, where, budget, problems)
