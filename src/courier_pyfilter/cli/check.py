"""``courier-pyfilter check``: run one message through the configured chain, without Courier.

Two ways to give the message:

* ``courier-pyfilter check DATAFILE CONTROLFILE...`` — Courier's own files (a data file
  and its control file(s), e.g. saved from the spool);
* ``courier-pyfilter check --eml FILE --sender S --rcpt R [--rcpt R2] [--client-ip IP]
  [--auth-user U] [--helo H] [--rdns NAME]`` — a plain message (``-`` reads stdin) plus
  the envelope; Courier-style data and control files are written to a temporary directory
  with :mod:`courier_pyfilter.testing`.

The chain is the one ``pythonfilter`` would run (``--config``, ``--modules-config``, the
environment and ``[courier-pyfilter]``, as for the daemon).  The output lists every
filter with its decision and time, then the deciding filter and the reply; ``--json``
prints the same as one JSON object.

Side effects are off unless ``--apply`` is given: the store is opened in dry-run mode
(nothing written), filters see ``ctx.dry_run`` and ``message.dry_run``, message changes
are kept in memory and listed, and the files given on the command line are copied to a
scratch directory first, so that even legacy ``do_filter`` filters (which get file paths
and may rewrite them) cannot change them.  What a legacy filter does beyond its files
(sending mail, writing elsewhere) cannot be prevented; the output says when such filters
ran.

Exit status: 0 accepted (``2xx``/``0xx``, or every filter continued), 1 rejected
(``5xx``), 3 temporary failure (``4xx``), 2 usage, input or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..chain import Chain, ChainResult
    from ..decision import Decision
    from ..message import Message
    from ..server import Generation

__all__ = [
    "EXIT_ACCEPT",
    "EXIT_REJECT",
    "EXIT_TEMPFAIL",
    "EXIT_USAGE",
    "CheckError",
    "CheckOptions",
    "CheckReport",
    "FilterReport",
    "add_check_parser",
    "exit_status",
    "run_check",
]

log = logging.getLogger("courier_pyfilter.check")

EXIT_ACCEPT = 0
"""The message would be accepted (or every filter let it through)."""
EXIT_REJECT = 1
"""The message would be refused for good (``5xx``)."""
EXIT_USAGE = 2
"""Bad command line, unreadable input, or a configuration that does not load."""
EXIT_TEMPFAIL = 3
"""The message would be refused for now (``4xx``): the client would retry."""


class CheckError(Exception):
    """The check could not run (bad input or configuration): exit status 2."""


@dataclass(slots=True)
class CheckOptions:
    """What to check and how (the command line, parsed)."""

    data: str | None = None
    """Courier data file (with ``controls``), or None with ``eml``."""
    controls: Sequence[str] = ()
    """Courier control file(s) of ``data``."""
    eml: str | None = None
    """A plain message file (``-``: stdin), used with the envelope options below."""
    sender: str | None = None
    recipients: Sequence[str] = ()
    client_ip: str | None = None
    auth_user: str | None = None
    helo: str | None = None
    rdns: str | None = None
    config: str | None = None
    """``pythonfilter.conf``; None as for the daemon."""
    modules_configs: Sequence[str] = ()
    """``pythonfilter-modules.conf`` files; empty as for the daemon."""
    apply: bool = False
    """Allow side effects: store writes, message and control-file changes."""
    keep: bool = False
    """Keep the scratch directory (and print its path)."""
    env: dict[str, str] | None = None
    """Environment for ``PYTHONFILTER_*`` settings (default: ``os.environ``)."""


@dataclass(slots=True)
class FilterReport:
    """One line of ``pythonfilter.conf`` and what it did with the message."""

    name: str
    status: str
    """``ran``, ``bypassed`` (skipped by an earlier ``for`` clause) or ``not_reached``
    (the chain stopped before it)."""
    decision: Decision | None = None
    """What the chain used: the filter's decision or its failure action (``continue``
    for a filter in shadow mode)."""
    seconds: float | None = None
    error: str | None = None
    """Why the failure action was used: ``timeout``, ``not a decision`` or the exception."""
    shadow: Decision | None = None
    """For a filter in shadow mode: what it would have answered."""
    legacy: bool = False

    def as_json(self) -> dict[str, Any]:
        """The JSON form (see :meth:`CheckReport.as_json`)."""
        out: dict[str, Any] = {"name": self.name, "status": self.status}
        if self.decision is not None:
            out.update(_decision_json(self.decision))
            out["seconds"] = None if self.seconds is None else round(self.seconds, 6)
            out["error"] = self.error
            out["shadow"] = None if self.shadow is None else _decision_json(self.shadow)
        out["legacy"] = self.legacy
        return out


@dataclass(slots=True)
class CheckReport:
    """Everything ``check`` found out; rendered as text or JSON."""

    decision: Decision
    """The reply the server would send."""
    deciding: str | None
    """The filter whose reply it is; None when no filter decided (every filter let the
    message through) or the server answered itself (see ``problem``)."""
    filters: list[FilterReport]
    seconds: float | None
    """Time of the whole chain."""
    dry_run: bool
    data_path: str
    control_paths: list[str]
    source: str
    """``files`` or ``eml``."""
    envelope: dict[str, Any] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    """The message changes the filters made (written with ``--apply``, else in memory)."""
    files_changed: list[str] = field(default_factory=list)
    """Message files whose content changed on disk during the run (legacy filters, or
    any filter with ``--apply``)."""
    problem: str | None = None
    """Why the server would answer by itself (chain deadline, failed edit, internal error)."""
    notes: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 accepted, 1 rejected, 3 temporary failure."""
        return exit_status(self.decision)

    def as_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the ``--json`` output)."""
        return {
            **_decision_json(self.decision),
            "deciding": self.deciding,
            "exit_status": self.exit_status,
            "seconds": None if self.seconds is None else round(self.seconds, 6),
            "dry_run": self.dry_run,
            "input": {
                "source": self.source,
                "data": self.data_path,
                "controls": self.control_paths,
            },
            "envelope": self.envelope,
            "filters": [f.as_json() for f in self.filters],
            "changes": self.changes,
            "files_changed": self.files_changed,
            "problem": self.problem,
            "notes": self.notes,
        }

    def render_text(self) -> str:
        """The human-readable report: one line per filter, then the verdict."""
        out: list[str] = []
        env = self.envelope
        if "error" in env:
            out.append(f"message: cannot read the envelope: {env['error']}")
        elif env:
            rcpts = ", ".join(f"<{r}>" for r in env.get("recipients", ())) or "(none)"
            out.append(
                f"message {env.get('msgid') or '-'}: from <{env.get('sender') or ''}> to {rcpts}"
            )
        mode = "dry run (no side effects)" if self.dry_run else "APPLIED (side effects allowed)"
        out.append(f"mode: {mode}")
        out.append("")
        width = max([len(f.name) for f in self.filters] + [6])
        for f in self.filters:
            out.extend(_filter_lines(f, width))
        if not self.filters:
            out.append("(no filter ran)")
        out.append("")
        if self.problem:
            out.append(f"server: {self.problem}")
        deciding = self.deciding or (
            "(server)" if self.problem else "(none: every filter continued)"
        )
        out.append(f"deciding filter: {deciding}")
        reply = self.decision.reply().split("\n")
        out.append(f"reply: {reply[0]}")
        out.extend(f"       {line}" for line in reply[1:])
        total = "" if self.seconds is None else f" in {_ms(self.seconds)}"
        out.append(
            f"verdict: {self.decision.verdict.value}{total} (exit status {self.exit_status})"
        )
        if self.changes:
            what = "written" if not self.dry_run else "kept in memory, not written"
            out.append("")
            out.append(f"message changes ({what}):")
            out.extend(f"  {change}" for change in self.changes)
        if self.files_changed:
            out.append("")
            out.append("files changed on disk:")
            out.extend(f"  {path}" for path in self.files_changed)
        if self.notes:
            out.append("")
            out.extend(f"note: {note}" for note in self.notes)
        return "\n".join(out)


def exit_status(decision: Decision) -> int:
    """The exit status for the reply the server would send (see the module doc)."""
    from ..decision import Verdict

    if decision.verdict.delivers:
        return EXIT_ACCEPT
    if decision.verdict is Verdict.REJECT:
        return EXIT_REJECT
    return EXIT_TEMPFAIL


def _decision_json(decision: Decision) -> dict[str, Any]:
    return {
        "verdict": decision.verdict.value,
        "code": decision.code or None,
        "reply": decision.reply() or None,
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def _filter_lines(f: FilterReport, width: int) -> list[str]:
    name = f.name.ljust(width)
    legacy = " [legacy]" if f.legacy else ""
    if f.status == "bypassed":
        return [f"  {name}  skipped: bypassed by an earlier 'for' clause{legacy}"]
    if f.status == "not_reached":
        return [f"  {name}  not run: the chain stopped earlier{legacy}"]
    assert f.decision is not None and f.seconds is not None
    reply = f.decision.reply().split("\n") if f.decision.reply() else ["continue"]
    extra = ""
    if f.error is not None:
        extra += f" [failed: {f.error}; failure action used]"
    if f.shadow is not None:
        shadow = f.shadow.reply().replace("\n", " / ") or "continue"
        extra += f" [shadow mode: would have answered {shadow}]"
    lines = [f"  {name}  {_ms(f.seconds).rjust(12)}  {reply[0]}{extra}{legacy}"]
    lines.extend(f"  {' ' * width}  {' ' * 12}  {line}" for line in reply[1:])
    return lines


# -- running -------------------------------------------------------------------------------


async def run_check(options: CheckOptions) -> CheckReport:
    """Run the check described by ``options``; raises :class:`CheckError` on bad input or
    configuration."""
    _validate(options)
    dry_run = not options.apply
    scratch = tempfile.mkdtemp(prefix="courier-pyfilter-check-")
    try:
        generation = await _load(options, dry_run)
        try:
            report = await _check(options, generation, scratch, dry_run)
        finally:
            await generation.retire()
    except BaseException:
        if not options.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        raise
    if options.keep:
        report.notes.append(f"the scratch directory was kept: {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def _validate(options: CheckOptions) -> None:
    if options.eml is not None:
        if options.data is not None or options.controls:
            raise CheckError("give either DATAFILE CONTROLFILE... or --eml, not both")
        if options.sender is None:
            raise CheckError("--eml needs --sender (--sender '' for the null sender <>)")
        if not options.recipients:
            raise CheckError("--eml needs at least one --rcpt")
        if options.client_ip:
            import ipaddress

            try:
                ipaddress.ip_address(options.client_ip)
            except ValueError as exc:
                raise CheckError(f"--client-ip: {exc}") from None
        return
    if options.data is None or not options.controls:
        raise CheckError("give DATAFILE and at least one CONTROLFILE, or --eml FILE")
    given = [
        name
        for name, value in (
            ("--sender", options.sender),
            ("--rcpt", options.recipients or None),
            ("--client-ip", options.client_ip),
            ("--auth-user", options.auth_user),
            ("--helo", options.helo),
            ("--rdns", options.rdns),
        )
        if value is not None
    ]
    if given:
        raise CheckError(
            f"{', '.join(given)} only go with --eml (Courier's control files carry the envelope)"
        )


async def _load(options: CheckOptions, dry_run: bool) -> Generation:
    """The chain ``pythonfilter`` would run, started, with services in dry-run mode."""
    from types import SimpleNamespace

    from ..runtime import build_generation
    from .daemon import base_settings

    args = SimpleNamespace(
        socket=None,
        config=options.config,
        modules_config=list(options.modules_configs) or None,
        log_format=None,
    )
    env = dict(os.environ if options.env is None else options.env)
    try:
        settings = base_settings(args, env)  # type: ignore[arg-type]
        generation: Generation = await build_generation(settings, 1, dry_run=dry_run)
    except Exception as exc:
        raise CheckError(f"configuration error: {exc}") from exc
    return generation  # the loader gives every filter's context the dry-run flag


def _legacy_names(chain: Chain) -> set[str]:
    from ..loader import LegacyRunner

    return {e.name for e in chain.entries if isinstance(e.runner, LegacyRunner)}


async def _check(
    options: CheckOptions, generation: Generation, scratch: str, dry_run: bool
) -> CheckReport:
    from ..message import Message

    chain = generation.chain
    legacy = _legacy_names(chain)
    notes: list[str] = []
    if options.eml is not None:
        message = await asyncio.to_thread(_eml_message, options, generation, scratch, dry_run)
        source = "eml"
        if options.apply:
            notes.append(
                "--apply with --eml: changes went to temporary copies of the message files "
                "(--keep keeps them); store writes were allowed"
            )
    else:
        assert options.data is not None
        data, controls = await asyncio.to_thread(
            _message_files, options.data, options.controls, scratch, dry_run
        )
        message = Message(data, controls, dry_run=dry_run)
        source = "files"
    envelope = _envelope(message)
    if source == "files" and "error" not in envelope and envelope["sender"] is None:
        notes.append(
            "the control file(s) have no sender record: are they Courier control files "
            "(DATAFILE first, then its control files)?"
        )
    before = await asyncio.to_thread(_digests, message)
    settings = generation.services.settings
    decision, result, problem = await _run_chain(chain, message, settings.message_timeout)
    after = await asyncio.to_thread(_digests, message)
    changed = [path for path, digest in before.items() if after.get(path) != digest]
    if dry_run:
        notes.insert(
            0, "dry run: nothing was written to the store and the given files were not changed"
        )
        ran_legacy = sorted(
            legacy & {o.name for o in (result.outcomes if result is not None else ())}
        )
        if ran_legacy:
            notes.append(
                f"legacy filter(s) {', '.join(ran_legacy)} ran on scratch copies of the "
                "message files; what they do besides (send mail, write other files) "
                "was not prevented"
            )
    return CheckReport(
        decision=decision,
        deciding=None if result is None or result.decision is not decision else result.deciding,
        filters=_filter_reports(chain, result, legacy),
        seconds=None if result is None else result.seconds,
        dry_run=dry_run,
        data_path=_shown(options),
        control_paths=list(options.controls),
        source=source,
        envelope=envelope,
        changes=list(message.edit.changes),
        files_changed=changed,
        problem=problem,
        notes=notes,
    )


def _shown(options: CheckOptions) -> str:
    if options.eml is not None:
        return options.eml
    assert options.data is not None
    return options.data


async def _run_chain(
    chain: Chain, message: Message, timeout: float
) -> tuple[Decision, ChainResult | None, str | None]:
    """Run the chain as ``FilterServer.handle`` does: whole-chain deadline, edits drained,
    a failed edit never accepted.  Returns the reply, the chain's result and, when the
    server would answer by itself, why."""
    from ..chain import INTERNAL_ERROR, TIMED_OUT

    result: ChainResult | None = None
    problem: str | None = None
    chain.acquire()
    try:
        try:
            async with asyncio.timeout(timeout):
                result = await chain.run(message)
            decision = result.decision
        except TimeoutError:
            decision = TIMED_OUT
            problem = f"the chain did not finish within message_timeout ({timeout:g} s)"
        except Exception as exc:
            log.exception("internal error while filtering %s", message.data_path)
            decision = INTERNAL_ERROR
            problem = f"internal error: {type(exc).__name__}: {exc}"
    finally:
        chain.release()
    await message.drain_edits()
    if message.edit_failed and decision.verdict.delivers:
        decision = INTERNAL_ERROR
        problem = f"changing the message failed ({message.edit_failed}); refusing to accept it"
    return decision, result, problem


def _filter_reports(
    chain: Chain, result: ChainResult | None, legacy: set[str]
) -> list[FilterReport]:
    """One report per chain entry: the outcomes matched in order, the rest skipped."""
    from ..decision import Verdict

    if result is None:
        return []
    outcomes = result.outcomes
    reports: list[FilterReport] = []
    index = 0
    stopped = False
    for entry in chain.entries:
        outcome = outcomes[index] if index < len(outcomes) else None
        if outcome is not None and outcome.name == entry.name:
            index += 1
            reports.append(
                FilterReport(
                    entry.name,
                    "ran",
                    outcome.decision,
                    outcome.seconds,
                    outcome.error,
                    outcome.shadow_decision,
                    entry.name in legacy,
                )
            )
            verdict = outcome.decision.verdict
            stopped = not (
                verdict is Verdict.CONTINUE
                or (
                    verdict is Verdict.ACCEPT
                    and bool(entry.bypass)
                    and outcome.decision.code[0] == "2"
                )
            )
        else:
            # Before the last filter that ran: skipped by a bypass set.  After it: bypassed
            # too if the chain went on, else never reached.
            reports.append(FilterReport(entry.name, "pending", legacy=entry.name in legacy))
    seen_ran = False
    for report in reversed(reports):
        if report.status == "ran":
            seen_ran = True
        elif report.status == "pending":
            report.status = "bypassed" if seen_ran or not stopped else "not_reached"
    return reports


# -- the message files -------------------------------------------------------------------------


def _message_files(
    data: str, controls: Sequence[str], scratch: str, dry_run: bool
) -> tuple[str, list[str]]:
    """The files to run the chain on: the given ones (``--apply``), else scratch copies."""
    paths = [os.path.abspath(p) for p in (data, *controls)]
    if dry_run:
        return _copy_files(paths[0], paths[1:], scratch)
    _check_readable(paths)
    return paths[0], paths[1:]


def _copy_files(data: str, controls: list[str], scratch: str) -> tuple[str, list[str]]:
    """Copy the data and control files into ``scratch`` (keeping their names and modes)."""
    copies: list[str] = []
    used: set[str] = set()
    for i, src in enumerate([data, *controls]):
        name = os.path.basename(src) or f"file{i}"
        directory = os.path.join(scratch, "msg" if name not in used else f"msg{i}")
        used.add(name)
        os.makedirs(directory, exist_ok=True)
        dst = os.path.join(directory, name)
        try:
            shutil.copyfile(src, dst)
            shutil.copymode(src, dst)
        except OSError as exc:
            raise CheckError(f"cannot read {src}: {exc}") from None
        copies.append(dst)
    return copies[0], copies[1:]


def _check_readable(paths: list[str]) -> None:
    for path in paths:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise CheckError(f"cannot read {path}: {exc}") from None


def _eml_message(
    options: CheckOptions, generation: Generation, scratch: str, dry_run: bool
) -> Message:
    """Write Courier-style files for the ``--eml`` message and its envelope."""
    from ..testing import make_message

    assert options.eml is not None and options.sender is not None
    try:
        if options.eml == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(options.eml, "rb") as fh:
                raw = fh.read()
    except OSError as exc:
        raise CheckError(f"cannot read {options.eml}: {exc}") from None
    if raw.startswith(b"From "):  # an mbox separator line, not a header
        raw = raw.partition(b"\n")[2]
    try:
        hostname = generation.services.courier.me()
    except Exception:
        import socket

        hostname = socket.getfqdn()
    helo = options.helo or (f"[{options.client_ip}]" if options.client_ip else "localhost")
    return make_message(
        scratch,
        sender=options.sender,
        recipients=list(options.recipients),
        auth_user=options.auth_user,
        client_ip=options.client_ip or None,
        helo=helo,
        rdns=options.rdns,
        raw=raw,
        hostname=hostname,
        dry_run=dry_run,
    )


def _envelope(message: Message) -> dict[str, Any]:
    try:
        control = message.control
    except Exception as exc:
        return {"error": str(exc)}
    return {
        "msgid": control.msgid,
        "sender": control.sender,
        "recipients": list(control.addresses),
        "auth_user": control.auth_user,
        "client_ip": None if control.client_ip is None else str(control.client_ip),
        "helo": control.helo,
    }


def _digests(message: Message) -> dict[str, str]:
    """SHA-256 of every message file, to spot changes made on disk."""
    digests: dict[str, str] = {}
    for path in (message.data_path, *message.control_paths):
        try:
            with open(path, "rb") as fh:
                digests[path] = hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError:
            digests[path] = ""
    return digests


# -- the command ---------------------------------------------------------------------------------


def add_check_parser(sub: Any) -> None:
    """Register ``check`` with the admin command's subparsers."""
    p = sub.add_parser(
        "check",
        help="run a message through the chain without Courier (dry run by default)",
        usage="%(prog)s [options] DATAFILE CONTROLFILE...\n"
        "       %(prog)s [options] --eml FILE --sender ADDR --rcpt ADDR [--rcpt ADDR]...",
        description="Run one message through the configured filter chain without Courier "
        "and show each filter's decision and time, the deciding filter and the reply.  "
        "Nothing is written (store, message files) unless --apply is given.",
        epilog="Exit status: 0 accepted, 1 rejected (5xx), 3 temporary failure (4xx), "
        "2 usage or configuration error.  See docs/operating.md.",
    )
    p.add_argument("files", nargs="*", metavar="DATAFILE CONTROLFILE", help="Courier's files")
    p.add_argument("--eml", metavar="FILE", help="a plain message instead ('-': stdin)")
    p.add_argument("--sender", metavar="ADDR", help="envelope sender ('' for <>), with --eml")
    p.add_argument(
        "--rcpt", metavar="ADDR", action="append", default=[], help="recipient (repeatable)"
    )
    p.add_argument("--client-ip", metavar="IP", help="the SMTP client's address, with --eml")
    p.add_argument("--auth-user", metavar="USER", help="SMTP AUTH user, with --eml")
    p.add_argument("--helo", metavar="NAME", help="HELO name (default: [client-ip])")
    p.add_argument("--rdns", metavar="NAME", help="the client's reverse DNS name, with --eml")
    p.add_argument("--config", metavar="PATH", help="pythonfilter.conf")
    p.add_argument("--modules-config", metavar="PATH", action="append", help="(repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--apply",
        action="store_true",
        help="allow side effects: store writes, changes to the given message files",
    )
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    """Run ``courier-pyfilter check`` for parsed ``args``; returns the exit status."""
    files = list(args.files)
    options = CheckOptions(
        data=files[0] if files else None,
        controls=files[1:],
        eml=args.eml,
        sender=args.sender,
        recipients=args.rcpt,
        client_ip=args.client_ip,
        auth_user=args.auth_user,
        helo=args.helo,
        rdns=args.rdns,
        config=args.config,
        modules_configs=args.modules_config or getattr(args, "global_modules_config", None) or (),
        apply=args.apply,
        keep=args.keep,
    )
    started = time.monotonic()
    with _logging(logging.WARNING if args.quiet else logging.INFO):
        try:
            report = asyncio.run(run_check(options))
        except CheckError as exc:
            print(f"courier-pyfilter check: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.json:
        import json

        print(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    else:
        print(report.render_text())
    log.debug("check took %.3f s", time.monotonic() - started)
    return report.exit_status


@contextlib.contextmanager
def _logging(level: int) -> Iterator[None]:
    """Filters' log lines to stderr for the command's duration (stdout is the report)."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(level)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(level, old_level) if old_level else level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
