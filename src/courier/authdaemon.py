"""``courier.authdaemon`` for filters written for courier-pythonfilter 3.0.6 (synchronous API).

:func:`get_user_info` asks Courier's authdaemond about an account over its UNIX socket
(``PRE . <service> <user>``) and returns the ``KEY=value`` lines as a dict.

The module globals ``socket_path``, ``TIMEOUT_SOCK``, ``TIMEOUT_WRITE`` and
``TIMEOUT_READ`` can be set in the ``[authdaemon.py]`` section of
``pythonfilter-modules.conf``.  Differences from the original, all deliberate: the section
is read on the first call, not at import (a value assigned by a filter before that call
wins); when the default socket path does not exist, Debian's
``/run/courier/authdaemon/socket`` is used; the socket is always closed; the answer size is
bounded; a service or user name containing whitespace raises ``ValueError``; the answer is
checked strictly by :class:`courier_pyfilter.authdaemon.ReplyParser` (a malformed answer
raises :class:`AuthDaemonError` instead of being half-parsed).
"""

from __future__ import annotations

import os
import socket
import threading

from courier_pyfilter.authdaemon import AuthdaemonProtocolError, ReplyParser

from . import config

__all__ = [
    "DEBIAN_SOCKET_PATH",
    "TIMEOUT_READ",
    "TIMEOUT_SOCK",
    "TIMEOUT_WRITE",
    "AuthDaemonError",
    "getUserInfo",
    "get_user_info",
    "socket_path",
]

DEFAULT_SOCKET_PATH = "/var/spool/authdaemon/socket"
DEBIAN_SOCKET_PATH = "/run/courier/authdaemon/socket"
MAX_REPLY = 1024 * 1024
"""Largest answer accepted from authdaemond (bytes)."""

socket_path = DEFAULT_SOCKET_PATH
TIMEOUT_SOCK: float = 10
TIMEOUT_WRITE: float = 10
TIMEOUT_READ: float = 30

_DEFAULTS = {
    "socket_path": DEFAULT_SOCKET_PATH,
    "TIMEOUT_SOCK": 10,
    "TIMEOUT_WRITE": 10,
    "TIMEOUT_READ": 30,
}
_config_lock = threading.Lock()
_config_loaded = False


class AuthDaemonError(OSError):
    """authdaemond could not be reached or gave an answer that cannot be used."""


def _load_config() -> None:
    """Apply ``[authdaemon.py]`` once, leaving globals a filter already changed alone."""
    global _config_loaded
    with _config_lock:
        if _config_loaded:
            return
        namespace = globals()
        for key, value in config.get_module_config("authdaemon.py").items():
            if key in _DEFAULTS and namespace[key] != _DEFAULTS[key]:
                continue
            namespace[key] = value
        _config_loaded = True


def _socket_path() -> str:
    path = str(socket_path)
    missing = not os.path.exists(path)
    if path == DEFAULT_SOCKET_PATH and missing and os.path.exists(DEBIAN_SOCKET_PATH):
        return DEBIAN_SOCKET_PATH
    return path


def _timeout(value: float) -> float | None:
    return None if not value else float(value)


def _exchange(request: bytes) -> dict[str, str] | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        path = _socket_path()
        sock.settimeout(_timeout(TIMEOUT_SOCK))
        try:
            sock.connect(path)
        except OSError as exc:
            raise AuthDaemonError(f"cannot connect to authdaemond at {path}: {exc}") from exc
        sock.settimeout(_timeout(TIMEOUT_WRITE))
        try:
            sock.sendall(request)
        except OSError as exc:
            raise AuthDaemonError(f"cannot write to authdaemond: {exc}") from exc
        sock.settimeout(_timeout(TIMEOUT_READ))
        parser = ReplyParser(MAX_REPLY)
        while True:
            try:
                chunk = sock.recv(65536)
            except OSError as exc:
                raise AuthDaemonError(f"cannot read from authdaemond: {exc}") from exc
            if not chunk:
                raise AuthDaemonError("authdaemond closed the connection before the end")
            try:
                if parser.feed(chunk):
                    return parser.result()
            except AuthdaemonProtocolError as exc:
                raise AuthDaemonError(f"unusable answer from authdaemond: {exc}") from exc
    finally:
        sock.close()


def get_user_info(service: str, uid: str) -> dict[str, str] | None:
    """Account information for ``uid`` as authdaemond reports it for ``service``.

    Returns ``None`` when the account is unknown (``FAIL``), else a dict of the
    ``KEY=value`` lines (``HOME``, ``MAILDIR``, ``UID``, ...).  Raises
    :class:`AuthDaemonError` (an ``IOError``) on connection problems or timeouts.
    """
    for what, value in (("service", service), ("uid", uid)):
        if not value or any(ch.isspace() for ch in value):
            raise ValueError(f"{what} must be a non-empty word without whitespace: {value!r}")
    _load_config()
    return _exchange(f"PRE . {service} {uid}\n".encode())


getUserInfo = get_user_info
