"""``pythonfilter``: the filter server, as courierfilter, systemd or an admin starts it.

Under courierfilter it gets no arguments, a scrubbed environment and cwd ``/usr``; all its
settings then come from the configuration files.  See ``docs/running.md``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from ..server import readiness_fd

if TYPE_CHECKING:
    import argparse

__all__ = ["build_settings", "main", "serve"]

log = logging.getLogger("courier_pyfilter.daemon")


def _parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="pythonfilter",
        description="courier-pyfilter: the Courier MTA filter server (asyncio).",
    )
    parser.add_argument(
        "--socket",
        metavar="PATH",
        help="listening socket (default: Courier's allfilters/pythonfilter)",
    )
    parser.add_argument("--config", metavar="PATH", help="pythonfilter.conf (the filter chain)")
    parser.add_argument(
        "--modules-config",
        metavar="PATH",
        action="append",
        help="pythonfilter-modules.conf; repeat to read several, later ones override",
    )
    parser.add_argument("--log-format", choices=("text", "json"), help="log line format")
    parser.add_argument(
        "--service",
        action="store_true",
        help="run as the systemd service: listen on the 'backend' socket, ignore stdin",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="load the configuration and the filters, report problems, and exit",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


_VALUE_OPTIONS = {
    "--socket": "socket",
    "--config": "config",
    "--modules-config": "modules_config",
    "--log-format": "log_format",
}
_FLAG_OPTIONS = {"--service": "service", "--check-config": "check_config", "--version": "version"}


def parse_args(argv: Sequence[str]) -> Any:
    """The command line, parsed like :func:`_parser` does.

    A plain loop handles the usual cases without importing ``argparse`` (with what it
    pulls in, about 1 MB of resident memory for the daemon's whole life); ``--help``,
    abbreviations and every error go to ``argparse`` for its messages and exit status.
    """
    values: dict[str, Any] = {name: None for name in _VALUE_OPTIONS.values()}
    values.update({name: False for name in _FLAG_OPTIONS.values()})
    args = list(argv)
    i = 0
    while i < len(args):
        word = args[i]
        option, eq, value = word.partition("=")
        if option in _FLAG_OPTIONS and not eq:
            values[_FLAG_OPTIONS[option]] = True
        elif option in _VALUE_OPTIONS:
            if not eq:
                i += 1
                if i == len(args) or args[i].startswith("-"):
                    return _parser().parse_args(argv)  # error: missing value
                value = args[i]
            name = _VALUE_OPTIONS[option]
            if name == "log_format" and value not in ("text", "json"):
                return _parser().parse_args(argv)  # error: invalid choice
            if name == "modules_config":
                values[name] = [*(values[name] or ()), value]
            else:
                values[name] = value
        else:
            return _parser().parse_args(argv)  # --help, abbreviations, errors
        i += 1
    return SimpleNamespace(**values)


def base_settings(args: argparse.Namespace, env: dict[str, str]) -> Any:
    """Settings from defaults, the environment and the command line (not the files)."""
    from ..settings import Settings

    return replace(Settings(), **_given(args, env))


def _given(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The settings given on the command line or in the environment (these win)."""
    from ..settings import settings_from_env

    values, _locked = settings_from_env(env)
    if args.socket:
        values["socket_path"] = args.socket
    if args.config:
        values["chain_config"] = args.config
    if args.modules_config:
        values["modules_configs"] = tuple(args.modules_config)
    if args.log_format:
        values["log_format"] = args.log_format
    return values


def build_settings(args: argparse.Namespace, env: dict[str, str]) -> tuple[Any, Any]:
    """The effective settings: :func:`base_settings` plus the ``[courier-pyfilter]`` section.

    Returns ``(settings, base)``.  Raises ``SettingsError``/``ConfigError``.
    """
    from ..legacyconf import load_modules_config
    from ..settings import DAEMON_SECTION, apply_section

    base = base_settings(args, env)
    modules = load_modules_config(base.modules_configs)
    locked = sorted(_given(args, env))
    settings = apply_section(base, modules.own_section(DAEMON_SECTION), locked=locked)
    return settings, base


async def relay(settings: Any, ready_fd: int | None) -> int:
    """Run as courierfilter's relay to the systemd service (``backend`` is set)."""
    import signal

    from ..relay import Relay
    from ..server import ServerError, signal_ready, watch_stdin

    relay = Relay(
        settings.socket_path,
        settings.backend,
        mode=settings.socket_mode,
        backlog=settings.listen_backlog,
    )
    try:
        await relay.start()
    except ServerError as exc:
        log.error("%s", exc)
        signal_ready(ready_fd)
        return 1
    signal_ready(ready_fd)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP,
        lambda: log.warning("relay: nothing to reload; reload the service instead"),
    )
    watch_stdin(loop, stop.set)
    await stop.wait()
    await relay.stop(settings.drain_timeout)
    return 0


async def serve(
    settings: Any,
    ready_fd: int | None,
    *,
    base: Any = None,
    check_only: bool = False,
    startup_error: str | None = None,
) -> int:
    """Run the server until stdin EOF or SIGTERM; returns the exit status.

    ``base`` are the settings without the configuration file's section (re-applied at
    every reload).  With ``startup_error`` the daemon settings could not be read: the
    server then answers every message with 451 and SIGHUP restarts the process.
    """
    from ..runtime import make_generation_factory
    from ..server import (
        FilterServer,
        ServerError,
        install_signal_handlers,
        signal_ready,
        watch_stdin,
    )

    factory = make_generation_factory(base if base is not None else settings)
    if check_only:
        try:
            generation = await factory(1)
        except Exception as exc:
            print(f"pythonfilter: configuration error: {exc}", file=sys.stderr)
            return 1
        await generation.retire()
        print(f"configuration OK: {', '.join(generation.chain.names) or '(empty chain)'}")
        return 0
    if startup_error is not None:
        error = startup_error

        async def broken(number: int) -> Any:
            raise ServerError(error)

        factory = broken
    server = FilterServer(settings, factory, restart_on_reload=startup_error is not None)
    try:
        await server.start()
    except ServerError as exc:
        log.error("%s", exc)
        signal_ready(ready_fd)
        return 1
    except Exception as exc:
        log.error("pythonfilter could not start: %s", exc, exc_info=not isinstance(exc, ValueError))
        signal_ready(ready_fd)
        return 1
    signal_ready(ready_fd)
    install_signal_handlers(server)
    watch_stdin(server.loop, server.request_stop)
    _tune_gc()
    await server.wait_stopped()
    await server.shutdown()
    return 0


def _tune_gc() -> None:
    """Keep start-up objects out of every collection, and collect young objects less often.

    Each message allocates a few hundred short-lived objects; with the default threshold
    the cyclic collector would run every few messages.
    """
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _run(coro: Any) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[no-any-return]
    return uvloop.run(coro)  # type: ignore[no-any-return]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pythonfilter`` command."""
    ready_fd = readiness_fd()  # before anything else can open file descriptor 3
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.version:
        from .. import __version__

        print(f"courier-pyfilter {__version__}")
        return 0
    from ..logs import setup_logging

    setup_logging(args.log_format or os.environ.get("PYTHONFILTER_LOG_FORMAT") or "text")
    startup_error: str | None = None
    try:
        settings, base = build_settings(args, dict(os.environ))
    except Exception as exc:
        log.error("pythonfilter: configuration error: %s", exc)
        if args.check_config or args.service:
            if ready_fd is not None:
                os.close(ready_fd)
            return 1
        # Keep Courier's socket answering 451 rather than letting mail pass unfiltered.
        try:
            settings = base = base_settings(args, dict(os.environ))
        except Exception:
            if ready_fd is not None:
                os.close(ready_fd)
            return 1
        startup_error = f"configuration error: {exc}"
    setup_logging(settings.log_format)
    if args.service:
        if not settings.backend:
            log.error("pythonfilter --service needs 'backend' in [courier-pyfilter]")
            return 1
        settings = replace(settings, socket_path=settings.backend)
        base = replace(base, socket_path=settings.backend)
    elif settings.backend and not args.check_config:
        return _run(relay(settings, ready_fd))
    return _run(
        serve(
            settings,
            ready_fd,
            base=base,
            check_only=args.check_config,
            startup_error=startup_error,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
