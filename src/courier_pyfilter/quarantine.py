"""The quarantine: keep a message instead of delivering it, notify, release by mail, purge.

A filter quarantines a message with::

    from courier_pyfilter.quarantine import quarantine_message

    async def check(message, ctx):
        if looks_dangerous(message):
            return await quarantine_message(message, ctx, "The virus X was found in the message")
        return CONTINUE

or gets the shared service with ``service = await quarantine_service(ctx)`` and calls
``await service.quarantine(message, explanation)`` (what the ``clamav`` filter does).

What happens, in this order (any failure raises :class:`QuarantineError`, so the
filter's failure action - a temporary failure by default - applies and the message is
never accepted without being stored and announced):

1. an id is reserved in the quarantine index (the store database ``quarantine``, so
   every server sharing a PostgreSQL store sees every item);
2. the data file and the control files are copied to ``<dir>/D<id>``, ``<dir>/C<id>``,
   ``<dir>/C<id>.1``, ... (written under a temporary name, synced, then renamed);
3. every pending recipient is marked delivered in the control file (Courier then has
   nothing to deliver: the chain answers ``050 OK``, the client sees ``250 OK``);
4. the notices are handed to sendmail: one per recipient (with the recipient's own
   release address, see :mod:`courier_pyfilter.quarantine_core`) unless
   ``notify_recipient`` is false, and one to ``also_notify`` if set.

If step 2, 3 or 4 fails, the item is removed again before the error is raised.

Releasing: mail to ``quarantine-<siteid>-<id>-<mac>@<me>`` reaches the
``pythonfilter-quarantine -release`` command through the alias file
``.courier-quarantine-<siteid>-default``; :meth:`QuarantineService.release_request`
checks the token and the requester and sends the stored message to the requester.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .decision import Decision
from .quarantine_core import (
    INDEX_DB,
    QuarantineConfig,
    QuarantineConfigError,
    QuarantineRecord,
    RecordError,
    StoredRecipient,
    clean_text,
    config_from_sections,
    control_name,
    data_name,
    is_valid_id,
    item_id_of_file,
    new_id,
    normalize_address,
    parse_token,
    recipients_for_admin_release,
    release_address,
    release_token,
    render_admin_notice,
    render_notice,
    render_release_failure,
    token_matches,
)
from .sendmail import Sendmail, SendmailError, find_sendmail

if TYPE_CHECKING:
    from .api import Context
    from .message import Message
    from .store import Store, TtlDb

__all__ = [
    "PurgeReport",
    "QuarantineConfig",
    "QuarantineConfigError",
    "QuarantineError",
    "QuarantineService",
    "ReleaseResult",
    "quarantine_message",
    "quarantine_service",
]

log = logging.getLogger("courier_pyfilter.quarantine")

SERVICE_NAME = "quarantine"
"""Name of the shared service in ``ctx.services``."""
ORPHAN_GRACE = 3600.0
"""Seconds a file without a live index entry is left alone by :meth:`purge` (it may
belong to an item being stored right now)."""
NOTICE_CONCURRENCY = 4
"""Notices handed to sendmail at once."""
_COPY_CHUNK = 1024 * 1024
_ID_ATTEMPTS = 5


class QuarantineError(Exception):
    """A message could not be quarantined, released, listed or purged.

    Inside a filter this means a temporary failure: the message is not accepted.
    """

    log_traceback = False  # the message says what failed


class ReleaseRefused(Exception):
    """Internal: a release request is not allowed (the reason is for the log)."""


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """What became of one release request.

    ``released`` is True when the message was handed to sendmail for ``address``;
    otherwise ``reason`` says why it was refused (for the log only: the requester gets
    the same answer whatever the reason) and ``notified`` whether that answer was sent.
    """

    released: bool
    reason: str
    item_id: str | None = None
    address: str | None = None
    notified: bool = False


@dataclass(slots=True)
class PurgeReport:
    """What :meth:`QuarantineService.purge` removed."""

    items: list[str] = field(default_factory=list)
    """Ids of expired items removed."""
    files: int = 0
    """Files deleted (expired items, orphans, stale temporary files)."""
    errors: list[str] = field(default_factory=list)
    """Files that could not be deleted."""


def _adopt(path: str, like: str) -> None:
    """When running as root, give ``path`` the owner and group of ``like`` (the
    directory), so the courier user can use files an admin's command created."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(like)
        os.chown(path, st.st_uid, st.st_gid)
    except OSError as exc:
        log.warning("quarantine: cannot give %s the owner of %s: %s", path, like, exc)


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _copy_into(source: str, directory: str, name: str, tmp_name: str) -> int:
    """Copy ``source`` to ``directory/name`` (via ``tmp_name``, synced); return bytes."""
    tmp = os.path.join(directory, tmp_name)
    final = os.path.join(directory, name)
    copied = 0
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        try:
            while True:
                chunk = os.read(src, _COPY_CHUNK)
                if not chunk:
                    break
                view = memoryview(chunk)
                while view:
                    written = os.write(dst, view)
                    view = view[written:]
                    copied += written
            os.fsync(dst)
        finally:
            os.close(dst)
        _adopt(tmp, directory)
        os.rename(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(src)
    return copied


def _remove_files(directory: str, names: Sequence[str]) -> tuple[int, list[str]]:
    removed = 0
    errors: list[str] = []
    for name in names:
        try:
            os.unlink(os.path.join(directory, name))
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            errors.append(f"{os.path.join(directory, name)}: {exc.strerror or exc}")
    return removed, errors


def _files_of(directory: str, item_id: str) -> list[str]:
    """Every file of ``item_id`` in ``directory`` (data, controls, temporary files)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        parsed = item_id_of_file(name)
        if parsed is not None and parsed[0] == item_id:
            found.append(name)
    return found


def _read_secret(path: str) -> bytes:
    with open(path, "rb") as fh:
        secret = fh.read(4096).strip()
    if len(secret) < 16:
        raise QuarantineError(f"quarantine secret {path} is too short (at least 16 bytes)")
    return secret


def _load_or_create_secret(path: str, create: bool) -> bytes:
    """The site secret; created (random, mode 0600) when missing and ``create``."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        if not create:
            raise QuarantineError(
                f"quarantine secret {path} does not exist yet (the filter creates it when it "
                "starts)"
            ) from None
    except OSError as exc:
        raise QuarantineError(f"cannot read the quarantine secret {path}: {exc}") from None
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".secret.tmp.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        _adopt(tmp, directory)
        try:
            os.link(tmp, path)  # never replaces a secret another process made meanwhile
        except FileExistsError:
            pass
    except OSError as exc:
        raise QuarantineError(f"cannot create the quarantine secret {path}: {exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    log.info("quarantine: created the site secret %s", path)
    return _read_secret(path)


def _header_text(headers: Any, name: str) -> str:
    """A header's value for the notice; never raises (the message may be malformed)."""
    try:
        return clean_text(headers.get(name, ""), 300)
    except Exception:
        pass
    try:
        for key, value in headers.raw_items():  # unparsed, as written
            if key.lower() == name.lower():
                return clean_text(value, 300)
        return ""
    except Exception:
        return "(unreadable)"


def _notifiable(address: str) -> bool:
    """True for an address a notice can go to (sendmail argument and header safe)."""
    return (
        bool(address)
        and not address.startswith("-")
        and not any(ord(c) < 33 or ord(c) == 127 or c in "<>" for c in address)
    )


def _prepare_dir(directory: str, create: bool) -> None:
    if os.path.isdir(directory):
        if create and not os.access(directory, os.W_OK | os.X_OK):
            raise QuarantineError(
                f"quarantine directory {directory} is not writable by uid {os.geteuid()}"
            )
        return
    if not create:
        return  # a dry run writes nothing; the real run creates it
    try:
        os.mkdir(directory, 0o750)
    except FileExistsError:
        return
    except OSError as exc:
        raise QuarantineError(
            f"quarantine directory {directory} does not exist and cannot be created: "
            f"{exc.strerror or exc}"
        ) from None
    _adopt(directory, os.path.dirname(directory.rstrip("/")) or "/")
    log.info("quarantine: created the directory %s", directory)


class QuarantineService:
    """The quarantine of one configuration: storing, notices, release, listing, purge.

    ``store`` returns the store (``ctx.services.store``), ``me`` Courier's mail name;
    ``sendmail`` is the client for notices and released mail (default: a
    :class:`~courier_pyfilter.sendmail.Sendmail` for the configured or found program).
    The service keeps no per-message state and is shared by every filter of a
    configuration.
    """

    def __init__(
        self,
        config: QuarantineConfig,
        *,
        store: Callable[[], Awaitable[Store]],
        me: Callable[[], str],
        sendmail: Sendmail | None = None,
        clock: Callable[[], float] = time.time,
        hostname: str | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._me = me
        self._sendmail = sendmail
        self.clock = clock
        self.hostname = hostname if hostname is not None else socket.gethostname()
        self._secret: bytes | None = None
        self._db: tuple[Store, TtlDb] | None = None

    def __repr__(self) -> str:
        return f"<QuarantineService siteid={self.config.siteid!r} dir={self.config.dir!r}>"

    # -- resources ---------------------------------------------------------------------

    def mailer(self) -> Sendmail:
        """The sendmail client (found on first use); raises :class:`QuarantineError`."""
        if self._sendmail is None:
            try:
                program = self.config.sendmail or find_sendmail()
            except SendmailError as exc:
                raise QuarantineError(f"quarantine: {exc}") from None
            self._sendmail = Sendmail(program, timeout=self.config.sendmail_timeout)
        return self._sendmail

    async def prepare(self, *, create: bool = True) -> None:
        """Check the directory, the secret and sendmail before the first message.

        With ``create`` the directory (its parent must exist) and the secret are created
        when missing.  Raises :class:`QuarantineError`.
        """
        await asyncio.to_thread(_prepare_dir, self.config.dir, create)
        if create:
            await self.secret(create=True)
        self.mailer()
        if self.config.ignored:
            log.warning(
                "quarantine: ignoring unknown [quarantine] setting(s): %s",
                ", ".join(sorted(self.config.ignored)),
            )

    async def secret(self, *, create: bool = False) -> bytes:
        """The site secret keying the release tokens (cached)."""
        if self._secret is None:
            self._secret = await asyncio.to_thread(
                _load_or_create_secret, self.config.secret_path, create
            )
        return self._secret

    async def index(self) -> TtlDb:
        """The store database holding the index (TTL = ``days``)."""
        from .store import StoreError

        try:
            store = await self._store()
            if self._db is not None and self._db[0] is store:
                return self._db[1]
            db = await store.database(INDEX_DB, ttl=self.config.ttl, purge_interval=43200.0)
        except StoreError as exc:
            raise QuarantineError(f"quarantine index: {exc}") from None
        self._db = (store, db)
        return db

    def me(self) -> str:
        """Courier's mail name (the domain of the release and notice addresses)."""
        return self._me()

    def contact(self) -> str:
        """Who users should ask about a quarantined message."""
        return self.config.also_notify or f"postmaster@{self.me()}"

    def release_address_for(self, secret: bytes, record: QuarantineRecord, address: str) -> str:
        """The release address of ``record`` for recipient ``address``."""
        token = release_token(secret, self.config.siteid, record.id, address)
        return release_address(self.config.siteid, token, self.me())

    # -- storing -----------------------------------------------------------------------

    async def quarantine(self, message: Message, explanation: str) -> QuarantineRecord:
        """Store ``message``, mark its recipients delivered, send the notices.

        Returns the index record.  Raises :class:`QuarantineError` when any step fails;
        then nothing stays in the quarantine.  With a dry-run message nothing is stored
        or sent and the record that would have been made is returned.
        """
        from .edit import EditError
        from .message import MessageError
        from .store import StoreError

        now = self.clock()
        config = self.config
        try:
            pending = message.recipients
            headers = await message.headers()
            header_from = _header_text(headers, "From")
            subject = _header_text(headers, "Subject")
            record = QuarantineRecord(
                id=new_id(),
                time=now,
                expires=now + config.ttl,
                sender=message.sender or "",
                recipients=tuple(StoredRecipient(r.address, r.original, r.notify) for r in pending),
                explanation=clean_text(explanation, 1000),
                header_from=header_from,
                subject=subject,
                msgid=message.msgid or "",
                size=message.size,
                controls=len(message.control_paths),
                host=self.hostname,
            )
        except MessageError as exc:
            raise QuarantineError(f"cannot quarantine {message.data_path}: {exc}") from None
        if message.dry_run:
            log.info("quarantine (dry run): would quarantine %s", record.msgid or "message")
            return record
        secret = await self.secret(create=True)
        mailer = self.mailer()
        db = await self.index()
        record = await self._reserve(db, record)
        try:
            await asyncio.to_thread(self._store_files, message, record.id)
            for rcpt in pending:
                await message.edit.remove_recipient(rcpt, reason=f"quarantined as {record.id}")
            sent = await self._send_notices(record, secret, mailer)
        except BaseException as exc:
            await asyncio.shield(self._discard(record.id))
            if isinstance(exc, QuarantineError):
                raise
            if isinstance(exc, OSError | StoreError | MessageError | SendmailError | EditError):
                raise QuarantineError(
                    f"cannot quarantine {record.msgid or 'message'}: {exc}"
                ) from None
            raise
        log.info(
            "quarantined %s as %s (%s); notices to %s",
            record.msgid or message.data_path,
            record.id,
            record.explanation,
            ", ".join(sent) or "nobody",
        )
        return record

    async def _reserve(self, db: TtlDb, record: QuarantineRecord) -> QuarantineRecord:
        from .store import StoreError

        for _ in range(_ID_ATTEMPTS):
            try:
                inserted = await db.set_if_absent(record.id, record.time, data=record.to_json())
            except StoreError as exc:
                raise QuarantineError(f"quarantine index: {exc}") from None
            if inserted:
                return record
            record = replace(record, id=new_id())
        raise QuarantineError("quarantine index: no free id found")  # pragma: no cover

    def _store_files(self, message: Message, item_id: str) -> None:
        directory = self.config.dir
        token = f"{os.getpid()}.{secrets.token_hex(3)}"
        try:
            _copy_into(message.data_path, directory, data_name(item_id), f"tmp.{item_id}.D{token}")
            for i, path in enumerate(message.control_paths):
                _copy_into(path, directory, control_name(item_id, i), f"tmp.{item_id}.C{i}{token}")
        except OSError as exc:
            raise QuarantineError(
                f"cannot store the message in {directory}: {exc.strerror or exc}"
                + (f" ({exc.filename})" if exc.filename else "")
            ) from None
        _fsync_dir(directory)

    async def _discard(self, item_id: str) -> None:
        """Remove an item that could not be completed (files, then the index entry)."""
        try:
            names = await asyncio.to_thread(_files_of, self.config.dir, item_id)
            await asyncio.to_thread(_remove_files, self.config.dir, names)
        except OSError as exc:
            log.error("quarantine: cannot remove the files of %s: %s", item_id, exc)
        try:
            await (await self.index()).delete(item_id)
        except Exception as exc:
            log.error("quarantine: cannot remove index entry %s: %s", item_id, exc)

    async def _send_notices(
        self, record: QuarantineRecord, secret: bytes, mailer: Sendmail
    ) -> list[str]:
        config = self.config
        me = self.me()
        now = self.clock()
        contact = self.contact()
        jobs: list[tuple[str, bytes]] = []
        if config.notify_recipient:
            for address in record.notified_addresses():
                if not _notifiable(address):
                    # sendmail would take it as an option, or it cannot be a header:
                    # skip it rather than refuse the message for ever
                    log.warning("quarantine: no notice for %s to recipient %r", record.id, address)
                    continue
                release_to = (
                    self.release_address_for(secret, record, address)
                    if config.user_release
                    else None
                )
                jobs.append(
                    (
                        address,
                        render_notice(
                            record,
                            to=address,
                            me=me,
                            now=now,
                            release_to=release_to,
                            contact=contact,
                        ),
                    )
                )
        if config.also_notify:
            jobs.append(
                (
                    config.also_notify,
                    render_admin_notice(
                        record,
                        to=config.also_notify,
                        me=me,
                        now=now,
                        users_notified=config.notify_recipient,
                        users_may_release=config.user_release,
                    ),
                )
            )
        gate = asyncio.Semaphore(NOTICE_CONCURRENCY)

        async def send(address: str, content: bytes) -> None:
            async with gate:
                try:
                    await mailer.send("", [address], content)
                except (SendmailError, ValueError) as exc:
                    raise QuarantineError(
                        f"cannot send the quarantine notice for {record.id} to {address}: {exc}"
                    ) from None

        results = await asyncio.gather(
            *(send(address, content) for address, content in jobs), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [address for address, _ in jobs]

    # -- looking up ----------------------------------------------------------------------

    async def get(self, item_id: str) -> QuarantineRecord | None:
        """The record of ``item_id``; None when unknown or expired."""
        from .store import StoreError

        if not is_valid_id(item_id):
            return None
        db = await self.index()
        try:
            entry = await db.get_entry(item_id)
        except StoreError as exc:
            raise QuarantineError(f"quarantine index: {exc}") from None
        if entry is None:
            return None
        try:
            record = QuarantineRecord.from_json(entry.data, entry.key)
        except RecordError as exc:
            raise QuarantineError(str(exc)) from None
        if record.expired(self.clock()):
            return None
        return record

    async def items(self, *, include_expired: bool = False) -> list[QuarantineRecord]:
        """Every item, oldest first (corrupt entries are logged and skipped)."""
        from .store import StoreError

        db = await self.index()
        now = self.clock()
        records = []
        try:
            async for entry in db.keys(include_expired=include_expired):
                if not is_valid_id(entry.key):
                    continue
                try:
                    record = QuarantineRecord.from_json(entry.data, entry.key)
                except RecordError as exc:
                    log.warning("quarantine: %s", exc)
                    continue
                if include_expired or not record.expired(now):
                    records.append(record)
        except StoreError as exc:
            raise QuarantineError(f"quarantine index: {exc}") from None
        return sorted(records, key=lambda r: (r.time, r.id))

    def file_path(self, record: QuarantineRecord, name: str) -> str:
        """Path of one of the item's files (``name`` from :meth:`QuarantineRecord.files`)."""
        parsed = item_id_of_file(name)
        if parsed is None or parsed[0] != record.id:
            raise ValueError(f"{name!r} is not a file of {record.id}")
        return os.path.join(self.config.dir, name)

    # -- releasing ---------------------------------------------------------------------

    async def release_request(self, token: str, requester: str) -> ReleaseResult:
        """Handle mail to a release address (``token`` = ``$DEFAULT``, ``requester`` =
        ``$SENDER``).

        Released: the stored message goes to the requester, who must be one of its
        recipients and must have used the token made for that recipient; the item must
        not have expired and ``user_release`` must be on.  Refused: the requester gets a
        failure notice (unless the sender is null), whatever the reason.  Raises
        :class:`QuarantineError` on temporary problems (store, files, sendmail), so
        Courier retries the request.
        """
        try:
            record, address = await self._authorize(token, requester)
        except ReleaseRefused as refused:
            reason = str(refused)
            parsed = parse_token(token)
            item_id = parsed[0] if parsed else None
            log.warning(
                "quarantine: release of %s for <%s> refused: %s",
                item_id or repr(clean_text(token, 80)),
                clean_text(requester, 200),
                reason,
            )
            notified = await self._send_refusal(requester)
            return ReleaseResult(False, reason, item_id, None, notified)
        await self._deliver(record, [address])
        return ReleaseResult(True, "released", record.id, address)

    async def _authorize(self, token: str, requester: str) -> tuple[QuarantineRecord, str]:
        parsed = parse_token(token)
        if parsed is None:
            raise ReleaseRefused("malformed release address")
        item_id, mac = parsed
        if not requester:
            raise ReleaseRefused("null sender")
        if not self.config.user_release:
            raise ReleaseRefused("user_release is off")
        record = await self.get(item_id)
        if record is None:
            raise ReleaseRefused("no such item (expired, purged, or never existed)")
        secret = await self.secret()
        # Check every recipient record the requester matches (r or R); the token must be
        # the one made for that record's address.  Constant-time comparisons.
        granted: StoredRecipient | None = None
        matched = False
        for rcpt in record.recipients:
            if not rcpt.matches(requester):
                continue
            matched = True
            if token_matches(secret, self.config.siteid, item_id, rcpt.address, mac):
                granted = rcpt
        if not matched:
            raise ReleaseRefused("the requester is not a recipient")
        if granted is None:
            raise ReleaseRefused("wrong token for this recipient (forged or altered)")
        # deliver to the stored address the requester matched (one of the originals)
        wanted = normalize_address(requester)
        address = (
            granted.address
            if normalize_address(granted.address) == wanted
            else granted.original_address
        )
        return record, address

    async def _send_refusal(self, requester: str) -> bool:
        if not _notifiable(requester):
            return False
        content = render_release_failure(
            to=requester, me=self.me(), now=self.clock(), contact=self.contact()
        )
        try:
            await self.mailer().send("", [requester], content)
        except (SendmailError, ValueError) as exc:
            raise QuarantineError(f"cannot send the refusal to {requester}: {exc}") from None
        return True

    async def release_to(
        self, item_id: str, addresses: Sequence[str] | None = None
    ) -> tuple[QuarantineRecord, list[str]]:
        """Admin release: send item ``item_id`` to its recipients (all, or ``addresses``,
        each of which must be one).  Raises :class:`QuarantineError` when the item is
        unknown or expired, or ``ValueError`` for an address that is not a recipient."""
        if not is_valid_id(item_id):
            raise QuarantineError(f"not a quarantine id: {item_id!r}")
        record = await self.get(item_id)
        if record is None:
            raise QuarantineError(f"no quarantined message {item_id} (or it has expired)")
        targets = recipients_for_admin_release(record, addresses)
        if not targets:
            raise QuarantineError(f"quarantined message {item_id} has no recipients")
        await self._deliver(record, targets)
        return record, targets

    async def _deliver(self, record: QuarantineRecord, addresses: Sequence[str]) -> None:
        path = Path(self.file_path(record, data_name(record.id)))
        if not await asyncio.to_thread(path.is_file):
            where = f" (it was stored on {record.host})" if record.host else ""
            raise QuarantineError(
                f"the data file of quarantined message {record.id} is missing: {path}{where}"
            )
        mailer = self.mailer()
        for address in addresses:
            try:
                await mailer.send("", [address], path)
            except (SendmailError, ValueError) as exc:
                raise QuarantineError(
                    f"cannot send quarantined message {record.id} to {address}: {exc}"
                ) from None
            log.info("quarantine: released %s to %s", record.id, address)
        await self._note_release(record, addresses)

    async def _note_release(self, record: QuarantineRecord, addresses: Sequence[str]) -> None:
        """Record who received the message (best effort: it was sent already)."""
        try:
            db = await self.index()
            entry = await db.get_entry(record.id)
            if entry is None:
                return
            current = QuarantineRecord.from_json(entry.data, entry.key)
            released = dict(current.released)
            now = self.clock()
            for address in addresses:
                released[address] = now
            await db.set(record.id, entry.ts, data=replace(current, released=released).to_json())
        except Exception as exc:
            log.warning("quarantine: cannot record the release of %s: %s", record.id, exc)

    # -- removing ----------------------------------------------------------------------

    async def delete(self, item_id: str) -> bool:
        """Remove one item (files and index entry); False when there was nothing."""
        if not is_valid_id(item_id):
            raise QuarantineError(f"not a quarantine id: {item_id!r}")
        names = await asyncio.to_thread(_files_of, self.config.dir, item_id)
        removed, errors = await asyncio.to_thread(_remove_files, self.config.dir, names)
        if errors:
            raise QuarantineError("cannot delete " + "; ".join(errors))
        from .store import StoreError

        try:
            had = await (await self.index()).delete(item_id)
        except StoreError as exc:
            raise QuarantineError(f"quarantine index: {exc}") from None
        return had is not None or removed > 0

    async def purge(self, *, orphan_grace: float = ORPHAN_GRACE) -> PurgeReport:
        """Remove expired items (their files and index entries), files that belong to
        no live item and are older than ``orphan_grace`` seconds, and stale temporary
        files.  Other files in the directory are never touched."""
        from .store import StoreError

        now = self.clock()
        report = PurgeReport()
        db = await self.index()
        live: set[str] = set()
        expired: list[str] = []
        cutoff = now - self.config.ttl
        try:
            async for entry in db.keys(include_expired=True):
                if not is_valid_id(entry.key):
                    continue
                try:
                    record = QuarantineRecord.from_json(entry.data, entry.key)
                    gone = entry.ts < cutoff or record.expired(now)
                except RecordError as exc:
                    log.warning("quarantine: %s", exc)
                    gone = entry.ts < cutoff
                if gone:
                    expired.append(entry.key)
                else:
                    live.add(entry.key)
        except StoreError as exc:
            raise QuarantineError(f"quarantine index: {exc}") from None
        doomed = set(expired)
        directory = self.config.dir

        def sweep() -> tuple[int, list[str]]:
            try:
                names = os.listdir(directory)
            except FileNotFoundError:
                return 0, []
            victims = []
            for name in names:
                parsed = item_id_of_file(name)
                if parsed is None:
                    continue
                item_id, temporary = parsed
                if item_id in doomed:
                    victims.append(name)
                    continue
                if item_id in live and not temporary:
                    continue
                try:
                    age = now - os.lstat(os.path.join(directory, name)).st_mtime
                except FileNotFoundError:
                    continue
                if age > orphan_grace:
                    victims.append(name)
            return _remove_files(directory, victims)

        try:
            report.files, report.errors = await asyncio.to_thread(sweep)
        except OSError as exc:
            raise QuarantineError(f"cannot purge {directory}: {exc}") from None
        for item_id in expired:
            try:
                await db.delete(item_id)
            except StoreError as exc:
                raise QuarantineError(f"quarantine index: {exc}") from None
            report.items.append(item_id)
        if report.items or report.files:
            log.info(
                "quarantine: purged %d expired item(s), %d file(s)",
                len(report.items),
                report.files,
            )
        return report


# -- for filters ------------------------------------------------------------------------------


async def quarantine_service(ctx: Context) -> Any:
    """The quarantine service shared by the filters of ``ctx``'s configuration.

    Built on first use from ``[quarantine]`` (or ``[Quarantine]``): the directory and
    the site secret are created if missing and sendmail is looked for, so a broken
    setup stops the configuration from loading instead of failing on the first virus.
    A client installed as ``"quarantine"`` in ``ctx.services`` (tests) is returned as is.
    """
    services = ctx.services

    async def factory() -> QuarantineService:
        try:
            config = config_from_sections(services.sections)
        except QuarantineConfigError as exc:
            raise QuarantineError(str(exc)) from None
        service = QuarantineService(
            config,
            store=services.store,
            me=lambda: services.courier.me(),
            clock=services.clock,
        )
        await service.prepare(create=not services.dry_run)
        return service

    return await services.get(SERVICE_NAME, factory)


async def quarantine_message(message: Message, ctx: Context, reason: str) -> Decision:
    """Quarantine ``message`` with the explanation ``reason`` and return the decision
    (``050 OK``: accepted, delivered to nobody, later filters skipped).

    Raises :class:`QuarantineError` when the message could not be stored or announced,
    so the filter's failure action applies (a temporary failure unless configured
    otherwise): the message is never accepted unless it is safely in quarantine.  In a
    dry run nothing is stored or sent.
    """
    service = await quarantine_service(ctx)
    if ctx.dry_run or message.dry_run:
        ctx.log.info("would quarantine %s: %s", message.msgid or message.data_path, reason)
        return Decision.accept_skip_courier()
    await service.quarantine(message, reason)
    return Decision.accept_skip_courier()
