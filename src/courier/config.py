"""``courier.config`` for filters written for courier-pythonfilter 3.0.6 (synchronous API).

The answers come from :class:`courier_pyfilter.mta.CourierConfig` (change-aware caches of
Courier's files) and ``pythonfilter-modules.conf`` is read by the restricted evaluator of
:mod:`courier_pyfilter.legacyconf` (no ``eval()``).

Differences from the original, all deliberate:

* Nothing runs at import time.  The path globals (``prefix``, ``sysconfdir``,
  ``localstatedir``, ``bindir``, ..., ``version``) are looked up on first access by running
  ``courier-config`` and ``courier --version`` with a timeout.  Assigning a global
  (``courier.config.sysconfdir = '/x'``) still works and is honoured by every function.
* ``me()`` is not cached forever and ``locals`` is not re-read on every call: both follow
  file changes (stat-validated caches).  ``is_local`` ignores case and tolerates
  whitespace-only lines; ``is_min_version`` compares numerically.
* ``hosteddomains``/``aliases``/``smtpaccess`` fall back to their text sources when the
  compiled ``.dat`` file is missing.

The daemon tells this module which files are in effect with :func:`_configure`; used
outside the daemon, the modules configuration comes from ``$PYTHONFILTER_MODULES_CONFIG``
(colon-separated, as for the daemon) or the original's two default files.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from collections.abc import MutableMapping, Sequence
from typing import Any

from courier_pyfilter.legacyconf import (
    DEFAULT_MODULES_CONFIG_PATHS,
    SECTION_ALIASES,
    ConfigError,
    ModulesConfig,
    load_modules_config,
)
from courier_pyfilter.mta import CourierConfig, CourierPaths, InvalidAddressError
from courier_pyfilter.mta.paths import discover

from ._support import run_coroutine_blocking

__all__ = [
    "DISCOVERY_TIMEOUT",
    "applyModuleConfig",
    "apply_module_config",
    "defaultdomain",
    "dsnfrom",
    "esmtphelo",
    "getAlias",
    "getBlockVal",
    "getModuleConfig",
    "getSmtpaccessVal",
    "get_alias",
    "get_block_val",
    "get_module_config",
    "get_smtpaccess_val",
    "isHosteddomain",
    "isLocal",
    "isMinVersion",
    "isRelayed",
    "isWhiteblocked",
    "is_hosteddomain",
    "is_local",
    "is_min_version",
    "is_relayed",
    "is_whiteblocked",
    "locallowercase",
    "me",
    "read1line",
    "smtpaccess",
]

log = logging.getLogger("courier.config")

DISCOVERY_TIMEOUT = 5.0
"""Seconds each of ``courier-config`` and ``courier --version`` may take."""

MODULES_CONFIG_ENV = "PYTHONFILTER_MODULES_CONFIG"
"""Environment variable naming the modules configuration files (colon-separated)."""

_PATH_GLOBALS = (
    "prefix",
    "exec_prefix",
    "bindir",
    "sbindir",
    "libexecdir",
    "sysconfdir",
    "datadir",
    "localstatedir",
    "mailuser",
    "mailgroup",
    "mailuid",
    "mailgid",
    "version",
)

_lock = threading.RLock()
_paths: CourierPaths | None = None
_sysconfdir_override: str | None = None
_modules_configs: tuple[str, ...] | None = None
_courier: CourierConfig | None = None
_modules_cache: tuple[tuple[Any, ...], ModulesConfig] | None = None


def _configure(
    *,
    sysconfdir: str | None = None,
    modules_configs: Sequence[str] | None = None,
    paths: CourierPaths | None = None,
) -> None:
    """Tell this module what is in effect (called by the daemon at start and on reload).

    ``sysconfdir``: Courier's configuration directory; ``modules_configs``: the
    ``pythonfilter-modules.conf`` files, in order; ``paths``: a known Courier layout (skips
    running ``courier-config``).  Arguments left ``None`` keep their current value.
    """
    global _paths, _sysconfdir_override, _modules_configs, _courier, _modules_cache
    with _lock:
        if paths is not None:
            _paths = paths
            _courier = None
        if sysconfdir is not None:
            _sysconfdir_override = sysconfdir
            _courier = None
        if modules_configs is not None:
            _modules_configs = tuple(modules_configs)
            _modules_cache = None


def _reset() -> None:
    """Forget everything configured or discovered (tests)."""
    global _paths, _sysconfdir_override, _modules_configs, _courier, _modules_cache
    with _lock:
        _paths = None
        _sysconfdir_override = None
        _modules_configs = None
        _courier = None
        _modules_cache = None
        for name in _PATH_GLOBALS:
            globals().pop(name, None)


def _discovered() -> CourierPaths:
    """The Courier layout, discovered once (``courier-config``, ``courier --version``)."""
    global _paths
    with _lock:
        if _paths is None:
            try:
                _paths = run_coroutine_blocking(lambda: discover(timeout=DISCOVERY_TIMEOUT))
            except Exception as exc:  # discovery never raises by design; be safe anyway
                log.warning("Courier discovery failed (%s); using Debian defaults", exc)
                _paths = CourierPaths()
        return _paths


def __getattr__(name: str) -> str:
    """The path globals of the original (``sysconfdir``, ``bindir``, ``version``, ...)."""
    if name not in _PATH_GLOBALS:
        raise AttributeError(f"module 'courier.config' has no attribute {name!r}")
    if name == "sysconfdir" and _sysconfdir_override is not None:
        return _sysconfdir_override
    return str(getattr(_discovered(), name))


def _sysconfdir() -> str:
    assigned = globals().get("sysconfdir")
    if isinstance(assigned, str):
        return assigned
    if _sysconfdir_override is not None:
        return _sysconfdir_override
    return _discovered().sysconfdir


def _config() -> CourierConfig:
    """The :class:`CourierConfig` for the sysconfdir in effect (rebuilt when it changes)."""
    global _courier
    directory = _sysconfdir()
    with _lock:
        if _courier is None or _courier.paths.sysconfdir != directory:
            base = _paths if _paths is not None else CourierPaths()
            _courier = CourierConfig(dataclasses.replace(base, sysconfdir=directory))
        return _courier


def _call(method: str, *args: Any) -> Any:
    config = _config()
    with _lock:  # the caches are not written for concurrent threads
        return getattr(config, method)(*args)


# -- simple files -------------------------------------------------------------------------


def read1line(name: str) -> str | None:
    """First line of ``<sysconfdir>/<name>``, stripped; ``None`` if missing or empty."""
    return _call("read1line", name)  # type: ignore[no-any-return]


def me() -> str:
    """This server's name: the ``me`` file, else the host name."""
    return _call("me")  # type: ignore[no-any-return]


def esmtphelo(sock: socket.socket | None = None) -> str:
    """The EHLO name: ``esmtphelo``, else :func:`me`; ``*`` means the reverse DNS name of
    ``sock``'s local address (falls back to :func:`me` without a socket or a name)."""

    def resolver() -> str | None:
        if sock is None:
            return None
        try:
            address = sock.getsockname()[0]
            return socket.gethostbyaddr(address)[0] or None
        except (OSError, IndexError, TypeError):
            return None

    return _call("esmtphelo", resolver)  # type: ignore[no-any-return]


def defaultdomain() -> str:
    """The ``defaultdomain`` value, else :func:`me`."""
    return _call("defaultdomain")  # type: ignore[no-any-return]


def dsnfrom() -> str:
    """The ``dsnfrom`` value, else ``"Courier mail server at <me>" <@>``."""
    return _call("dsnfrom")  # type: ignore[no-any-return]


def locallowercase() -> int:
    """1 if the ``locallowercase`` file exists, else 0."""
    return 1 if _call("locallowercase") else 0


def is_local(domain: str) -> bool:
    """Whether ``domain`` is local per the ``locals`` file (only :func:`me` without it)."""
    return bool(_call("is_local", domain))


def is_hosteddomain(domain: str) -> bool:
    """Whether ``domain`` (or a ``.parent`` entry) is in ``hosteddomains``."""
    return bool(_call("is_hosteddomain", domain))


def get_alias(address: str) -> list[str] | None:
    """The addresses the alias ``address`` expands to, or ``None``."""
    return _call("get_alias", address)  # type: ignore[no-any-return]


# -- smtpaccess ---------------------------------------------------------------------------


def smtpaccess(ip: str) -> str | None:
    """The most specific ``smtpaccess`` value for ``ip``, or ``None``."""
    try:
        return _call("smtpaccess", ip)  # type: ignore[no-any-return]
    except InvalidAddressError:
        log.warning("Couldn't break %s into parts", ip)
        return None


def get_smtpaccess_val(key: str, ip: str) -> str | None:
    """Variable ``key`` of ``ip``'s access entry: ``None``, ``''`` or its value."""
    try:
        return _call("get_smtpaccess_val", key, ip)  # type: ignore[no-any-return]
    except InvalidAddressError:
        log.warning("Couldn't break %s into parts", ip)
        return None


def is_relayed(ip: str) -> bool:
    """Whether ``ip``'s access entry sets ``RELAYCLIENT``."""
    return get_smtpaccess_val("RELAYCLIENT", ip) is not None


def is_whiteblocked(ip: str) -> bool:
    """Whether ``ip``'s access entry sets ``BLOCK`` to the empty string."""
    return get_smtpaccess_val("BLOCK", ip) == ""


def get_block_val(ip: str) -> str | None:
    """The ``BLOCK`` value of ``ip``'s access entry (``None`` if not set)."""
    return get_smtpaccess_val("BLOCK", ip)


def is_min_version(required: str) -> bool:
    """Whether the installed Courier is at least ``required`` (numeric comparison)."""
    return _discovered().is_min_version(required)


# -- pythonfilter-modules.conf ------------------------------------------------------------


def _modules_paths() -> tuple[str, ...]:
    if _modules_configs is not None:
        return _modules_configs
    env = os.environ.get(MODULES_CONFIG_ENV)
    if env:
        return tuple(p for p in env.split(":") if p)
    return DEFAULT_MODULES_CONFIG_PATHS


def _signature(paths: Sequence[str]) -> tuple[Any, ...]:
    result: list[Any] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            result.append((path, None))
        else:
            result.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(result)


def _modules() -> ModulesConfig:
    global _modules_cache
    paths = _modules_paths()
    signature = _signature(paths)
    with _lock:
        if _modules_cache is None or _modules_cache[0] != signature:
            _modules_cache = (signature, load_modules_config(paths))
        return _modules_cache[1]


def get_module_config(name: str) -> dict[str, Any]:
    """The evaluated values of section ``[name]`` of ``pythonfilter-modules.conf``.

    An absent section gives ``{}``.  As in the original, a file that cannot be parsed is
    logged and gives ``{}``.  ``ttldb``/``TtlDb`` (and ``quarantine``/``Quarantine``) are
    aliases: the first present wins.
    """
    try:
        config = _modules()
    except ConfigError as exc:
        log.error("error parsing config module: %s, exception: %s", name, exc)
        return {}
    for group in SECTION_ALIASES:
        if name in group:
            return config.section_any(name, *(alias for alias in group if alias != name))
    return config.section(name)


def apply_module_config(name: str, namespace: MutableMapping[str, Any]) -> None:
    """Copy every value of section ``[name]`` into ``namespace`` (e.g. ``globals()``)."""
    namespace.update(get_module_config(name))


# -- the original's camelCase names ---------------------------------------------------------

isLocal = is_local
isHosteddomain = is_hosteddomain
getAlias = get_alias
getSmtpaccessVal = get_smtpaccess_val
isRelayed = is_relayed
isWhiteblocked = is_whiteblocked
getBlockVal = get_block_val
isMinVersion = is_min_version
getModuleConfig = get_module_config
applyModuleConfig = apply_module_config
