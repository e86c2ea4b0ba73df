"""Error and warning types shared by the legacy configuration readers.

Every problem is reported with the place it comes from, in the familiar
``path:line:`` form, so an operator can jump straight to the offending line::

    /etc/pythonfilter-modules.conf:12: [greylist.py] greylist_time: unquoted word ...
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "ConfigValueError",
    "ConfigWarning",
    "LegacyConfigError",
]


def _place(path: str, line: int | None, section: str | None, key: str | None) -> str:
    """Format the ``path:line: [section] key:`` prefix of a diagnostic."""
    where = path if line is None else f"{path}:{line}"
    parts = [f"{where}:"]
    if section is not None:
        parts.append(f"[{section}]")
    if key is not None:
        parts.append(f"{key}:")
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One fatal problem found in a configuration file.

    ``line`` is 1-based; ``section`` and ``key`` are set when the problem
    belongs to one value of ``pythonfilter-modules.conf``.
    """

    path: str
    line: int | None
    reason: str
    section: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        return f"{_place(self.path, self.line, self.section, self.key)} {self.reason}"


@dataclass(frozen=True, slots=True)
class ConfigWarning:
    """A non-fatal remark about a configuration file (the file is still used)."""

    path: str
    line: int | None
    message: str
    section: str | None = None
    key: str | None = None

    def __str__(self) -> str:
        return f"{_place(self.path, self.line, self.section, self.key)} {self.message}"


class LegacyConfigError(Exception):
    """Base class of every error raised by :mod:`courier_pyfilter.legacyconf`."""


class ConfigValueError(LegacyConfigError, ValueError):
    """A configuration value that is not an accepted Python literal expression.

    :attr:`text` is the whole value as written, :attr:`reason` the explanation,
    :attr:`lineno` / :attr:`col` (1-based, may be ``None``) point into
    :attr:`text` when the position of the fault is known.
    """

    def __init__(
        self, text: str, reason: str, *, lineno: int | None = None, col: int | None = None
    ) -> None:
        super().__init__(reason)
        self.text = text
        self.reason = reason
        self.lineno = lineno
        self.col = col

    def __str__(self) -> str:
        return self.reason


class ConfigError(LegacyConfigError):
    """A configuration file that cannot be used; carries every problem found.

    ``str()`` gives one ``path:line: ...`` line per problem. The attributes
    :attr:`path`, :attr:`line`, :attr:`section`, :attr:`key` and
    :attr:`reason` describe the first problem.
    """

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__("\n".join(str(p) for p in self.problems))

    @classmethod
    def single(
        cls,
        path: str,
        line: int | None,
        reason: str,
        *,
        section: str | None = None,
        key: str | None = None,
    ) -> ConfigError:
        """Build an error holding exactly one problem."""
        return cls([ConfigProblem(path, line, reason, section, key)])

    @property
    def path(self) -> str:
        """File of the first problem."""
        return self.problems[0].path

    @property
    def line(self) -> int | None:
        """Line (1-based) of the first problem."""
        return self.problems[0].line

    @property
    def section(self) -> str | None:
        """Section of the first problem, if it concerns a value."""
        return self.problems[0].section

    @property
    def key(self) -> str | None:
        """Key of the first problem, if it concerns a value."""
        return self.problems[0].key

    @property
    def reason(self) -> str:
        """Explanation of the first problem."""
        return self.problems[0].reason
