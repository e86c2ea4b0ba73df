"""``dropmsg``: take queued messages out of Courier's queue (also ``courier-pyfilter dropmsg``).

::

    dropmsg [-n] [-a USER] [-i IP] [-s ADDRESS] [--queue DIR] [--dir DIR]

Every control file ``C<n>`` under Courier's queue (``<localstatedir>/msgs``) whose
message matches **any** of the criteria is moved, together with its data file
``D<n>``, into Courier's quarantine directory ``<localstatedir>/quarantine`` (created
if missing), as the original's ``dropmsg`` does - no notice is sent.  Use it to stop
the mail of a compromised account (``-a``), of a client (``-i``), or a spam run
(``-s``) that is still queued.

``-a USER``
    the SMTP AUTH user (``i`` record), exactly.
``-i IP``
    the client address (``TCPREMOTEIP``; IPv4-mapped addresses count as IPv4), or a
    network such as ``192.0.2.0/24`` (an addition).
``-s ADDRESS``
    the envelope sender, ignoring case; for a message with the null sender ``<>``, its
    first recipient.
``-n``, ``--dry-run``
    only list what would be moved.

Each option may be given several times.  Every message is judged once, so one that
matches two criteria is moved once (the original tried twice and failed the second
time); a message delivered while ``dropmsg`` runs is reported as gone and skipped.
Files never overwrite others in the quarantine directory (a number is appended).

Exit status: 0 done (also when nothing matched), 1 some message could not be moved,
64 bad usage (no criterion, bad IP), 66 the queue directory cannot be read.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

__all__ = [
    "Criteria",
    "Match",
    "add_dropmsg_parser",
    "find_matches",
    "main",
    "move_message",
    "run",
]

EX_OK = 0
EX_FAILED = 1
EX_USAGE = 64
EX_NOINPUT = 66
DEFAULT_LOCALSTATEDIR = "/var/lib/courier"
CONTROL_MAX = 4 * 1024 * 1024
_CONTROL_NAME = re.compile(r"C[0-9]+")
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS})

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Criteria:
    """What to look for; a message matching any one of them is taken."""

    auth_users: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = ()
    senders: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.auth_users or self.networks or self.senders)


@dataclass(frozen=True, slots=True)
class Match:
    """One queued message that matched."""

    control: str
    data: str
    reason: str
    sender: str


def parse_network(text: str) -> IPNetwork:
    """An address or network for ``-i``; IPv4-mapped IPv6 becomes IPv4.  ValueError if bad."""
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.lower().startswith("::ffff:") and "." in text and "/" not in text:
        text = text[7:]
    network = ipaddress.ip_network(text, strict=False)
    return network


def _judge(data: bytes, criteria: Criteria) -> tuple[str | None, str]:
    """``(reason or None, sender)`` for one control file's content."""
    from ..control import ControlData, parse_control

    control = ControlData.from_files([parse_control(data, max_size=CONTROL_MAX)])
    sender = control.sender or ""
    user = control.auth_user
    if user is not None and user in criteria.auth_users:
        return f"auth user {user}", sender
    if criteria.networks:
        ip = control.client_ip
        if ip is not None:
            for network in criteria.networks:
                if ip.version == network.version and ip in network:
                    return f"client {ip}", sender
    if criteria.senders:
        if sender:
            who = sender
        else:
            recipients = control.all_recipients
            who = recipients[0].address if recipients else ""
        wanted = {s.lower() for s in criteria.senders}
        if who and who.lower() in wanted:
            label = "sender" if sender else "null sender, first recipient"
            return f"{label} {who}", sender
    return None, sender


def find_matches(queue: str, criteria: Criteria, *, errors: list[str] | None = None) -> list[Match]:
    """The queued messages under ``queue`` that match ``criteria`` (each once, sorted).

    Unreadable control files (e.g. delivered meanwhile) are skipped; problems other than
    a vanished file are added to ``errors``.
    """
    found: list[Match] = []
    for root, dirs, files in os.walk(queue):
        dirs.sort()
        for name in sorted(files):
            if not _CONTROL_NAME.fullmatch(name):
                continue
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as fh:
                    data = fh.read(CONTROL_MAX + 1)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if errors is not None:
                    errors.append(f"{path}: {exc.strerror or exc}")
                continue
            try:
                reason, sender = _judge(data, criteria)
            except Exception as exc:  # a control file we cannot parse: leave it alone
                if errors is not None:
                    errors.append(f"{path}: {exc}")
                continue
            if reason is not None:
                found.append(Match(path, os.path.join(root, "D" + name[1:]), reason, sender))
    return found


def _free_names(directory: str, control: str, data: str) -> tuple[str, str]:
    base_c, base_d = os.path.basename(control), os.path.basename(data)
    suffix = ""
    n = 0
    while True:
        c = os.path.join(directory, base_c + suffix)
        d = os.path.join(directory, base_d + suffix)
        if not os.path.lexists(c) and not os.path.lexists(d):
            return c, d
        n += 1
        suffix = f".{n}"


def _move_file(source: str, target: str) -> None:
    """Move without ever replacing ``target`` (FileExistsError); FileNotFoundError when
    ``source`` is gone."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in _NO_LINK:  # another file system, or no hard links: copy
            raise
        with open(source, "rb") as src:  # FileNotFoundError propagates
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            with os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst)
        shutil.copystat(source, target)
    try:
        os.unlink(source)
    except FileNotFoundError:
        pass


def move_message(match: Match, directory: str) -> str:
    """Move one message (control file first, then data file) into ``directory``.

    Returns ``"moved"``, ``"gone"`` (the control file vanished: delivered or removed
    meanwhile) or ``"partial"`` (the control file was moved, the data file was gone).
    Other errors raise :class:`OSError`.
    """
    for _ in range(10):
        control_target, data_target = _free_names(directory, match.control, match.data)
        try:
            _move_file(match.control, control_target)
        except FileNotFoundError:
            return "gone"
        except FileExistsError:
            continue  # another dropmsg took the name meanwhile
        try:
            _move_file(match.data, data_target)
        except FileNotFoundError:
            return "partial"
        return "moved"
    raise OSError(f"no free name for {match.control} in {directory}")


def _ensure_dir(directory: str, like: str) -> None:
    if os.path.isdir(directory):
        return
    os.mkdir(directory, 0o750)
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            st = os.stat(like)
            os.chown(directory, st.st_uid, st.st_gid)


def _localstatedir() -> str:
    """Courier's ``localstatedir`` from ``courier-config``, else Debian's."""
    import asyncio

    from ..mta.paths import discover

    try:
        paths = asyncio.run(discover(timeout=5.0))
    except Exception:
        return DEFAULT_LOCALSTATEDIR
    return paths.localstatedir or DEFAULT_LOCALSTATEDIR


def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Carry out a parsed ``dropmsg`` command line; returns the exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    prog = getattr(args, "prog_name", "dropmsg")
    try:
        networks = tuple(parse_network(text) for text in args.ip or ())
    except ValueError as exc:
        print(f"{prog}: bad -i value: {exc}", file=err)
        return EX_USAGE
    criteria = Criteria(
        auth_users=tuple(args.auth_user or ()),
        networks=networks,
        senders=tuple(s.strip() for s in args.sender or () if s.strip()),
    )
    if not criteria:
        print(f"{prog}: give at least one of -a USER, -i IP, -s ADDRESS", file=err)
        return EX_USAGE
    base = args.localstatedir or (None if args.queue and args.dir else _localstatedir())
    queue = args.queue or os.path.join(base or DEFAULT_LOCALSTATEDIR, "msgs")
    target = args.dir or os.path.join(base or DEFAULT_LOCALSTATEDIR, "quarantine")
    if not os.path.isdir(queue) or not os.access(queue, os.R_OK | os.X_OK):
        print(f"{prog}: cannot read the queue directory {queue}", file=err)
        return EX_NOINPUT
    errors: list[str] = []
    matches = find_matches(queue, criteria, errors=errors)
    for problem in errors:
        print(f"{prog}: skipped {problem}", file=err)
    if args.dry_run:
        for match in matches:
            print(f"would move {match.control} ({match.reason})", file=out)
        print(f"{len(matches)} message(s) would be moved to {target}", file=out)
        return EX_OK
    if matches:
        try:
            _ensure_dir(target, queue)
        except OSError as exc:
            print(f"{prog}: cannot create {target}: {exc.strerror or exc}", file=err)
            return EX_FAILED
    moved = 0
    status = EX_OK
    for match in matches:
        try:
            outcome = move_message(match, target)
        except OSError as exc:
            print(f"{prog}: cannot move {match.control}: {exc.strerror or exc}", file=err)
            status = EX_FAILED
            continue
        if outcome == "gone":
            print(f"skipped {match.control}: no longer queued ({match.reason})", file=out)
        elif outcome == "partial":
            print(f"moved {match.control} ({match.reason}); its data file was gone", file=out)
            moved += 1
        else:
            print(f"moved {match.control} ({match.reason})", file=out)
            moved += 1
    print(f"{moved} message(s) moved to {target}", file=out)
    return status


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-a", dest="auth_user", action="append", metavar="USER")
    parser.add_argument("-i", dest="ip", action="append", metavar="IP")
    parser.add_argument("-s", dest="sender", action="append", metavar="ADDRESS")
    parser.add_argument(
        "-n", "--dry-run", dest="dry_run", action="store_true", help="only list the matches"
    )
    parser.add_argument("--queue", metavar="DIR", help="the queue (default <localstatedir>/msgs)")
    parser.add_argument(
        "--dir", metavar="DIR", help="where to move them (default <localstatedir>/quarantine)"
    )
    parser.add_argument(
        "--localstatedir", metavar="DIR", help="Courier's localstatedir (default: courier-config)"
    )


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # exit 64 (EX_USAGE) like the other tools
        self.print_usage(sys.stderr)
        print(f"{self.prog}: {message}", file=sys.stderr)
        raise SystemExit(EX_USAGE)


def add_dropmsg_parser(sub: Any) -> None:
    """Register ``courier-pyfilter dropmsg`` on the admin command's subparsers."""
    parser = sub.add_parser(
        "dropmsg",
        help="move queued messages of a user, client or sender to Courier's quarantine",
        description=(__doc__ or "").split("\n\n")[0],
    )
    _add_arguments(parser)
    parser.set_defaults(func=run, prog_name="courier-pyfilter dropmsg")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``dropmsg``."""
    parser = _Parser(
        prog="dropmsg",
        description="Move queued messages that match into Courier's quarantine directory.",
    )
    _add_arguments(parser)
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
