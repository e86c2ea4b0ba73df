"""Reader for ``pythonfilter.conf``, the original's list of filters to run.

One filter per line, run in the order written::

    # comment
    whitelist_relayclients
    whitelist_auth for greylist spfcheck
    greylist

The first word is the module name (dots allowed). When the second word is
``for``, the remaining words are the *bypass set*: an accepting reply from that
filter only skips the named later filters. ``MODULE for`` alone gives an empty
bypass set, which behaves like no ``for`` clause. Any other second word and
everything after it is ignored (so a trailing ``# comment`` is ignored too).

Differences from the original, all of them fixes:

* lines holding only whitespace (including CRLF line ends) are skipped; the
  original crashed on them;
* lines whose first non-blank character is ``#`` are comments (the original
  only recognised ``#`` in the very first column and tried to load a module
  called ``#`` otherwise);
* module names are checked (dot-separated Python identifiers) and a bad one
  is reported as ``path:line:`` instead of an import failure;
* ignored trailing text, bypass names that are not module names or do not
  name a later filter, and repeated modules give :class:`ConfigWarning`\\ s.
"""

from __future__ import annotations

import keyword
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from courier_pyfilter.legacyconf.errors import ConfigError, ConfigProblem, ConfigWarning
from courier_pyfilter.legacyconf.modulesconf import read_config_text

__all__ = [
    "CHAIN_CONFIG_NAME",
    "ChainConfig",
    "ChainEntry",
    "default_chain_candidates",
    "find_chain_config",
    "is_module_name",
    "load_chain_config",
    "parse_chain",
    "parse_chain_config",
]

#: File name of the chain configuration.
CHAIN_CONFIG_NAME = "pythonfilter.conf"

_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class ChainEntry:
    """One line of ``pythonfilter.conf``: a filter and the names it may bypass.

    ``bypass`` empty means an accepting reply from this filter ends the chain;
    non-empty means it only skips the named later filters. ``line`` is 1-based.
    """

    name: str
    bypass: frozenset[str]
    line: int


@dataclass(frozen=True, slots=True)
class ChainConfig:
    """A parsed ``pythonfilter.conf``: its entries in order plus warnings."""

    path: str
    entries: tuple[ChainEntry, ...]
    warnings: tuple[ConfigWarning, ...]

    @property
    def names(self) -> list[str]:
        """Module names in chain order (repeats kept)."""
        return [entry.name for entry in self.entries]


def is_module_name(name: str) -> bool:
    """True for dot-separated Python identifiers that are not keywords."""
    parts = name.split(".")
    return all(part.isidentifier() and not keyword.iskeyword(part) for part in parts)


def parse_chain_config(text: str, path: str = CHAIN_CONFIG_NAME) -> ChainConfig:
    """Parse the text of ``pythonfilter.conf`` (pure, no I/O).

    Raises :class:`ConfigError` naming ``path:line`` for every invalid module
    name; everything else the original accepted is accepted, with warnings.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    entries: list[ChainEntry] = []
    problems: list[ConfigProblem] = []
    warnings: list[ConfigWarning] = []

    for lineno, line in enumerate(_LINE_BREAK_RE.split(text), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        name = words[0]
        if not is_module_name(name):
            problems.append(
                ConfigProblem(
                    path,
                    lineno,
                    f"invalid module name {name!r}: use Python identifiers separated by dots",
                )
            )
            continue
        if name.endswith(".py"):
            warnings.append(
                ConfigWarning(
                    path,
                    lineno,
                    f"{name!r} looks like a file name; the module is called {name[:-3]!r}",
                )
            )
        bypass: frozenset[str] = frozenset()
        if len(words) > 1:
            if words[1] == "for":
                bypass = frozenset(words[2:])
                for other in words[2:]:
                    if not is_module_name(other):
                        warnings.append(
                            ConfigWarning(
                                path,
                                lineno,
                                f"bypass name {other!r} is not a module name and matches no filter",
                            )
                        )
            else:
                rest = line.split(None, 1)[1].strip()
                warnings.append(
                    ConfigWarning(
                        path,
                        lineno,
                        f"ignored trailing text {rest!r} after module name "
                        "(only 'for NAME ...' may follow)",
                    )
                )
        entries.append(ChainEntry(name, bypass, lineno))

    if problems:
        raise ConfigError(problems)
    warnings.extend(_chain_warnings(path, entries))
    warnings.sort(key=lambda w: w.line or 0)
    return ChainConfig(path, tuple(entries), tuple(warnings))


def _chain_warnings(path: str, entries: Sequence[ChainEntry]) -> list[ConfigWarning]:
    result: list[ConfigWarning] = []
    first_line: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.name in first_line:
            result.append(
                ConfigWarning(
                    path,
                    entry.line,
                    f"module {entry.name!r} is listed again (first at line "
                    f"{first_line[entry.name]}); it will run once per listing",
                )
            )
        else:
            first_line[entry.name] = entry.line
        later = {other.name for other in entries[index + 1 :]}
        for bypassed in sorted(entry.bypass):
            if is_module_name(bypassed) and bypassed not in later:
                result.append(
                    ConfigWarning(
                        path,
                        entry.line,
                        f"bypass name {bypassed!r} names no filter listed after "
                        f"{entry.name!r}; it has no effect",
                    )
                )
    return result


def parse_chain(text: str, path: str = CHAIN_CONFIG_NAME) -> list[ChainEntry]:
    """Entries of ``pythonfilter.conf`` in order (warnings dropped).

    Use :func:`parse_chain_config` to get the warnings too.
    """
    return list(parse_chain_config(text, path).entries)


def default_chain_candidates(sysconfdir: str = "/etc/courier") -> tuple[str, ...]:
    """The original's search order for ``pythonfilter.conf``."""
    return (
        f"/etc/{CHAIN_CONFIG_NAME}",
        f"/usr/local/etc/{CHAIN_CONFIG_NAME}",
        os.path.join(sysconfdir, CHAIN_CONFIG_NAME),
    )


def find_chain_config(candidates: Sequence[str]) -> str | None:
    """The first of ``candidates`` that is a readable regular file, or ``None``."""
    for candidate in candidates:
        if not os.path.isfile(candidate):  # also avoids blocking on a FIFO
            continue
        try:
            with open(candidate, "rb"):
                pass
        except OSError:
            continue
        return candidate
    return None


def load_chain_config(path: str) -> ChainConfig:
    """Read and parse one ``pythonfilter.conf``.

    Raises :class:`ConfigError` if it is missing, unreadable or invalid.
    """
    text = read_config_text(path)
    if text is None:
        raise ConfigError.single(path, None, "file not found")
    return parse_chain_config(text, path)
