"""The pure-Python GDBM reader, checked against files written by Courier's makedat."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from courier_pyfilter.mta.errors import GdbmFormatError, GdbmUnavailableError
from courier_pyfilter.mta.gdbm import GdbmImage, dbm_gnu_available, gdbm_hash, read_gdbm

BuildDat = Callable[[str, Path], Path]

SMALL_SOURCE = (
    "127.0.0.1\tallow,RELAYCLIENT\n"
    ":0000:0000:0000:0000:0000:0000:0000:0001\tallow,RELAYCLIENT\n"
    "10\tallow,RELAYCLIENT\n"
    '192.168.5\tallow,BLOCK="550 Shoo! Go away!"\n'
    "example.com\n"
    "# a comment\n"
    "\n"
    "caf\u00e9.example\tnon-ascii key\n"
    "x\ty\tz\n"
)


def test_reads_small_courier_file(tmp_path: Path, build_dat: BuildDat) -> None:
    dat = build_dat(SMALL_SOURCE, tmp_path / "small.dat")
    table = read_gdbm(dat, backend="pure")
    assert table == {
        b"127.0.0.1": b"allow,RELAYCLIENT",
        b":0000:0000:0000:0000:0000:0000:0000:0001": b"allow,RELAYCLIENT",
        b"10": b"allow,RELAYCLIENT",
        b"192.168.5": b'allow,BLOCK="550 Shoo! Go away!"',
        b"example.com": b"1",
        "caf\u00e9.example".encode(): b"non-ascii key",
        b"x": b"y\tz",
    }


def test_lookup_uses_gdbm_hash_and_finds_every_key(tmp_path: Path, build_dat: BuildDat) -> None:
    dat = build_dat(SMALL_SOURCE, tmp_path / "small.dat")
    image = GdbmImage.parse(dat.read_bytes())
    for key, value in image.items():
        assert image.get(key) == value
    assert image.get("caf\u00e9.example".encode()) == b"non-ascii key"
    assert image.get(b"127.0.0") is None
    assert image.get(b"") is None


def test_large_file_with_bucket_splits(
    tmp_path: Path,
    build_dat: BuildDat,
    system_dbm_dump: Callable[[Path], dict[bytes, bytes]],
) -> None:
    lines = [f"10.{i // 256}.{i % 256}.{i % 7}\tvalue-{i}-{'x' * (i % 50)}" for i in range(6000)]
    lines += [f"\u00fc\u00df{i}.example\t\u00e4{i}" for i in range(300)]
    dat = build_dat("\n".join(lines) + "\n", tmp_path / "big.dat")
    expected = system_dbm_dump(dat)
    assert len(expected) == 6300
    image = GdbmImage.parse(dat.read_bytes())
    assert image.to_dict() == expected
    assert read_gdbm(dat, backend="pure") == expected
    # header sanity: this file needed more than one bucket
    assert len({a for a in image._directory}) > 1
    for key, value in list(expected.items())[::37]:
        assert image.get(key) == value
    assert image.get(b"10.0.0.1") is None  # 10.0.0.0 has i%7 == 0: only ".0" exists


def test_cross_check_with_system_dbm_gnu(
    tmp_path: Path,
    build_dat: BuildDat,
    system_dbm_dump: Callable[[Path], dict[bytes, bytes]],
) -> None:
    dat = build_dat(SMALL_SOURCE, tmp_path / "small.dat")
    assert read_gdbm(dat, backend="pure") == system_dbm_dump(dat)


def test_gdbm_hash_known_values() -> None:
    # values stored by libgdbm 1.23 in bucket elements (seen in an aliases.dat)
    assert gdbm_hash(b"root@vm") == 348504038
    assert gdbm_hash(b"postmaster@vm") == 1119404768
    assert gdbm_hash(b"Foo2@other.example") == 1354264423


def test_backend_selection(tmp_path: Path, build_dat: BuildDat) -> None:
    dat = build_dat("a\tb\n", tmp_path / "one.dat")
    assert read_gdbm(dat, backend="auto") == {b"a": b"b"}
    if dbm_gnu_available():
        assert read_gdbm(dat, backend="dbm.gnu") == {b"a": b"b"}
    else:
        with pytest.raises(GdbmUnavailableError):
            read_gdbm(dat, backend="dbm.gnu")
    with pytest.raises(ValueError):
        read_gdbm(dat, backend="bogus")  # type: ignore[arg-type]


def test_missing_file_is_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_gdbm(tmp_path / "nope.dat", backend="pure")


def test_not_gdbm_is_format_error(tmp_path: Path) -> None:
    path = tmp_path / "text.dat"
    path.write_text("127.0.0.1\tallow\n")
    with pytest.raises(GdbmFormatError, match="magic"):
        read_gdbm(path, backend="pure")


def test_size_limit(tmp_path: Path, build_dat: BuildDat) -> None:
    dat = build_dat("a\tb\n", tmp_path / "one.dat")
    with pytest.raises(Exception, match="larger than"):
        read_gdbm(dat, backend="pure", max_size=100)


def test_byte_swapped_image_is_read() -> None:
    """Build a tiny big-endian 64-bit image by hand and read it back."""
    bucket_elems = 4
    header = struct.Struct(">Iiqiiii")
    bucket_header = 8 + 6 * 16 + 8
    element = struct.Struct(">i4sqii")
    dir_offset = 64
    bucket_offset = 128
    bucket_size = bucket_header + bucket_elems * element.size
    record_offset = bucket_offset + bucket_size
    key, value = b"key", b"value"
    data = bytearray(record_offset + len(key) + len(value))
    header.pack_into(data, 0, 0x13579ACF, 512, dir_offset, 8, 0, bucket_size, bucket_elems)
    struct.pack_into(">q", data, dir_offset, bucket_offset)
    for i in range(bucket_elems):
        element.pack_into(data, bucket_offset + bucket_header + i * element.size, -1, b"", 0, 0, 0)
    slot = gdbm_hash(key) % bucket_elems
    element.pack_into(
        data,
        bucket_offset + bucket_header + slot * element.size,
        gdbm_hash(key),
        key[:4],
        record_offset,
        len(key),
        len(value),
    )
    data[record_offset:] = key + value
    image = GdbmImage.parse(bytes(data))
    assert image.get(b"key") == b"value"
    assert image.to_dict() == {b"key": b"value"}


def _exercise(data: bytes) -> None:
    try:
        image = GdbmImage.parse(data)
        image.to_dict()
        image.get(b"127.0.0.1")
        image.get(b"")
    except GdbmFormatError:
        pass


@given(st.binary(max_size=2048))
@settings(max_examples=300, deadline=None)
def test_random_bytes_only_raise_format_error(data: bytes) -> None:
    _exercise(data)


@given(
    st.binary(min_size=4, max_size=64).map(lambda b: struct.pack("<I", 0x13579ACF) + b[4:]),
)
@settings(max_examples=300, deadline=None)
def test_random_bytes_with_magic_only_raise_format_error(data: bytes) -> None:
    _exercise(data)


@pytest.fixture
def real_image(tmp_path_factory: pytest.TempPathFactory, build_dat: BuildDat) -> bytes:
    path = tmp_path_factory.mktemp("real") / "real.dat"
    return build_dat(SMALL_SOURCE, path).read_bytes()


@given(cut=st.integers(min_value=0, max_value=20000), data=st.data())
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_truncated_or_mutated_real_file_only_raises_format_error(
    real_image: bytes, cut: int, data: st.DataObject
) -> None:
    mutated = bytearray(real_image[:cut])
    if mutated:
        for _ in range(data.draw(st.integers(0, 8))):
            pos = data.draw(st.integers(0, len(mutated) - 1))
            mutated[pos] = data.draw(st.integers(0, 255))
    _exercise(bytes(mutated))
