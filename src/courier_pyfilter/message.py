"""The per-message view shared by every filter of a chain.

A :class:`Message` is created for each filtering request from the data-file path and the
control-file paths courierfilter sent.  Construction reads nothing: every piece is loaded
the first time a filter asks for it and then cached, so a chain of filters that only look
at the envelope never touches the data file, and the message is parsed at most once no
matter how many filters look at it.

* :attr:`Message.control` (and the shortcuts :attr:`~Message.sender`,
  :attr:`~Message.recipients`, ...) reads and parses the control files synchronously on
  first access: they are small local files.
* :meth:`Message.raw`, :meth:`Message.headers` and :meth:`Message.email` are coroutines:
  the data file is read (and large messages parsed) in a worker thread.
* :attr:`Message.edit` is the :class:`~courier_pyfilter.edit.Editor` that changes the
  message; the caches above are refreshed after each edit, so later filters (and later
  calls in the same filter) see the changed message.

Errors reading or parsing the files raise :class:`MessageError`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .control import (
    DEFAULT_MAX_RECORDS,
    DEFAULT_MAX_SIZE,
    ControlData,
    ControlFileError,
    Recipient,
    parse_control,
)

if TYPE_CHECKING:
    from email.message import EmailMessage

    from .control import IPAddress
    from .edit import Editor

__all__ = ["Message", "MessageError", "split_header_block"]


def __getattr__(name: str) -> Any:
    # The email package is imported on first use: chains that never parse a message
    # (most whitelists) keep the daemon's memory small.
    if name == "EMAIL_POLICY":
        return _email_policy()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_POLICY: Any = None


def _email_policy() -> Any:
    """The policy messages are parsed with: LF line ends, defects recorded, never raised."""
    global _POLICY
    if _POLICY is None:
        import email.policy

        _POLICY = email.policy.default.clone(linesep="\n", raise_on_defect=False)
    return _POLICY


"""The :mod:`email` policy used for parsing: the modern API, tolerant of malformed input
(problems are recorded in ``.defects`` instead of raised), LF line endings."""

_THREAD_PARSE_THRESHOLD = 256 * 1024
"""Messages larger than this are parsed in a worker thread instead of the event loop."""


class MessageError(Exception):
    """The message's data or control files could not be read or parsed."""


def split_header_block(raw: bytes) -> tuple[bytes, bytes]:
    """Split a message into its header block and the rest.

    The header block ends with the first empty line (``\\n`` or ``\\r\\n``); the second
    part starts with that empty line and is ``b""`` when the message has no body
    separator.  ``header + rest == raw`` always holds.
    """
    if raw.startswith(b"\n") or raw.startswith(b"\r\n"):
        return b"", raw
    best = -1
    for sep in (b"\n\n", b"\n\r\n"):
        pos = raw.find(sep)
        if pos >= 0 and (best < 0 or pos < best):
            best = pos
    if best < 0:
        return raw, b""
    return raw[: best + 1], raw[best + 1 :]


def _read_file(path: str, limit: int | None = None) -> bytes:
    """The whole file (at most ``limit + 1`` bytes), in as few system calls as possible:
    a control file is read with open, one read and close."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        total = 0
        want = 65536 if limit is None else min(65536, limit + 1)
        while True:
            chunk = os.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if limit is not None and total > limit:
                break
            if len(chunk) < want:
                break  # a short read on a regular file is its end: no need to read EOF
            want = 1 << 20 if limit is None else min(1 << 20, limit + 1 - total)
    finally:
        os.close(fd)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _parse(data: bytes, headers_only: bool) -> EmailMessage:
    from email.message import EmailMessage
    from email.parser import BytesParser

    msg = BytesParser(policy=_email_policy()).parsebytes(data, headersonly=headers_only)
    assert isinstance(msg, EmailMessage)
    return msg


class Message:
    """Lazily loaded, parse-once view of one message (data file + control files).

    ``data_path`` and ``control_paths`` are the paths as courierfilter sent them (the
    protocol layer resolves relative ones).  With ``dry_run=True`` the :attr:`edit`
    editor records changes and keeps them in memory instead of writing the files; reads
    through this object still show the edited message.
    """

    __slots__ = (
        "_control",
        "_control_overlay",
        "_data_overlay",
        "_dry_run",
        "_edit",
        "_email",
        "_generation",
        "_headers",
        "_max_control_records",
        "_max_control_size",
        "_raw",
        "control_paths",
        "data_path",
    )

    def __init__(
        self,
        data_path: str,
        control_paths: Sequence[str],
        *,
        dry_run: bool = False,
        max_control_size: int = DEFAULT_MAX_SIZE,
        max_control_records: int = DEFAULT_MAX_RECORDS,
    ) -> None:
        self.data_path: str = os.fspath(data_path)
        """Path of the data file."""
        self.control_paths: tuple[str, ...] = (
            control_paths  # the server's request already holds a tuple of str: share it
            if type(control_paths) is tuple and all(type(p) is str for p in control_paths)
            else tuple(os.fspath(p) for p in control_paths)
        )
        """Paths of the control files, in the order courierfilter listed them."""
        self._dry_run = dry_run
        self._max_control_size = max_control_size
        self._max_control_records = max_control_records
        self._control: ControlData | None = None
        self._raw: bytes | None = None
        self._headers: EmailMessage | None = None
        self._email: EmailMessage | None = None
        self._generation = 0
        self._data_overlay: bytes | None = None
        self._control_overlay: dict[int, bytes] | None = None  # created by the first edit
        self._edit: Editor | None = None

    def __repr__(self) -> str:
        return f"Message({self.data_path!r}, {list(self.control_paths)!r})"

    @property
    def dry_run(self) -> bool:
        """True when edits are kept in memory instead of being written to the files."""
        return self._dry_run

    # -- control data ---------------------------------------------------------------------

    @property
    def control(self) -> ControlData:
        """The parsed control files (read on first access, re-read after control edits)."""
        if self._control is None:
            self._control = self._load_control()
        return self._control

    def _load_control(self) -> ControlData:
        files = []
        for i, path in enumerate(self.control_paths):
            try:
                data = _read_file(path, self._max_control_size)
            except OSError as exc:
                raise MessageError(f"cannot read control file {path}: {exc}") from exc
            extra = None if self._control_overlay is None else self._control_overlay.get(i)
            if extra:
                data += extra
            try:
                files.append(
                    parse_control(
                        data,
                        file_index=i,
                        max_size=self._max_control_size,
                        max_records=self._max_control_records,
                    )
                )
            except ControlFileError as exc:
                raise MessageError(f"bad control file {path}: {exc}") from exc
        return ControlData.from_files(files)

    @property
    def sender(self) -> str | None:
        """Envelope sender; ``''`` for ``<>``; None if the control file has no ``s``."""
        return self.control.sender

    @property
    def recipients(self) -> tuple[Recipient, ...]:
        """Recipients not yet delivered or removed."""
        return self.control.recipients

    @property
    def addresses(self) -> tuple[str, ...]:
        """The addresses of :attr:`recipients`."""
        return self.control.addresses

    @property
    def auth_user(self) -> str | None:
        """SMTP AUTH user name, None when not authenticated."""
        return self.control.auth_user

    @property
    def client_ip(self) -> IPAddress | None:
        """The client's IP address (IPv4-mapped addresses as IPv4), None if unknown."""
        return self.control.client_ip

    @property
    def helo(self) -> str | None:
        """The HELO/EHLO name the client gave."""
        return self.control.helo

    @property
    def msgid(self) -> str | None:
        """Courier's queue id of the message (the ``M`` record)."""
        return self.control.msgid

    @property
    def source(self) -> str | None:
        """Where the message came from: ``smtp``, ``authsmtp``, ``local``, ..."""
        return self.control.source

    # -- data file ------------------------------------------------------------------------

    @property
    def size(self) -> int:
        """Size of the message in bytes (current content, including edits)."""
        if self._data_overlay is not None:
            return len(self._data_overlay)
        if self._raw is not None:
            return len(self._raw)
        try:
            return os.stat(self.data_path).st_size
        except OSError as exc:
            raise MessageError(f"cannot stat data file {self.data_path}: {exc}") from exc

    async def raw(self) -> bytes:
        """The whole message as bytes (read once in a worker thread, then cached)."""
        if self._data_overlay is not None:
            return self._data_overlay
        if self._raw is not None:
            return self._raw
        generation = self._generation
        try:
            data = await asyncio.to_thread(_read_file, self.data_path)
        except OSError as exc:
            raise MessageError(f"cannot read data file {self.data_path}: {exc}") from exc
        if generation == self._generation:
            self._raw = data
            return data
        # an edit landed while we were reading: its content is the current one
        return await self.raw()

    async def headers(self) -> EmailMessage:
        """The header block parsed on its own (cheap: the body is not parsed)."""
        if self._headers is None:
            generation = self._generation
            header_block, _ = split_header_block(await self.raw())
            parsed = await self._parse(header_block, headers_only=True)
            if generation != self._generation:
                return await self.headers()
            self._headers = parsed
        return self._headers

    async def email(self) -> EmailMessage:
        """The fully parsed message.

        Uses :data:`EMAIL_POLICY`: malformed MIME never raises, problems are recorded in
        the ``defects`` attribute of the message and its parts.  Do not modify the
        returned object to change the mail; use :attr:`edit`.
        """
        if self._email is None:
            generation = self._generation
            parsed = await self._parse(await self.raw(), headers_only=False)
            if generation != self._generation:
                return await self.email()
            self._email = parsed
        return self._email

    async def _parse(self, data: bytes, *, headers_only: bool) -> EmailMessage:
        try:
            if len(data) > _THREAD_PARSE_THRESHOLD:
                return await asyncio.to_thread(_parse, data, headers_only)
            return _parse(data, headers_only)
        except Exception as exc:  # the email package is meant never to raise here
            raise MessageError(f"cannot parse message {self.data_path}: {exc}") from exc

    # -- editing --------------------------------------------------------------------------

    @property
    def edit(self) -> Editor:
        """The :class:`~courier_pyfilter.edit.Editor` that changes this message."""
        if self._edit is None:
            from .edit import Editor

            self._edit = Editor(self, dry_run=self._dry_run)
        return self._edit

    async def drain_edits(self) -> None:
        """Wait for edits still being written (e.g. whose filter hit its deadline).

        The server awaits this before sending the reply.  Cheap when nothing was edited
        (no editor is created).
        """
        if self._edit is not None:
            await self._edit.drain()

    @property
    def edit_failed(self) -> str | None:
        """Why a change to the message or its control files failed, or ``None``."""
        return None if self._edit is None else self._edit.failed

    def invalidate(self) -> None:
        """Forget everything cached, so the next access re-reads the files.

        Call it after changing the files behind the object's back (the editor keeps the
        caches up to date itself).  In-memory dry-run edits are kept.
        """
        self._generation += 1
        self._raw = None
        self._headers = None
        self._email = None
        self._control = None

    def _data_changed(self, data: bytes) -> None:
        """Editor hook: the message content is now ``data``."""
        self._generation += 1
        self._headers = None
        self._email = None
        if self._dry_run:
            self._data_overlay = data
        else:
            self._raw = data

    def _control_appended(self, file_index: int, data: bytes) -> None:
        """Editor hook: ``data`` was appended to control file ``file_index``."""
        if self._dry_run:
            overlay = self._control_overlay
            if overlay is None:
                overlay = self._control_overlay = {}
            overlay[file_index] = overlay.get(file_index, b"") + data
        self._control = None
