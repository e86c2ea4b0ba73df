"""``pythonfilter-quarantine -release|-purge`` and ``courier-pyfilter quarantine ...``.

The release command is called the way Courier's ``.courier`` pipe calls it: the request
message on stdin, ``DEFAULT`` and ``SENDER`` in the environment, and the exit code read
as Courier reads it (0 done, 75 retry later, 64/78 permanent).  sendmail is a recording
stand-in; the real Courier runs in ``tests/e2e/test_quarantine_e2e.py``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.cli import quarantine as cli
from courier_pyfilter.cli.admin import main as admin_main
from courier_pyfilter.quarantine import QuarantineService, quarantine_message, quarantine_service
from courier_pyfilter.testing import make_context, make_message

ME = "mx.example.org"
RECORDER = """\
import json, os, sys, time
out = {out!r}
data = sys.stdin.buffer.read()
name = "%020d-%d" % (time.time_ns(), os.getpid())
with open(os.path.join(out, name + ".eml"), "wb") as fh:
    fh.write(data)
with open(os.path.join(out, name + ".json"), "w") as fh:
    json.dump(sys.argv[1:], fh)
sys.exit({status})
"""
ADDRESS_RE = re.compile(r"quarantine-site-([a-z2-7]{12}-[a-z2-7]{20})@mx\.example\.org")


@dataclass
class Setup:
    tmp: Path
    qdir: Path
    conf: Path
    out: Path
    sendmail: str
    failing: str

    def sections(self) -> dict[str, dict[str, Any]]:
        """The same ``[quarantine]`` settings for the daemon's API."""
        return {"quarantine": {"siteid": "site", "dir": str(self.qdir), "sendmail": self.sendmail}}

    def write_conf(self, **quarantine: Any) -> None:
        values = {"siteid": "site", "dir": str(self.qdir), "sendmail": self.sendmail}
        values.update(quarantine)
        lines = [
            "[courier-pyfilter]",
            f"state_dir = {str(self.tmp / 'state')!r}",
            f"sysconfdir = {str(self.tmp / 'etc')!r}",
            "[quarantine]",
            *(f"{k} = {v!r}" for k, v in values.items()),
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def sent(self) -> list[tuple[list[str], bytes]]:
        return [
            (json.loads(p.read_text()), p.with_suffix(".eml").read_bytes())
            for p in sorted(self.out.glob("*.json"))
        ]

    def clear(self) -> None:
        for p in self.out.iterdir():
            p.unlink()

    def items(self) -> set[str]:
        return {p.name[1:] for p in self.qdir.iterdir() if p.name.startswith("D")}


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    for name in ("q", "etc", "state", "out", "spool"):
        (tmp_path / name).mkdir()
    (tmp_path / "etc" / "me").write_text(f"{ME}\n")
    out = tmp_path / "out"
    s = Setup(
        tmp_path,
        tmp_path / "q",
        tmp_path / "modules.conf",
        out,
        _script(tmp_path / "sendmail", RECORDER.format(out=str(out), status=0)),
        _script(tmp_path / "sendmail-fails", RECORDER.format(out=str(out), status=1)),
    )
    s.write_conf()
    return s


def quarantine_one(setup: Setup, recipients: list[str] | None = None) -> dict[str, str]:
    """Quarantine a message with the daemon's API; return each recipient's release token."""

    async def run() -> dict[str, str]:
        ctx = make_context(
            "virus",
            sections={
                "quarantine": {"siteid": "site", "dir": str(setup.qdir), "sendmail": setup.sendmail}
            },
            state_dir=setup.tmp / "state",
            sysconfdir=str(setup.tmp / "etc"),
        )
        try:
            msg = make_message(setup.tmp / "spool", recipients=recipients or ["bob@example.net"])
            await quarantine_message(msg, ctx, "The virus X was found in the message")
        finally:
            await ctx.services.close()
        tokens = {}
        for argv, content in setup.sent():
            for token in ADDRESS_RE.findall(content.decode()):
                tokens[argv[-1]] = token
        setup.clear()
        return tokens

    return asyncio.run(run())


def release(
    setup: Setup, env: dict[str, str], *extra: str, stdin: bytes = b"Subject: x\n\nplease\n"
) -> tuple[int, str]:
    err = io.StringIO()
    status = cli.main(
        ["--modules-config", str(setup.conf), *extra, "-release"],
        env=env,
        stdin=io.BytesIO(stdin),
        stdout=io.StringIO(),
        stderr=err,
    )
    return status, err.getvalue()


# -- exit codes of pythonfilter-quarantine ----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [[], ["-relase"], ["-release", "-purge"], ["--modules-config"], ["-purge", "extra"]],
)
def test_usage_errors_exit_64(argv: list[str]) -> None:
    err = io.StringIO()
    assert cli.main(argv, env={}, stderr=err, stdout=io.StringIO()) == cli.EX_USAGE == 64
    assert "usage: pythonfilter-quarantine" in err.getvalue()


def test_help_exits_0() -> None:
    out = io.StringIO()
    assert cli.main(["--help"], env={}, stdout=out, stderr=io.StringIO()) == 0
    assert "-release" in out.getvalue() and "-purge" in out.getvalue()


@pytest.mark.parametrize("env", [{}, {"DEFAULT": "x"}, {"SENDER": "a@b.example"}])
def test_release_without_courier_environment_exits_78(setup: Setup, env: dict[str, str]) -> None:
    status, err = release(setup, env)
    assert status == cli.EX_CONFIG == 78
    assert "DEFAULT and SENDER" in err


def test_real_process_exit_codes(setup: Setup) -> None:
    """The console entry point as a process (what Courier's pipe runs)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DEFAULT", "SENDER")}
    run = [sys.executable, "-m", "courier_pyfilter.cli.quarantine"]
    proc = subprocess.run([*run, "-release"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 78, proc.stderr
    proc = subprocess.run([*run, "-bogus"], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 64, proc.stderr
    tokens = quarantine_one(setup)
    proc = subprocess.run(
        [*run, "--modules-config", str(setup.conf), "-release"],
        env={**env, "DEFAULT": tokens["bob@example.net"], "SENDER": "bob@example.net"},
        input=b"x" * 300_000,  # a large request body is read, not left in the pipe
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert [argv[-1] for argv, _ in setup.sent()] == ["bob@example.net"]


def test_release_delivers_to_the_requester(setup: Setup) -> None:
    tokens = quarantine_one(setup, ["bob@example.net", "carol@example.net"])
    (item_id,) = setup.items()
    status, err = release(
        setup, {"DEFAULT": tokens["bob@example.net"], "SENDER": "bob@example.net"}
    )
    assert status == 0, err
    assert f"released {item_id} to bob@example.net" in err
    ((argv, content),) = setup.sent()
    assert argv[-3:] == ["-f", "", "bob@example.net"]
    assert content == (setup.qdir / f"D{item_id}").read_bytes()


def test_the_environment_variable_names_the_configuration(setup: Setup) -> None:
    tokens = quarantine_one(setup)
    env = {
        "DEFAULT": tokens["bob@example.net"],
        "SENDER": "bob@example.net",
        "PYTHONFILTER_MODULES_CONFIG": str(setup.conf),
    }
    err = io.StringIO()
    status = cli.main(["-release"], env=env, stdin=io.BytesIO(b""), stderr=err)
    assert status == 0, err.getvalue()
    assert len(setup.sent()) == 1


def test_forged_request_is_refused_with_a_notice_and_exit_0(setup: Setup) -> None:
    tokens = quarantine_one(setup)
    good = tokens["bob@example.net"]
    forged = good[:-1] + ("a" if good[-1] != "a" else "b")
    status, err = release(setup, {"DEFAULT": forged, "SENDER": "bob@example.net"})
    assert status == 0
    assert "refused: wrong token" in err
    ((argv, content),) = setup.sent()
    assert argv[-1] == "bob@example.net"
    assert b"Subject: Quarantine release failed" in content


def test_temporary_problems_exit_75_so_courier_retries(setup: Setup) -> None:
    tokens = quarantine_one(setup)
    env = {"DEFAULT": tokens["bob@example.net"], "SENDER": "bob@example.net"}
    setup.write_conf(sendmail=setup.failing)
    status, err = release(setup, env)
    assert status == cli.EX_TEMPFAIL == 75
    assert "temporary failure" in err and "cannot send" in err
    # a broken configuration file: also retried later (the admin may fix it)
    setup.conf.write_text("[quarantine]\ndays = 'fourteen'\n")
    status, err = release(setup, env)
    assert status == 75 and "configuration error" in err
    # the store cannot be reached
    setup.conf.write_text(
        "[ttldb]\ntype = 'pg'\nhost = '127.0.0.1'\nport = 9\nconnect_timeout = 1\n"
        f"[quarantine]\ndir = {str(setup.qdir)!r}\nsiteid = 'site'\n"
    )
    status, err = release(setup, env)
    assert status == 75 and "quarantine index" in err


def test_purge_exit_codes(setup: Setup) -> None:
    quarantine_one(setup)
    out = io.StringIO()
    args = ["--modules-config", str(setup.conf), "-purge"]
    assert cli.main(args, env={}, stdout=out, stderr=io.StringIO()) == 0
    assert out.getvalue() == ""  # quiet for cron
    assert len(setup.items()) == 1
    setup.write_conf(days=1 / 86400)
    time.sleep(1.1)
    assert cli.main(args, env={}, stdout=out, stderr=io.StringIO()) == 0
    assert setup.items() == set()
    setup.conf.write_text("[quarantine]\nsiteid = 'bad/id'\n")
    err = io.StringIO()
    assert cli.main(args, env={}, stdout=out, stderr=err) == cli.EX_CONFIG
    assert "siteid" in err.getvalue()


# -- courier-pyfilter quarantine ----------------------------------------------------------------


def admin(setup: Setup, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = admin_main(["--modules-config", str(setup.conf), "quarantine", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_admin_list_show_release_delete_purge(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = quarantine_one(setup, ["bob@example.net", "carol@example.net"])
    (item_id,) = setup.items()

    status, out, _ = admin(setup, "list", capsys=capsys)
    assert status == 0 and item_id in out and "The virus X was found" in out

    status, out, _ = admin(setup, "show", item_id, capsys=capsys)
    assert status == 0
    assert f"quarantine-site-{tokens['bob@example.net']}@{ME}" in out
    assert f"quarantine-site-{tokens['carol@example.net']}@{ME}" in out
    assert f"D{item_id}" in out and "MISSING" not in out

    status, out, _ = admin(setup, "release", item_id, "--to", "carol@example.net", capsys=capsys)
    assert status == 0 and f"released {item_id} to carol@example.net" in out
    assert [argv[-1] for argv, _ in setup.sent()] == ["carol@example.net"]
    status, _, err = admin(setup, "release", item_id, "--to", "eve@example.com", capsys=capsys)
    assert status == 1 and "not a recipient" in err

    status, out, _ = admin(setup, "purge", capsys=capsys)
    assert status == 0 and "purged 0 expired item(s)" in out

    status, out, _ = admin(setup, "delete", item_id, capsys=capsys)
    assert status == 0 and setup.items() == set()
    status, _, err = admin(setup, "delete", item_id, capsys=capsys)
    assert status == 1 and "no item" in err


def test_admin_reports_configuration_errors(
    setup: Setup, capsys: pytest.CaptureFixture[str]
) -> None:
    setup.conf.write_text("[quarantine]\ndays = -1\n")
    status, _, err = admin(setup, "list", capsys=capsys)
    assert status == 78 and "days" in err


def test_shared_service_matches_cli_configuration(setup: Setup) -> None:
    """The daemon's service and the command read the same section the same way."""
    loaded = cli.load_quarantine([str(setup.conf)])

    async def run() -> QuarantineService:
        ctx = make_context(
            "x",
            sections={
                "quarantine": {"siteid": "site", "dir": str(setup.qdir), "sendmail": setup.sendmail}
            },
            state_dir=setup.tmp / "state",
        )
        try:
            service: QuarantineService = await quarantine_service(ctx)
            return service
        finally:
            await ctx.services.close()

    daemon = asyncio.run(run())
    assert daemon.config == loaded.service.config
