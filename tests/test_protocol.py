"""Byte-level and property tests of the courierfilter request parser and reply encoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from courier_pyfilter.protocol import (
    MAX_LINE_LENGTH,
    ProtocolError,
    Request,
    RequestParser,
    format_reply,
    resolve_path,
)

TMP = "/var/lib/courier/tmp"


def parse_all(data: bytes, tmp: str = TMP, restrict: bool = True) -> Request:
    parser = RequestParser(tmp, restrict_paths=restrict)
    request = parser.feed(data)
    assert request is not None
    return request


def test_observed_request_from_courier() -> None:
    raw = (
        b"/var/lib/courier/tmp/179560/D1450318\n/var/lib/courier/tmp/179560/1795605627.6883.vm\n\n"
    )
    assert parse_all(raw) == Request(
        "/var/lib/courier/tmp/179560/D1450318",
        ("/var/lib/courier/tmp/179560/1795605627.6883.vm",),
    )


def test_several_control_files_keep_their_order() -> None:
    raw = b"/var/lib/courier/tmp/1/D9\n/var/lib/courier/tmp/1/C9.1\n/var/lib/courier/tmp/1/C9.2\n\n"
    assert parse_all(raw).control_paths == (
        "/var/lib/courier/tmp/1/C9.1",
        "/var/lib/courier/tmp/1/C9.2",
    )


def test_zero_control_files_is_accepted() -> None:
    assert parse_all(b"/var/lib/courier/tmp/1/D9\n\n") == Request("/var/lib/courier/tmp/1/D9", ())


def test_relative_paths_resolve_under_tmp() -> None:
    assert parse_all(b"12/D5\n12/C5\n\n") == Request(f"{TMP}/12/D5", (f"{TMP}/12/C5",))


@pytest.mark.parametrize(
    "raw",
    [b"../etc/passwd\n\n", b"12/../../D5\n\n", b"/etc/passwd\n\n", b"/var/lib/courier/tmpx/D\n\n"],
)
def test_paths_may_not_escape_tmp(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_all(raw)


def test_unrestricted_allows_absolute_elsewhere_but_not_relative_escape() -> None:
    assert parse_all(b"/srv/x/D1\n\n", restrict=False).data_path == "/srv/x/D1"
    with pytest.raises(ProtocolError):
        parse_all(b"../x/D1\n\n", restrict=False)


def test_byte_by_byte_feeding() -> None:
    raw = b"/var/lib/courier/tmp/1/D1\n/var/lib/courier/tmp/1/C1\n\n"
    parser = RequestParser(TMP)
    results = [parser.feed(raw[i : i + 1]) for i in range(len(raw))]
    assert results[:-1] == [None] * (len(raw) - 1)
    assert results[-1] == Request("/var/lib/courier/tmp/1/D1", ("/var/lib/courier/tmp/1/C1",))
    assert parser.done
    assert parser.feed(b"anything after") is None


def test_crlf_and_surrounding_space_are_tolerated() -> None:
    assert (
        parse_all(b" /var/lib/courier/tmp/1/D1 \r\n\r\n").data_path == "/var/lib/courier/tmp/1/D1"
    )


def test_empty_first_line_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="no data file"):
        RequestParser(TMP).feed(b"\n")


def test_overlong_line_is_an_error_even_without_newline() -> None:
    parser = RequestParser(TMP)
    with pytest.raises(ProtocolError, match="longer"):
        parser.feed(b"/" + b"a" * MAX_LINE_LENGTH)


def test_nul_and_bad_utf8_are_errors() -> None:
    with pytest.raises(ProtocolError):
        parse_all(b"/var/lib/courier/tmp/a\x00b\n\n")
    with pytest.raises(ProtocolError):
        parse_all(b"/var/lib/courier/tmp/\xff\n\n")


def test_eof_before_blank_line_is_an_error() -> None:
    parser = RequestParser(TMP)
    parser.feed(b"/var/lib/courier/tmp/1/D1\n")
    with pytest.raises(ProtocolError, match="before the end"):
        parser.eof()
    with pytest.raises(ProtocolError, match="without a request"):
        RequestParser(TMP).eof()


def test_eof_after_complete_request_is_fine() -> None:
    parser = RequestParser(TMP)
    parser.feed(b"/var/lib/courier/tmp/1/D1\n\n")
    parser.eof()


def test_resolve_path_rejects_the_spool_dir_itself() -> None:
    with pytest.raises(ProtocolError):
        resolve_path(".", TMP)


@pytest.mark.parametrize(
    ("reply", "wire"),
    [
        ("200 Ok", b"200 Ok\n"),
        ("550-first\n550-second\n550 third", b"550-first\n550-second\n550 third\n"),
        ("451 try later\n", b"451 try later\n"),
        ("050 OK", b"050 OK\n"),
        ("554 bad\r\n", b"554 bad\n"),
    ],
)
def test_format_reply_bytes(reply: str, wire: bytes) -> None:
    assert format_reply(reply) == wire


@given(st.binary(max_size=600), st.integers(min_value=1, max_value=50))
def test_random_input_only_raises_protocol_error(data: bytes, chunk: int) -> None:
    parser = RequestParser(TMP)
    try:
        for i in range(0, len(data), chunk):
            parser.feed(data[i : i + chunk])
        parser.eof()
    except ProtocolError:
        pass


@given(
    st.lists(
        st.text(
            alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/."),
            min_size=1,
            max_size=20,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_relative_names_resolve_inside_tmp(names: list[str]) -> None:
    raw = "".join(f"{n}\n" for n in names).encode() + b"\n"
    request = parse_all(raw)
    for path in (request.data_path, *request.control_paths):
        assert path.startswith(TMP + "/")


@given(st.binary(max_size=300))
def test_truncated_valid_request_never_misparses(cut: bytes) -> None:
    raw = b"/var/lib/courier/tmp/1/D1\n/var/lib/courier/tmp/1/C1\n\n"
    for n in range(len(raw)):
        parser = RequestParser(TMP)
        assert parser.feed(raw[:n]) is None
        with pytest.raises(ProtocolError):
            parser.eof()
