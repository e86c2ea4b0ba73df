"""The daemon's one typed configuration object and where its values come from.

Precedence, highest first: command-line options, environment variables (``PYTHONFILTER_*``),
the ``[courier-pyfilter]`` section of ``pythonfilter-modules.conf``, built-in defaults.
Under courierfilter there are no options and the environment is scrubbed, so the section is
what admins use; the original ignores that section, so one modules file serves both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = [
    "CHAIN_CONFIG_CANDIDATES",
    "DAEMON_SECTION",
    "MODULES_CONFIG_DEFAULTS",
    "Settings",
    "SettingsError",
    "apply_section",
    "find_chain_config",
    "parse_listen_address",
]

DAEMON_SECTION = "courier-pyfilter"
"""Section of ``pythonfilter-modules.conf`` holding the daemon's own settings."""

CHAIN_CONFIG_CANDIDATES = (
    "/etc/pythonfilter.conf",
    "/usr/local/etc/pythonfilter.conf",
)
"""Searched in this order, then ``<sysconfdir>/pythonfilter.conf`` (the original's order)."""

MODULES_CONFIG_DEFAULTS = (
    "/etc/pythonfilter-modules.conf",
    "/usr/local/etc/pythonfilter-modules.conf",
)
"""Both are read, the later overriding the earlier (the original's behaviour)."""


class SettingsError(ValueError):
    """A daemon setting has a wrong type or value."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server needs to run, with Courier-on-Debian defaults."""

    socket_path: str = "/var/lib/courier/allfilters/pythonfilter"
    """The listening socket; its name is the filter's name in courierfilter."""
    chain_config: str | None = None
    """``pythonfilter.conf``; ``None`` = search the original's locations."""
    modules_configs: tuple[str, ...] = MODULES_CONFIG_DEFAULTS
    log_format: str = "text"
    """``text`` (the original's lines) or ``json`` (one object per line)."""
    sysconfdir: str = "/etc/courier"
    tmp_dir: str = "/var/lib/courier/tmp"
    """Courier's spool ``tmp``: relative request paths are resolved under it."""
    restrict_paths: bool = True
    """Refuse request paths outside ``tmp_dir``."""
    state_dir: str = "/var/lib/pythonfilter"
    filter_path: tuple[str, ...] = ()
    """Extra directories searched first for filter modules (``NAME.py``)."""
    max_concurrent: int = 500
    """Messages run through the chain at once; further connections wait (never refused)."""
    listen_backlog: int = 4096
    socket_mode: int = 0o660
    request_timeout: float = 30.0
    """Seconds to receive a complete request before answering 451."""
    message_timeout: float = 300.0
    """Deadline for the whole chain on one message; past it the answer is 451."""
    filter_timeout: float = 60.0
    """Default deadline for one filter (``timeout`` in its own section overrides)."""
    drain_timeout: float = 60.0
    """On shutdown, seconds in-flight messages get to finish; the rest are answered 451."""
    log_summary: bool = True
    """One summary line per message besides the original's accounting line."""
    courier_config_program: str = "courier-config"
    backend: str | None = None
    """With a systemd-managed service: the service's socket.  ``pythonfilter`` started by
    courierfilter then relays to it; ``pythonfilter --service`` listens on it."""
    metrics_listen: str = ""
    """``'host:port'`` of the Prometheus metrics endpoint (``/metrics``); ``''``: off.
    Needs the ``metrics`` extra (prometheus-client); see ``docs/operating.md``."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def filter_name(self) -> str:
        """The filter's name as courierfilter knows it: the socket's file name."""
        return os.path.basename(self.socket_path)


_TYPES: dict[str, type | tuple[type, ...]] = {
    "socket_path": str,
    "chain_config": str,
    "log_format": str,
    "sysconfdir": str,
    "tmp_dir": str,
    "restrict_paths": bool,
    "state_dir": str,
    "max_concurrent": int,
    "listen_backlog": int,
    "socket_mode": int,
    "request_timeout": (int, float),
    "message_timeout": (int, float),
    "filter_timeout": (int, float),
    "drain_timeout": (int, float),
    "log_summary": bool,
    "courier_config_program": str,
    "backend": str,
    "metrics_listen": str,
}

_SECTION_KEYS = {**_TYPES, "filter_path": (list, tuple), "socket": str}


def _coerce(key: str, value: Any) -> Any:
    expected = _SECTION_KEYS[key]
    if key == "filter_path":
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise SettingsError(f"{key} must be a list of directory names")
        return tuple(value)
    if expected is bool and not isinstance(value, bool):
        raise SettingsError(f"{key} must be True or False, got {value!r}")
    if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
        raise SettingsError(f"{key} has the wrong type: {value!r}")
    if key == "log_format" and value not in ("text", "json"):
        raise SettingsError("log_format must be 'text' or 'json'")
    if key == "metrics_listen" and isinstance(value, str) and value:
        parse_listen_address(value)
    if isinstance(value, int | float):
        if key in ("max_concurrent", "listen_backlog") and value < 1:
            raise SettingsError(f"{key} must be at least 1")
        if key.endswith("_timeout"):
            if value <= 0:
                raise SettingsError(f"{key} must be positive")
            return float(value)
    return value


def apply_section(
    settings: Settings, section: Mapping[str, Any], *, locked: Sequence[str] = ()
) -> Settings:
    """Return ``settings`` updated from the evaluated ``[courier-pyfilter]`` section.

    Keys named in ``locked`` (set on the command line or in the environment) are left
    alone.  Unknown keys raise :class:`SettingsError` so typos are not silently ignored.
    """
    changes: dict[str, Any] = {}
    for key, value in section.items():
        if key not in _SECTION_KEYS:
            known = ", ".join(sorted(_SECTION_KEYS))
            raise SettingsError(f"unknown setting {key!r} in [{DAEMON_SECTION}] (known: {known})")
        name = "socket_path" if key == "socket" else key
        if name in locked:
            continue
        changes[name] = _coerce(key, value)
    return replace(settings, **changes) if changes else settings


def settings_from_env(env: Mapping[str, str]) -> tuple[dict[str, Any], list[str]]:
    """Settings given by ``PYTHONFILTER_*`` environment variables, and their names."""
    values: dict[str, Any] = {}
    if env.get("PYTHONFILTER_SOCKET"):
        values["socket_path"] = env["PYTHONFILTER_SOCKET"]
    if env.get("PYTHONFILTER_CONFIG"):
        values["chain_config"] = env["PYTHONFILTER_CONFIG"]
    if env.get("PYTHONFILTER_MODULES_CONFIG"):
        values["modules_configs"] = tuple(
            p for p in env["PYTHONFILTER_MODULES_CONFIG"].split(":") if p
        )
    if env.get("PYTHONFILTER_LOG_FORMAT"):
        values["log_format"] = _coerce("log_format", env["PYTHONFILTER_LOG_FORMAT"])
    return values, list(values)


def find_chain_config(settings: Settings) -> str | None:
    """The ``pythonfilter.conf`` to use: the configured one, or the first readable one of
    ``/etc``, ``/usr/local/etc`` and ``<sysconfdir>`` (the original's search order)."""
    if settings.chain_config is not None:
        return settings.chain_config
    candidates = (*CHAIN_CONFIG_CANDIDATES, os.path.join(settings.sysconfdir, "pythonfilter.conf"))
    for candidate in candidates:
        if os.access(candidate, os.R_OK):
            return candidate
    return None


def parse_listen_address(text: str) -> tuple[str, int]:
    """``'host:port'`` -> ``(host, port)``, for ``metrics_listen``.

    The host may be a name, an IPv4 address or a bracketed IPv6 address (``'[::1]:9464'``);
    an empty host (``':9464'``) means every interface.  Port 0 picks a free port (tests).
    Raises :class:`SettingsError` for anything else.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise SettingsError(f"metrics_listen must be 'host:port', got {text!r}")
    port = int(port_text)
    if port > 65535:
        raise SettingsError(f"metrics_listen: port {port} is out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise SettingsError(f"metrics_listen: empty IPv6 address in {text!r}")
    elif ":" in host or "[" in host or "]" in host:
        raise SettingsError(f"metrics_listen: write IPv6 addresses in brackets: {text!r}")
    if any(c.isspace() for c in host):
        raise SettingsError(f"metrics_listen: bad host in {text!r}")
    return host, port


def setting_names() -> list[str]:
    """Names of all settings (for documentation and error messages)."""
    return [f.name for f in fields(Settings)]
