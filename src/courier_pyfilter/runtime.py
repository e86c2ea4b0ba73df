"""Assemble a runnable configuration: files -> settings -> services -> started chain."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .chain import Chain
from .loader import LegacyRunner, build_chain
from .server import Generation, ServerError
from .services import Services
from .settings import (
    CHAIN_CONFIG_CANDIDATES,
    DAEMON_SECTION,
    Settings,
    apply_section,
    find_chain_config,
)

__all__ = ["LoadedConfig", "load_config", "make_generation_factory"]

log = logging.getLogger("courier_pyfilter.runtime")


@dataclass(slots=True)
class LoadedConfig:
    """Both configuration files, read and checked."""

    settings: Settings
    chain_path: str
    lines: list[tuple[str, frozenset[str]]]
    modules: Any


def load_config(settings: Settings) -> LoadedConfig:
    """Read ``pythonfilter-modules.conf`` and ``pythonfilter.conf`` (both re-read each call).

    Raises ``ServerError`` when no chain file is found, or the parsers' ``ConfigError``.
    """
    from .legacyconf import load_modules_config, parse_chain_config

    modules = load_modules_config(settings.modules_configs)
    defaults = Settings()
    given = [
        f.name
        for f in dataclasses.fields(Settings)
        if getattr(settings, f.name) != getattr(defaults, f.name)
    ]
    settings = apply_section(settings, modules.own_section(DAEMON_SECTION), locked=given)
    chain_path = find_chain_config(settings)
    if chain_path is None:
        searched = (
            *CHAIN_CONFIG_CANDIDATES,
            os.path.join(settings.sysconfdir, "pythonfilter.conf"),
        )
        raise ServerError(f"Could not locate a configuration file in any of: {searched}")
    try:
        with open(chain_path, encoding="utf-8", errors="surrogateescape") as fh:
            text = fh.read()
    except OSError as exc:
        raise ServerError(f"cannot read {chain_path}: {exc}") from exc
    parsed = parse_chain_config(text, chain_path)
    for warning in (*modules.warnings, *parsed.warnings):
        log.warning("configuration warning: %s", warning)
    lines = [(entry.name, entry.bypass) for entry in parsed.entries]
    return LoadedConfig(settings, chain_path, lines, modules)


async def build_generation(settings: Settings, number: int, *, dry_run: bool = False) -> Generation:
    """Load the configuration, build the chain and start its filters."""
    config = load_config(settings)
    services = Services(config.settings, config.modules.section, dry_run=dry_run)
    try:
        chain: Chain = build_chain(
            config.lines,
            config.modules.section,
            services,
            filter_path=config.settings.filter_path,
            default_timeout=config.settings.filter_timeout,
            generation=number,
        )
        if any(isinstance(e.runner, LegacyRunner) for e in chain.entries):
            # Filters written for the original: their courier.* and pythonfilter.ttldb
            # modules follow this daemon's configuration and store.
            import courier

            courier.attach_daemon(services, asyncio.get_running_loop())
        await chain.start()
        await _install_prefetch(chain, services)
    except BaseException:
        await services.close()
        raise
    return Generation(chain, services, number)


async def _install_prefetch(chain: Chain, services: Services) -> None:
    """Give the chain a prefetch step when its filters declare ``dns_queries``.

    At each message the hooks say which lookups the filters will make; they are started
    at once on the shared resolver, so k DNS filters wait about one round trip, not k.
    """
    hooks = [
        (entry.name, hook)
        for entry in chain.entries
        if (hook := getattr(entry.runner, "dns_queries", None)) is not None
    ]
    if not hooks:
        return
    from .dns import dns_resolver

    resolver = await dns_resolver(services)

    def prefetch(message: Any) -> None:
        queries: list[Any] = []
        for name, hook in hooks:
            try:
                queries.extend(hook(message))
            except Exception:
                log.debug('"%s" dns_queries failed', name, exc_info=True)
        if queries:
            resolver.prefetch(queries)

    chain.prefetch = prefetch


def make_generation_factory(settings: Settings) -> Callable[[int], Awaitable[Generation]]:
    """The factory the server calls at start and on every SIGHUP.

    ``settings`` are the ones from the command line and environment only: the
    ``[courier-pyfilter]`` section is applied afresh at every load, so a setting removed
    from the file returns to its default.
    """

    async def factory(number: int) -> Generation:
        return await build_generation(settings, number)

    return factory
