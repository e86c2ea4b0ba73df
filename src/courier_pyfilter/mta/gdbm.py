"""Read-only access to GDBM database files (Courier's ``*.dat`` files).

Courier on Debian builds ``smtpaccess.dat``, ``aliases.dat`` and ``hosteddomains.dat``
with libgdbm.  Python's :mod:`dbm.gnu` can read them, but only when CPython was built
against libgdbm, which is often not the case (pyenv builds, slim images).  This module
therefore carries a small pure-Python reader of the GDBM on-disk format, used whenever
:mod:`dbm.gnu` is missing (or when asked for explicitly).

The pure reader is sans-I/O: :meth:`GdbmImage.parse` takes the whole file as bytes.
It understands the native GDBM layouts written by libgdbm 1.x:

* header magics ``0x13579ace`` (original), ``0x13579acd`` (32-bit offsets),
  ``0x13579acf`` (64-bit offsets) and the "numsync" variants ``0x13579ad0`` /
  ``0x13579ad1`` (libgdbm >= 1.21 extended header);
* either byte order (libgdbm itself only opens files of its own byte order);
* the hash directory, hash buckets with their bucket elements, and the key/data records.

Only lookups and iteration are supported; free-space ("avail") information is ignored.
Any inconsistency raises :class:`~courier_pyfilter.mta.errors.GdbmFormatError`; no other
exception escapes :meth:`GdbmImage.parse`, :meth:`GdbmImage.get` or
:meth:`GdbmImage.items` for any input bytes.
"""

from __future__ import annotations

import importlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from .errors import GdbmError, GdbmFormatError, GdbmUnavailableError

__all__ = [
    "DEFAULT_MAX_FILE_SIZE",
    "GdbmBackend",
    "GdbmImage",
    "dbm_gnu_available",
    "gdbm_hash",
    "read_gdbm",
]

GdbmBackend = Literal["auto", "pure", "dbm.gnu"]
"""Which implementation reads a GDBM file: ``auto`` = ``dbm.gnu`` when importable."""

DEFAULT_MAX_FILE_SIZE = 256 * 1024 * 1024
"""Files larger than this are refused by :func:`read_gdbm` (bytes)."""

_OMAGIC = 0x13579ACE
_MAGIC32 = 0x13579ACD
_MAGIC64 = 0x13579ACF
_NUMSYNC_MAGIC32 = 0x13579AD0
_NUMSYNC_MAGIC64 = 0x13579AD1
_KNOWN_MAGICS = {_OMAGIC, _MAGIC32, _MAGIC64, _NUMSYNC_MAGIC32, _NUMSYNC_MAGIC64}

_SMALL = 4  # bytes of the key kept inside a bucket element
_BUCKET_AVAIL = 6  # avail elements stored inside every bucket
_EMPTY = -1  # hash value of an unused bucket element


def gdbm_hash(key: bytes) -> int:
    """Return libgdbm's 31-bit hash of *key* (bytes are signed ``char`` as on amd64)."""
    value = (0x238F13AF * len(key)) & 0xFFFFFFFF
    for index, byte in enumerate(key):
        signed = byte - 256 if byte >= 128 else byte
        value = (value + ((signed << (index * 5 % 24)) & 0xFFFFFFFF)) & 0x7FFFFFFF
    return (1103515243 * value + 12345) & 0x7FFFFFFF


@dataclass(frozen=True, slots=True)
class _Layout:
    """Struct formats for one byte order and offset width."""

    endian: str
    off: str  # "q" or "i"

    @property
    def off_size(self) -> int:
        return 8 if self.off == "q" else 4

    @property
    def header(self) -> struct.Struct:
        # magic, block_size, dir, dir_size, dir_bits, bucket_size, bucket_elems
        return struct.Struct(f"{self.endian}Ii{self.off}iiii")

    @property
    def avail_elem_size(self) -> int:
        # int av_size; off_t av_adr (with alignment padding)
        return 16 if self.off == "q" else 8

    @property
    def bucket_header_size(self) -> int:
        # int av_count; avail_elem[6]; int bucket_bits; int count
        start = self.off_size  # av_count padded to the alignment of avail_elem
        return start + _BUCKET_AVAIL * self.avail_elem_size + 8

    @property
    def element(self) -> struct.Struct:
        # int hash_value; char key_start[4]; off_t data_pointer; int key_size; int data_size
        return struct.Struct(f"{self.endian}i{_SMALL}s{self.off}ii")


@dataclass(frozen=True, slots=True)
class _Header:
    layout: _Layout
    block_size: int
    dir_offset: int
    dir_size: int
    dir_bits: int
    bucket_size: int
    bucket_elems: int


def _read_header(data: bytes) -> _Header:
    if len(data) < 8:
        raise GdbmFormatError("file too short for a GDBM header")
    endian = ""
    for candidate in ("<", ">"):
        (magic,) = struct.unpack_from(f"{candidate}I", data, 0)
        if magic in _KNOWN_MAGICS:
            endian = candidate
            break
    else:
        raise GdbmFormatError("not a GDBM file (bad magic number)")
    if magic in (_MAGIC64, _NUMSYNC_MAGIC64):
        widths = ["q"]
    elif magic in (_MAGIC32, _NUMSYNC_MAGIC32):
        widths = ["i"]
    else:  # the original magic: offset width is that of the writer; try both
        widths = ["q", "i"]
    problems: list[str] = []
    for width in widths:
        layout = _Layout(endian, width)
        try:
            return _check_header(data, layout)
        except GdbmFormatError as exc:
            problems.append(str(exc))
    raise GdbmFormatError("; ".join(problems))


def _check_header(data: bytes, layout: _Layout) -> _Header:
    fmt = layout.header
    if len(data) < fmt.size:
        raise GdbmFormatError("file too short for a GDBM header")
    _magic, block_size, dir_offset, dir_size, dir_bits, bucket_size, bucket_elems = fmt.unpack_from(
        data, 0
    )
    size = len(data)
    if not 0 <= dir_bits <= 30:
        raise GdbmFormatError(f"implausible directory bits {dir_bits}")
    if dir_size != (1 << dir_bits) * layout.off_size:
        raise GdbmFormatError("directory size does not match directory bits")
    if dir_offset < fmt.size or dir_offset + dir_size > size:
        raise GdbmFormatError("directory lies outside the file")
    if block_size <= 0 or bucket_elems <= 0:
        raise GdbmFormatError("invalid block size or bucket element count")
    needed = layout.bucket_header_size + bucket_elems * layout.element.size
    if bucket_size < needed:
        raise GdbmFormatError("bucket size too small for its element count")
    if bucket_size > size:
        raise GdbmFormatError("bucket size larger than the file")
    return _Header(layout, block_size, dir_offset, dir_size, dir_bits, bucket_size, bucket_elems)


@dataclass(frozen=True, slots=True)
class _Element:
    hash_value: int
    key_start: bytes
    offset: int
    key_size: int
    data_size: int


class GdbmImage:
    """A parsed, read-only view of a complete GDBM file held in memory.

    Build it with :meth:`parse`.  Lookups follow libgdbm's own algorithm (hash, directory,
    bucket, linear probing), so a lookup costs the same whatever the database size.
    """

    __slots__ = ("_data", "_directory", "_header")

    def __init__(self, data: bytes, header: _Header, directory: tuple[int, ...]) -> None:
        """Use :meth:`parse` instead; this stores already validated parts."""
        self._data = data
        self._header = header
        self._directory = directory

    @classmethod
    def parse(cls, data: bytes) -> GdbmImage:
        """Validate the header and hash directory of *data* (a whole GDBM file).

        Raises :class:`GdbmFormatError` when *data* is not a readable GDBM image.
        """
        data = bytes(data)
        header = _read_header(data)
        layout = header.layout
        count = header.dir_size // layout.off_size
        directory = struct.unpack_from(
            f"{layout.endian}{count}{layout.off}", data, header.dir_offset
        )
        for address in set(directory):
            if address < 0 or address + header.bucket_size > len(data):
                raise GdbmFormatError(f"bucket address {address} lies outside the file")
        return cls(data, header, directory)

    def _elements(self, bucket: int) -> list[_Element]:
        header = self._header
        layout = header.layout
        element = layout.element
        base = bucket + layout.bucket_header_size
        result = []
        for index in range(header.bucket_elems):
            hash_value, key_start, offset, key_size, data_size = element.unpack_from(
                self._data, base + index * element.size
            )
            result.append(_Element(hash_value, key_start, offset, key_size, data_size))
        return result

    def _record(self, item: _Element) -> tuple[bytes, bytes]:
        if item.offset < 0 or item.key_size < 0 or item.data_size < 0:
            raise GdbmFormatError("negative record offset or size")
        end = item.offset + item.key_size + item.data_size
        if end > len(self._data):
            raise GdbmFormatError("key/data record lies outside the file")
        key = self._data[item.offset : item.offset + item.key_size]
        value = self._data[item.offset + item.key_size : end]
        return key, value

    def get(self, key: bytes) -> bytes | None:
        """Return the data stored under *key*, or ``None`` when the key is absent."""
        header = self._header
        hash_value = gdbm_hash(key)
        bucket = self._directory[hash_value >> (31 - header.dir_bits)]
        elements = self._elements(bucket)
        start = hash_value % header.bucket_elems
        for step in range(header.bucket_elems):
            item = elements[(start + step) % header.bucket_elems]
            if item.hash_value == _EMPTY:
                return None
            if (
                item.hash_value == hash_value
                and item.key_size == len(key)
                and item.key_start[: min(len(key), _SMALL)] == key[:_SMALL]
            ):
                found_key, value = self._record(item)
                if found_key == key:
                    return value
        return None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Yield every ``(key, data)`` pair, bucket by bucket (order is unspecified)."""
        seen: set[int] = set()
        for bucket in self._directory:
            if bucket in seen:
                continue
            seen.add(bucket)
            for item in self._elements(bucket):
                if item.hash_value != _EMPTY:
                    yield self._record(item)

    def to_dict(self) -> dict[bytes, bytes]:
        """Return all pairs as a dictionary."""
        return dict(self.items())


def dbm_gnu_available() -> bool:
    """Return whether :mod:`dbm.gnu` (CPython's libgdbm binding) is importable."""
    try:
        importlib.import_module("dbm.gnu")
    except ImportError:
        return False
    return True


def _read_with_dbm_gnu(path: str | os.PathLike[str]) -> dict[bytes, bytes]:
    try:
        gnu = importlib.import_module("dbm.gnu")
    except ImportError as exc:
        raise GdbmUnavailableError("dbm.gnu is not importable in this Python") from exc
    try:
        # "u": do not take the file lock, makedat replaces files by rename anyway
        db = gnu.open(os.fspath(path), "ru")
    except gnu.error as exc:
        raise GdbmError(f"cannot open {os.fspath(path)!r} with dbm.gnu: {exc}") from exc
    try:
        result: dict[bytes, bytes] = {}
        key = db.firstkey()
        while key is not None:
            result[bytes(key)] = bytes(db[key])
            key = db.nextkey(key)
        return result
    finally:
        db.close()


def read_gdbm(
    path: str | os.PathLike[str],
    *,
    backend: GdbmBackend = "auto",
    max_size: int = DEFAULT_MAX_FILE_SIZE,
) -> dict[bytes, bytes]:
    """Read every key/data pair of the GDBM file at *path*.

    *backend* ``"auto"`` uses :mod:`dbm.gnu` when importable and the pure reader
    otherwise; ``"pure"`` and ``"dbm.gnu"`` force one implementation.  Raises
    :class:`FileNotFoundError`/:class:`PermissionError` (plain :class:`OSError`) when the
    file cannot be opened, and :class:`GdbmError` (or a subclass) when it cannot be read
    as GDBM.
    """
    if backend == "dbm.gnu" or (backend == "auto" and dbm_gnu_available()):
        os.stat(path)  # report a missing file as OSError, like the pure reader
        return _read_with_dbm_gnu(path)
    if backend not in ("auto", "pure"):
        raise ValueError(f"unknown GDBM backend {backend!r}")
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_size:
            raise GdbmError(f"{os.fspath(path)!r} is larger than {max_size} bytes")
        data = handle.read(max_size + 1)
    try:
        return GdbmImage.parse(data).to_dict()
    except GdbmFormatError as exc:
        raise GdbmFormatError(f"{os.fspath(path)!r}: {exc}") from exc
