"""Values derived from files, reloaded when the files change.

A :class:`StatCache` remembers a *signature* of its source paths (device, inode, size and
modification time of every file, and of every regular file inside a source directory)
and calls its loader again only when that signature changed.  A missing path has the
signature ``None``, so creating or deleting a file is noticed too.  Checking costs one
``stat`` per path (plus one ``scandir`` per directory); *check_interval* can rate-limit
even that.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["Signature", "StatCache", "path_signature", "source_files"]

T = TypeVar("T")

_FileSig = tuple[int, int, int, int]
Signature = tuple[object, ...]
"""An opaque, comparable description of the state of some paths."""


def _file_sig(st: os.stat_result) -> _FileSig:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _skipped(name: str) -> bool:
    """Names Courier's ``makedat`` skips inside a source directory."""
    return name.endswith("~") or ".dpkg-" in name or name.startswith(".")


def source_files(directory: str | os.PathLike[str]) -> list[str]:
    """Return the regular files of a text-source directory, sorted by name.

    Like Courier's ``makedat`` wrapper this follows symbolic links, does not recurse and
    skips editor backups (``*~``) and ``*.dpkg-*`` leftovers; it also skips hidden files.
    Courier concatenates in directory order; sorting makes our order deterministic.
    """
    result = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if _skipped(entry.name):
                continue
            try:
                if entry.is_file(follow_symlinks=True):
                    result.append(entry.path)
            except OSError:
                continue
    return sorted(result)


def path_signature(path: str | os.PathLike[str]) -> object:
    """Return the signature of one path: ``None`` if missing, else file/directory state."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode):
        return _file_sig(st)
    members: list[tuple[str, _FileSig]] = []
    try:
        for member in source_files(path):
            try:
                members.append((member, _file_sig(os.stat(member))))
            except OSError:
                continue
    except OSError:
        return ("dir", _file_sig(st), None)
    return ("dir", _file_sig(st), tuple(members))


class StatCache(Generic[T]):
    """A value computed by *loader* from *paths*, recomputed when any path changes.

    :meth:`get` is thread-safe.  An exception from the loader propagates and nothing is
    cached, so the next call tries again.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        loader: Callable[[], T],
        *,
        check_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Watch *paths*; check them at most every *check_interval* seconds."""
        self._paths = tuple(os.fspath(p) for p in paths)
        self._loader = loader
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._signature: Signature | None = None
        self._value: T | None = None
        self._loaded = False
        self._checked_at = 0.0

    @property
    def paths(self) -> tuple[str, ...]:
        """The watched paths."""
        return self._paths

    def signature(self) -> Signature:
        """Return the current signature of the watched paths."""
        return tuple(path_signature(p) for p in self._paths)

    def invalidate(self) -> None:
        """Forget the cached value; the next :meth:`get` reloads."""
        with self._lock:
            self._loaded = False
            self._value = None

    def get(self) -> T:
        """Return the cached value, reloading it first if the sources changed."""
        with self._lock:
            now = self._clock()
            if self._loaded and self._interval > 0 and now - self._checked_at < self._interval:
                return self._value  # type: ignore[return-value]
            current = self.signature()
            self._checked_at = now
            if self._loaded and current == self._signature:
                return self._value  # type: ignore[return-value]
            value = self._loader()
            self._value = value
            self._signature = current
            self._loaded = True
            return value
