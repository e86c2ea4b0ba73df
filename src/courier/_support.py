"""Small synchronous helpers shared by the compatibility modules (not a public API).

* :func:`rewrite_in_place` and :func:`append_bytes`: the file writes Courier expects from a
  filter (the data file keeps its inode; control files are only appended to);
* :func:`run_coroutine_blocking`: run an ``async`` function to completion from any thread,
  including one whose event loop is running (it uses a fresh thread with its own loop).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["append_bytes", "rewrite_in_place", "run_coroutine_blocking"]

T = TypeVar("T")


def rewrite_in_place(path: str, data: bytes, *, sync: bool = True) -> None:
    """Replace the content of ``path`` with ``data`` keeping the same inode.

    The new bytes are written over the old ones first, then the file is cut to the new
    length and (with ``sync``) flushed to disk, so at no moment is the file empty.
    """
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def append_bytes(path: str, data: bytes, *, sync: bool = True) -> None:
    """Append ``data`` to ``path`` (``O_APPEND``; the file must exist).

    When the file does not end with a newline, one is written first so the appended
    records start on a line of their own.
    """
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.write(fd, view[offset:])
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def run_coroutine_blocking(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``factory()`` on a private event loop in a new thread and return its result.

    Safe to call from a thread that is itself running an event loop (the loop is blocked
    meanwhile, so keep the coroutine short and bounded).  Exceptions are re-raised.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(factory()))
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=target, name="courier-compat-sync", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
