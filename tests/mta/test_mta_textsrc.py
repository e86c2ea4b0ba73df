"""Courier's makedat text format, compared with what Courier's own tools store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from courier_pyfilter.mta.gdbm import read_gdbm
from courier_pyfilter.mta.textsrc import cidr_keys, parse_makedat, read_source_text

BuildDat = Callable[[str, Path], Path]

TRICKY = (
    "127.0.0.1\tallow,RELAYCLIENT\n"
    "10 allow,RELAYCLIENT\n"  # no TAB: the whole line is a key with value 1
    "192.168  \t  allow,BLOCK\n"
    " lead\tv\n"
    "trail \tv2 \n"
    "x\ty\tz\n"
    "\t\tonly-value\n"
    "#c\tz\n"
    "  # not a comment\n"
    "\n"
    "cr\tv\r\n"
    ".\n"
    "after-dot\tignored\n"
)


def test_parse_makedat_semantics() -> None:
    table = parse_makedat(TRICKY)
    assert table["10 allow,RELAYCLIENT"] == "1"
    assert table["192.168  "] == "  allow,BLOCK"
    assert table["x"] == "y\tz"
    assert table["cr"] == "v\r"
    assert "after-dot" not in table
    assert "#c" not in table
    assert "" not in table


def test_parse_makedat_matches_courier(tmp_path: Path, build_dat: BuildDat) -> None:
    dat = build_dat(TRICKY, tmp_path / "t.dat")
    stored = {k.decode(): v.decode() for k, v in read_gdbm(dat, backend="pure").items()}
    assert parse_makedat(TRICKY) == stored


def test_duplicates_first_wins(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_makedat("a\t1\na\t2\n", origin="f") == {"a": "1"}
    assert "duplicate key 'a'" in caplog.text


def test_cidr_expansion_matches_courier(tmp_path: Path, build_cidr_dat: BuildDat) -> None:
    source = (
        "10.0.0.0/8\tallow,RELAYCLIENT\n"
        "192.168.0.0/23 allow,BLOCK\n"
        "1.2.3.4-1.2.3.6\tdeny\n"
        "2001:db8::/31\tallow,RELAYCLIENT\n"
        "::1/128\tallow\n"
        "172.16.1.1\tallow\n"
    )
    dat = build_cidr_dat(source, tmp_path / "c.dat")
    stored = {k.decode(): v.decode() for k, v in read_gdbm(dat, backend="pure").items()}
    assert parse_makedat(source, cidr=True) == stored
    assert stored["192.168.1"] == "allow,BLOCK"


def test_cidr_keys() -> None:
    assert cidr_keys("10.1.0.0/15") == ["10.0", "10.1"]
    assert cidr_keys("2001:db8::/32") == [":2001:0db8"]
    assert cidr_keys("1.2.3.9-1.2.3.4") is None
    assert cidr_keys("bogus/8") is None
    assert len(cidr_keys("0.0.0.0/0") or []) == 256


def test_read_source_directory(tmp_path: Path) -> None:
    src = tmp_path / "smtpaccess"
    src.mkdir()
    (src / "b").write_text("2\tb")  # no final newline
    (src / "a").write_text("1\ta\n")
    (src / "a~").write_text("3\tbackup\n")
    (src / "c.dpkg-old").write_text("4\told\n")
    text = read_source_text(src)
    assert text == "1\ta\n2\tb\n"
    assert read_source_text(tmp_path / "missing") is None
