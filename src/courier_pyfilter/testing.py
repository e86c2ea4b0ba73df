"""Helpers for testing filters: realistic Courier messages on disk.

This module is public API for filter authors.  :func:`make_message` writes a data file
and control file(s) the way Courier's ``submit`` leaves them for a global filter — same
file names, same record order, a Courier-style ``Received:`` header, LF line endings —
and returns the :class:`~courier_pyfilter.message.Message` a filter receives::

    from courier_pyfilter.testing import make_message

    async def test_rejects_unknown_sender(tmp_path):
        msg = make_message(tmp_path, sender="nobody@example.com", auth_user=None)
        decision = await my_filter.check(msg, ctx)
        assert decision.verdict is Verdict.REJECT

For many messages with shared defaults use :class:`MessageFactory`, e.g. as a fixture::

    @pytest.fixture
    def messages(tmp_path):
        return MessageFactory(tmp_path, recipients=("user@courier.test",))

    async def test_x(messages):
        msg = messages(sender="")          # null sender, other defaults kept

The pure functions :func:`render_data` and :func:`render_controls` return the bytes
without touching the disk.

Record order (as observed from Courier 1.0.16): ``s f e t M``, then ``r R N`` per
recipient, ``m`` and ``8`` when set, ``i`` when authenticated, the ``O`` options
(``RELAYCLIENT=``, ``TCPREMOTEIP=``), ``u``, ``E p W``, ``T`` for non-relayed SMTP, then
any ``extra_records``.  With ``batch_size`` the recipients are split over several
control files (``C<inode>.1``, ``C<inode>.2``, ...) that each repeat the message-level
records, as Courier does when a message has more recipients than ``batchsize``.
"""

from __future__ import annotations

import email.utils
import ipaddress
import itertools
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .control import IPAddress, Recipient
from .message import Message

__all__ = [
    "MessageFactory",
    "RecipientSpec",
    "SentMessage",
    "courier_msgid",
    "default_headers",
    "make_context",
    "make_message",
    "received_header",
    "render_controls",
    "render_data",
]

RecipientSpec = str | tuple[str, str, str] | Recipient
"""A recipient for the helpers: an address, an ``(address, original, notify)`` triple,
or a :class:`~courier_pyfilter.control.Recipient`."""

DEFAULT_BODY = b"This is a test message.\n"
_QUEUE_TIME = 7 * 24 * 3600
_FAX_TIME = 8 * 3600
_WARN_TIME = 4 * 3600
_counter = itertools.count(1)
_DEFAULT_IP = ipaddress.IPv4Address("192.0.2.1")


@dataclass(frozen=True, slots=True)
class SentMessage:
    """The envelope a test message is built from (argument bundle of the renderers)."""

    sender: str = "a@example.com"
    recipients: tuple[tuple[str, str, str], ...] = (("b@example.net", "", ""),)
    auth_user: str | None = None
    client_ip: IPAddress | None = _DEFAULT_IP
    helo: str = "mail.example.com"
    rdns: str | None = None
    hostname: str = "mx.example.org"
    envid: str = ""
    dsn_ret: str = ""
    source: str = "smtp"
    relay_client: bool = False
    eightbit: bool = False
    smtputf8: bool = False
    ipv4_mapped: bool = True
    now: float = 0.0
    pid: int = 1


def _recipient_triple(spec: RecipientSpec) -> tuple[str, str, str]:
    if isinstance(spec, str):
        return (spec, "", "")
    if isinstance(spec, Recipient):
        return (spec.address, spec.original, spec.notify)
    address, original, notify = spec
    return (address, original, notify)


def _ip_text(env: SentMessage) -> str | None:
    ip = env.client_ip
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv4Address) and env.ipv4_mapped:
        return f"::ffff:{ip}"
    return str(ip)


def _date(now: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(now, UTC))


def courier_msgid(inode: int, now: float, pid: int) -> str:
    """A Courier queue id: ``<16 hex inode>.<16 hex time>.<16 hex pid>``."""
    return f"{inode:016X}.{int(now):016X}.{pid:016X}"


def received_header(env: SentMessage, msgid: str) -> bytes:
    """The ``Received:`` header Courier prepends to the data file (LF line endings)."""
    ip = _ip_text(env)
    peer = f"{env.rdns} [{ip}]" if env.rdns else f"[{ip}]"
    lines = [f"Received: from {env.helo}" + (f" ({peer})" if ip else "")]
    if env.source == "local":
        lines.append(f"  (uid {os.getuid()})")
        proto = "local"
    else:
        proto = "UTF8SMTP" if env.smtputf8 else "ESMTP"
        if env.auth_user is not None:
            lines.append(f"  (AUTH: PLAIN {env.auth_user})")
            proto += "A"
    lines.append(f"  by {env.hostname} with {proto}")
    lines.append(f"  id {msgid}; {_date(env.now)}")
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


def default_headers(env: SentMessage) -> list[tuple[str, str]]:
    """Typical client headers: From, To, Subject, Date, Message-ID."""
    return [
        ("From", env.sender or f"Mail Delivery Subsystem <MAILER-DAEMON@{env.hostname}>"),
        ("To", ", ".join(r[0] for r in env.recipients)),
        ("Subject", "Test message"),
        ("Date", _date(env.now)),
        ("Message-ID", f"<{int(env.now)}.{env.pid}.{next(_counter)}@{env.helo}>"),
    ]


def render_data(
    env: SentMessage,
    msgid: str,
    *,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
    body: bytes = DEFAULT_BODY,
    raw: bytes | None = None,
    received: bool = True,
) -> bytes:
    """The data file: Courier's ``Received:`` header, then ``raw`` or headers + body.

    CRLF becomes LF and a final newline is ensured, as in Courier's data files.
    """
    if raw is None:
        items = (
            default_headers(env)
            if headers is None
            else list(headers.items())
            if isinstance(headers, Mapping)
            else list(headers)
        )
        head = "".join(f"{name}: {value}\n" for name, value in items)
        raw = head.encode("utf-8", "surrogateescape") + b"\n" + body
    data = raw.replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    if received:
        data = received_header(env, msgid) + data
    return data


def render_controls(
    env: SentMessage,
    msgids: Sequence[str],
    *,
    batch_size: int | None = None,
    extra_records: Sequence[str | bytes] = (),
) -> list[bytes]:
    """The control file(s), one ``bytes`` per file, in Courier's record order.

    ``msgids`` gives the ``M`` value of each file; there must be one per batch.
    """
    rcpts = list(env.recipients)
    size = batch_size if batch_size and batch_size > 0 else max(len(rcpts), 1)
    batches = [rcpts[i : i + size] for i in range(0, len(rcpts), size)] or [[]]
    if len(msgids) < len(batches):
        raise ValueError(f"need {len(batches)} message ids, got {len(msgids)}")
    ip = _ip_text(env)
    from_mta = f"dns; {env.helo}" + (
        f" ({env.rdns} [{ip}])" if env.rdns and ip else f" ([{ip}])" if ip else ""
    )
    files: list[bytes] = []
    for batch, msgid in zip(batches, msgids, strict=False):
        lines = [
            "s" + env.sender,
            "f" + from_mta,
            "e" + env.envid,
            "t" + env.dsn_ret,
            "M" + msgid,
        ]
        for address, original, notify in batch:
            lines += ["r" + address, "R" + original, "N" + notify]
        if env.smtputf8:
            lines.append("m")
        if env.eightbit:
            lines.append("8")
        if env.auth_user is not None:
            lines.append("i" + env.auth_user)
        if env.relay_client:
            lines.append("ORELAYCLIENT=")
        if ip is not None:
            lines.append("OTCPREMOTEIP=" + ip)
        now = int(env.now)
        lines += [
            "u" + env.source,
            f"E{now + _QUEUE_TIME}",
            f"p{now + _FAX_TIME}",
            f"W{now + _WARN_TIME}",
        ]
        if env.source == "smtp" and not env.relay_client:
            lines.append("T")
        data = "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")
        for rec in extra_records:
            brec = rec.encode("utf-8", "surrogateescape") if isinstance(rec, str) else rec
            data += brec.rstrip(b"\n") + b"\n"
        files.append(data)
    return files


def make_message(
    directory: str | os.PathLike[str],
    *,
    sender: str = "a@example.com",
    recipients: Sequence[RecipientSpec] = ("b@example.net",),
    auth_user: str | None = None,
    client_ip: str | IPAddress | None = "192.0.2.1",
    helo: str = "mail.example.com",
    rdns: str | None = None,
    headers: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,
    body: bytes = DEFAULT_BODY,
    raw: bytes | None = None,
    received: bool = True,
    extra_records: Sequence[str | bytes] = (),
    batch_size: int | None = None,
    envid: str = "",
    dsn_ret: str = "",
    source: str | None = None,
    relay_client: bool | None = None,
    eightbit: bool | None = None,
    smtputf8: bool | None = None,
    ipv4_mapped: bool = True,
    hostname: str = "mx.example.org",
    now: float | None = None,
    dry_run: bool = False,
) -> Message:
    """Write a Courier-style data file and control file(s); return their :class:`Message`.

    The files go into a new sub-directory of ``directory`` (so one directory can hold
    many messages): the data file ``D<inode>`` and one control file named
    ``<time>.<pid>.<host>``, or with ``batch_size`` smaller than the number of
    recipients, ``C<inode>.1``, ``C<inode>.2``, ...

    Arguments (all optional but ``directory``):

    ``sender``
        Envelope sender; ``""`` is the null sender ``<>``.
    ``recipients``
        Addresses, ``(address, original, notify)`` triples or ``Recipient`` objects.
    ``auth_user``
        SMTP AUTH user; adds the ``i`` record and an ``(AUTH: PLAIN user)`` Received line.
    ``client_ip``, ``helo``, ``rdns``
        The client: ``TCPREMOTEIP`` (IPv4 written IPv4-mapped like Courier on a dual-stack
        socket unless ``ipv4_mapped=False``; None for no address) and the ``f`` record.
    ``headers``, ``body``, ``raw``
        The message as the client sent it: ``raw`` bytes, or ``headers`` (pairs or a
        mapping; default From/To/Subject/Date/Message-ID) followed by ``body``.
        ``received=False`` omits Courier's ``Received:`` header.
    ``extra_records``
        Additional control records (e.g. ``"V"``, ``"vexample.com"``), appended to every
        control file.
    ``envid``, ``dsn_ret``
        DSN ENVID and RET (``"F"``/``"H"``).
    ``source``, ``relay_client``
        The ``u`` record and the ``RELAYCLIENT`` option.  Defaults follow Courier: an
        authenticated client may relay and its source is ``authsmtp``, otherwise
        ``smtp`` (with a ``T`` record).
    ``eightbit``, ``smtputf8``
        The ``8`` and ``m`` flags; by default set when the body has 8-bit bytes and when
        an envelope address is not ASCII.
    ``hostname``, ``now``, ``dry_run``
        Courier's host name, the submission time (default: now) and the ``dry_run`` mode
        of the returned :class:`Message`.
    """
    stamp = time.time() if now is None else now
    rcpts = tuple(_recipient_triple(r) for r in recipients)
    relay = auth_user is not None if relay_client is None else relay_client
    src = source if source is not None else ("authsmtp" if relay else "smtp")
    ip: IPAddress | None = (
        ipaddress.ip_address(client_ip) if isinstance(client_ip, str) else client_ip
    )
    content = raw if raw is not None else body
    addresses = [sender] + [r[0] for r in rcpts]
    env = SentMessage(
        sender=sender,
        recipients=rcpts,
        auth_user=auth_user,
        client_ip=ip,
        helo=helo,
        rdns=rdns,
        hostname=hostname,
        envid=envid,
        dsn_ret=dsn_ret,
        source=src,
        relay_client=relay,
        eightbit=any(b >= 0x80 for b in content) if eightbit is None else eightbit,
        smtputf8=(not all(a.isascii() for a in addresses)) if smtputf8 is None else smtputf8,
        ipv4_mapped=ipv4_mapped,
        now=stamp,
        pid=os.getpid(),
    )
    msgdir = tempfile.mkdtemp(prefix="msg-", dir=os.fspath(directory))
    tmp_data = os.path.join(msgdir, "data.tmp")
    with open(tmp_data, "wb"):
        pass
    inode = os.stat(tmp_data).st_ino
    data_path = os.path.join(msgdir, f"D{inode}")
    os.rename(tmp_data, data_path)

    nfiles = 1
    if batch_size and batch_size > 0 and len(rcpts) > batch_size:
        nfiles = -(-len(rcpts) // batch_size)
    msgids = [courier_msgid(inode + i, stamp, env.pid) for i in range(nfiles)]
    controls = render_controls(
        env, msgids, batch_size=batch_size if nfiles > 1 else None, extra_records=extra_records
    )
    with open(data_path, "wb") as fh:
        fh.write(
            render_data(env, msgids[0], headers=headers, body=body, raw=raw, received=received)
        )
    if nfiles == 1:
        host = hostname.split(".", 1)[0]
        names = [f"{int(stamp)}.{env.pid}.{host}"]
    else:
        names = [f"C{inode}.{i + 1}" for i in range(nfiles)]
    control_paths = []
    for name, data in zip(names, controls, strict=True):
        path = os.path.join(msgdir, name)
        with open(path, "wb") as fh:
            fh.write(data)
        control_paths.append(path)
    for path in (data_path, *control_paths):
        os.chmod(path, 0o660)
    return Message(data_path, control_paths, dry_run=dry_run)


class MessageFactory:
    """:func:`make_message` with shared defaults, bound to one directory.

    ``MessageFactory(tmp_path, auth_user="alice")(sender="")`` is
    ``make_message(tmp_path, auth_user="alice", sender="")``.  Handy as a pytest fixture
    (see the module documentation).  :attr:`made` lists every message created.
    """

    def __init__(self, directory: str | os.PathLike[str], **defaults: Any) -> None:
        self.directory = directory
        """Where the messages' sub-directories are created."""
        self.defaults: dict[str, Any] = dict(defaults)
        """Keyword arguments for :func:`make_message`, overridable per call."""
        self.made: list[Message] = []
        """The messages created so far."""

    def __call__(self, **overrides: Any) -> Message:
        """Create a message: the factory's defaults updated with ``overrides``."""
        return self.make(**overrides)

    def make(self, **overrides: Any) -> Message:
        """Same as calling the factory."""
        msg = make_message(self.directory, **{**self.defaults, **overrides})
        self.made.append(msg)
        return msg


def make_context(
    name: str = "test",
    settings: Mapping[str, Any] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    sysconfdir: str | None = None,
    clock: Any = None,
    dry_run: bool = False,
) -> Any:
    """A :class:`~courier_pyfilter.api.Context` for calling a filter directly in a test.

    ``settings`` are laid over ``defaults`` (pass a filter class's ``defaults``);
    ``sections`` are other sections of ``pythonfilter-modules.conf`` the services read
    (e.g. ``{"ttldb": {"type": "sqlite"}}``); the store's files go under ``state_dir``.
    Close ``ctx.services`` (``await ctx.services.close()``) when the test opened a store.
    """
    import logging
    import time as _time
    from dataclasses import replace

    from .api import Context
    from .services import Services
    from .settings import Settings

    base = Settings()
    overrides: dict[str, Any] = {}
    if state_dir is not None:
        overrides["state_dir"] = os.fspath(state_dir)
    if sysconfdir is not None:
        overrides["sysconfdir"] = sysconfdir
    server_settings = replace(base, **overrides) if overrides else base
    all_sections = {k: dict(v) for k, v in (sections or {}).items()}
    services = Services(
        server_settings,
        lambda section: dict(all_sections.get(section, {})),
        dry_run=dry_run,
        clock=clock or _time.time,
    )
    merged = {**(defaults or {}), **(settings or {})}
    return Context(
        name=name,
        settings=merged,
        services=services,
        log=logging.getLogger(f"courier_pyfilter.filters.{name}"),
        clock=clock or _time.time,
        dry_run=dry_run,
    )
