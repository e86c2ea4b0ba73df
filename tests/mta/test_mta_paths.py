"""Courier installation discovery and version comparison."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from courier_pyfilter.mta.paths import (
    CourierPaths,
    discover,
    is_min_version,
    parse_courier_config,
    parse_courier_version,
    version_tuple,
)

CONFIG_OUTPUT = """prefix=/opt/courier
exec_prefix=/opt/courier
bindir=/opt/courier/bin
sbindir=/opt/courier/sbin
libexecdir=/opt/courier/libexec
sysconfdir=/opt/courier/etc
datadir=/opt/courier/share
localstatedir=/opt/courier/var
mailuser=daemon
mailgroup=daemon
mailuid=2
mailgid= 3
configure_args="'--prefix=/usr' 'x=y'"
garbage line
unknown=1
"""


def test_defaults_are_debian() -> None:
    paths = CourierPaths()
    assert paths.sysconfdir == "/etc/courier"
    assert paths.localstatedir == "/var/lib/courier"
    assert paths.libexecdir == "/usr/lib/courier"
    assert paths.version == "unknown"


def test_parse_courier_config() -> None:
    paths = parse_courier_config(CONFIG_OUTPUT)
    assert paths.sysconfdir == "/opt/courier/etc"
    assert paths.sbindir == "/opt/courier/sbin"
    assert paths.mailuser == "daemon"
    assert (paths.mailuid, paths.mailgid) == (2, 3)
    assert not hasattr(paths, "configure_args")


def test_parse_courier_config_bad_uid_keeps_base() -> None:
    base = CourierPaths(mailuid=7)
    assert parse_courier_config("mailuid=abc\n", base).mailuid == 7


def test_parse_courier_version() -> None:
    assert (
        parse_courier_version("Courier 1.0.16 Copyright 1999-2018 Double Precision\n") == "1.0.16"
    )
    assert parse_courier_version("Something 1.0\n") == "unknown"
    assert parse_courier_version("Courier\n") == "unknown"
    assert parse_courier_version("") == "unknown"


def test_version_comparison_is_numeric() -> None:
    assert is_min_version("1.0.16", "1.0.9")  # the original's string compare said False
    assert is_min_version("0.10", "0.9")
    assert not is_min_version("0.9", "0.10")
    assert is_min_version("1.0", "1.0.0")
    assert is_min_version("1.0.16", "1.0.16")
    assert not is_min_version("1.0.16", "1.1")
    assert not is_min_version("unknown", "0.1")
    assert version_tuple("1.0.16rc2") == (1, 0, 16)
    with pytest.raises(ValueError):
        is_min_version("1.0", "unknown")


def _script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


async def test_discover_with_fake_programs(tmp_path: Path) -> None:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    config = _script(
        tmp_path / "courier-config",
        f"echo sysconfdir={tmp_path}/etc\necho sbindir={sbin}\n",
    )
    _script(sbin / "courier", "echo 'Courier 2.3.4 Copyright'\n")
    paths = await discover(courier_config=config)
    assert paths.sysconfdir == f"{tmp_path}/etc"
    assert paths.version == "2.3.4"
    assert paths.is_min_version("2.3")


async def test_discover_missing_programs_gives_defaults(tmp_path: Path) -> None:
    paths = await discover(courier_config=tmp_path / "none", courier=tmp_path / "none2")
    assert paths == CourierPaths()


async def test_discover_failing_and_hanging_programs(tmp_path: Path) -> None:
    failing = _script(tmp_path / "fail", "echo sysconfdir=/wrong; exit 3\n")
    hanging = _script(tmp_path / "hang", "exec sleep 30\n")
    started = time.monotonic()
    paths = await discover(courier_config=failing, courier=hanging, timeout=0.5)
    assert time.monotonic() - started < 5
    assert paths.sysconfdir == "/etc/courier"
    assert paths.version == "unknown"


async def test_discover_real_courier() -> None:
    if shutil.which("courier-config") is None or shutil.which("courier", path="/usr/sbin") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("Courier (courier-mta) is not installed")
        pytest.skip("Courier (courier-mta) is not installed")
    paths = await discover()
    assert paths.sysconfdir == "/etc/courier"
    assert paths.version != "unknown"
    assert paths.is_min_version("0.60")
