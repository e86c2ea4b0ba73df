"""``dropmsg`` / ``courier-pyfilter dropmsg``: moving queued messages to Courier's quarantine.

The queue is a directory laid out like Courier's ``msgs`` (``<n>/C<inode>`` and
``<n>/D<inode>``), filled with control files written in Courier's format by
:func:`courier_pyfilter.testing.make_message`.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.cli import dropmsg
from courier_pyfilter.cli.admin import main as admin_main
from courier_pyfilter.testing import make_message


class Queue:
    """A fake Courier queue and quarantine directory."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.msgs = tmp / "msgs"
        self.quarantine = tmp / "quarantine"
        self.spool = tmp / "spool"
        self.msgs.mkdir()
        self.spool.mkdir()
        self._next = 1000

    def add(self, **kwargs: Any) -> str:
        """Queue one message; return its number (``C<n>`` / ``D<n>``)."""
        msg = make_message(self.spool, **kwargs)
        number = str(self._next)
        self._next += 1
        sub = self.msgs / number[:2]
        sub.mkdir(exist_ok=True)
        shutil.copy(msg.control_paths[0], sub / f"C{number}")
        shutil.copy(msg.data_path, sub / f"D{number}")
        return number

    def queued(self) -> set[str]:
        return {p.name for p in self.msgs.rglob("*") if p.is_file()}

    def moved(self) -> set[str]:
        if not self.quarantine.exists():
            return set()
        return {p.name for p in self.quarantine.iterdir()}

    def run(self, *argv: str) -> tuple[int, str, str]:
        args = dropmsg._Parser(prog="dropmsg")
        dropmsg._add_arguments(args)
        parsed = args.parse_args([*argv, "--queue", str(self.msgs), "--dir", str(self.quarantine)])
        out, err = io.StringIO(), io.StringIO()
        status = dropmsg.run(parsed, out, err)
        return status, out.getvalue(), err.getvalue()


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    return Queue(tmp_path)


def test_moves_the_messages_of_an_authenticated_user(queue: Queue) -> None:
    bad = queue.add(auth_user="hacked", sender="hacked@example.com")
    good = queue.add(auth_user="alice", sender="alice@example.com")
    anonymous = queue.add(sender="x@example.org")
    status, out, _ = queue.run("-a", "hacked")
    assert status == 0
    assert queue.moved() == {f"C{bad}", f"D{bad}"}
    assert queue.queued() == {f"C{good}", f"D{good}", f"C{anonymous}", f"D{anonymous}"}
    assert "moved" in out and "auth user hacked" in out and "1 message(s) moved" in out
    # the files are moved, not copied: same content as queued
    assert (queue.quarantine / f"C{bad}").read_bytes().startswith(b"shacked@example.com\n")


def test_matches_client_address_and_network(queue: Queue) -> None:
    one = queue.add(client_ip="192.0.2.7")  # written IPv4-mapped, as Courier does
    two = queue.add(client_ip="192.0.2.200")
    six = queue.add(client_ip="2001:db8::5", ipv4_mapped=False)
    other = queue.add(client_ip="198.51.100.1")
    status, _, _ = queue.run("-i", "192.0.2.7")
    assert status == 0 and queue.moved() == {f"C{one}", f"D{one}"}
    status, _, _ = queue.run("-i", "192.0.2.0/24", "-i", "2001:db8::/64")
    assert status == 0
    assert queue.moved() == {f"{k}{n}" for n in (one, two, six) for k in "CD"}
    assert queue.queued() == {f"C{other}", f"D{other}"}


def test_matches_sender_ignoring_case_and_first_recipient_of_bounces(queue: Queue) -> None:
    spam = queue.add(sender="Spammer@Example.COM")
    bounce = queue.add(sender="", recipients=["spammer@example.com", "x@example.org"])
    other_bounce = queue.add(sender="", recipients=["x@example.org", "spammer@example.com"])
    status, out, _ = queue.run("-s", "spammer@example.com")
    assert status == 0
    assert queue.moved() == {f"{k}{n}" for n in (spam, bounce) for k in "CD"}
    assert queue.queued() == {f"C{other_bounce}", f"D{other_bounce}"}
    assert "null sender, first recipient spammer@example.com" in out


def test_a_message_matching_twice_is_moved_once(queue: Queue) -> None:
    both = queue.add(auth_user="hacked", sender="hacked@example.com", client_ip="192.0.2.9")
    status, out, err = queue.run("-a", "hacked", "-s", "hacked@example.com", "-i", "192.0.2.9")
    assert status == 0, err
    assert queue.moved() == {f"C{both}", f"D{both}"}
    assert out.count("\nmoved ") + out.startswith("moved ") == 1
    assert "1 message(s) moved" in out and "cannot move" not in err


def test_dry_run_lists_and_moves_nothing(queue: Queue) -> None:
    number = queue.add(auth_user="hacked")
    status, out, _ = queue.run("-n", "-a", "hacked")
    assert status == 0
    assert f"would move {queue.msgs / number[:2] / f'C{number}'}" in out
    assert "1 message(s) would be moved" in out
    assert queue.moved() == set() and f"C{number}" in queue.queued()
    assert not queue.quarantine.exists()


def test_a_message_delivered_meanwhile_is_skipped(queue: Queue) -> None:
    gone = queue.add(auth_user="hacked")
    (match,) = dropmsg.find_matches(str(queue.msgs), dropmsg.Criteria(auth_users=("hacked",)))
    Path(match.control).unlink()  # courierd finished it between the scan and the move
    Path(match.data).unlink()
    queue.quarantine.mkdir()
    assert dropmsg.move_message(match, str(queue.quarantine)) == "gone"
    assert queue.moved() == set()
    # data file removed meanwhile: the control file is still taken out of the queue
    partial = queue.add(auth_user="hacked")
    (match,) = dropmsg.find_matches(str(queue.msgs), dropmsg.Criteria(auth_users=("hacked",)))
    Path(match.data).unlink()
    assert dropmsg.move_message(match, str(queue.quarantine)) == "partial"
    assert queue.moved() == {f"C{partial}"}
    assert gone != partial


def test_existing_files_in_the_quarantine_are_never_overwritten(queue: Queue) -> None:
    number = queue.add(auth_user="hacked")
    queue.quarantine.mkdir()
    (queue.quarantine / f"C{number}").write_text("older\n")
    (queue.quarantine / f"D{number}.1").write_text("older\n")
    status, _, _ = queue.run("-a", "hacked")
    assert status == 0
    assert queue.moved() == {f"C{number}", f"D{number}.1", f"C{number}.2", f"D{number}.2"}
    assert (queue.quarantine / f"C{number}").read_text() == "older\n"
    assert (queue.quarantine / f"D{number}.1").read_text() == "older\n"


def test_unparsable_control_files_are_left_alone(queue: Queue) -> None:
    sub = queue.msgs / "99"
    sub.mkdir()
    (sub / "C9999").write_bytes(b"x" * (dropmsg.CONTROL_MAX + 10))
    (sub / "notacontrolfile").write_text("shacked@example.com\n")
    status, _, err = queue.run("-s", "hacked@example.com")
    assert status == 0 and "skipped" in err
    assert queue.moved() == set()


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        ([], 64, "give at least one"),
        (["-i", "not-an-ip"], 64, "bad -i"),
        (["-s", "  "], 64, "give at least one"),
    ],
)
def test_usage_errors(queue: Queue, argv: list[str], status: int, message: str) -> None:
    got, _, err = queue.run(*argv)
    assert got == status and message in err


def test_missing_queue_directory(tmp_path: Path) -> None:
    err = io.StringIO()
    args = dropmsg._Parser(prog="dropmsg")
    dropmsg._add_arguments(args)
    parsed = args.parse_args(["-a", "x", "--queue", str(tmp_path / "nope"), "--dir", "/tmp/x"])
    assert dropmsg.run(parsed, io.StringIO(), err) == 66
    assert "cannot read the queue directory" in err.getvalue()


def test_command_line_entry_points(queue: Queue, capsys: pytest.CaptureFixture[str]) -> None:
    number = queue.add(auth_user="hacked")
    common = ["--queue", str(queue.msgs), "--dir", str(queue.quarantine)]
    # the admin command's subcommand
    assert admin_main(["dropmsg", "-n", "-a", "hacked", *common]) == 0
    assert "would move" in capsys.readouterr().out
    # the dropmsg program: an unknown option is a usage error (64)
    with pytest.raises(SystemExit) as info:
        dropmsg.main(["-x"])
    assert info.value.code == 64
    proc = subprocess.run(
        [sys.executable, "-m", "courier_pyfilter.cli.dropmsg", "-a", "hacked", *common],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert queue.moved() == {f"C{number}", f"D{number}"}
    assert (queue.quarantine.stat().st_mode & 0o777) == 0o750
