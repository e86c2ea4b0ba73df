"""The CourierConfig facade over a temporary sysconfdir."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from courier_pyfilter.mta import (
    CourierConfig,
    CourierPaths,
    GdbmFormatError,
    InvalidAddressError,
    SourceUnavailableError,
    load_courier_config,
)
from courier_pyfilter.mta.cache import StatCache
from courier_pyfilter.mta.gdbm import read_gdbm

BuildDat = Callable[[str, Path], Path]


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    path = tmp_path / "etc"
    path.mkdir()
    return path


def make(etc: Path, **kwargs: object) -> CourierConfig:
    return CourierConfig(
        CourierPaths(sysconfdir=str(etc)),
        hostname=lambda: "host.from.socket",
        **kwargs,  # type: ignore[arg-type]
    )


def test_me_falls_back_to_hostname_and_reloads(etc: Path) -> None:
    config = make(etc)
    assert config.me() == "host.from.socket"
    (etc / "me").write_text("mail.example.com\nsecond line\n")
    assert config.me() == "mail.example.com"
    (etc / "me").write_text("other.example.org\n")
    assert config.me() == "other.example.org"
    (etc / "me").write_text("\n")  # empty counts as missing
    assert config.me() == "host.from.socket"


def test_simple_files(etc: Path) -> None:
    config = make(etc)
    (etc / "me").write_text("mx.example.com\n")
    assert config.defaultdomain() == "mx.example.com"
    assert config.dsnfrom() == '"Courier mail server at mx.example.com" <@>'
    assert not config.locallowercase()
    assert config.esmtphelo() == "mx.example.com"
    (etc / "defaultdomain").write_text("example.com\n")
    (etc / "dsnfrom").write_text('"Postmaster" <postmaster@example.com>\n')
    (etc / "locallowercase").write_text("")
    (etc / "esmtphelo").write_text("helo.example.com\n")
    assert config.defaultdomain() == "example.com"
    assert config.dsnfrom() == '"Postmaster" <postmaster@example.com>'
    assert config.locallowercase()
    assert config.esmtphelo() == "helo.example.com"
    (etc / "esmtphelo").write_text("*\n")
    assert config.esmtphelo() == "mx.example.com"
    assert config.esmtphelo(lambda: "rdns.example.net") == "rdns.example.net"
    assert config.esmtphelo(lambda: None) == "mx.example.com"
    assert config.read1line("dsnfrom") == '"Postmaster" <postmaster@example.com>'
    assert config.read1line("nonexistent") is None


def test_enablefiltering_and_acceptmailfor(etc: Path) -> None:
    config = make(etc)
    assert config.enablefiltering() == frozenset()
    (etc / "enablefiltering").write_text("esmtp local\n")
    assert config.enablefiltering() == {"esmtp", "local"}
    (etc / "esmtpacceptmailfor").write_text("Example.COM\n# comment\n\n")
    accept_dir = etc / "esmtpacceptmailfor.dir"
    accept_dir.mkdir()
    (accept_dir / "extra").write_text("other.example\tx\n")
    assert config.esmtpacceptmailfor() == {"example.com", "other.example"}


def test_is_local_rules(etc: Path) -> None:
    config = make(etc)
    (etc / "me").write_text("mx.example.com\n")
    assert config.is_local("MX.example.com")  # no locals file: only me()
    assert not config.is_local("example.com")
    (etc / "locals").write_text(
        "# comment\n"
        "   \n"  # whitespace only: crashed the original
        "!excluded.example.com\n"
        ".example.com\n"
        "localhost\n"
        "excluded.example.com\n"
    )
    assert config.is_local("a.example.com")
    assert config.is_local("A.Example.COM")
    assert not config.is_local("excluded.example.com")  # first match wins
    assert not config.is_local("example.com")
    assert config.is_local("localhost")
    assert not config.is_local("mx.example.org")


def test_hosteddomains_text_directory(etc: Path) -> None:
    config = make(etc, source="text")
    hosted = etc / "hosteddomains"
    hosted.mkdir()
    (hosted / "list").write_text("hosted.example\n.wild.example\tx\nUPPER.Example\n")
    assert config.is_hosteddomain("hosted.example")
    assert config.is_hosteddomain("upper.example")
    assert config.is_hosteddomain("a.b.wild.example")
    assert not config.is_hosteddomain("wild.example")
    assert not config.is_hosteddomain("sub.hosted.example")
    (hosted / "more").write_text("new.example\n")
    assert config.is_hosteddomain("new.example")


def test_hosteddomains_dat(etc: Path, build_dat: BuildDat) -> None:
    build_dat("hosted.example\n.wild.example\n", etc / "hosteddomains.dat")
    config = make(etc, source="dat")
    assert config.is_hosteddomain("HOSTED.example")
    assert config.is_hosteddomain("x.wild.example")
    assert not config.is_hosteddomain("other.example")


SMTPACCESS = (
    "127.0.0.1\tallow,RELAYCLIENT\n"
    ":0000:0000:0000:0000:0000:0000:0000:0001\tallow,RELAYCLIENT\n"
    "192.168\tallow,RELAYCLIENT\n"
    "192.168.2.3\tallow,BLOCK\n"
    '192.168.5\tallow,BLOCK="550 Shoo! Go away!"\n'
    "10.0.0.0/8\tallow,RELAYCLIENT\n"
)


def _check_access(config: CourierConfig) -> None:
    assert config.is_relayed("127.0.0.1")
    assert config.is_relayed("::ffff:127.0.0.1")
    assert config.is_relayed("::1")
    assert config.is_relayed("10.20.30.40")
    assert config.is_relayed("192.168.9.9")
    assert not config.is_relayed("192.168.2.3")
    assert config.is_whiteblocked("192.168.2.3")
    assert config.get_block_val("192.168.5.1") == "550 Shoo! Go away!"
    assert not config.is_whiteblocked("192.168.5.1")
    assert config.get_block_val("8.8.8.8") is None
    assert config.smtpaccess("8.8.8.8") is None
    assert config.get_smtpaccess_val("RELAYCLIENT", "127.0.0.1") == ""
    with pytest.raises(InvalidAddressError):
        config.smtpaccess("not-an-ip")


def test_smtpaccess_text_sources(etc: Path) -> None:
    (etc / "smtpaccess").mkdir()
    (etc / "smtpaccess" / "default").write_text(SMTPACCESS)
    config = make(etc)  # auto: no .dat, so the text files
    _check_access(config)


def test_smtpaccess_dat_preferred_and_reloaded(
    etc: Path, build_cidr_dat: BuildDat, build_dat: BuildDat
) -> None:
    (etc / "smtpaccess").mkdir()
    (etc / "smtpaccess" / "default").write_text("127.0.0.1\tallow\n")  # stale text
    dat = build_cidr_dat(SMTPACCESS, etc / "smtpaccess.dat")
    config = make(etc, gdbm_backend="pure")
    _check_access(config)
    text_config = make(etc, source="text")
    assert not text_config.is_relayed("127.0.0.1")
    # a rebuilt .dat (new inode after makedat's rename) is picked up
    build_dat("127.0.0.1\tallow\n", dat)
    assert not config.is_relayed("127.0.0.1")


def test_smtpaccess_sources_missing(etc: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert make(etc).smtpaccess("127.0.0.1") is None
    assert "neither" in caplog.text
    with pytest.raises(SourceUnavailableError):
        make(etc, source="dat").smtpaccess("127.0.0.1")
    with pytest.raises(SourceUnavailableError):
        make(etc, source="text").smtpaccess("127.0.0.1")


def test_corrupt_dat(etc: Path) -> None:
    (etc / "smtpaccess.dat").write_bytes(b"garbage" * 10)
    (etc / "smtpaccess").mkdir()
    (etc / "smtpaccess" / "default").write_text("127.0.0.1\tallow,RELAYCLIENT\n")
    assert make(etc, gdbm_backend="pure").is_relayed("127.0.0.1")  # auto falls back
    with pytest.raises(GdbmFormatError):
        make(etc, source="dat", gdbm_backend="pure").is_relayed("127.0.0.1")


def test_overrides(etc: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere-me"
    other.write_text("override.example\n")
    config = make(etc, overrides={"me": other})
    assert config.me() == "override.example"
    assert config.path("me") == str(other)
    with pytest.raises(ValueError):
        make(etc, overrides={"nonsense": other})


def test_aliases_dat_from_makealiases(
    etc: Path, tmp_path: Path, build_aliases: Callable[[Path, Path], Path]
) -> None:
    (etc / "me").write_text("mx.example\n")
    (etc / "locals").write_text("mx.example\nlocal.example\n")
    source = tmp_path / "aliassrc"
    source.mkdir()
    (source / "system").write_text(
        "postmaster: mailtest\nroot: postmaster\nteam: a@remote.example, b@remote.example\n"
    )
    # makealiases qualifies with Courier's own me; build with the real tool, then point
    # our config's me at the same name the tool used.
    dat = build_aliases(source, etc / "aliases.dat")
    config = make(etc, gdbm_backend="pure")
    tool_me = next(iter(read_gdbm(dat, backend="pure"))).decode().split("@", 1)[1]
    (etc / "me").write_text(tool_me + "\n")
    (etc / "locals").write_text(f"{tool_me}\nlocal.example\n")
    assert dat.exists()
    assert config.get_alias("root") == [f"mailtest@{tool_me}"]
    assert config.get_alias(f"postmaster@{tool_me}") == [f"mailtest@{tool_me}"]
    assert config.get_alias("postmaster@local.example") == [f"mailtest@{tool_me}"]
    assert config.get_alias("team") == ["a@remote.example", "b@remote.example"]
    assert config.get_alias("nobody") is None
    assert config.get_alias("postmaster@remote.example") is None


def test_aliases_text_fallback(etc: Path, tmp_path: Path) -> None:
    (etc / "me").write_text("mx.example\n")
    (etc / "locals").write_text("mx.example\nlocal.example\n")
    include = tmp_path / "members"
    include.write_text("x@remote.example\ny\n")
    aliases = etc / "aliases"
    aliases.mkdir()
    (aliases / "system").write_text(
        "# comment\n"
        "postmaster: mailtest\n"
        "root: postmaster,\n"
        "   other@remote.example\n"
        f"list: :include:{include}\n"
        "pipe: |/bin/cat\n"
        "Mixed@Remote.example: z@local.example\n"
    )
    config = make(etc)
    assert config.get_alias("root") == ["mailtest@mx.example", "other@remote.example"]
    assert config.get_alias("root@LOCAL.example") == ["mailtest@mx.example", "other@remote.example"]
    assert config.get_alias("list") == ["x@remote.example", "y@mx.example"]
    assert config.get_alias("pipe") == ['".xalias/pipe@mx.example"@mx.example']
    assert config.get_alias("Mixed@Remote.example") == ["z@mx.example"]
    assert config.get_alias("Mixed@remote.example") is None


def test_version(etc: Path) -> None:
    config = CourierConfig(CourierPaths(sysconfdir=str(etc), version="1.0.16"))
    assert config.version == "1.0.16"
    assert config.is_min_version("1.0.9")
    assert not config.is_min_version("1.1")


async def test_load_courier_config(etc: Path) -> None:
    (etc / "me").write_text("async.example\n")
    config = await load_courier_config(CourierPaths(sysconfdir=str(etc)))
    assert config.me() == "async.example"


async def test_load_courier_config_discovers(tmp_path: Path, etc: Path) -> None:
    script = tmp_path / "courier-config"
    script.write_text(f"#!/bin/sh\necho sysconfdir={etc}\n")
    script.chmod(0o755)
    (etc / "me").write_text("discovered.example\n")
    config = await load_courier_config(
        courier_config=script, courier=tmp_path / "missing", check_interval=0.0
    )
    assert config.paths.sysconfdir == str(etc)
    assert config.me() == "discovered.example"
    assert config.version == "unknown"


def test_stat_cache_reloads_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("a")
    calls: list[str] = []

    def load() -> str:
        calls.append(path.read_text())
        return calls[-1]

    cache = StatCache([path], load)
    assert cache.get() == "a"
    assert cache.get() == "a"
    assert len(calls) == 1
    path.write_text("b")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.get() == "b"
    path.unlink()
    with pytest.raises(FileNotFoundError):
        cache.get()
    now = [0.0]
    path.write_text("c")
    limited = StatCache([path], load, check_interval=10, clock=lambda: now[0])
    assert limited.get() == "c"
    path.write_text("dd")
    assert limited.get() == "c"  # within the interval: not even stat-ed
    now[0] = 11.0
    assert limited.get() == "dd"


def test_aliases_text_fallback_matches_makealiases(
    etc: Path, tmp_path: Path, build_aliases: Callable[[Path, Path], Path]
) -> None:
    source = tmp_path / "aliassrc"
    source.mkdir()
    (source / "system").write_text(
        "root: postmaster\nmailer-daemon: postmaster\npostmaster:\n"
        "a: b\nb: c, remote@far.example\nc: c, d\nteam: a, x\n"
    )
    dat = build_aliases(source, tmp_path / "aliases.dat")
    expected = {
        k.decode(): [line for line in v.decode().split("\n") if line]
        for k, v in read_gdbm(dat, backend="pure").items()
    }
    tool_me = next(iter(expected)).split("@", 1)[1]
    (etc / "me").write_text(tool_me + "\n")
    (etc / "aliases").mkdir()
    (etc / "aliases" / "system").write_text((source / "system").read_text())
    config = make(etc, source="text")
    assert config.get_alias("postmaster") is None
    for key, targets in expected.items():
        assert sorted(config.get_alias(key) or []) == sorted(targets), key
    assert {k.split("@")[0] for k in expected} == {"root", "mailer-daemon", "a", "b", "c", "team"}


def test_text_ipv6_keys_warn_or_normalize(etc: Path, caplog: pytest.LogCaptureFixture) -> None:
    (etc / "smtpaccess").mkdir()
    (etc / "smtpaccess" / "default").write_text("::1\tallow,RELAYCLIENT\n:2001:DB8\tdeny\n")
    with caplog.at_level(logging.WARNING):
        assert not make(etc).is_relayed("::1")  # like Courier: never matches
    assert "never matches" in caplog.text
    fixed = make(etc, normalize_text_keys=True)
    assert fixed.is_relayed("::1")
    assert fixed.smtpaccess("2001:db8::7") == "deny"
