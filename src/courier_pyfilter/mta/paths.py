"""Where Courier lives: installation paths, mail user, and the installed version.

Nothing here runs a program at import time.  :func:`parse_courier_config` and
:func:`parse_courier_version` are pure parsers; :func:`discover` runs ``courier-config``
and ``courier --version`` asynchronously with a bounded timeout and falls back to the
Debian defaults of :class:`CourierPaths` for anything it cannot learn.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import shutil
from dataclasses import dataclass

__all__ = [
    "DEFAULT_TIMEOUT",
    "UNKNOWN_VERSION",
    "CourierPaths",
    "discover",
    "is_min_version",
    "parse_courier_config",
    "parse_courier_version",
    "version_tuple",
]

_log = logging.getLogger(__name__)

UNKNOWN_VERSION = "unknown"
"""The version string used when ``courier --version`` cannot be run or parsed."""

DEFAULT_TIMEOUT = 5.0
"""Seconds :func:`discover` waits for each helper program."""

_STRING_FIELDS = (
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
)
_INT_FIELDS = ("mailuid", "mailgid")


@dataclass(frozen=True, slots=True)
class CourierPaths:
    """Courier's installation layout as reported by ``courier-config``.

    The defaults are those of Debian's ``courier-mta`` package (Courier 1.0.16 on
    Debian 12), so an instance built without arguments describes a stock Debian system.
    ``version`` is the installed Courier version, or ``"unknown"``.
    """

    prefix: str = "/usr"
    exec_prefix: str = "/usr"
    bindir: str = "/usr/bin"
    sbindir: str = "/usr/sbin"
    libexecdir: str = "/usr/lib/courier"
    sysconfdir: str = "/etc/courier"
    datadir: str = "/usr/lib/courier"
    localstatedir: str = "/var/lib/courier"
    mailuser: str = "courier"
    mailgroup: str = "courier"
    mailuid: int = 0
    mailgid: int = 0
    version: str = UNKNOWN_VERSION

    def is_min_version(self, required: str) -> bool:
        """Return whether the installed Courier is at least *required* (see module function)."""
        return is_min_version(self.version, required)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse_courier_config(text: str, base: CourierPaths | None = None) -> CourierPaths:
    """Apply the ``name=value`` lines of ``courier-config`` output to *base*.

    Only the known field names are used; values are stripped (and one pair of
    surrounding quotes removed).  Other lines, unknown names and non-numeric
    ``mailuid``/``mailgid`` values are ignored.
    """
    result = base if base is not None else CourierPaths()
    changes: dict[str, str | int] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        name = name.strip()
        value = _unquote(value.strip())
        if name in _STRING_FIELDS:
            changes[name] = value
        elif name in _INT_FIELDS:
            try:
                changes[name] = int(value)
            except ValueError:
                _log.warning("courier-config: ignoring non-numeric %s=%r", name, value)
    return dataclasses.replace(result, **changes)  # type: ignore[arg-type]


def parse_courier_version(text: str) -> str:
    """Return the version from ``courier --version`` output.

    That is the second word of the first line when the first word is ``Courier``
    (``"Courier 1.0.16 Copyright ..."`` gives ``"1.0.16"``), else ``"unknown"``.
    """
    lines = text.splitlines()
    words = lines[0].split() if lines else []
    if len(words) >= 2 and words[0] == "Courier":
        return words[1]
    return UNKNOWN_VERSION


_LEADING_DIGITS = re.compile(r"\d+")


def version_tuple(version: str) -> tuple[int, ...]:
    """Turn a dotted version into integers: ``"1.0.16"`` gives ``(1, 0, 16)``.

    Each component counts by its leading digits (``"16rc1"`` counts as 16, a component
    without leading digits as 0).  Raises :class:`ValueError` when no component has digits.
    """
    parts = []
    found = False
    for component in version.strip().split("."):
        match = _LEADING_DIGITS.match(component)
        if match:
            found = True
            parts.append(int(match.group()))
        else:
            parts.append(0)
    if not found:
        raise ValueError(f"not a version: {version!r}")
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def is_min_version(installed: str, required: str) -> bool:
    """Return whether version *installed* is at least *required*.

    Components are compared numerically, so ``"1.0.16" >= "1.0.9"`` (the original
    compared strings, which got this wrong).  Missing components count as 0.  An
    ``"unknown"`` or unparsable installed version is never new enough; an unparsable
    *required* version raises :class:`ValueError`.
    """
    want = version_tuple(required)
    try:
        have = version_tuple(installed)
    except ValueError:
        return False
    return have >= want


async def _run(argv: list[str], timeout: float) -> str | None:
    """Run *argv*, return its stdout text, or ``None`` when it is missing/fails/hangs."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError as exc:
        _log.debug("cannot run %s: %s", argv[0], exc)
        return None
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        _log.warning("%s did not finish within %.1f s; using defaults", argv[0], timeout)
        return None
    if process.returncode != 0:
        _log.warning("%s exited with status %s; using defaults", argv[0], process.returncode)
        return None
    return stdout.decode("utf-8", "replace")


async def discover(
    *,
    courier_config: str | os.PathLike[str] | None = None,
    courier: str | os.PathLike[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    base: CourierPaths | None = None,
) -> CourierPaths:
    """Learn Courier's layout and version by running its helper programs.

    *courier_config* is the ``courier-config`` program (default: found on ``PATH``, else
    ``<bindir>/courier-config``); *courier* the main binary (default
    ``<sbindir>/courier`` of the discovered layout).  Each program gets *timeout*
    seconds.  A missing, failing or hanging program leaves the corresponding values at
    those of *base* (Debian defaults).
    """
    paths = base if base is not None else CourierPaths()
    if courier_config is None:
        courier_config = shutil.which("courier-config") or os.path.join(
            paths.bindir, "courier-config"
        )
    output = await _run([os.fspath(courier_config)], timeout)
    if output is not None:
        paths = parse_courier_config(output, paths)
    if courier is None:
        courier = os.path.join(paths.sbindir, "courier")
    version_output = await _run([os.fspath(courier), "--version"], timeout)
    version = UNKNOWN_VERSION if version_output is None else parse_courier_version(version_output)
    return dataclasses.replace(paths, version=version)
