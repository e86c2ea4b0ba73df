"""``courier-pyfilter check``: the replay tool, on both input forms, and its dry-run mode.

The command runs in-process through :func:`courier_pyfilter.cli.admin.main` (plus one run
of the real console script), on a chain of small test filters written to a
``filter_path`` directory: they reject or tempfail by Subject, add a header, write to the
store, rewrite their files the legacy way, raise, or run in shadow mode.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.cli.admin import main
from courier_pyfilter.cli.check import (
    EXIT_ACCEPT,
    EXIT_REJECT,
    EXIT_TEMPFAIL,
    EXIT_USAGE,
    CheckOptions,
    run_check,
)
from courier_pyfilter.decision import Verdict
from courier_pyfilter.store import Store, StoreConfig
from courier_pyfilter.testing import make_message

FILTERS = {
    # Rejects "SPAM" subjects, tempfails "LATER" ones.
    "by_subject": """
        from courier_pyfilter.api import CONTINUE, Decision, Filter

        class BySubject(Filter):
            async def check(self, message, ctx):
                subject = str((await message.headers()).get("Subject", ""))
                if "SPAM" in subject:
                    return Decision.reject("5.7.1 spam subject", code="550")
                if "LATER" in subject:
                    return Decision.tempfail("4.7.1 come back later")
                return CONTINUE
    """,
    # Adds a header saying what the filter sees of the dry-run mode.
    "tagger": """
        from courier_pyfilter.api import CONTINUE

        async def check(message, ctx):
            await message.edit.add_header("X-Checked", f"ctx={ctx.dry_run} msg={message.dry_run}")
            return CONTINUE
    """,
    # Remembers every sender in the store.
    "remember": """
        from courier_pyfilter.api import CONTINUE

        async def check(message, ctx):
            store = await ctx.services.store()
            db = await store.database("check_test", ttl=3600)
            await db.set(message.sender or "<>")
            await db.increment("messages", window=3600)
            return CONTINUE
    """,
    # The original's style: gets paths, rewrites the files itself.
    "legacy_rewriter": """
        def do_filter(body_path, control_paths):
            with open(body_path, "ab") as fh:
                fh.write(b"appended by a legacy filter\\n")
            with open(control_paths[-1], "ab") as fh:
                fh.write(b"Ilegacy\\n")
            return ""
    """,
    # Trusts example.org (used with a 'for' clause).
    "trust_org": """
        from courier_pyfilter.api import CONTINUE, Decision

        WHITELIST = True

        async def check(message, ctx):
            if (message.sender or "").endswith("@example.org"):
                return Decision.accept("Ok, trusted")
            return CONTINUE
    """,
    "boom": """
        async def check(message, ctx):
            raise RuntimeError("backend down")
    """,
    "slow": """
        import asyncio
        from courier_pyfilter.api import CONTINUE

        async def check(message, ctx):
            await asyncio.sleep(30)
            return CONTINUE
    """,
}


class Setup:
    """A filter directory, the configuration files and a place for messages."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.filters = root / "filters"
        self.filters.mkdir()
        for name, source in FILTERS.items():
            (self.filters / f"{name}.py").write_text(textwrap.dedent(source))
        self.state = root / "state"
        self.chain_path = root / "pythonfilter.conf"
        self.modules_path = root / "pythonfilter-modules.conf"
        self.spool = root / "spool"
        self.spool.mkdir()
        (root / "etc").mkdir()
        (root / "etc" / "me").write_text("mx.courier.test\n")
        self.configure(["by_subject"])

    def configure(self, lines: list[str], extra: str = "", **daemon: Any) -> None:
        self.chain_path.write_text("".join(f"{line}\n" for line in lines))
        settings = {
            "filter_path": [str(self.filters)],
            "state_dir": str(self.state),
            "sysconfdir": str(self.root / "etc"),
            **daemon,
        }
        text = "[courier-pyfilter]\n" + "".join(f"{k} = {v!r}\n" for k, v in settings.items())
        self.modules_path.write_text(text + extra)

    def eml(self, subject: str = "hello", name: str = "msg.eml") -> Path:
        path = self.root / name
        path.write_bytes(
            b"From: a@example.com\r\nTo: b@courier.test\r\n"
            + f"Subject: {subject}\r\n\r\nHi.\r\n".encode()
        )
        return path

    def args(self, *extra: str) -> list[str]:
        return [
            "check",
            "--config",
            str(self.chain_path),
            "--modules-config",
            str(self.modules_path),
            *extra,
        ]

    def eml_args(self, eml: Path, *extra: str, sender: str = "a@example.com") -> list[str]:
        return self.args("--eml", str(eml), "--sender", sender, "--rcpt", "b@courier.test", *extra)

    def store_rows(self) -> tuple[list[Any], list[Any]]:
        """(entries, registered databases) of the SQLite store; empty when it does not exist."""
        path = self.state / "ttldb.sqlite3"
        if not path.exists():
            return [], []
        with contextlib.closing(sqlite3.connect(path)) as conn:
            entries = conn.execute("SELECT db, key FROM ttldb_entries ORDER BY key").fetchall()
            dbs = conn.execute("SELECT name FROM ttldb_databases").fetchall()
        return entries, dbs


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Setup:
    for name in ("PYTHONFILTER_CONFIG", "PYTHONFILTER_MODULES_CONFIG", "PYTHONFILTER_SOCKET"):
        monkeypatch.delenv(name, raising=False)
    return Setup(tmp_path)


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(argv: list[str]) -> tuple[int, str, str]:
        status = main(argv)
        out, err = capsys.readouterr()
        return status, out, err

    return run


def run_json(run: Run, argv: list[str]) -> tuple[int, dict[str, Any]]:
    status, out, err = run([*argv, "--json"])
    assert out.strip(), err
    return status, json.loads(out)


# -- the .eml form ----------------------------------------------------------------------------


def test_eml_rejected_prints_each_filter_and_exits_1(setup: Setup, run: Run) -> None:
    setup.configure(["tagger", "by_subject", "remember"])
    status, out, _ = run(setup.eml_args(setup.eml("buy SPAM now"), "--client-ip", "192.0.2.9"))
    assert status == EXIT_REJECT
    lines = out.splitlines()
    tagger = next(line for line in lines if line.strip().startswith("tagger"))
    assert "continue" in tagger and " ms" in tagger
    by_subject = next(line for line in lines if line.strip().startswith("by_subject"))
    assert "550 5.7.1 spam subject" in by_subject
    remember = next(line for line in lines if line.strip().startswith("remember"))
    assert "not run" in remember
    assert "deciding filter: by_subject" in lines
    assert "reply: 550 5.7.1 spam subject" in lines
    assert any(line.startswith("verdict: reject") for line in lines)
    assert "from <a@example.com> to <b@courier.test>" in out
    assert "dry run" in out


def test_eml_json_accepted_with_changes_kept_in_memory(setup: Setup, run: Run) -> None:
    setup.configure(["tagger", "by_subject", "remember"])
    eml = setup.eml()
    before = eml.read_bytes()
    status, report = run_json(
        run,
        setup.eml_args(eml, "--client-ip", "192.0.2.9", "--auth-user", "alice", "--helo", "h.test"),
    )
    assert status == EXIT_ACCEPT == report["exit_status"]
    assert report["verdict"] == "accept" and report["reply"] == "200 Ok"
    assert report["deciding"] is None
    assert report["dry_run"] is True
    assert [(f["name"], f["status"], f["verdict"]) for f in report["filters"]] == [
        ("tagger", "ran", "continue"),
        ("by_subject", "ran", "continue"),
        ("remember", "ran", "continue"),
    ]
    assert all(isinstance(f["seconds"], float) and f["seconds"] >= 0 for f in report["filters"])
    assert report["envelope"]["sender"] == "a@example.com"
    assert report["envelope"]["recipients"] == ["b@courier.test"]
    assert report["envelope"]["client_ip"] == "192.0.2.9"
    assert report["envelope"]["auth_user"] == "alice"
    assert report["envelope"]["helo"] == "h.test"
    # filters saw the dry-run mode; the edit was only recorded
    assert report["changes"] == ["add header at top: 'X-Checked: ctx=True msg=True\\n'"]
    assert report["files_changed"] == []
    assert eml.read_bytes() == before
    # the store was neither written nor even created
    assert not setup.state.exists()


def test_eml_tempfail_exits_3(setup: Setup, run: Run) -> None:
    status, report = run_json(run, setup.eml_args(setup.eml("LATER please")))
    assert status == EXIT_TEMPFAIL
    assert report["verdict"] == "tempfail"
    assert report["reply"] == "451 4.7.1 come back later"
    assert report["deciding"] == "by_subject"


def test_eml_from_stdin_with_an_mbox_line(
    setup: Setup, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    raw = b"From a@example.com Thu Jan  1 00:00:00 2026\nSubject: SPAM\n\nbody\n"
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(raw)))
    status, report = run_json(run, setup.eml_args(Path("-")))
    assert status == EXIT_REJECT  # the Subject header was seen: the From line was dropped
    assert report["input"]["data"] == "-"


def test_null_sender_and_several_recipients(setup: Setup, run: Run) -> None:
    status, report = run_json(
        run,
        setup.args(
            "--eml", str(setup.eml()), "--sender", "", "--rcpt", "x@a.test", "--rcpt", "y@b.test"
        ),
    )
    assert status == EXIT_ACCEPT
    assert report["envelope"]["sender"] == ""
    assert report["envelope"]["recipients"] == ["x@a.test", "y@b.test"]


def test_apply_writes_the_store(setup: Setup, run: Run) -> None:
    setup.configure(["remember"])
    status, _ = run_json(run, setup.eml_args(setup.eml(), sender="dry@example.com"))
    assert status == EXIT_ACCEPT
    assert setup.store_rows() == ([], [])
    status, report = run_json(run, setup.eml_args(setup.eml(), "--apply", sender="wet@example.com"))
    assert status == EXIT_ACCEPT and report["dry_run"] is False
    entries, dbs = setup.store_rows()
    assert entries == [("check_test", "wet@example.com")]
    assert dbs == [("check_test",)]
    # a dry run on the existing store reads it but writes nothing, not even a registration
    with contextlib.closing(sqlite3.connect(setup.state / "ttldb.sqlite3")) as conn:
        conn.execute("DELETE FROM ttldb_databases")
        conn.commit()
    status, _ = run_json(run, setup.eml_args(setup.eml(), sender="dry2@example.com"))
    assert setup.store_rows() == ([("check_test", "wet@example.com")], [])


# -- Courier's files --------------------------------------------------------------------------


def courier_files(setup: Setup, **kwargs: Any) -> tuple[Path, list[Path]]:
    msg = make_message(setup.spool, **kwargs)
    return Path(msg.data_path), [Path(p) for p in msg.control_paths]


def test_courier_files_dry_run_changes_nothing(setup: Setup, run: Run) -> None:
    setup.configure(["tagger", "legacy_rewriter", "by_subject"])
    data, controls = courier_files(
        setup, headers={"Subject": "hi"}, recipients=["r1@courier.test", "r2@courier.test"]
    )
    before = [p.read_bytes() for p in (data, *controls)]
    status, report = run_json(run, setup.args(str(data), *map(str, controls)))
    assert status == EXIT_ACCEPT
    assert [p.read_bytes() for p in (data, *controls)] == before
    assert report["input"] == {
        "source": "files",
        "data": str(data),
        "controls": [str(p) for p in controls],
    }
    assert report["envelope"]["recipients"] == ["r1@courier.test", "r2@courier.test"]
    assert report["changes"] == ["add header at top: 'X-Checked: ctx=True msg=True\\n'"]
    # the legacy filter rewrote its scratch copies, which the report lists
    assert len(report["files_changed"]) == 2
    assert all(str(setup.spool) not in path for path in report["files_changed"])
    assert [f["legacy"] for f in report["filters"]] == [False, True, False]
    assert any(
        "legacy filter(s) legacy_rewriter ran on scratch copies" in n for n in report["notes"]
    )


def test_courier_files_several_control_files(setup: Setup, run: Run) -> None:
    data, controls = courier_files(
        setup,
        headers={"Subject": "SPAM"},
        recipients=["a@x.test", "b@x.test", "c@x.test"],
        batch_size=2,
    )
    assert len(controls) == 2
    status, report = run_json(run, setup.args(str(data), *map(str, controls)))
    assert status == EXIT_REJECT
    assert report["envelope"]["recipients"] == ["a@x.test", "b@x.test", "c@x.test"]


def test_courier_files_apply_changes_them(setup: Setup, run: Run) -> None:
    setup.configure(["tagger", "legacy_rewriter"])
    data, controls = courier_files(setup, headers={"Subject": "hi"})
    status, out, _ = run(setup.args(str(data), *map(str, controls), "--apply"))
    assert status == EXIT_ACCEPT
    text = data.read_bytes()
    assert text.startswith(b"X-Checked: ctx=False msg=False\n")
    assert text.endswith(b"appended by a legacy filter\n")
    assert controls[0].read_bytes().endswith(b"Ilegacy\n")
    assert "message changes (written):" in out
    assert "files changed on disk:" in out and str(data) in out
    assert "APPLIED" in out


def test_bypass_and_shadow_and_failures_are_shown(setup: Setup, run: Run) -> None:
    setup.configure(
        ["trust_org for by_subject", "by_subject", "boom", "tagger"],
        extra="[boom.py]\nmode = 'shadow'\n",
    )
    status, report = run_json(run, setup.eml_args(setup.eml("SPAM"), sender="x@example.org"))
    filters = {f["name"]: f for f in report["filters"]}
    assert filters["trust_org"]["verdict"] == "accept"
    assert filters["trust_org"]["reply"] == "200 Ok, trusted"
    assert filters["by_subject"]["status"] == "bypassed"
    assert filters["boom"]["status"] == "ran"
    assert filters["boom"]["error"] == "RuntimeError: backend down"
    assert filters["boom"]["verdict"] == "continue"  # shadow mode: always continues
    assert filters["boom"]["shadow"]["verdict"] == "tempfail"
    assert filters["tagger"]["status"] == "ran"
    assert status == EXIT_ACCEPT
    assert report["deciding"] == "trust_org"

    # without shadow mode the failure action (451) answers
    setup.configure(["boom", "tagger"])
    status, out, _ = run(setup.eml_args(setup.eml()))
    assert status == EXIT_TEMPFAIL
    assert "failed: RuntimeError: backend down; failure action used" in out
    assert "451 4.3.0 Temporary failure in mail filtering" in out


def test_filter_timeout_and_chain_deadline(setup: Setup, run: Run) -> None:
    setup.configure(["slow", "by_subject"], extra="[slow.py]\ntimeout = 0.2\n")
    status, report = run_json(run, setup.eml_args(setup.eml()))
    assert status == EXIT_TEMPFAIL
    assert report["filters"][0]["error"] == "timeout"
    assert report["reply"] == "451 4.3.0 Mail filtering timed out, try again later"
    assert report["filters"][1]["status"] == "not_reached"

    setup.configure(["slow"], message_timeout=0.3)
    status, report = run_json(run, setup.eml_args(setup.eml()))
    assert status == EXIT_TEMPFAIL
    assert report["deciding"] is None
    assert "message_timeout" in report["problem"]
    assert report["filters"] == []


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eml", "{eml}"], "--sender"),
        (["--eml", "{eml}", "--sender", "a@b.test"], "--rcpt"),
        (["{eml}"], "CONTROLFILE"),
        ([], "CONTROLFILE"),
        (["{eml}", "{eml}", "--sender", "a@b.test"], "only go with --eml"),
        (["{eml}", "{eml}", "--eml", "{eml}"], "not both"),
        (
            ["--eml", "{eml}", "--sender", "", "--rcpt", "r@x", "--client-ip", "999.1.1.1"],
            "--client-ip",
        ),
        (["--eml", "/nonexistent.eml", "--sender", "", "--rcpt", "r@x"], "cannot read"),
        (["/nonexistent/D1", "/nonexistent/C1"], "cannot read"),
    ],
)
def test_usage_errors_exit_2(setup: Setup, run: Run, argv: list[str], message: str) -> None:
    eml = str(setup.eml())
    status, out, err = run(setup.args(*(a.replace("{eml}", eml) for a in argv)))
    assert status == EXIT_USAGE
    assert message in err
    assert out == ""


def test_configuration_errors_exit_2(setup: Setup, run: Run) -> None:
    setup.configure(["no_such_filter"])
    status, _, err = run(setup.eml_args(setup.eml()))
    assert status == EXIT_USAGE
    assert "configuration error" in err and "no_such_filter" in err
    setup.configure(["by_subject"], max_concurrent=0)
    status, _, err = run(setup.eml_args(setup.eml()))
    assert status == EXIT_USAGE and "max_concurrent" in err


def test_files_in_the_wrong_order_get_a_note(setup: Setup, run: Run) -> None:
    data, controls = courier_files(setup)
    status, report = run_json(run, setup.args(str(controls[0]), str(data)))
    assert status == EXIT_ACCEPT
    assert report["envelope"]["sender"] is None
    assert any("no sender record" in note for note in report["notes"])
    status, report = run_json(run, setup.args(str(data), str(controls[0])))
    assert not any("no sender record" in note for note in report["notes"])


def test_files_missing_the_apply_form_too(setup: Setup, run: Run) -> None:
    status, _, err = run(setup.args("/nonexistent/D1", "/nonexistent/C1", "--apply"))
    assert status == EXIT_USAGE and "cannot read /nonexistent/D1" in err


# -- the API and the console script ---------------------------------------------------------


async def test_run_check_api(setup: Setup) -> None:
    options = CheckOptions(
        eml=str(setup.eml("SPAM")),
        sender="a@example.com",
        recipients=["b@courier.test"],
        config=str(setup.chain_path),
        modules_configs=[str(setup.modules_path)],
        env={},
    )
    report = await run_check(options)
    assert report.decision.verdict is Verdict.REJECT
    assert report.exit_status == EXIT_REJECT
    assert report.deciding == "by_subject"
    assert "deciding filter: by_subject" in report.render_text()


def test_console_script(setup: Setup) -> None:
    data, controls = courier_files(setup, headers={"Subject": "SPAM"})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "courier_pyfilter.cli.admin",
            *setup.args(str(data), *map(str, controls), "--json", "--quiet"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == EXIT_REJECT, proc.stderr
    assert json.loads(proc.stdout)["reply"] == "550 5.7.1 spam subject"
    assert "INFO" not in proc.stderr  # --quiet


# -- the store's dry-run mode -------------------------------------------------------------------


async def test_store_dry_run_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ttldb.sqlite3"
    config = StoreConfig(path=str(path))
    # a missing store is not created
    store = await Store.open(config, dry_run=True)
    db = await store.database("grey", ttl=100)
    assert await db.set_if_absent("k") is True
    assert await db.increment("c", window=60) == 1
    await db.set("x")
    await store.close()
    assert not (tmp_path / "state").exists()
    # an existing one is read, never written: no entries, no registration, same TTL
    async with await Store.open(config) as real:
        real_db = await real.database("grey", ttl=50)
        await real_db.set("seen", 5.0)
    async with await Store.open(config, dry_run=True, clock=lambda: 6.0) as dry:
        dry_db = await dry.database("grey", ttl=100)
        await dry.database("other", ttl=10)
        assert await dry_db.get("seen") == 5.0
        assert await dry_db.set_if_absent("new") is True
        assert await dry_db.delete("seen") == 5.0
        await dry_db.set("x")
        assert await dry_db.increment("c", window=60) == 1
    assert sorted(os.listdir(path.parent)) == ["ttldb.sqlite3"]  # no journal files left
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT db, key, ts FROM ttldb_entries").fetchall() == [
            ("grey", "seen", 5.0)
        ]
        assert conn.execute("SELECT name, ttl FROM ttldb_databases").fetchall() == [("grey", 50.0)]
        assert conn.execute("SELECT count(*) FROM ttldb_counters").fetchone() == (0,)
