"""Hand a message to Courier's ``sendmail`` program without blocking the event loop.

Used by the filters that send mail of their own (``sentfolder`` copies, quarantine
notices).  :class:`Sendmail` runs the program as an asyncio subprocess::

    client = Sendmail(find_sendmail())
    await client.send("", ["alice@example.com"], [b"X-Header: 1\\n", Path(data_path)])

* The message is given as parts: ``bytes`` are written as they are, an
  :class:`os.PathLike` is a file **streamed** to sendmail's standard input in chunks
  read by a worker thread, so a large data file is never held in memory twice.
* The whole run (writing the message and waiting for the exit status) has a
  **timeout**.  When it expires, or the caller is cancelled, or a file cannot be read
  half-way, the program and everything it started (Courier's sendmail runs ``submit``)
  is stopped with ``SIGTERM``, then ``SIGKILL``: it runs in a session of its own, so the
  whole process group is signalled, and its input is only closed once it is dead, so no
  truncated message is queued.
* The **exit status is checked**; every failure raises :class:`SendmailError` with the
  program's (cleaned, shortened) output.
* The program gets a **minimal environment** (``PATH`` only) unless told otherwise:
  Courier's sendmail takes the sender's name from ``MAILNAME``/``NAME`` and rewrites the
  ``From:`` header with it, so the daemon's environment must not leak into mail.

With Courier's sendmail the recipients are given on the command line, so ``Bcc:``
headers of the message are kept, and the message ends at end of input (no dot
handling); ``-oi`` is passed anyway for other sendmail implementations.  Courier's
sendmail re-writes the first ``From:`` header (keeping its first address) and drops
further ``From:`` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .mta import CourierPaths

__all__ = [
    "DEFAULT_CANDIDATES",
    "DEFAULT_TIMEOUT",
    "Content",
    "Part",
    "Sendmail",
    "SendmailError",
    "find_sendmail",
    "sendmail",
]

DEFAULT_TIMEOUT = 30.0
"""Seconds a sendmail run may take (writing the message and waiting for its exit)."""

DEFAULT_CANDIDATES = ("/usr/sbin/sendmail", "/usr/lib/sendmail")
"""Tried first by :func:`find_sendmail`, before ``<sbindir>`` and ``<bindir>``."""

DEFAULT_OPTIONS = ("-oi",)
"""Options placed before ``-f``: ``-oi`` (a lone ``.`` line does not end the message)
matters for other sendmail programs; Courier's ignores it."""

KILL_GRACE = 2.0
"""Seconds between ``SIGTERM`` and ``SIGKILL`` when a run is stopped."""

_CHUNK = 256 * 1024
_OUTPUT_LIMIT = 64 * 1024
_DETAIL_LIMIT = 300

Part = bytes | bytearray | memoryview | os.PathLike[str]
"""One piece of a message: bytes as they are, or a file (path-like) to stream."""

Content = Part | Sequence[Part]
"""A whole message: one part or a sequence of parts, sent in order."""


class SendmailError(Exception):
    """sendmail could not be run, failed, or took too long.

    ``program`` is the program run, ``returncode`` its exit status (negative: killed by
    that signal; ``None`` when it was not run or did not finish), ``output`` the first
    bytes it wrote to stdout and stderr, ``timed_out`` whether the timeout expired.
    """

    def __init__(
        self,
        message: str,
        *,
        program: str,
        returncode: int | None = None,
        output: bytes = b"",
        timed_out: bool = False,
    ) -> None:
        super().__init__(message)
        self.program = program
        self.returncode = returncode
        self.output = output
        self.timed_out = timed_out


def find_sendmail(
    paths: CourierPaths | None = None,
    *,
    candidates: Sequence[str] = DEFAULT_CANDIDATES,
) -> str:
    """Return the first executable sendmail program.

    Tried in order: ``candidates`` (``/usr/sbin/sendmail``, ``/usr/lib/sendmail``), then
    ``<sbindir>/sendmail`` and ``<bindir>/sendmail`` of ``paths`` (the original only
    tried ``<bindir>/sendmail``, which Debian's Courier does not have).  Raises
    :class:`SendmailError` when none is executable.
    """
    tried: list[str] = list(candidates)
    if paths is not None:
        tried += [os.path.join(paths.sbindir, "sendmail"), os.path.join(paths.bindir, "sendmail")]
    seen: set[str] = set()
    for candidate in tried:
        if candidate in seen:
            continue
        seen.add(candidate)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SendmailError(
        f"no sendmail program found (tried {', '.join(dict.fromkeys(tried))})",
        program="sendmail",
    )


def _check_address(what: str, address: str) -> None:
    if not isinstance(address, str):
        raise ValueError(f"{what} must be a str: {address!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in address):
        raise ValueError(f"{what} must not contain control characters: {address!r}")
    if address.startswith("-"):
        raise ValueError(f"{what} would be read as an option: {address!r}")


def _parts(content: Content) -> list[Part]:
    if isinstance(content, (bytes, bytearray, memoryview, os.PathLike)):
        return [content]
    if isinstance(content, str):
        raise TypeError("message content must be bytes or a path-like object, not str")
    parts = list(content)
    for part in parts:
        if not isinstance(part, (bytes, bytearray, memoryview, os.PathLike)):
            raise TypeError(f"message part must be bytes or a path-like object: {part!r}")
    return parts


def _detail(output: bytes) -> str:
    """The program's output made printable on one line (for logs and exceptions)."""
    text = output.decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else " " for c in text)
    text = " ".join(text.split())
    if len(text) > _DETAIL_LIMIT:
        text = text[: _DETAIL_LIMIT - 3] + "..."
    return text


class _FeedError(Exception):
    """A message file could not be read while writing to sendmail."""


class Sendmail:
    """A sendmail client: runs ``program`` once per message.

    ``timeout`` bounds each run; ``options`` come before ``-f``; ``env`` is the whole
    environment of the program (default: only ``PATH``).  Instances keep no state
    between messages and may be shared.
    """

    def __init__(
        self,
        program: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        options: Sequence[str] = DEFAULT_OPTIONS,
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(program, str) or not program:
            raise ValueError(f"sendmail program must be a non-empty str: {program!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"sendmail timeout must be a positive number: {timeout!r}")
        self.program = program
        """The program run for each message."""
        self.timeout = float(timeout)
        """Seconds one run may take."""
        self.options = tuple(options)
        """Options given before ``-f``."""
        self.env: dict[str, str] = (
            dict(env)
            if env is not None
            else {"PATH": os.environ.get("PATH") or "/usr/sbin:/usr/bin:/sbin:/bin"}
        )
        """The program's environment."""

    def __repr__(self) -> str:
        return f"Sendmail({self.program!r}, timeout={self.timeout:g})"

    def argv(self, sender: str | None, recipients: Sequence[str]) -> list[str]:
        """The command line for one message (validates the addresses).

        ``sender`` ``None`` lets sendmail choose the envelope sender; ``""`` is the null
        sender (``-f ""``, which Courier's sendmail accepts).  Raises
        :class:`ValueError` for an address with control characters or a leading ``-``,
        and for an empty recipient list.
        """
        argv = [self.program, *self.options]
        if sender is not None:
            _check_address("sender", sender)
            argv += ["-f", sender]
        if not recipients:
            raise ValueError("sendmail needs at least one recipient")
        for rcpt in recipients:
            _check_address("recipient", rcpt)
            if not rcpt:
                raise ValueError("recipient must not be empty")
            argv.append(rcpt)
        return argv

    async def send(
        self,
        sender: str | None,
        recipients: str | Sequence[str],
        content: Content,
    ) -> bytes:
        """Send ``content`` to ``recipients`` with envelope sender ``sender``.

        Returns what sendmail wrote to stdout and stderr (the first 64 KiB; usually
        nothing) once it exited with status 0.  Raises :class:`SendmailError` when
        the program cannot be started, a message file cannot be read, the program exits
        early or with another status, is killed, or the timeout expires; ``ValueError``
        / ``TypeError`` for invalid arguments (nothing is run then).
        """
        rcpts = [recipients] if isinstance(recipients, str) else list(recipients)
        argv = self.argv(sender, rcpts)
        parts = _parts(content)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self.env,
                start_new_session=True,
            )
        except OSError as exc:
            raise SendmailError(f"cannot run {self.program}: {exc}", program=self.program) from exc
        return await self._run(process, parts)

    async def _run(self, process: asyncio.subprocess.Process, parts: list[Part]) -> bytes:
        assert process.stdout is not None and process.stderr is not None
        output = bytearray()
        readers = [
            asyncio.ensure_future(_collect(process.stdout, output)),
            asyncio.ensure_future(_collect(process.stderr, output)),
        ]
        finished = False
        try:
            async with asyncio.timeout(self.timeout):
                broken_pipe = await _feed(process, parts)
                # stdout/stderr reach EOF when the program and its children are done
                await asyncio.gather(*readers)
                returncode = await process.wait()
                finished = True
        except TimeoutError:
            raise SendmailError(
                f"{self.program} did not finish within {self.timeout:g} s",
                program=self.program,
                output=bytes(output),
                timed_out=True,
            ) from None
        except _FeedError as exc:
            raise SendmailError(
                f"{exc}; {self.program} was stopped", program=self.program, output=bytes(output)
            ) from exc.__cause__
        finally:
            try:
                if not finished:
                    await _stop(process)
            finally:
                for reader in readers:
                    reader.cancel()
        detail = _detail(bytes(output))
        suffix = f": {detail}" if detail else ""
        if returncode < 0:
            raise SendmailError(
                f"{self.program} was killed by signal {-returncode}{suffix}",
                program=self.program,
                returncode=returncode,
                output=bytes(output),
            )
        if returncode != 0:
            raise SendmailError(
                f"{self.program} exited with status {returncode}{suffix}",
                program=self.program,
                returncode=returncode,
                output=bytes(output),
            )
        if broken_pipe:
            raise SendmailError(
                f"{self.program} exited before reading the whole message{suffix}",
                program=self.program,
                returncode=returncode,
                output=bytes(output),
            )
        return bytes(output)


async def _collect(stream: asyncio.StreamReader, into: bytearray) -> None:
    """Read ``stream`` to its end, keeping at most the first 64 KiB (shared buffer)."""
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        room = _OUTPUT_LIMIT - len(into)
        if room > 0:
            into += chunk[:room]


async def _write(stdin: asyncio.StreamWriter, data: bytes) -> None:
    """Write and drain; a closed pipe raises :class:`BrokenPipeError`.

    asyncio reports a pipe whose reader went away while nothing was buffered as a
    *clean* close and then drops further writes silently, so the state is checked
    before and after each write: only we close stdin, after the last part.
    """
    if stdin.is_closing():
        raise BrokenPipeError("the program closed its input")
    stdin.write(data)
    await stdin.drain()
    if stdin.is_closing():
        raise BrokenPipeError("the program closed its input")


async def _feed(process: asyncio.subprocess.Process, parts: list[Part]) -> bool:
    """Write every part to the program's stdin, then close it.

    Returns True when the program closed its end before it had everything (broken
    pipe).  Raises :class:`_FeedError` when a file cannot be read.
    """
    stdin = process.stdin
    assert stdin is not None
    try:
        for part in parts:
            if isinstance(part, os.PathLike):
                path = os.fspath(part)
                try:
                    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise _FeedError(f"cannot read {path}: {exc.strerror or exc}") from exc
                try:
                    while True:
                        try:
                            chunk = await asyncio.to_thread(os.read, fd, _CHUNK)
                        except OSError as exc:
                            raise _FeedError(f"cannot read {path}: {exc.strerror or exc}") from exc
                        if not chunk:
                            break
                        await _write(stdin, chunk)
                finally:
                    os.close(fd)
            elif part:
                await _write(stdin, bytes(part))
        if stdin.is_closing():
            raise BrokenPipeError("the program closed its input")
        stdin.close()
        # the rest of the buffer is written now: a failure here is a broken pipe too
        await stdin.wait_closed()
    except (BrokenPipeError, ConnectionResetError):
        stdin.close()
        return True
    return False


def _signal_group(process: asyncio.subprocess.Process, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)  # the program leads its own session/group
    except ProcessLookupError:
        pass
    except OSError:
        with contextlib.suppress(ProcessLookupError, OSError):
            process.send_signal(signum)


async def _stop(process: asyncio.subprocess.Process) -> None:
    """Stop a run that did not finish: SIGTERM the group, SIGKILL after a grace period.

    The group is signalled even when the program itself already exited, so that a
    child it left behind (Courier's ``submit``) cannot queue a half-written message.
    The program's stdin is closed only once it is dead: an end of input now would make
    it submit what it has read so far.  Shielded so that a cancelled caller still
    reaps the process.
    """

    async def stop() -> None:
        _signal_group(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), KILL_GRACE)
        except TimeoutError:
            pass
        _signal_group(process, signal.SIGKILL)
        # wait() also waits for the pipes to close: bounded, in case a process outside
        # the group (which the signals cannot reach) still holds them
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), KILL_GRACE)
        if process.stdin is not None:
            process.stdin.close()

    task = asyncio.ensure_future(stop())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        # keep reaping in the background; the caller's cancellation goes on
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        raise


async def sendmail(
    sender: str | None,
    recipients: str | Sequence[str],
    content: Content,
    *,
    program: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    paths: CourierPaths | None = None,
) -> bytes:
    """Send one message with a one-off :class:`Sendmail` (see :meth:`Sendmail.send`).

    ``program`` defaults to :func:`find_sendmail` (with ``paths`` for Courier's
    directories).
    """
    client = Sendmail(program or find_sendmail(paths), timeout=timeout)
    return await client.send(sender, recipients, content)
