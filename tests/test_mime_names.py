"""``mime_names``: MIME part names and archive member names from untrusted bytes."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import struct
import tarfile
import zipfile
import zlib
from email.message import EmailMessage

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from courier_pyfilter.mime_names import (
    FoundName,
    Limits,
    NameScanError,
    Problem,
    ScanCancelled,
    UnparseableMessage,
    archive_kind,
    iter_archive_names,
    iter_message_names,
    name_variants,
    parse_message,
    part_names,
)

# -- builders -------------------------------------------------------------------------------


def make_zip(
    members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED, *, extra: bytes = b""
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            info.extra = extra
            zf.writestr(info, data)
    return buf.getvalue()


def make_tar(members: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:  # type: ignore[call-overload]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def make_gzip(name: str | None, data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename=name or "", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def encrypt_flags(data: bytes) -> bytes:
    """The zip with the 'encrypted' flag set in every local and central header."""
    out = bytearray(data)
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = out.find(sig)
        while pos >= 0:
            (flags,) = struct.unpack_from("<H", out, pos + flag_at)
            struct.pack_into("<H", out, pos + flag_at, flags | 1)
            pos = out.find(sig, pos + 4)
    return bytes(out)


def listing(data: bytes, **kw: object) -> tuple[list[FoundName], list[Problem]]:
    problems: list[Problem] = []
    names = list(iter_archive_names(data, problems=problems, label="att", **kw))  # type: ignore[arg-type]
    return names, problems


def names_of(found: list[FoundName]) -> list[str]:
    return [f.name for f in found]


INNER = make_zip([("evil.exe", b"MZ" * 50)])


# -- archive_kind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (make_zip([("a", b"x")]), "zip"),
        (make_tar([("a", b"x")]), "tar"),
        (make_tar([("a", b"x")], "w:gz"), "gzip"),
        (make_tar([("a", b"x")], "w:bz2"), "bzip2"),
        (make_tar([("a", b"x")], "w:xz"), "xz"),
        (b"Rar!\x1a\x07\x01\x00" + bytes(100), "rar"),
        (b"7z\xbc\xaf\x27\x1c" + bytes(100), "7z"),
        (b"MSCF\x00\x00\x00\x00" + bytes(100), "cab"),
        (b"%PDF-1.7\n" + bytes(2000), None),
        (b"", None),
        (b"BZh", None),
        (bytes(1024), None),
    ],
)
def test_archive_kind_by_content(data: bytes, kind: str | None) -> None:
    assert archive_kind(data) == kind


def test_archive_kind_finds_a_zip_appended_to_other_data() -> None:
    sfx = b"MZ" + bytes(5000) + make_zip([("evil.exe", b"x")])
    assert archive_kind(sfx) == "zip"
    assert archive_kind(sfx[:512]) is None  # from the first bytes alone: no
    names, problems = listing(sfx)
    assert "evil.exe" in names_of(names)
    assert problems == []


def test_v7_tar_without_magic_is_recognised_by_checksum() -> None:
    data = make_tar([("old.exe", b"x")], "w")
    block = bytearray(data[:512])
    block[257:265] = bytes(8)  # no "ustar" magic: an old v7 header
    block[148:156] = b"        "
    block[148:156] = b"%06o\x00 " % sum(block)
    assert archive_kind(bytes(block) + data[512:]) == "tar"


# -- names ----------------------------------------------------------------------------------


def test_name_variants() -> None:
    assert name_variants("a.exe") == ["a.exe"]
    assert name_variants("a.exe. ") == ["a.exe. ", "a.exe"]
    assert name_variants("a.exe\x00.txt") == ["a.exe\x00.txt", "a.exe"]
    assert "evil.exe" in name_variants(" =?utf-8?B?ZXZpbC5leGU=?= ", mime=True)
    assert "évil.exe" in name_variants("\udcc3\udca9vil.exe")
    assert name_variants("") == []


def test_name_variants_of_a_trailing_newline_keep_the_newline_first() -> None:
    assert name_variants("evil.exe\n") == ["evil.exe\n"]
    assert name_variants("evil.exe\n", mime=True) == ["evil.exe\n", "evil.exe"]


def _part(raw: bytes) -> EmailMessage:
    return parse_message(raw)


def test_part_names_reads_both_parameters_and_both_parsers() -> None:
    part = _part(
        b'Content-Type: application/octet-stream; name="n.exe"\n'
        b'Content-Disposition: attachment; filename="a.txt"; filename="b.exe"\n\nx\n'
    )
    found = {(f.source, f.name) for f in part_names(part)}
    # the modern parser drops the duplicated parameter, the legacy one keeps it
    assert found == {("name", "n.exe"), ("filename", "a.txt"), ("filename", "b.exe")}


@pytest.mark.parametrize(
    "value",
    [
        b'attachment; filename=(comment)"evil.exe"',  # only the modern parser
        b'attachment; filename="evil.exe" (trailing comment)',  # only the modern parser
        b"attachment; filename=\"a.txt\"; filename*=utf-8''evil.exe",  # only the legacy one
    ],
)
def test_part_names_needs_both_parsers(value: bytes) -> None:
    part = _part(b"Content-Disposition: " + value + b"\n\nx\n")
    assert "evil.exe" in names_of(part_names(part))


def test_part_names_rfc2231_continuations_with_charset() -> None:
    part = _part(
        b"Content-Disposition: attachment;\n"
        b' filename*0*=utf-8\'\'%C3%A9v%69l; filename*1=".e"; filename*2="xe"\n\nx\n'
    )
    assert "\u00e9vil.exe" in names_of(part_names(part))


def test_part_names_rfc2047_quoted_and_unquoted() -> None:
    quoted = _part(b'Content-Type: application/x; name="=?utf-8?B?ZXZpbC5leGU=?="\n\nx\n')
    unquoted = _part(b"Content-Type: application/x; name==?utf-8?Q?evil=2Eexe?=\n\nx\n")
    assert "evil.exe" in names_of(part_names(quoted))
    assert "evil.exe" in names_of(part_names(unquoted))


def test_part_names_every_header_occurrence() -> None:
    part = _part(
        b'Content-Disposition: attachment; filename="a.txt"\n'
        b'Content-Disposition: attachment; filename="b.exe"\n\nx\n'
    )
    assert {"a.txt", "b.exe"} <= set(names_of(part_names(part)))


def test_part_names_raw_utf8() -> None:
    part = _part('Content-Disposition: attachment; filename="\u00e9t\u00e9.pdf"\n\nx\n'.encode())
    assert "\u00e9t\u00e9.pdf" in names_of(part_names(part))


# -- messages -------------------------------------------------------------------------------


def multipart(*parts: bytes, boundary: bytes = b"BOUND") -> bytes:
    body = b"".join(b"--" + boundary + b"\n" + p + b"\n" for p in parts)
    return (
        b"From: a@example.com\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\n\n'
        + body + b"--" + boundary + b"--\n"
    )  # fmt: skip


def attachment(name: str, data: bytes) -> bytes:
    import base64

    return (
        b"Content-Type: application/octet-stream\n"
        b'Content-Disposition: attachment; filename="' + name.encode() + b'"\n'
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(data)
    )


def scan(raw: bytes, **kw: object) -> tuple[list[FoundName], list[Problem]]:
    problems: list[Problem] = []
    found = list(iter_message_names(parse_message(raw), problems=problems, **kw))  # type: ignore[arg-type]
    return found, problems


def test_message_names_in_order_with_archive_members() -> None:
    raw = multipart(
        b"Content-Type: text/plain\n\nhello",
        attachment("docs.zip", make_zip([("readme.txt", b"x"), ("inner.zip", INNER)])),
    )
    found, problems = scan(raw)
    assert [(f.name, f.where) for f in found] == [
        ("docs.zip", ()),
        ("readme.txt", ("docs.zip",)),
        ("inner.zip", ("docs.zip",)),
        ("evil.exe", ("docs.zip", "inner.zip")),
    ]
    assert found[-1].describe() == "'evil.exe' in archive 'docs.zip' > 'inner.zip'"
    assert problems == []


def test_multipart_container_names_are_not_tested_but_message_parts_are() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="B"; name="container.exe"\n\n'
        b'--B\nContent-Type: message/rfc822; name="fwd.eml"\n\n'
        b'Content-Type: text/plain; name="inner.txt"\n\nhi\n--B--\n'
    )
    assert names_of(scan(raw)[0]) == ["fwd.eml", "inner.txt"]


def test_unnamed_archive_part_is_labelled_by_position() -> None:
    raw = multipart(b"Content-Type: text/plain\n\nhi", attachment("", make_zip([("a.txt", b"")])))
    found, _ = scan(raw)
    assert found[-1].where == ("MIME part 3",)


def test_base64_encoded_message_part_is_decoded() -> None:
    import base64

    inner = b'Content-Type: application/octet-stream; name="evil.exe"\n\nxx\n'
    raw = multipart(
        b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(inner)
    )
    assert "evil.exe" in names_of(scan(raw)[0])


def test_too_many_parts_is_unparseable() -> None:
    raw = multipart(*[b"Content-Type: text/plain\n\nx"] * 10)
    with pytest.raises(UnparseableMessage, match="more than 5 MIME parts"):
        scan(raw, limits=Limits(max_parts=5))
    assert len(scan(raw, limits=Limits(max_parts=11))[0]) == 0


def test_deep_nesting_is_walked_without_recursion() -> None:
    depth = 300
    raw = b"".join(b"Content-Type: message/rfc822\n\n" for _ in range(depth))
    raw += b'Content-Type: application/x; name="deep.exe"\n\nx\n'
    assert names_of(scan(raw)[0]) == ["deep.exe"]


def test_absurd_nesting_cannot_be_parsed() -> None:
    raw = b"".join(b"Content-Type: message/rfc822\n\n" for _ in range(5000)) + b"\nx\n"
    with pytest.raises(UnparseableMessage):
        parse_message(raw)


def test_should_stop_cancels() -> None:
    raw = multipart(b"Content-Type: text/plain\n\nx")
    with pytest.raises(ScanCancelled):
        scan(raw, should_stop=lambda: True)
    calls = iter([False, False, True])
    with pytest.raises(ScanCancelled):
        listing(make_zip([(f"f{i}", b"") for i in range(10)]), should_stop=lambda: next(calls))


def test_large_message_mode_recognises_archives_without_opening_them() -> None:
    raw = multipart(attachment("docs.zip", INNER), attachment("x.pdf", b"%PDF-1.4\n" * 100))
    found, problems = scan(raw, inspect_archives=False)
    assert names_of(found) == ["docs.zip", "x.pdf"]
    assert [(p.where, p.kind) for p in problems] == [(("docs.zip",), "skipped")]


# -- archives -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:bz2", "w:xz"])
def test_tar_variants(mode: str) -> None:
    data = make_tar([("dir/evil.js", b"x"), ("in.zip", INNER)], mode)
    found, problems = listing(data)
    assert [(f.name, f.source, f.where) for f in found] == [
        ("dir/evil.js", "tar", ("att",)),
        ("in.zip", "tar", ("att",)),
        ("evil.exe", "zip", ("att", "in.zip")),
    ]
    assert problems == []


def test_zip64_directory_and_prepended_data() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for i in range(0x10000):  # more entries than a classic directory can count
            zf.writestr(str(i), b"")
        zf.writestr("evil.exe", b"x")
    data = buf.getvalue()
    assert b"PK\x06\x06" in data  # the zip64 end record
    limits = Limits(max_members=0x20000)
    for sample in (data, b"MZ" * 500 + data):
        found, problems = listing(sample, limits=limits)
        assert len(found) == 0x10001
        assert found[-1].name == "evil.exe"
        assert problems == []


def test_tar_long_names() -> None:
    long_name = "dir/" + "x" * 150 + ".exe"
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz", format=fmt) as tf:
            info = tarfile.TarInfo(long_name)
            tf.addfile(info, io.BytesIO(b""))
        assert names_of(listing(buf.getvalue())[0]) == [long_name]


@pytest.mark.parametrize(
    "method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
)
def test_zip_methods_nested(method: int) -> None:
    data = make_zip([("a.zip", INNER)], method)
    found, problems = listing(data)
    assert names_of(found) == ["a.zip", "evil.exe"]
    assert problems == []


def test_gzip_original_name_and_gzip_of_a_zip() -> None:
    found, problems = listing(make_gzip("evil.exe", b"MZ..."))
    assert [(f.name, f.source) for f in found] == [("evil.exe", "gzip")]
    found, problems = listing(make_gzip("bundle.zip", INNER))
    assert [(f.name, f.where) for f in found] == [
        ("bundle.zip", ("att",)),
        ("evil.exe", ("att", "bundle.zip")),
    ]
    assert problems == []
    assert listing(make_gzip(None, b"just text")) == ([], [])


def test_zip_name_encodings() -> None:
    # no UTF-8 flag: CP437 as zipfile reads it, and UTF-8 as many unzip tools do
    raw_name = "\u00e9vil.exe".encode()
    placeholder = b"q" * len(raw_name)  # ASCII: zipfile sets no UTF-8 flag
    data = make_zip([(placeholder.decode(), b"x")]).replace(placeholder, raw_name)
    names = names_of(listing(data)[0])
    assert raw_name.decode("cp437") in names
    assert "\u00e9vil.exe" in names


def test_zip_unicode_path_extra_field() -> None:
    unicode_name = b"evil.exe"
    crc = struct.pack("<L", zlib.crc32(b"a.txt"))
    extra = struct.pack("<HHB", 0x7075, 5 + len(unicode_name), 1) + crc + unicode_name
    names = names_of(listing(make_zip([("a.txt", b"x")], extra=extra))[0])
    assert names == ["a.txt", "evil.exe"]


def test_zip_unicode_path_in_the_central_directory_only() -> None:
    unicode_name = b"evil.exe"
    extra = struct.pack("<HHBL", 0x7075, 5 + len(unicode_name), 1, 0) + unicode_name
    data = bytearray(make_zip([("a.txt", b"x")], extra=extra))
    local = data.find(b"\x75\x70")  # the local header's copy comes first
    data[local : local + 2] = b"\x99\x99"  # an unknown extra block there
    assert names_of(listing(bytes(data))[0]) == ["a.txt", "evil.exe"]


def test_zip_local_header_name_differing_from_directory() -> None:
    data = bytearray(make_zip([("aaaa.txt", b"x")]))
    pos = data.find(b"aaaa.txt")  # the first copy is the local header's
    data[pos : pos + 8] = b"evil.exe"
    names = names_of(listing(bytes(data))[0])
    assert names == ["aaaa.txt", "evil.exe"]


def test_truncated_zip_falls_back_to_local_headers() -> None:
    data = make_zip([("a.txt", b"hello"), ("evil.exe", b"MZ")])
    cut = data[: data.find(b"PK\x01\x02")]
    found, problems = listing(cut)
    assert names_of(found) == ["a.txt", "evil.exe"]
    assert [p.kind for p in problems] == ["damaged"]


def test_damaged_central_directory_still_lists_what_it_can() -> None:
    data = bytearray(make_zip([("a.txt", b"hello"), ("evil.exe", b"MZ")]))
    second = data.find(b"PK\x01\x02", data.find(b"PK\x01\x02") + 4)
    data[second : second + 4] = b"XXXX"
    found, problems = listing(bytes(data))
    assert names_of(found) == ["a.txt", "evil.exe"]
    assert problems[0].kind == "damaged"


def test_encrypted_zip_names_are_read_and_it_is_reported() -> None:
    data = encrypt_flags(make_zip([("secret.zip", INNER), ("evil.exe", b"x")]))
    found, problems = listing(data)
    assert names_of(found) == ["secret.zip", "evil.exe"]  # content not readable: no nesting
    assert [(p.where, p.kind) for p in problems] == [(("att",), "encrypted")]


def test_unsupported_formats_are_problems() -> None:
    found, problems = listing(b"Rar!\x1a\x07\x00" + bytes(100))
    assert found == []
    assert [(p.kind, p.reason) for p in problems] == [
        ("unsupported", "rar archives cannot be listed")
    ]


def test_depth_limit() -> None:
    three = make_zip([("two.zip", make_zip([("one.zip", INNER)]))])
    found, problems = listing(three, limits=Limits(max_depth=2))
    assert names_of(found) == ["two.zip", "one.zip"]
    assert [(p.where, p.kind) for p in problems] == [(("att", "two.zip", "one.zip"), "limit")]
    found, problems = listing(three, limits=Limits(max_depth=0))
    assert found == []
    assert problems[0].reason == "archive inspection disabled"
    assert names_of(listing(three, limits=Limits(max_depth=4))[0])[-1] == "evil.exe"


def test_too_deep_member_is_not_decompressed() -> None:
    data = make_zip([("big.zip", make_zip([("x", bytes(5000))], zipfile.ZIP_STORED))])
    found, problems = listing(data, limits=Limits(max_depth=1, max_bytes=1000))
    assert names_of(found) == ["big.zip"]
    assert [(p.where, p.reason) for p in problems] == [
        (("att", "big.zip"), "zip archive nested deeper than 1 levels")
    ]


def test_member_limit_counts_across_nested_archives() -> None:
    data = make_zip([(f"f{i}.txt", b"") for i in range(200)])
    found, problems = listing(data, limits=Limits(max_members=50))
    assert len(found) == 50
    assert [(p.kind, p.reason) for p in problems] == [("limit", "more than 50 archive members")]
    nested = make_zip([("a.zip", make_zip([("x", b""), ("evil.exe", b"")]))])
    found, problems = listing(nested, limits=Limits(max_members=2))
    assert names_of(found) == ["a.zip", "x"]
    assert problems[0].where == ("att", "a.zip")


def test_byte_limit_stops_a_tar_stream_but_not_zip_names() -> None:
    tgz = make_tar([("zeros", bytes(2_000_000)), ("evil.exe", b"")], "w:gz")
    found, problems = listing(tgz, limits=Limits(max_bytes=100_000))
    assert names_of(found) == ["zeros"]
    assert [p.kind for p in problems] == ["limit"]
    # a nested archive too big to decompress does not hide the zip's other names
    big_inner = make_zip([("zeros", bytes(2_000_000))], zipfile.ZIP_STORED)
    data = make_zip([("big.zip", big_inner), ("evil.exe", b"")])
    found, problems = listing(data, limits=Limits(max_bytes=100_000))
    assert names_of(found) == ["big.zip", "evil.exe"]
    assert [(p.where, p.kind) for p in problems] == [
        (("att", "big.zip"), "limit"),
        (("att",), "limit"),  # evil.exe was not looked into any more
    ]


def test_truncated_tar_gz_keeps_the_names_before_the_damage() -> None:
    tgz = make_tar([(f"m{i}", bytes(3000)) for i in range(50)], "w:gz")
    found, problems = listing(tgz[: len(tgz) // 2])
    assert 0 < len(found) < 50
    assert [p.kind for p in problems] == ["damaged"]


def test_not_an_archive_yields_nothing() -> None:
    assert listing(b"hello world" * 100) == ([], [])


# -- property tests: hostile bytes never raise anything but NameScanError -------------------

SAMPLES = [
    make_zip([("a.txt", b"hello" * 20), ("in.zip", INNER)]),
    make_zip([("b.zip", INNER)], zipfile.ZIP_BZIP2),
    make_zip([("c.zip", INNER)], zipfile.ZIP_LZMA),
    make_tar([("a", b"x" * 700), ("in.zip", INNER)], "w"),
    make_tar([("a", b"x" * 700), ("in.zip", INNER)], "w:gz"),
    make_tar([("a", b"x"), ("in.zip", INNER)], "w:bz2"),
    make_tar([("a", b"x"), ("in.zip", INNER)], "w:xz"),
    make_gzip("x.zip", INNER),
    bz2.compress(INNER),
    lzma.compress(INNER),
]

SMALL = Limits(max_depth=3, max_members=200, max_bytes=1_000_000)


def _list_all(data: bytes) -> None:
    problems: list[Problem] = []
    try:
        for found in iter_archive_names(data, problems=problems, limits=SMALL):
            assert isinstance(found.name, str)
    except NameScanError:
        pass
    kind = archive_kind(data)
    assert kind is None or isinstance(kind, str)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_never_raise(data: bytes) -> None:
    _list_all(data)
    for magic in (b"PK\x03\x04", b"\x1f\x8b\x08", b"BZh91AY&SY", b"\xfd7zXZ\x00"):
        _list_all(magic + data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(SAMPLES),
    st.integers(min_value=0, max_value=5000),
    st.integers(min_value=0, max_value=5000),
    st.binary(min_size=1, max_size=8),
)
def test_truncated_and_mutated_archives_never_raise(
    sample: bytes, cut: int, at: int, junk: bytes
) -> None:
    _list_all(sample[: cut % (len(sample) + 1)])
    pos = at % len(sample)
    _list_all(sample[:pos] + junk + sample[pos + len(junk) :])


MESSAGE = multipart(
    b'Content-Type: text/plain; name="=?utf-8?q?a=2Etxt?="\n\nhello',
    attachment("a.zip", SAMPLES[0]),
    b"Content-Type: message/rfc822\n\n"
    + multipart(attachment("t.tgz", SAMPLES[4]), boundary=b"IN"),
    b"Content-Disposition: attachment; filename*0*=utf-8''%41; filename*1=\".exe\"\n\nx",
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=0, max_value=len(MESSAGE)),
    st.integers(min_value=0, max_value=len(MESSAGE) - 1),
    st.binary(min_size=1, max_size=6),
)
def test_truncated_and_mutated_messages_never_raise(cut: int, at: int, junk: bytes) -> None:
    for raw in (MESSAGE[:cut], MESSAGE[:at] + junk + MESSAGE[at + len(junk) :]):
        problems: list[Problem] = []
        try:
            list(iter_message_names(parse_message(raw), problems=problems, limits=SMALL))
        except NameScanError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1024))
def test_random_messages_never_raise(raw: bytes) -> None:
    try:
        list(iter_message_names(parse_message(raw), problems=[], limits=SMALL))
    except NameScanError:
        pass
