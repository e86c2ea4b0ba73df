"""``pythonfilter-quarantine`` and ``courier-pyfilter quarantine``: release and purge.

``pythonfilter-quarantine -release``
    Run by Courier from the alias file ``.courier-quarantine-<siteid>-default`` for mail
    to a release address.  Reads ``$DEFAULT`` (the part after
    ``quarantine-<siteid>-``) and ``$SENDER`` (the requester); the message itself is
    read and ignored.  Exit codes, as Courier reads them in a ``.courier`` pipe:

    * 0: released, or refused with a failure notice to the requester (as the original);
    * 64 (EX_USAGE): bad command line;
    * 75 (EX_TEMPFAIL): a temporary problem (configuration unreadable, store down,
      sendmail failed): Courier keeps the request and retries it later;
    * 78 (EX_CONFIG): ``DEFAULT`` or ``SENDER`` is not set (not run by Courier).

``pythonfilter-quarantine -purge``
    The cron job: removes items older than ``days``.  Exit 0 (quiet) on success, 1 if
    some files could not be deleted, 75 when the store cannot be reached, 78 when the
    configuration is broken, 64 for a bad command line.

Both read the original's ``pythonfilter-modules.conf`` files (``/etc``, then
``/usr/local/etc``), or those given with ``--modules-config PATH`` (repeatable) or in
``$PYTHONFILTER_MODULES_CONFIG`` (colon-separated).

``courier-pyfilter quarantine list|show|release|delete|purge`` is the admin's view of
the same quarantine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..quarantine import QuarantineService
    from ..store import Store

__all__ = [
    "EX_CONFIG",
    "EX_OK",
    "EX_TEMPFAIL",
    "EX_USAGE",
    "add_quarantine_parser",
    "load_quarantine",
    "main",
    "run_admin_command",
]

PROG = "pythonfilter-quarantine"
EX_OK = 0
EX_USAGE = 64
EX_TEMPFAIL = 75
EX_CONFIG = 78
USAGE = f"usage: {PROG} [--modules-config PATH]... -release | -purge"
MODULES_CONFIG_ENV = "PYTHONFILTER_MODULES_CONFIG"


class LoadError(Exception):
    """The configuration could not be read."""


@dataclass(slots=True)
class Loaded:
    """A quarantine service built from the configuration files, and its store."""

    service: QuarantineService
    stores: list[Store]

    async def close(self) -> None:
        """Close the store if it was opened."""
        for store in self.stores:
            await store.close()
        self.stores.clear()


def modules_config_paths(given: Sequence[str] | None, env: Mapping[str, str]) -> tuple[str, ...]:
    """The modules configuration files: the options, else the environment, else the
    original's two files."""
    from ..settings import MODULES_CONFIG_DEFAULTS

    if given:
        return tuple(given)
    from_env = env.get(MODULES_CONFIG_ENV, "")
    if from_env:
        return tuple(p for p in from_env.split(":") if p)
    return MODULES_CONFIG_DEFAULTS


def load_quarantine(paths: Sequence[str]) -> Loaded:
    """Read the configuration files and build the service (the store opens on first
    use, without background purges).  Raises :class:`LoadError`."""
    from ..legacyconf import load_modules_config
    from ..mta import CourierConfig, CourierPaths
    from ..quarantine import QuarantineService
    from ..quarantine_core import config_from_sections
    from ..settings import DAEMON_SECTION, Settings, apply_section
    from ..store import Store, store_config_from_sections

    try:
        modules = load_modules_config(tuple(paths))
        settings = apply_section(
            replace(Settings(), modules_configs=tuple(paths)), modules.own_section(DAEMON_SECTION)
        )
        config = config_from_sections(modules.section)
        store_config = store_config_from_sections(
            {name: modules.section(name) for name in ("ttldb", "TtlDb")}, settings.state_dir
        )
    except Exception as exc:
        raise LoadError(str(exc)) from exc
    courier = CourierConfig(CourierPaths(sysconfdir=settings.sysconfdir))
    stores: list[Store] = []

    async def open_store() -> Store:
        if not stores:
            stores.append(await Store.open(store_config, background_purge=False))
        return stores[0]

    service = QuarantineService(config, store=open_store, me=courier.me)
    return Loaded(service, stores)


@contextlib.contextmanager
def _logging_to(stream: IO[str]) -> Iterator[None]:
    """Warnings of the library to ``stream`` while the command runs (then as before, so
    that calling :func:`main` from Python leaves the caller's logging alone)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    root = logging.getLogger("courier_pyfilter")
    saved = (root.handlers[:], root.level, root.propagate)
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    root.propagate = False
    try:
        yield
    finally:
        root.handlers[:], level, root.propagate = saved
        root.setLevel(level)


def _drain(stdin: IO[bytes] | None) -> None:
    """Read the request message to its end (Courier writes it to our stdin)."""
    if stdin is None:
        return
    try:
        while stdin.read(65536):
            pass
    except (OSError, ValueError):
        pass


def _parse(argv: Sequence[str]) -> tuple[str | None, list[str], str | None]:
    """``(action, modules config paths, error)``; the original's options are single-dash."""
    action: str | None = None
    paths: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-release", "--release", "-purge", "--purge"):
            wanted = arg.lstrip("-")
            if action is not None and action != wanted:
                return None, paths, "give only one of -release and -purge"
            action = wanted
        elif arg in ("-h", "-help", "--help"):
            return "help", paths, None
        elif arg == "--modules-config":
            if i + 1 >= len(argv) or not argv[i + 1]:
                return None, paths, "--modules-config needs a path"
            paths.append(argv[i + 1])
            i += 1
        elif arg.startswith("--modules-config="):
            value = arg.split("=", 1)[1]
            if not value:
                return None, paths, "--modules-config needs a path"
            paths.append(value)
        else:
            return None, paths, f"unknown argument {arg!r}"
        i += 1
    if action is None:
        return None, paths, "give -release or -purge"
    return action, paths, None


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdin: IO[bytes] | None = None,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Entry point of ``pythonfilter-quarantine`` (see the module docstring)."""
    env = os.environ if env is None else env
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    if stdin is None:
        stdin = sys.stdin.buffer if sys.stdin is not None else None
    action, paths, error = _parse(sys.argv[1:] if argv is None else list(argv))
    if error is not None:
        print(f"{PROG}: {error}\n{USAGE}", file=err)
        return EX_USAGE
    if action == "help":
        print(USAGE, file=out)
        print(
            "  -release  release a message (run from .courier-quarantine-<siteid>-default)",
            file=out,
        )
        print("  -purge    remove expired messages (cron job)", file=out)
        return EX_OK
    if action == "release":
        if "DEFAULT" not in env or "SENDER" not in env:
            print(
                f"{PROG}: -release needs DEFAULT and SENDER in the environment; it is run by "
                "Courier from the alias file .courier-quarantine-<siteid>-default",
                file=err,
            )
            return EX_CONFIG
        _drain(stdin)
    with _logging_to(err):
        try:
            loaded = load_quarantine(modules_config_paths(paths, env))
        except LoadError as exc:
            print(f"{PROG}: configuration error: {exc}", file=err)
            # inside a .courier pipe a temporary failure keeps the request until it is fixed
            return EX_TEMPFAIL if action == "release" else EX_CONFIG
        if action == "release":
            return asyncio.run(_release(loaded, env["DEFAULT"], env["SENDER"], err))
        return asyncio.run(_purge(loaded, out, err, quiet=True))


async def _release(loaded: Loaded, token: str, requester: str, err: IO[str]) -> int:
    from ..quarantine import QuarantineError

    try:
        result = await loaded.service.release_request(token, requester)
    except QuarantineError as exc:
        print(f"{PROG}: temporary failure: {exc}", file=err)
        return EX_TEMPFAIL
    except Exception as exc:
        print(f"{PROG}: temporary failure: {type(exc).__name__}: {exc}", file=err)
        return EX_TEMPFAIL
    finally:
        await loaded.close()
    if result.released:
        print(f"{PROG}: released {result.item_id} to {result.address}", file=err)
    # a refusal was logged by the service (a warning, with the reason)
    return EX_OK


async def _purge(loaded: Loaded, out: IO[str], err: IO[str], *, quiet: bool) -> int:
    from ..quarantine import QuarantineError

    try:
        report = await loaded.service.purge()
    except QuarantineError as exc:
        print(f"{PROG}: {exc}", file=err)
        return EX_TEMPFAIL
    finally:
        await loaded.close()
    for error in report.errors:
        print(f"{PROG}: cannot delete {error}", file=err)
    if not quiet:
        print(f"purged {len(report.items)} expired item(s), {report.files} file(s)", file=out)
    return 1 if report.errors else EX_OK


# -- courier-pyfilter quarantine ----------------------------------------------------------


def add_quarantine_parser(sub: Any) -> None:
    """Register ``courier-pyfilter quarantine ...`` on the admin command's subparsers."""
    parser = sub.add_parser(
        "quarantine",
        help="list, show, release, delete and purge quarantined messages",
        description="The quarantine configured in [quarantine] of pythonfilter-modules.conf.",
    )
    qsub = parser.add_subparsers(dest="quarantine_command", required=True)
    p = qsub.add_parser("list", help="the quarantined messages")
    p.add_argument("--all", action="store_true", help="include expired, not yet purged items")
    p = qsub.add_parser("show", help="one item: envelope, files, release addresses")
    p.add_argument("id")
    p = qsub.add_parser("release", help="deliver an item to its recipients")
    p.add_argument("id")
    p.add_argument(
        "--to",
        action="append",
        metavar="ADDRESS",
        help="only to this recipient (repeatable; each must be a recipient)",
    )
    p = qsub.add_parser("delete", help="remove items now")
    p.add_argument("id", nargs="+")
    qsub.add_parser("purge", help="remove expired items (what the cron job does)")
    parser.set_defaults(func=run_admin_command)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def run_admin_command(args: argparse.Namespace) -> int:
    """Run one ``courier-pyfilter quarantine`` subcommand."""
    paths = modules_config_paths(getattr(args, "global_modules_config", None), os.environ)
    try:
        loaded = load_quarantine(paths)
    except LoadError as exc:
        print(f"courier-pyfilter: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    handlers: dict[str, Callable[[argparse.Namespace, QuarantineService], Awaitable[int]]] = {
        "list": _cmd_list,
        "show": _cmd_show,
        "release": _cmd_release,
        "delete": _cmd_delete,
        "purge": _cmd_purge,
    }
    handler = handlers[args.quarantine_command]

    async def run() -> int:
        from ..quarantine import QuarantineError

        try:
            return await handler(args, loaded.service)
        except (QuarantineError, ValueError) as exc:
            print(f"courier-pyfilter quarantine: {exc}", file=sys.stderr)
            return 1
        finally:
            await loaded.close()

    return asyncio.run(run())


async def _cmd_list(args: argparse.Namespace, service: QuarantineService) -> int:
    records = await service.items(include_expired=args.all)
    now = service.clock()
    print(f"{'id':<12}  {'quarantined':<16}  {'expires':<16}  {'rcpts':>5}  sender / reason")
    for record in records:
        flag = " (expired)" if record.expired(now) else ""
        print(
            f"{record.id:<12}  {_when(record.time):<16}  {_when(record.expires):<16}  "
            f"{len(record.recipients):>5}  <{record.sender}> {record.explanation}{flag}"
        )
    print(f"# {len(records)} item(s) in {service.config.dir}")
    return 0


async def _cmd_show(args: argparse.Namespace, service: QuarantineService) -> int:
    from ..quarantine import QuarantineError

    records = [r for r in await service.items(include_expired=True) if r.id == args.id]
    if not records:
        print(f"courier-pyfilter quarantine: no item {args.id}", file=sys.stderr)
        return 1
    record = records[0]
    try:
        secret: bytes | None = await service.secret()
    except QuarantineError as exc:
        secret = None
        print(f"# release addresses unavailable: {exc}", file=sys.stderr)
    print(f"id:          {record.id}")
    print(f"quarantined: {_when(record.time)} on {record.host or '?'}")
    expired = " (expired)" if record.expired(service.clock()) else ""
    print(f"expires:     {_when(record.expires)}{expired}")
    print(f"reason:      {record.explanation}")
    print(f"sender:      <{record.sender}>")
    print(f"from:        {record.header_from}")
    print(f"subject:     {record.subject}")
    print(f"queue id:    {record.msgid}")
    print(f"size:        {record.size}")
    for rcpt in record.recipients:
        orig = f" (originally {rcpt.original})" if rcpt.original else ""
        print(f"recipient:   {rcpt.address}{orig}")
        if secret is not None and service.config.user_release:
            print(f"  release:   {service.release_address_for(secret, record, rcpt.address)}")
    for address, when in sorted(record.released.items()):
        print(f"released:    {address} at {_when(when)}")
    for name in record.files():
        path = service.file_path(record, name)
        print(f"file:        {path} ({_file_state(path)})")
    return 0


def _file_state(path: str) -> str:
    try:
        return f"{os.stat(path).st_size} bytes"
    except FileNotFoundError:
        return "MISSING"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


async def _cmd_release(args: argparse.Namespace, service: QuarantineService) -> int:
    record, targets = await service.release_to(args.id, args.to)
    for address in targets:
        print(f"released {record.id} to {address}")
    return 0


async def _cmd_delete(args: argparse.Namespace, service: QuarantineService) -> int:
    status = 0
    for item_id in args.id:
        if await service.delete(item_id):
            print(f"deleted {item_id}")
        else:
            print(f"courier-pyfilter quarantine: no item {item_id}", file=sys.stderr)
            status = 1
    return status


async def _cmd_purge(args: argparse.Namespace, service: QuarantineService) -> int:
    report = await service.purge()
    for error in report.errors:
        print(f"courier-pyfilter quarantine: cannot delete {error}", file=sys.stderr)
    print(f"purged {len(report.items)} expired item(s), {report.files} file(s)")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
