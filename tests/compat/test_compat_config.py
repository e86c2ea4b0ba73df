"""courier.config: the original's synchronous API over courier_pyfilter.mta and legacyconf."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import courier.config as cfg
from courier_pyfilter.mta import CourierPaths


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    cfg._reset()
    yield
    cfg._reset()


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """A small Courier sysconfdir, configured as the one in effect."""
    d = tmp_path / "etc"
    d.mkdir()
    (d / "me").write_text("mx.example.net\n")
    (d / "locals").write_text("# comment\n\n!not.example.net\n.example.net\nexample.org\n")
    (d / "dsnfrom").write_text('"Mail" <mailer-daemon@example.net>\n')
    (d / "smtpaccess").write_text(
        "192.0.2\tallow,RELAYCLIENT\n198.51.100.7\tdeny,BLOCK\n203.0.113\tallow,BLOCK=go away\n"
    )
    (d / "hosteddomains").write_text("hosted.example\n.parent.example\n")
    (d / "aliases").write_text("postmaster: admin@example.com, ops@example.com\n")
    cfg._configure(paths=CourierPaths(sysconfdir=str(d), bindir="/opt/cb", version="1.0.16"))
    return d


def test_simple_files(etc: Path) -> None:
    assert cfg.me() == "mx.example.net"
    assert cfg.defaultdomain() == "mx.example.net"
    (etc / "defaultdomain").write_text("example.org\n")
    assert cfg.defaultdomain() == "example.org"
    assert cfg.dsnfrom() == '"Mail" <mailer-daemon@example.net>'
    assert cfg.read1line("me") == "mx.example.net"
    assert cfg.read1line("missing") is None
    assert cfg.locallowercase() == 0
    (etc / "locallowercase").write_text("")
    assert cfg.locallowercase() == 1
    assert cfg.esmtphelo() == "mx.example.net"
    (etc / "esmtphelo").write_text("helo.example.net\n")
    assert cfg.esmtphelo() == "helo.example.net"


def test_me_follows_file_changes(etc: Path) -> None:
    assert cfg.me() == "mx.example.net"
    (etc / "me").write_text("other.example.net\n")
    os.utime(etc / "me", (1, 1))
    assert cfg.me() == "other.example.net"


def test_locals_rules(etc: Path) -> None:
    assert cfg.is_local("example.org") is True
    assert cfg.isLocal("a.example.net") is True
    assert cfg.is_local("not.example.net") is False
    assert cfg.is_local("example.com") is False
    assert cfg.is_local("EXAMPLE.ORG") is True  # deliberate fix: case-insensitive


def test_hosted_and_aliases(etc: Path) -> None:
    assert cfg.is_hosteddomain("hosted.example") is True
    assert cfg.isHosteddomain("a.parent.example") is True
    assert cfg.is_hosteddomain("other.example") is False
    assert cfg.get_alias("postmaster") == ["admin@example.com", "ops@example.com"]
    assert cfg.getAlias("nobody") is None


def test_smtpaccess(etc: Path) -> None:
    assert cfg.smtpaccess("192.0.2.55") == "allow,RELAYCLIENT"
    assert cfg.get_smtpaccess_val("RELAYCLIENT", "192.0.2.55") == ""
    assert cfg.getSmtpaccessVal("BLOCK", "192.0.2.55") is None
    assert cfg.is_relayed("192.0.2.55") is True
    assert cfg.isRelayed("10.0.0.1") is False
    assert cfg.is_whiteblocked("198.51.100.7") is True
    assert cfg.isWhiteblocked("203.0.113.9") is False
    assert cfg.get_block_val("203.0.113.9") == "go away"
    assert cfg.getBlockVal("192.0.2.1") is None
    assert cfg.smtpaccess("not-an-ip") is None


def test_globals_and_version(etc: Path) -> None:
    assert cfg.sysconfdir == str(etc)
    assert cfg.bindir == "/opt/cb"
    assert cfg.version == "1.0.16"
    assert cfg.mailuid == "0"  # strings, as the original
    assert cfg.is_min_version("1.0.9") is True  # numeric, not string, comparison
    assert cfg.isMinVersion("1.1") is False
    with pytest.raises(AttributeError):
        _ = cfg.no_such_global


def test_assigned_sysconfdir_is_honoured(etc: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "me").write_text("assigned.example\n")
    cfg.sysconfdir = str(other)  # type: ignore[attr-defined]
    try:
        assert cfg.me() == "assigned.example"
    finally:
        del cfg.sysconfdir  # type: ignore[attr-defined]
    assert cfg.me() == "mx.example.net"


def test_module_config_restricted_evaluator(tmp_path: Path) -> None:
    conf = tmp_path / "m.conf"
    conf.write_text(
        "[greylist.py]\ngreylist_time = 60 * 5\nnames = ['a', 'b']\n"
        "[ttldb]\ntype = 'dbm'\n[authdaemon.py]\nsocket_path = '/x'\n"
    )
    cfg._configure(modules_configs=[str(conf)])
    assert cfg.get_module_config("greylist.py") == {"greylist_time": 300, "names": ["a", "b"]}
    assert cfg.getModuleConfig("missing.py") == {}
    assert cfg.get_module_config("TtlDb") == {"type": "dbm"}  # alias of [ttldb]
    namespace: dict[str, object] = {"greylist_time": 1, "keep": True}
    cfg.applyModuleConfig("greylist.py", namespace)
    assert namespace == {"greylist_time": 300, "names": ["a", "b"], "keep": True}


def test_module_config_never_evaluates_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    conf = tmp_path / "m.conf"
    conf.write_text(f"[x.py]\nv = __import__('os').system('touch {marker}')\n")
    cfg._configure(modules_configs=[str(conf)])
    assert cfg.get_module_config("x.py") == {}  # logged, like a parse error in the original
    assert not marker.exists()


def test_module_config_rereads_changed_file(tmp_path: Path) -> None:
    conf = tmp_path / "m.conf"
    conf.write_text("[a.py]\nv = 1\n")
    cfg._configure(modules_configs=[str(conf)])
    assert cfg.get_module_config("a.py") == {"v": 1}
    conf.write_text("[a.py]\nv = 22\n")
    assert cfg.get_module_config("a.py") == {"v": 22}


def test_modules_config_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = tmp_path / "1.conf", tmp_path / "2.conf"
    first.write_text("[a.py]\nv = 1\nw = 1\n")
    second.write_text("[a.py]\nw = 2\n")
    monkeypatch.setenv("PYTHONFILTER_MODULES_CONFIG", f"{first}:{second}")
    assert cfg.get_module_config("a.py") == {"v": 1, "w": 2}


def test_no_subprocess_at_import_and_lazy_discovery(tmp_path: Path) -> None:
    """Importing runs nothing; the first access of a path global runs courier-config."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "ran"
    script = bindir / "courier-config"
    script.write_text(
        f"#!/bin/sh\ntouch {marker}\necho bindir=/fake/bin\necho sysconfdir=/fake/etc\n"
    )
    script.chmod(0o755)
    code = (
        "import os, courier.config as c\n"
        f"assert not os.path.exists({str(marker)!r}), 'ran at import'\n"
        "print(c.bindir, c.sysconfdir, c.version)\n"
    )
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert marker.exists()
    assert out.stdout.split()[:2] == ["/fake/bin", "/fake/etc"]


def test_configure_sysconfdir_only(tmp_path: Path) -> None:
    (tmp_path / "me").write_text("conf.example\n")
    cfg._configure(sysconfdir=str(tmp_path), paths=CourierPaths(version="1.0.16"))
    assert cfg.sysconfdir == str(tmp_path)
    assert cfg.me() == "conf.example"
