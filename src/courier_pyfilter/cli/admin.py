"""``courier-pyfilter``: the admin command (configuration check, store, replay, queue tools)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_version(args: argparse.Namespace) -> int:
    from .. import __version__

    print(f"courier-pyfilter {__version__}")
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from .daemon import main as daemon_main

    argv = ["--check-config"]
    if args.config:
        argv += ["--config", args.config]
    for path in args.modules_config or ():
        argv += ["--modules-config", path]
    return daemon_main(argv)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="courier-pyfilter", description=__doc__)
    parser.add_argument(
        "--modules-config",
        dest="global_modules_config",
        metavar="PATH",
        action="append",
        help="pythonfilter-modules.conf to read (repeatable; default: /etc, /usr/local/etc)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=_cmd_version)
    p = sub.add_parser("check-config", help="load both configuration files and all filters")
    p.add_argument("--config", metavar="PATH")
    p.add_argument("--modules-config", metavar="PATH", action="append")
    p.set_defaults(func=_cmd_check_config)
    from .check import add_check_parser

    add_check_parser(sub)
    try:
        from .store import add_store_parser
    except ImportError:  # pragma: no cover - store CLI not available
        pass
    else:
        add_store_parser(sub)
    from .dropmsg import add_dropmsg_parser
    from .quarantine import add_quarantine_parser

    add_quarantine_parser(sub)
    add_dropmsg_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``courier-pyfilter`` command."""
    args = build_parser().parse_args(argv)
    if args.command == "store":
        try:
            _add_store_context(args)
        except Exception as exc:
            print(f"courier-pyfilter: configuration error: {exc}", file=sys.stderr)
            return 1
    status: int = args.func(args)
    return status


def _add_store_context(args: argparse.Namespace) -> None:
    """Give the store commands the ``[ttldb]`` settings and state directory in effect."""
    from ..legacyconf import load_modules_config
    from ..settings import DAEMON_SECTION, MODULES_CONFIG_DEFAULTS, Settings, apply_section

    paths = tuple(args.global_modules_config or MODULES_CONFIG_DEFAULTS)
    modules = load_modules_config(paths)
    settings = apply_section(Settings(), modules.section(DAEMON_SECTION))
    args.module_sections = {name: modules.section(name) for name in ("ttldb", "TtlDb")}
    if getattr(args, "state_dir", None) is None:
        args.state_dir = settings.state_dir


if __name__ == "__main__":
    sys.exit(main())
