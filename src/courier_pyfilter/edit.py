"""Changing a message from a filter: headers, body, recipients.

Every filter reaches the editor as ``message.edit``.  Changes are applied at once (before
the filter returns its decision) the way Courier expects them from a global filter:

* The **data file is rewritten in place** — same path, same inode, because submit links
  it by path afterwards and its name is derived from the inode.  The new content is
  written over the old, the file is truncated to the new length and fsynced, all in a
  worker thread.  The write is shielded from cancellation: if the filter's deadline
  expires meanwhile, the write still finishes, and :meth:`Editor.drain` lets the server
  wait for it before it sends a reply.
* **Control files are only appended to** (``O_APPEND``): a recipient is added with new
  ``r``/``R``/``N`` records in the last control file, and removed by marking it delivered.
* **Header operations work on the raw bytes.**  The message is never re-generated from a
  parsed :mod:`email` object, so every header that is not touched — DKIM-signed ones
  included — stays byte-for-byte identical, folding and all.  Header names compare
  case-insensitively; new lines end in ``\\n`` as in Courier's data files.

Edits of one message are serialised with a lock.  With ``dry_run=True`` nothing is
written: :attr:`Editor.changes` lists what would have been done and the
:class:`~courier_pyfilter.message.Message` shows the edited content from memory.
Every failure raises :class:`EditError`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .control import (
    ControlData,
    ControlFileError,
    Recipient,
    add_recipient_records,
    remove_recipient_records,
)

if TYPE_CHECKING:
    from .message import Message

__all__ = [
    "DEFAULT_REMOVE_REASON",
    "EditError",
    "Editor",
    "format_header",
    "header_name",
    "split_headers",
]

T = TypeVar("T")

DEFAULT_REMOVE_REASON = "Removed by filter"
"""Reason written in the ``I<n> R 250 Ok - ...`` record of a removed recipient."""


class EditError(Exception):
    """A change to the message could not be made."""


# -- sans-I/O helpers over raw message bytes ---------------------------------------------


def split_headers(raw: bytes) -> tuple[list[bytes], bytes]:
    """Split a message into header fields and the rest, losslessly.

    Each field is its first line plus its continuation lines (those starting with a
    space or tab), line endings included.  The rest starts with the empty line that ends
    the header block (or is ``b""`` when there is none).  ``b"".join(fields) + rest ==
    raw`` always holds.
    """
    fields: list[bytes] = []
    pos = 0
    n = len(raw)
    while pos < n:
        nl = raw.find(b"\n", pos)
        end = n if nl < 0 else nl + 1
        line = raw[pos:end]
        if line in (b"\n", b"\r\n"):
            return fields, raw[pos:]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        pos = end
    return fields, b""


def header_name(field: bytes) -> bytes | None:
    """The lower-cased name of a header field, or None for a line that is not a header."""
    first = field.split(b"\n", 1)[0]
    colon = first.find(b":")
    if colon <= 0:
        return None
    name = first[:colon].rstrip(b" \t")
    if not name or any(c <= 32 or c >= 127 for c in name):
        return None
    return name.lower()


def _check_name(name: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise EditError(f"header name must be a non-empty str: {name!r}")
    if not name.isascii() or any(ord(c) <= 32 or ord(c) >= 127 or c == ":" for c in name):
        raise EditError(f"invalid header name: {name!r}")
    return name.encode("ascii")


def format_header(name: str, value: str | bytes) -> bytes:
    """One header field as bytes: ``Name: value\\n``.

    ``value`` may be pre-folded (line breaks followed by a space or tab); CRLF becomes
    LF.  A ``str`` value is encoded as UTF-8 as is: use :mod:`email.header` first for an
    RFC 2047 encoded value.  Raises :class:`EditError` for an invalid name or a value
    that would end the header or inject another one.
    """
    bname = _check_name(name)
    if isinstance(value, str):
        bvalue = value.encode("utf-8", "surrogateescape")
    elif isinstance(value, (bytes, bytearray)):
        bvalue = bytes(value)
    else:
        raise EditError(f"header value must be str or bytes: {value!r}")
    bvalue = bvalue.replace(b"\r\n", b"\n")
    if b"\r" in bvalue or b"\x00" in bvalue:
        raise EditError(f"header value must not contain CR or NUL: {value!r}")
    lines = bvalue.split(b"\n")
    for cont in lines[1:]:
        if cont[:1] not in (b" ", b"\t") or not cont.strip(b" \t"):
            raise EditError(f"header value has an unfolded or empty line: {value!r}")
    bvalue = bvalue.strip(b" \t")
    return bname + (b": " + bvalue if bvalue else b":") + b"\n"


def _normalise(raw: bytes) -> bytes:
    data = raw.replace(b"\r\n", b"\n")
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data


# -- file writes (run in a worker thread) ------------------------------------------------


def _rewrite_in_place(path: str, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        off = 0
        while off < len(data):
            off += os.pwrite(fd, view[off:], off)
        os.ftruncate(fd, len(data))
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _append(path: str, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        off = 0
        while off < len(data):
            off += os.write(fd, view[off:])
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Editor:
    """The modification API of one message (the successor of the original's XFilter).

    Obtain it as ``message.edit``.  All methods are coroutines; each one is applied
    completely (file written) when it returns.  ``fsync=False`` skips the fsync calls
    (tests); ``clock`` gives the time written in removal records.
    """

    def __init__(
        self,
        message: Message,
        *,
        dry_run: bool = False,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._message = message
        self.dry_run: bool = dry_run
        """True when changes are only recorded (and shown through the message)."""
        self.changes: list[str] = []
        """Human-readable description of every change made (or, dry-run, intended)."""
        self._fsync = fsync
        self._clock = clock
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Future[Any]] = set()
        self.failed: str | None = None
        """Why an edit failed, if one did: the files may then be damaged, so the server
        never accepts the message (it answers 451 whatever the filters decided)."""

    # -- machinery ------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while an edit is in progress."""
        return bool(self._pending)

    async def drain(self) -> None:
        """Wait until no edit is in progress (also ones whose caller was cancelled).

        The server calls this before it sends the reply, so that a filter cancelled at
        its deadline never leaves a half-written data file behind a reply.
        """
        while self._pending:
            await asyncio.wait(list(self._pending))

    async def _run(self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` under the edit lock, shielded from cancellation of the caller."""

        async def locked() -> T:
            async with self._lock:
                try:
                    return await work()
                except EditError as exc:
                    self.failed = str(exc)
                    raise
                except (OSError, ControlFileError) as exc:
                    self.failed = str(exc)
                    raise EditError(str(exc)) from exc
                except BaseException as exc:
                    self.failed = f"{type(exc).__name__}: {exc}"
                    raise

        task: asyncio.Future[T] = asyncio.ensure_future(locked())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _current(self) -> bytes:
        from .message import MessageError

        try:
            return await self._message.raw()
        except MessageError as exc:
            raise EditError(str(exc)) from exc

    def _control(self) -> ControlData:
        from .message import MessageError

        try:
            return self._message.control
        except MessageError as exc:
            raise EditError(str(exc)) from exc

    async def _write_data(self, data: bytes, change: str) -> None:
        if not self.dry_run:
            await asyncio.to_thread(_rewrite_in_place, self._message.data_path, data, self._fsync)
        self._message._data_changed(data)
        self.changes.append(change)

    async def _append_control(self, file_index: int, data: bytes, change: str) -> None:
        if not self.dry_run:
            path = self._message.control_paths[file_index]
            await asyncio.to_thread(_append, path, data, self._fsync)
        self._message._control_appended(file_index, data)
        self.changes.append(change)

    # -- headers and body -----------------------------------------------------------------

    async def add_header(self, name: str, value: str | bytes, *, top: bool = True) -> None:
        """Add a header field, at the top of the header block or (``top=False``) its end."""
        line = format_header(name, value)

        async def work() -> None:
            raw = await self._current()
            fields, rest = split_headers(raw)
            if top:
                new = line + raw
            else:
                if fields and not fields[-1].endswith(b"\n"):
                    fields[-1] += b"\n"
                new = b"".join(fields) + line + rest
            where = "top" if top else "end"
            await self._write_data(new, f"add header at {where}: {line.decode(errors='replace')!r}")

        await self._run(work)

    async def remove_headers(self, name: str, *, first_only: bool = False) -> int:
        """Remove every header field called ``name`` (or only the first); return how many."""
        key = _check_name(name).lower()

        async def work() -> int:
            raw = await self._current()
            fields, rest = split_headers(raw)
            kept: list[bytes] = []
            removed = 0
            for f in fields:
                if header_name(f) == key and not (first_only and removed):
                    removed += 1
                else:
                    kept.append(f)
            if removed:
                await self._write_data(
                    b"".join(kept) + rest, f"remove {removed} {name!r} header(s)"
                )
            return removed

        return await self._run(work)

    async def replace_header(self, name: str, value: str | bytes) -> bool:
        """Give header ``name`` a new value.

        The first field with that name is replaced where it stands and any further ones
        are removed; without one, the header is added at the top.  Returns True when a
        field was replaced.
        """
        key = _check_name(name).lower()
        line = format_header(name, value)

        async def work() -> bool:
            raw = await self._current()
            fields, rest = split_headers(raw)
            out: list[bytes] = []
            found = False
            for f in fields:
                if header_name(f) == key:
                    if not found:
                        out.append(line)
                    found = True
                else:
                    out.append(f)
            new = b"".join(out) + rest if found else line + raw
            verb = "replace" if found else "add (no existing) header"
            await self._write_data(new, f"{verb} {name!r}: {line.decode(errors='replace')!r}")
            return found

        return await self._run(work)

    async def replace_message(self, raw: bytes) -> None:
        """Replace the whole message (headers and body).

        CRLF line endings become LF and a final newline is added when missing, as
        Courier's data files are LF-terminated.
        """
        if not isinstance(raw, (bytes, bytearray)):
            raise EditError("replace_message needs bytes")
        data = _normalise(bytes(raw))
        if not data:
            raise EditError("the new message is empty")

        async def work() -> None:
            await self._write_data(data, f"replace message ({len(data)} bytes)")

        await self._run(work)

    async def replace_body(self, body: bytes) -> None:
        """Replace the body; the header block and the empty line after it stay identical.

        CRLF in ``body`` becomes LF and a final newline is added when missing.
        """
        if not isinstance(body, (bytes, bytearray)):
            raise EditError("replace_body needs bytes")
        new_body = _normalise(bytes(body))

        async def work() -> None:
            raw = await self._current()
            fields, rest = split_headers(raw)
            head = b"".join(fields)
            if rest:
                sep = b"\r\n" if rest.startswith(b"\r\n") else b"\n"
            else:
                if head and not head.endswith(b"\n"):
                    head += b"\n"
                sep = b"\n"
            await self._write_data(head + sep + new_body, f"replace body ({len(new_body)} bytes)")

        await self._run(work)

    # -- recipients -----------------------------------------------------------------------

    def _resolve(self, recipient: Recipient | str) -> Recipient:
        control = self._control()
        if isinstance(recipient, str):
            for r in control.recipients:
                if r.address == recipient:
                    return r
            raise EditError(f"no pending recipient {recipient!r}")
        if not isinstance(recipient, Recipient):
            raise EditError(f"not a recipient: {recipient!r}")
        for r in control.all_recipients:
            if r.file_index == recipient.file_index and r.index == recipient.index:
                if r.address != recipient.address:
                    raise EditError(f"stale recipient {recipient!r}")
                if r.done:
                    raise EditError(f"recipient {r.address!r} is already done")
                return r
        raise EditError(f"unknown recipient {recipient!r}")

    def _need_control(self) -> int:
        if not self._message.control_paths:
            raise EditError("the message has no control file")
        return len(self._message.control_paths) - 1

    def _prefix(self, file_index: int) -> bytes:
        files = self._control().files
        if file_index < len(files) and not files[file_index].complete:
            return b"\n"
        return b""

    async def add_recipient(self, address: str, original: str = "", notify: str = "") -> None:
        """Add a recipient (records appended to the last control file).

        The address must be canonical: Courier applies no alias expansion or rewriting to
        it.  ``notify`` holds DSN NOTIFY letters (``S``, ``F``, ``D`` or ``N``).
        """
        try:
            records = add_recipient_records(address, original, notify)
        except ControlFileError as exc:
            raise EditError(str(exc)) from exc

        async def work() -> None:
            last = self._need_control()
            await self._append_control(
                last,
                self._prefix(last) + records,
                f"add recipient {address!r} (original {original!r}, notify {notify!r})",
            )

        await self._run(work)

    async def remove_recipient(
        self, recipient: Recipient | str, reason: str = DEFAULT_REMOVE_REASON
    ) -> Recipient:
        """Remove a recipient by marking it delivered; return the recipient removed.

        ``recipient`` is a :class:`~courier_pyfilter.control.Recipient` from
        ``message.recipients`` or an address (the first pending recipient with exactly
        that address).  Courier records this as a successful delivery.
        """

        async def work() -> Recipient:
            self._need_control()
            target = self._resolve(recipient)
            records = remove_recipient_records(target.index, self._clock(), reason)
            await self._append_control(
                target.file_index,
                self._prefix(target.file_index) + records,
                f"remove recipient {target.address!r} (file {target.file_index}, "
                f"#{target.index}): {reason}",
            )
            return target

        return await self._run(work)

    async def clear_dsn_success(self, recipient: Recipient | str) -> Recipient | None:
        """Stop Courier from sending a success DSN for one recipient.

        Control records cannot be changed, so — like the original's ``nosuccessdsn``
        filter — a copy of the recipient is added whose NOTIFY flags lack ``S`` and the
        original is marked done.  Unlike the original, the ``F``/``D`` flags are kept
        (``SF`` becomes ``F``); a recipient that asked for ``S`` only gets ``''``
        (Courier's default, so failures are still reported).  Returns the new recipient,
        or None when there was no ``S`` flag (nothing is changed then).

        Caveat (not verified against Courier): the retired original is recorded as a
        successful delivery with its ``S`` flag, so whether Courier itself reports it is
        up to Courier's DSN logic.
        """

        async def work() -> Recipient | None:
            last = self._need_control()
            target = self._resolve(recipient)
            if "S" not in target.notify:
                return None
            notify = target.notify.replace("S", "")
            add = add_recipient_records(target.address, target.original, notify)
            remove = remove_recipient_records(target.index, self._clock(), "success DSN suppressed")
            desc = (
                f"clear success DSN of {target.address!r} (notify {target.notify!r} -> {notify!r})"
            )
            if target.file_index == last:
                await self._append_control(last, self._prefix(last) + add + remove, desc)
            else:
                await self._append_control(last, self._prefix(last) + add, desc)
                await self._append_control(
                    target.file_index,
                    self._prefix(target.file_index) + remove,
                    f"retire {target.address!r} (file {target.file_index}, #{target.index})",
                )
            return self._control().files[last].recipients[-1]

        return await self._run(work)
