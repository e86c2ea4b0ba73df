"""Courier's configuration, read the way Courier reads it (successor of ``courier.config``).

:class:`CourierConfig` answers questions about a Courier installation: its name
(:meth:`~CourierConfig.me`), local and hosted domains, aliases and the SMTP access table.
Every answer comes from a small cache that is re-validated on each call by ``stat``-ing
the source files (device, inode, size, mtime), so edits and ``makesmtpaccess`` runs are
picked up without a restart.  The methods are synchronous: they only ``stat`` files and,
after a change, read small files, which is acceptable inside an event loop.  Use
:func:`load_courier_config` to discover the installation (asynchronously, with a
timeout) and pre-load the tables in a worker thread.

Compiled ``.dat`` tables are GDBM files; they are read with :mod:`dbm.gnu` when it is
importable and with the pure-Python reader of :mod:`courier_pyfilter.mta.gdbm` otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import Literal

from . import files, smtpaccess
from .cache import StatCache
from .errors import (
    CourierConfigError,
    GdbmError,
    GdbmFormatError,
    GdbmUnavailableError,
    InvalidAddressError,
    SourceUnavailableError,
)
from .gdbm import GdbmBackend, read_gdbm
from .paths import CourierPaths, discover, is_min_version
from .textsrc import parse_makedat, read_source_text

__all__ = [
    "FILE_NAMES",
    "CourierConfig",
    "CourierConfigError",
    "CourierPaths",
    "GdbmError",
    "GdbmFormatError",
    "GdbmUnavailableError",
    "InvalidAddressError",
    "SourceMode",
    "SourceUnavailableError",
    "load_courier_config",
]

_log = logging.getLogger(__name__)

SourceMode = Literal["auto", "dat", "text"]
"""Where a table comes from: ``dat`` (compiled GDBM), ``text`` (its sources), or ``auto``
(the ``.dat`` when it exists and is readable, else the text sources)."""

FILE_NAMES = (
    "me",
    "defaultdomain",
    "dsnfrom",
    "locallowercase",
    "esmtphelo",
    "esmtpacceptmailfor",
    "esmtpacceptmailfor.dir",
    "enablefiltering",
    "locals",
    "hosteddomains",
    "hosteddomains.dat",
    "aliases",
    "aliases.dat",
    "smtpaccess",
    "smtpaccess.dat",
)
"""Logical file names that can be redirected with ``CourierConfig(overrides=...)``."""

_Table = dict[str, str]


class CourierConfig:
    """Cached, change-aware access to one Courier installation's configuration.

    *paths* gives ``sysconfdir``; *overrides* maps any name of :data:`FILE_NAMES` to
    another path.  *source* chooses where ``smtpaccess``, ``hosteddomains`` and
    ``aliases`` come from (see :data:`SourceMode`); *gdbm_backend* how ``.dat`` files are
    read.  *hostname* is called when there is no ``me`` file.  *check_interval* (seconds)
    rate-limits the ``stat`` calls; ``0`` checks on every call.  *smtpaccess_wildcard*
    also tries the ``*`` key last, as couriertcpd does (the original did not).
    *normalize_text_keys* rewrites IPv6 keys of the smtpaccess *text* sources written in
    ordinary notation (``::1``) into Courier's form; Courier itself never matches such
    keys, so by default they are kept as written and a warning is logged.
    """

    def __init__(
        self,
        paths: CourierPaths | None = None,
        *,
        overrides: Mapping[str, str | os.PathLike[str]] | None = None,
        source: SourceMode = "auto",
        gdbm_backend: GdbmBackend = "auto",
        hostname: Callable[[], str] = socket.gethostname,
        check_interval: float = 0.0,
        smtpaccess_wildcard: bool = False,
        normalize_text_keys: bool = False,
    ) -> None:
        """Set up the caches; nothing is read until a method needs it."""
        self.paths = paths if paths is not None else CourierPaths()
        unknown = set(overrides or {}) - set(FILE_NAMES)
        if unknown:
            raise ValueError(f"unknown configuration file names: {sorted(unknown)}")
        if source not in ("auto", "dat", "text"):
            raise ValueError(f"unknown source mode {source!r}")
        self._files = {name: os.path.join(self.paths.sysconfdir, name) for name in FILE_NAMES} | {
            name: os.fspath(path) for name, path in (overrides or {}).items()
        }
        self.source: SourceMode = source
        self.gdbm_backend: GdbmBackend = gdbm_backend
        self._hostname = hostname
        self._interval = check_interval
        self.smtpaccess_wildcard = smtpaccess_wildcard
        self.normalize_text_keys = normalize_text_keys
        self._lines: dict[str, StatCache[str | None]] = {}
        self._warned: set[str] = set()

        self._locals = StatCache(
            [self._files["locals"]], self._load_locals, check_interval=check_interval
        )
        self._enablefiltering = StatCache(
            [self._files["enablefiltering"]],
            lambda: files.parse_words(self._read("enablefiltering") or ""),
            check_interval=check_interval,
        )
        self._acceptmailfor = StatCache(
            [self._files["esmtpacceptmailfor"], self._files["esmtpacceptmailfor.dir"]],
            self._load_acceptmailfor,
            check_interval=check_interval,
        )
        self._smtpaccess = StatCache(
            [self._files["smtpaccess.dat"], self._files["smtpaccess"]],
            lambda: self._load_table("smtpaccess"),
            check_interval=check_interval,
        )
        self._hosted = StatCache(
            [self._files["hosteddomains.dat"], self._files["hosteddomains"]],
            self._load_hosted,
            check_interval=check_interval,
        )
        self._aliases = StatCache(
            [
                self._files["aliases.dat"],
                self._files["aliases"],
                self._files["me"],
                self._files["locals"],
            ],
            self._load_aliases,
            check_interval=check_interval,
        )

    # -- plumbing ---------------------------------------------------------------------

    def path(self, name: str) -> str:
        """Return the path used for the logical file *name* (see :data:`FILE_NAMES`)."""
        return self._files.get(name) or os.path.join(self.paths.sysconfdir, name)

    def _read(self, name: str) -> str | None:
        return read_source_text(self.path(name))

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            _log.warning(message, *args)

    def read1line(self, name: str) -> str | None:
        """Return the stripped first line of ``<sysconfdir>/<name>``, or ``None``.

        ``None`` when the file is missing, unreadable or its first line is empty.
        """
        cache = self._lines.get(name)
        if cache is None:
            path = self.path(name)

            def load() -> str | None:
                try:
                    with open(path, "rb") as handle:
                        return files.first_line(handle.readline().decode("utf-8", "replace"))
                except OSError:
                    return None

            cache = StatCache([path], load, check_interval=self._interval)
            self._lines[name] = cache
        return cache.get()

    # -- simple files -----------------------------------------------------------------

    def me(self) -> str:
        """Return this server's name: the ``me`` file, else the host name.

        Unlike the original this is not cached forever: a changed ``me`` file is seen.
        """
        return self.read1line("me") or self._hostname()

    def defaultdomain(self) -> str:
        """Return the ``defaultdomain`` file's value, else :meth:`me`."""
        return self.read1line("defaultdomain") or self.me()

    def dsnfrom(self) -> str:
        """Return the ``dsnfrom`` value, else ``"Courier mail server at <me>" <@>``."""
        return self.read1line("dsnfrom") or f'"Courier mail server at {self.me()}" <@>'

    def locallowercase(self) -> bool:
        """Return whether the ``locallowercase`` file exists."""
        return os.path.exists(self.path("locallowercase"))

    def esmtphelo(self, resolver: Callable[[], str | None] | None = None) -> str:
        """Return the name to use in EHLO: the ``esmtphelo`` value, else :meth:`me`.

        The value ``*`` means "the reverse DNS name of the local address": then
        *resolver* is called when given, and :meth:`me` is used when there is no
        resolver or it returns nothing.
        """
        value = self.read1line("esmtphelo")
        if value == "*":
            resolved = resolver() if resolver is not None else None
            return resolved or self.me()
        return value or self.me()

    def enablefiltering(self) -> frozenset[str]:
        """Return the submit modules whose mail is filtered (``enablefiltering``)."""
        return self._enablefiltering.get()

    def _load_acceptmailfor(self) -> frozenset[str]:
        text = (self._read("esmtpacceptmailfor") or "") + "\n"
        text += self._read("esmtpacceptmailfor.dir") or ""
        return files.parse_domain_list(text)

    def esmtpacceptmailfor(self) -> frozenset[str]:
        """Return the lower-cased domains of ``esmtpacceptmailfor`` and ``.dir/*``."""
        return self._acceptmailfor.get()

    def _load_locals(self) -> tuple[str, ...] | None:
        text = self._read("locals")
        return None if text is None else files.parse_locals(text)

    def is_local(self, domain: str) -> bool:
        """Return whether *domain* is local according to the ``locals`` file.

        Without a ``locals`` file only :meth:`me` is local.  Rules: ``!dom`` (not local),
        ``.suffix`` (any subdomain) and exact names; the first matching rule wins and
        no match means not local.  Comparisons ignore case, a deliberate fix over the
        original (which compared case-sensitively and crashed on whitespace-only lines).
        """
        rules = self._locals.get()
        if rules is None:
            return domain.strip().lower() == self.me().lower()
        return files.match_locals(rules, domain)

    # -- tables -----------------------------------------------------------------------

    def _load_table(self, name: str) -> _Table | None:
        """Load ``name.dat`` or the text source ``name`` according to :attr:`source`."""
        dat = self.path(f"{name}.dat")
        if self.source in ("auto", "dat"):
            try:
                raw = read_gdbm(dat, backend=self.gdbm_backend)
            except FileNotFoundError:
                if self.source == "dat":
                    raise SourceUnavailableError(f"{dat} does not exist") from None
            except (OSError, GdbmError) as exc:
                if self.source == "dat":
                    raise
                self._warn_once(f"{name}-dat", "cannot read %s (%s); using text sources", dat, exc)
            else:
                return {
                    k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
                    for k, v in raw.items()
                }
        text_path = self.path(name)
        text = read_source_text(text_path)
        if text is None:
            if self.source == "text":
                raise SourceUnavailableError(f"{text_path} does not exist")
            self._warn_once(
                f"{name}-none", "neither %s nor %s is readable; %s is empty", dat, text_path, name
            )
            return None
        table = parse_makedat(text, cidr=name == "smtpaccess", origin=text_path)
        if name == "smtpaccess":
            table = self._check_access_keys(table, text_path)
        return table

    def _check_access_keys(self, table: _Table, origin: str) -> _Table:
        result: _Table = {}
        for key, value in table.items():
            fixed = smtpaccess.normalize_key(key)
            if fixed != key:
                if self.normalize_text_keys:
                    key = fixed
                else:
                    self._warn_once(
                        f"key-{origin}-{key}",
                        "%s: key %r never matches in Courier; write it as %r",
                        origin,
                        key,
                        fixed,
                    )
            result.setdefault(key, value)
        return result

    def smtpaccess_table(self) -> Mapping[str, str]:
        """Return the whole current SMTP access table (key -> value)."""
        return self._smtpaccess.get() or {}

    def smtpaccess(self, ip: str) -> str | None:
        """Return the value of the most specific access entry for *ip*, or ``None``.

        Raises :class:`InvalidAddressError` when *ip* is not an IP address.
        """
        return smtpaccess.lookup(
            self.smtpaccess_table(), ip, include_wildcard=self.smtpaccess_wildcard
        )

    def get_smtpaccess_val(self, key: str, ip: str) -> str | None:
        """Return variable *key* of *ip*'s access entry: ``None``, ``''`` or its value."""
        return smtpaccess.access_var(key, self.smtpaccess(ip))

    def is_relayed(self, ip: str) -> bool:
        """Return whether *ip*'s access entry sets ``RELAYCLIENT``."""
        return smtpaccess.value_is_relayed(self.smtpaccess(ip))

    def is_whiteblocked(self, ip: str) -> bool:
        """Return whether *ip*'s access entry sets ``BLOCK`` to the empty string."""
        return smtpaccess.value_is_whiteblocked(self.smtpaccess(ip))

    def get_block_val(self, ip: str) -> str | None:
        """Return the ``BLOCK`` value of *ip*'s access entry (``None`` if not set)."""
        return smtpaccess.value_block(self.smtpaccess(ip))

    def _load_hosted(self) -> frozenset[str]:
        table = self._load_table("hosteddomains") or {}
        return frozenset(key.strip().lower() for key in table if key.strip())

    def hosteddomains(self) -> frozenset[str]:
        """Return the lower-cased keys of the hosted-domains table."""
        return self._hosted.get()

    def is_hosteddomain(self, domain: str) -> bool:
        """Return whether *domain* is hosted: listed itself or as a ``.parent`` entry.

        Reads ``hosteddomains.dat`` or the ``hosteddomains`` text sources (file or
        directory) per :attr:`source`; matching ignores case.
        """
        return files.match_hosted(self.hosteddomains(), domain)

    def _load_aliases(self) -> dict[str, list[str]]:
        if self.source in ("auto", "dat"):
            dat = self.path("aliases.dat")
            try:
                raw = read_gdbm(dat, backend=self.gdbm_backend)
            except FileNotFoundError:
                if self.source == "dat":
                    raise SourceUnavailableError(f"{dat} does not exist") from None
            except (OSError, GdbmError) as exc:
                if self.source == "dat":
                    raise
                self._warn_once("aliases-dat", "cannot read %s (%s); using text", dat, exc)
            else:
                return {
                    k.decode("utf-8", "replace"): [
                        line for line in v.decode("utf-8", "replace").split("\n") if line
                    ]
                    for k, v in raw.items()
                }
        text = self._read("aliases")
        if text is None:
            if self.source == "text":
                raise SourceUnavailableError(f"{self.path('aliases')} does not exist")
            return {}

        def include(path: str) -> str | None:
            return read_source_text(path)

        return files.expand_aliases(
            files.parse_alias_text(text),
            me=self.me(),
            is_local=self.is_local,
            read_include=include,
        )

    def get_alias(self, address: str) -> list[str] | None:
        """Return the addresses the alias *address* expands to, or ``None``.

        As in Courier, an address without ``@`` or with a local domain is looked up
        with the domain replaced by :meth:`me`.  The exact key is tried first, then the
        key with a lower-cased domain.
        """
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        if not at or self.is_local(domain):
            domain = self.me()
        table = self._aliases.get()
        for key in (f"{local}@{domain}", f"{local}@{domain.lower()}"):
            if key in table:
                return list(table[key])
        return None

    # -- version ----------------------------------------------------------------------

    @property
    def version(self) -> str:
        """The installed Courier version (``"unknown"`` when not discovered)."""
        return self.paths.version

    def is_min_version(self, required: str) -> bool:
        """Return whether the installed Courier is at least version *required*."""
        return is_min_version(self.paths.version, required)

    def preload(self) -> None:
        """Read every cached source now (blocking; run it in a thread from async code)."""
        self.me()
        self._locals.get()
        self._enablefiltering.get()
        self._acceptmailfor.get()
        self._smtpaccess.get()
        self._hosted.get()
        self._aliases.get()


async def load_courier_config(
    paths: CourierPaths | None = None,
    *,
    courier_config: str | os.PathLike[str] | None = None,
    courier: str | os.PathLike[str] | None = None,
    timeout: float = 5.0,
    preload: bool = True,
    **options: object,
) -> CourierConfig:
    """Discover Courier (unless *paths* is given) and return a :class:`CourierConfig`.

    Discovery runs ``courier-config`` and ``courier --version`` without blocking the
    event loop (see :func:`courier_pyfilter.mta.paths.discover`).  With *preload* the
    tables are read once in a worker thread, so that the first lookups are cheap;
    errors while pre-loading are logged, not raised.  *options* are passed to
    :class:`CourierConfig`.
    """
    if paths is None:
        paths = await discover(courier_config=courier_config, courier=courier, timeout=timeout)
    config = CourierConfig(paths, **options)  # type: ignore[arg-type]
    if preload:
        try:
            await asyncio.to_thread(config.preload)
        except CourierConfigError as exc:
            _log.warning("pre-loading Courier configuration failed: %s", exc)
    return config
