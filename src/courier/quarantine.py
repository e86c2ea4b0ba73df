"""``courier.quarantine`` of courier-pythonfilter 3.0.6 (synchronous API), on
:mod:`courier_pyfilter.quarantine`.

For filters written for the original (its ``clamav`` module calls ``init()`` and then
``quarantine(body_path, control_paths, explanation)`` before answering ``050 OK``):

* :func:`init` reads ``[quarantine]`` (or ``[Quarantine]``) into :data:`config`;
* :func:`quarantine` stores the message, marks its recipients delivered and sends the
  notices - or raises :class:`QuarantineError` having kept nothing, so the filter's
  failure action applies (the original could mark the recipients delivered and then
  fail to send the notice, losing the message silently);
* :func:`release` handles a release request (``release(os.environ['DEFAULT'],
  os.environ['SENDER'])``), :func:`purge` removes expired items, :func:`send_notice`
  mails a text in the notice's form.

Differences from the original, all deliberate: items are stored as described in
``docs/quarantine.md`` (random ids, index in the store, per-recipient release
addresses that cannot be guessed), so releases of messages quarantined by the original
are not possible; the settings keep their defaults for keys missing from the section
(the original dropped every default once the section existed); notices really use the
null envelope sender and Courier's ``/usr/sbin/sendmail``.

Inside the daemon the calls run on its event loop against its store (see
:mod:`pythonfilter.ttldb`); standalone, on a private loop with the store of the
``[ttldb]`` section.  Do not call them from the event loop thread itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from courier_pyfilter.quarantine import QuarantineError

if TYPE_CHECKING:
    from courier_pyfilter.quarantine import QuarantineService

__all__ = [
    "TIMEOUT",
    "QuarantineError",
    "config",
    "init",
    "purge",
    "quarantine",
    "release",
    "sendNotice",
    "send_notice",
]

T = TypeVar("T")

TIMEOUT: float = 120.0
"""Seconds one call may take (storing, notices, release) before it fails."""

DEFAULTS: dict[str, Any] = {
    "siteid": "local",
    "dir": "/var/lib/pythonfilter/quarantine",
    "days": 14,
}

config: dict[str, Any] = dict(DEFAULTS)
"""The settings in effect: the defaults updated by the ``[quarantine]`` section."""


def init() -> None:
    """Load ``[quarantine]`` (or ``[Quarantine]``) of ``pythonfilter-modules.conf``."""
    from . import config as courier_config

    section = courier_config.get_module_config("quarantine")
    config.clear()
    config.update(DEFAULTS)
    config.update(section)


def _service(store: Callable[[], Awaitable[Any]]) -> QuarantineService:
    from courier_pyfilter.quarantine import QuarantineService
    from courier_pyfilter.quarantine_core import QuarantineConfigError, parse_config

    from . import config as courier_config

    try:
        settings = parse_config(config)
    except QuarantineConfigError as exc:
        raise QuarantineError(str(exc)) from None
    return QuarantineService(settings, store=store, me=courier_config.me)


def _call(work: Callable[[QuarantineService], Awaitable[T]]) -> T:
    """Run ``work(service)`` on the daemon's (or a private) loop and wait for it."""
    from pythonfilter import ttldb

    loop, store_getter, _ = ttldb._target()
    if ttldb._in_loop_thread(loop):
        raise QuarantineError(
            "courier.quarantine used from the event loop thread; call it from do_filter"
        )
    service = _service(store_getter)

    async def run() -> T:
        return await work(service)

    future = asyncio.run_coroutine_threadsafe(run(), loop)
    try:
        return future.result(TIMEOUT)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise QuarantineError(f"quarantine call did not finish within {TIMEOUT:g} s") from None


def quarantine(body_path: str, control_paths: Sequence[str], explanation: str) -> None:
    """Quarantine the message: store it, mark every recipient delivered, notify.

    Raises :class:`QuarantineError` when any step fails (nothing is kept then).
    """
    from courier_pyfilter.message import Message

    paths = [control_paths] if isinstance(control_paths, str) else list(control_paths)

    async def work(service: QuarantineService) -> None:
        await service.prepare(create=True)
        await service.quarantine(Message(body_path, paths), explanation)

    _call(work)


def release(item_id: str, address: str) -> None:
    """Release the item named by ``item_id`` (``$DEFAULT``) to ``address`` (``$SENDER``),
    or send ``address`` a failure notice.  Raises :class:`QuarantineError` on temporary
    problems."""

    async def work(service: QuarantineService) -> None:
        await service.release_request(item_id, address)

    _call(work)


def purge() -> None:
    """Remove the items older than ``days``."""

    async def work(service: QuarantineService) -> None:
        await service.purge()

    _call(work)


def send_notice(text: str, address: str, sender: str | None = None) -> None:
    """Mail ``text`` to ``address`` in the notice's form (``From: Mail Quarantine System
    <postmaster@me>``, ``Subject: Quarantine notice``), from ``sender`` (default: the
    null sender)."""
    import email.utils
    import time

    async def work(service: QuarantineService) -> None:
        me = service.me()
        if any(ord(c) < 32 for c in address) or not address:
            raise ValueError(f"bad notice address {address!r}")
        head = (
            f"From: Mail Quarantine System <postmaster@{me}>\n"
            f"To: <{address}>\n"
            "Subject: Quarantine notice\n"
            f"Date: {email.utils.formatdate(time.time(), localtime=True)}\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: 8bit\n"
            "Auto-Submitted: auto-generated\n\n"
        )
        body = text if text.endswith("\n") else text + "\n"
        try:
            await service.mailer().send(sender or "", [address], (head + body).encode())
        except Exception as exc:
            raise QuarantineError(f"cannot send the notice to {address}: {exc}") from None

    _call(work)


sendNotice = send_notice
