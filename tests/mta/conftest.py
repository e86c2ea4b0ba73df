"""Shared fixtures for the Courier configuration tests: Courier's real ``makedat`` tools."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

MAKEDATPROG = Path("/usr/lib/courier/courier/makedatprog")
MAKEDAT = Path("/usr/lib/courier/makedat")
MAKEALIASES = Path("/usr/lib/courier/makealiases")
SYSTEM_PYTHON = Path("/usr/bin/python3")

BuildDat = Callable[[str, Path], Path]


def _need(path: Path, what: str) -> None:
    if not os.access(path, os.X_OK):
        reason = f"{what} ({path}) is not installed (apt-get install courier-mta)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture
def build_dat(tmp_path: Path) -> BuildDat:
    """Return a function compiling makedat source text into a GDBM file with Courier's tool."""
    _need(MAKEDATPROG, "Courier's makedatprog")

    def build(text: str, target: Path) -> Path:
        subprocess.run(
            [str(MAKEDATPROG), "-", str(target) + ".tmp", str(target)],
            input=(text if text.endswith("\n.\n") else text + ".\n").encode(),
            check=True,
            timeout=30,
        )
        return target

    return build


@pytest.fixture
def build_cidr_dat(tmp_path: Path) -> BuildDat:
    """Like ``build_dat`` but through Courier's ``makedat -cidr`` wrapper (Net::CIDR)."""
    _need(MAKEDAT, "Courier's makedat wrapper")
    probe = subprocess.run(["perl", "-MNet::CIDR", "-e", "1"], capture_output=True, check=False)
    if probe.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("perl Net::CIDR (libnet-cidr-perl) is missing")
        pytest.skip("perl Net::CIDR (libnet-cidr-perl) is missing")

    def build(text: str, target: Path) -> Path:
        source = target.with_suffix(".src")
        source.write_text(text)
        subprocess.run(
            [
                str(MAKEDAT),
                f"-src={source}",
                f"-file={target}",
                f"-tmp={target}.tmp",
                "-cidr",
            ],
            check=True,
            timeout=30,
        )
        return target

    return build


@pytest.fixture
def build_aliases(tmp_path: Path) -> Callable[[Path, Path], Path]:
    """Return a function running Courier's ``makealiases`` on a source dir into a .dat."""
    _need(MAKEALIASES, "Courier's makealiases")

    def build(source: Path, target: Path) -> Path:
        xalias = tmp_path / "xalias"
        xalias.mkdir(exist_ok=True)
        # makealiases 1.0.16 fails after writing the .dat when it tries to move the
        # (empty) extended-alias directory; only the .dat matters here.
        subprocess.run(
            [
                str(MAKEALIASES),
                f"-src={source}",
                f"-alias={target}",
                f"-tmp={target}.tmp",
                f"-xaliasdir={xalias}/.courier-:xalias",
                f"-xaliastmpdir={xalias}/tmp",
            ],
            capture_output=True,
            check=False,
            timeout=30,
        )
        assert target.exists(), "makealiases did not write the .dat file"
        return target

    return build


@pytest.fixture
def system_dbm_dump() -> Callable[[Path], dict[bytes, bytes]]:
    """Return a function dumping a GDBM file with Debian's python3 + dbm.gnu."""
    _need(SYSTEM_PYTHON, "Debian's python3")
    probe = subprocess.run([str(SYSTEM_PYTHON), "-c", "import dbm.gnu"], check=False)
    if probe.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("Debian's python3-gdbm is not installed")
        pytest.skip("Debian's python3-gdbm is not installed")
    script = (
        "import dbm.gnu, json, sys\n"
        "d = dbm.gnu.open(sys.argv[1], 'ru')\n"
        "out = {}\n"
        "k = d.firstkey()\n"
        "while k is not None:\n"
        "    out[k.hex()] = d[k].hex()\n"
        "    k = d.nextkey(k)\n"
        "print(json.dumps(out))\n"
    )

    def dump(path: Path) -> dict[bytes, bytes]:
        done = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", script, str(path)],
            capture_output=True,
            check=True,
            timeout=60,
        )
        raw = json.loads(done.stdout)
        return {bytes.fromhex(k): bytes.fromhex(v) for k, v in raw.items()}

    return dump
