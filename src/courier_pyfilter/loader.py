"""Find filters by name and wrap each one, whatever its style, as a chain entry.

Search order for a name from ``pythonfilter.conf`` (dots allowed: ``a.b``):

1. ``NAME.py`` (or ``a/b.py``) in the directories of the ``filter_path`` setting;
2. the built-in module ``courier_pyfilter.filters.NAME``;
3. the entry point ``NAME`` of the group ``courier_pyfilter.filters`` (third-party packages);
4. the legacy package ``pythonfilter.NAME`` (filters written for the original).

A module is recognised as, in this order: a class-based filter (a module attribute
``FILTER`` naming a :class:`~courier_pyfilter.api.Filter` subclass, or exactly one such
subclass defined in the module), a function filter (module-level ``async def check``), or a
legacy filter (``do_filter``/``doFilter``), which runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .api import Context, Filter
from .chain import TIMED_OUT, Chain, ChainEntry, FilterRunner, failure_action
from .decision import CONTINUE, Decision, ReplyFormatError

if TYPE_CHECKING:
    from .message import Message
    from .services import Services

__all__ = ["ENTRY_POINT_GROUP", "FilterLoadError", "LoadedModule", "build_chain", "find_module"]

ENTRY_POINT_GROUP = "courier_pyfilter.filters"

log = logging.getLogger("courier_pyfilter.loader")

# Settings every filter section may carry, interpreted by the chain itself.
CHAIN_KEYS = frozenset({"timeout", "on_error", "mode"})


class FilterLoadError(Exception):
    """A filter named in ``pythonfilter.conf`` could not be found, loaded or started."""


@dataclass(slots=True)
class LoadedModule:
    """A filter module and where it came from."""

    name: str
    module: ModuleType
    origin: str


def _valid_name(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def _load_from_path(name: str, directories: Sequence[str], generation: int) -> LoadedModule | None:
    relative = os.path.join(*name.split(".")) + ".py"
    for directory in directories:
        path = os.path.join(directory, relative)
        if not os.path.isfile(path):
            continue
        # A fresh module object per (re)load, so SIGHUP picks up edited files.
        mod_name = f"courier_pyfilter_site.g{generation}.{name}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise FilterLoadError(f'cannot load filter "{name}" from {path}')
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise FilterLoadError(
                f'filter "{name}" from {path} failed to import: {type(exc).__name__}: {exc}'
            ) from exc
        return LoadedModule(name, module, path)
    return None


def _import(module_name: str, name: str) -> ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "this very module does not exist" means: look elsewhere.
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            return None
        raise FilterLoadError(
            f'Module "{name}" indicated in pythonfilter.conf could not be loaded.  '
            f"It requires {missing!r}, which is missing: {exc}"
        ) from exc
    except Exception as exc:
        raise FilterLoadError(
            f'Module "{name}" indicated in pythonfilter.conf could not be loaded: '
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _entry_point(name: str) -> LoadedModule | None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name != name:
            continue
        try:
            obj = ep.load()
        except Exception as exc:
            raise FilterLoadError(
                f'entry point "{name}" ({ep.value}) failed to load: {exc}'
            ) from exc
        if isinstance(obj, ModuleType):
            return LoadedModule(name, obj, f"entry point {ep.value}")
        module = ModuleType(f"courier_pyfilter_ep.{name}")
        if inspect.isclass(obj) and issubclass(obj, Filter):
            module.FILTER = obj  # type: ignore[attr-defined]
        elif callable(obj):
            module.check = obj  # type: ignore[attr-defined]
        else:
            raise FilterLoadError(f'entry point "{name}" is neither a module, Filter nor function')
        return LoadedModule(name, module, f"entry point {ep.value}")
    return None


def find_module(name: str, filter_path: Sequence[str] = (), *, generation: int = 0) -> LoadedModule:
    """Locate and import the filter module called ``name`` (see the module docstring)."""
    if not _valid_name(name):
        raise FilterLoadError(f"invalid filter name {name!r}")
    found = _load_from_path(name, filter_path, generation)
    if found is not None:
        return found
    module = _import(f"courier_pyfilter.filters.{name}", name)
    if module is not None:
        return LoadedModule(name, module, "built-in")
    found = _entry_point(name)
    if found is not None:
        return found
    module = _import(f"pythonfilter.{name}", name)
    if module is not None:
        return LoadedModule(name, module, "legacy pythonfilter package")
    raise FilterLoadError(
        f'Module "{name}" indicated in pythonfilter.conf could not be loaded.  '
        "It may be missing, or one of the modules that it requires may be missing."
    )


# -- runners --------------------------------------------------------------------------------


def _bind_dns_queries(hook: Any, ctx: Context) -> Callable[[Message], Any] | None:
    """A filter's optional ``dns_queries(message, ctx)`` hook, bound to its context."""
    if not callable(hook):
        return None

    def queries(message: Message) -> Any:
        return hook(message, ctx)

    return queries


class ClassRunner:
    """Runs a :class:`Filter` subclass instance."""

    def __init__(self, instance: Filter) -> None:
        self.instance = instance
        self.whitelist = bool(type(instance).whitelist)
        self._ctx = instance.ctx
        self.dns_queries = _bind_dns_queries(getattr(instance, "dns_queries", None), self._ctx)

    def check(self, message: Message) -> Any:
        return self.instance.check(message, self._ctx)

    async def start(self) -> None:
        await self.instance.start()

    async def stop(self) -> None:
        await self.instance.stop()


class FunctionRunner:
    """Runs a module-level ``async def check(message, ctx)``."""

    def __init__(self, module: ModuleType, ctx: Context) -> None:
        self.module = module
        self.ctx = ctx
        self.whitelist = bool(getattr(module, "WHITELIST", False))
        self._check = module.check
        self.dns_queries = _bind_dns_queries(getattr(module, "dns_queries", None), ctx)

    def check(self, message: Message) -> Any:
        return self._check(message, self.ctx)

    async def start(self) -> None:
        hook = getattr(self.module, "start", None)
        if hook is not None:
            await hook(self.ctx)

    async def stop(self) -> None:
        hook = getattr(self.module, "stop", None)
        if hook is not None:
            await hook(self.ctx)


class LegacyRunner:
    """Runs a filter written for the original: ``do_filter(body_path, control_paths)`` in a
    worker thread, its reply string parsed into a decision."""

    def __init__(self, loaded: LoadedModule, settings: Mapping[str, Any], ctx: Context) -> None:
        self.loaded = loaded
        self.module = loaded.module
        self.ctx = ctx
        self.settings = settings
        self.whitelist = loaded.name.startswith("whitelist")
        fn = getattr(self.module, "do_filter", None) or getattr(self.module, "doFilter", None)
        if fn is None:
            raise FilterLoadError(f'legacy filter "{loaded.name}" has no do_filter function')
        self._fn: Callable[[str, list[str]], Any] = fn
        self.dns_queries: Callable[[Message], Any] | None = None

    async def start(self) -> None:
        # The original applies the module's settings to its globals, then calls its init.
        for key, value in self.settings.items():
            setattr(self.module, key, value)
        init = getattr(self.module, "init_filter", None) or getattr(self.module, "initFilter", None)
        if init is not None:
            await asyncio.to_thread(init)

    async def stop(self) -> None:
        return None

    async def check(self, message: Message) -> Decision:
        result = await asyncio.to_thread(self._fn, message.data_path, list(message.control_paths))
        if not isinstance(result, str):
            self.ctx.log.warning('"%s" do_filter function returned non-string', self.loaded.name)
            return CONTINUE
        try:
            return Decision.from_reply(result)
        except ReplyFormatError as exc:
            raise ValueError(f"invalid reply {result!r}: {exc}") from exc


def _filter_class(module: ModuleType) -> type[Filter] | None:
    explicit = getattr(module, "FILTER", None)
    if explicit is not None:
        if inspect.isclass(explicit) and issubclass(explicit, Filter):
            return explicit
        raise FilterLoadError(f"{module.__name__}.FILTER is not a Filter subclass")
    found = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj)
        and issubclass(obj, Filter)
        and obj is not Filter
        and obj.__module__ == module.__name__
    ]
    if len(found) > 1:
        names = ", ".join(c.__name__ for c in found)
        raise FilterLoadError(f"{module.__name__} defines several filters ({names}); set FILTER")
    return found[0] if found else None


def make_runner(
    loaded: LoadedModule, name: str, section: Mapping[str, Any], services: Services
) -> tuple[FilterRunner, Mapping[str, Any]]:
    """Wrap a loaded module as a runner; returns it and its effective settings."""
    module = loaded.module
    logger = logging.getLogger(f"courier_pyfilter.filters.{name}")
    cls = _filter_class(module)
    if cls is not None:
        settings = {**cls.defaults, **section}
        ctx = Context(
            name=name, settings=settings, services=services, log=logger, dry_run=services.dry_run
        )
        return ClassRunner(cls(ctx)), settings
    check = getattr(module, "check", None)
    if check is not None and inspect.iscoroutinefunction(check):
        settings = {**getattr(module, "DEFAULTS", {}), **section}
        ctx = Context(
            name=name, settings=settings, services=services, log=logger, dry_run=services.dry_run
        )
        return FunctionRunner(module, ctx), settings
    if hasattr(module, "do_filter") or hasattr(module, "doFilter"):
        ctx = Context(
            name=name,
            settings=dict(section),
            services=services,
            log=logger,
            dry_run=services.dry_run,
        )
        return LegacyRunner(loaded, section, ctx), section
    raise FilterLoadError(
        f'"{name}" ({loaded.origin}) is not a filter: it has no Filter class, '
        "no async check function and no do_filter function"
    )


def build_chain(
    lines: Sequence[tuple[str, frozenset[str]]],
    sections: Callable[[str], Mapping[str, Any]],
    services: Services,
    *,
    filter_path: Sequence[str] = (),
    default_timeout: float = 60.0,
    generation: int = 0,
) -> Chain:
    """Load every ``(name, bypass)`` line and build an (unstarted) :class:`Chain`.

    ``sections(name)`` returns the evaluated ``[name.py]`` section.  A module listed twice
    gets one filter instance per line, like the original's init per line.
    """
    entries: list[ChainEntry] = []
    for name, bypass in lines:
        loaded = find_module(name, filter_path, generation=generation)
        section = sections(f"{name}.py")
        runner, settings = make_runner(loaded, name, section, services)
        timeout = settings.get("timeout", default_timeout)
        if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
            raise FilterLoadError(f"[{name}.py] timeout must be a positive number of seconds")
        mode = settings.get("mode", "enforce")
        if mode not in ("enforce", "shadow"):
            raise FilterLoadError(f"[{name}.py] mode must be 'enforce' or 'shadow', not {mode!r}")
        try:
            on_error = failure_action(settings.get("on_error"), runner.whitelist)
            on_timeout = failure_action(
                settings.get("on_error"), runner.whitelist, default=TIMED_OUT
            )
        except ValueError as exc:
            raise FilterLoadError(f"[{name}.py] on_error: {exc}") from exc
        entries.append(
            ChainEntry(
                name=name,
                runner=runner,
                bypass=bypass,
                timeout=float(timeout),
                on_error=on_error,
                on_timeout=on_timeout,
                shadow=mode == "shadow",
                log=logging.getLogger(f"courier_pyfilter.filters.{name}"),
            )
        )
        log.debug('filter "%s" loaded from %s', name, loaded.origin)
    return Chain(entries)
