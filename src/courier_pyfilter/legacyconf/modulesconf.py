"""Reader for ``pythonfilter-modules.conf``, the original's per-module settings.

The file is INI text as Python's ``RawConfigParser`` reads it, with names kept
exactly as written:

* ``[section]`` headers (case-sensitive; filter sections are the module file
  name, e.g. ``[greylist.py]``; libraries use ``[ttldb]``, ``[quarantine]``);
* ``key = value`` or ``key: value`` (the first ``=`` or ``:`` separates; case of
  the key is kept);
* full-line comments starting with ``#`` or ``;`` (also when indented);
  nothing is stripped from the end of a value line, but Python-style
  ``# comments`` inside a value are ignored by the evaluator, as ``eval()`` did;
* continuation lines: a line indented deeper than its key line continues the
  value (blank lines inside a value are kept), which is how multi-line dicts
  are written;
* a ``[DEFAULT]`` section whose keys apply to every other section, as in
  ``RawConfigParser``.

Several files may be read in order (the original read
``/etc/pythonfilter-modules.conf`` then ``/usr/local/etc/pythonfilter-modules.conf``);
a later file overrides single keys of the same section, missing files are
skipped. Every value is evaluated eagerly with
:func:`~courier_pyfilter.legacyconf.evaluator.evaluate`, so a bad value stops
start-up or reload with a :class:`ConfigError` naming file, line, section and key.

Deliberate differences from the original: where it logged a parse error
(duplicate section or key in one file, a line before the first section, a line
that is neither header, ``key = value`` nor comment) and handed every module an
empty configuration, we refuse the file with every problem listed; where an
unreadable (but existing) file was silently skipped, we refuse it too.

Section aliases (:data:`SECTION_ALIASES`, e.g. ``[ttldb]`` / ``[TtlDb]``): the
first alias present wins entirely, the others are ignored (never merged, so
one section is always the whole truth); when more than one is present a
:class:`ConfigWarning` is recorded at load time.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from courier_pyfilter.legacyconf.errors import (
    ConfigError,
    ConfigProblem,
    ConfigValueError,
    ConfigWarning,
)
from courier_pyfilter.legacyconf.evaluator import evaluate

__all__ = [
    "DEFAULT_MODULES_CONFIG_PATHS",
    "DEFAULT_SECTION",
    "SECTION_ALIASES",
    "ConfigValue",
    "ModulesConfig",
    "ValueSource",
    "load_modules_config",
    "parse_modules_config",
    "parse_raw_sections",
    "read_config_text",
]

#: The files the original read, in order (later ones override earlier ones).
DEFAULT_MODULES_CONFIG_PATHS: tuple[str, ...] = (
    "/etc/pythonfilter-modules.conf",
    "/usr/local/etc/pythonfilter-modules.conf",
)

#: The section whose keys every other section inherits.
DEFAULT_SECTION = "DEFAULT"

#: Groups of section names that mean the same thing; the first present wins.
SECTION_ALIASES: tuple[tuple[str, ...], ...] = (
    ("ttldb", "TtlDb"),
    ("quarantine", "Quarantine"),
)

_SECTION_RE = re.compile(r"\[(?P<header>.+)\]")
_OPTION_RE = re.compile(r"(?P<option>.*?)\s*(?P<vi>[=:])\s*(?P<value>.*)$")
_NONSPACE_RE = re.compile(r"\S")
_LINE_BREAK_RE = re.compile(r"\r\n|\r|\n")
_COMMENT_PREFIXES = ("#", ";")


@dataclass(frozen=True, slots=True)
class ValueSource:
    """Where a value was written: file, line of its key, section and key."""

    path: str
    line: int
    section: str
    key: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: [{self.section}] {self.key}"


@dataclass(frozen=True, slots=True)
class ConfigValue:
    """One evaluated value with its raw text and origin."""

    source: ValueSource
    raw: str
    value: Any


@dataclass(slots=True)
class _RawValue:
    path: str
    line: int
    section: str
    key: str
    parts: list[tuple[int, str]] = field(default_factory=list)

    @property
    def raw(self) -> str:
        return "\n".join(text for _, text in self.parts).rstrip()

    def physical_line(self, lineno: int | None) -> int:
        """Map a 1-based line of the joined value to the file line."""
        if lineno is None or not 1 <= lineno <= len(self.parts):
            return self.line
        return self.parts[lineno - 1][0]


@dataclass(slots=True)
class _Parsed:
    """Raw, merged content of all files read so far."""

    sections: dict[str, dict[str, _RawValue]] = field(default_factory=dict)
    defaults: dict[str, _RawValue] = field(default_factory=dict)
    headers: dict[str, tuple[str, int]] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)
    warnings: list[ConfigWarning] = field(default_factory=list)


def _parse_file(parsed: _Parsed, path: str, text: str) -> None:
    """Add one file's sections and keys to ``parsed`` (RawConfigParser rules)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    seen_sections: dict[str, int] = {}
    seen_keys: dict[tuple[str, str], int] = {}
    current: dict[str, _RawValue] | None = None
    section_name: str | None = None
    value: _RawValue | None = None
    indent_level = 0
    reported_headerless = False

    for lineno, line in enumerate(_LINE_BREAK_RE.split(text), start=1):
        stripped = line.strip()
        if stripped.startswith(_COMMENT_PREFIXES):
            continue
        if not stripped:
            if value is not None:
                value.parts.append((lineno, ""))
            continue
        match = _NONSPACE_RE.search(line)
        indent = match.start() if match else 0
        if value is not None and indent > indent_level:
            value.parts.append((lineno, stripped))
            continue
        indent_level = indent
        value = None

        header = _SECTION_RE.match(stripped)
        if header:
            section_name = header.group("header")
            if header.end() < len(stripped):
                parsed.warnings.append(
                    ConfigWarning(
                        path,
                        lineno,
                        f"text after ']' ignored: {stripped[header.end() :].strip()!r}",
                    )
                )
            if section_name == DEFAULT_SECTION:
                current = parsed.defaults
                continue
            if section_name in seen_sections:
                parsed.problems.append(
                    ConfigProblem(
                        path,
                        lineno,
                        f"duplicate section [{section_name}] "
                        f"(already started at line {seen_sections[section_name]})",
                    )
                )
            else:
                seen_sections[section_name] = lineno
            parsed.headers.setdefault(section_name, (path, lineno))
            current = parsed.sections.setdefault(section_name, {})
            continue

        if current is None or section_name is None:
            if not reported_headerless:
                parsed.problems.append(
                    ConfigProblem(
                        path,
                        lineno,
                        "text before the first [section] header: "
                        "settings must follow a header such as [greylist.py]",
                    )
                )
                reported_headerless = True
            continue

        option = _OPTION_RE.match(stripped)
        if option is None:
            parsed.problems.append(
                ConfigProblem(
                    path,
                    lineno,
                    f"not a 'key = value' line, [section] header or comment: {stripped!r} "
                    "(a continued value must be indented more than its key)",
                    section=section_name,
                )
            )
            continue
        key = option.group("option").rstrip()
        if not key:
            parsed.problems.append(
                ConfigProblem(
                    path,
                    lineno,
                    f"missing key name before {option.group('vi')!r}",
                    section=section_name,
                )
            )
            continue
        first = seen_keys.get((section_name, key))
        if first is not None:
            parsed.problems.append(
                ConfigProblem(
                    path,
                    lineno,
                    f"duplicate key (already set at line {first})",
                    section=section_name,
                    key=key,
                )
            )
        else:
            seen_keys[(section_name, key)] = lineno
        value = _RawValue(
            path, lineno, section_name, key, [(lineno, option.group("value").strip())]
        )
        current[key] = value


def _evaluate(raw: _RawValue, problems: list[ConfigProblem]) -> ConfigValue | None:
    text = raw.raw
    source = ValueSource(raw.path, raw.line, raw.section, raw.key)
    try:
        result = evaluate(text)
    except ConfigValueError as error:
        problems.append(
            ConfigProblem(
                raw.path,
                raw.physical_line(error.lineno),
                error.reason,
                section=raw.section,
                key=raw.key,
            )
        )
        return None
    return ConfigValue(source, text, result)


class ModulesConfig:
    """The evaluated content of one or more ``pythonfilter-modules.conf`` files.

    Built by :func:`parse_modules_config` or :func:`load_modules_config`; never
    mutated afterwards. Lookups of a missing section give an empty mapping (the
    module keeps its defaults), as in the original.
    """

    __slots__ = ("_defaults", "_headers", "_sections", "paths", "warnings")

    def __init__(
        self,
        sections: Mapping[str, Mapping[str, ConfigValue]],
        defaults: Mapping[str, ConfigValue],
        *,
        paths: Sequence[str] = (),
        warnings: Sequence[ConfigWarning] = (),
        headers: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        self._sections = {name: dict(values) for name, values in sections.items()}
        self._defaults = dict(defaults)
        self._headers = dict(headers or {})
        #: The files that were read, in order.
        self.paths: tuple[str, ...] = tuple(paths)
        #: Non-fatal remarks found while reading.
        self.warnings: tuple[ConfigWarning, ...] = tuple(warnings)

    def __repr__(self) -> str:
        return f"ModulesConfig(sections={self.sections()!r}, paths={self.paths!r})"

    def sections(self) -> list[str]:
        """Section names in order of first appearance (without ``[DEFAULT]``)."""
        return list(self._sections)

    def has_section(self, name: str) -> bool:
        """True if ``[name]`` appears in any file read (exact, case-sensitive)."""
        return name in self._sections

    def entries(self, name: str) -> dict[str, ConfigValue]:
        """The :class:`ConfigValue` of every key of ``[name]``, defaults included.

        Empty if the section is absent (``[DEFAULT]`` alone does not make a
        section exist).
        """
        if name not in self._sections:
            return {}
        merged = dict(self._defaults)
        merged.update(self._sections[name])
        return merged

    def section(self, name: str) -> dict[str, Any]:
        """Evaluated values of ``[name]`` (a fresh deep copy); empty if absent."""
        return {key: copy.deepcopy(entry.value) for key, entry in self.entries(name).items()}

    def own_section(self, name: str) -> dict[str, Any]:
        """Like :meth:`section`, without the keys inherited from ``[DEFAULT]``."""
        return {
            key: copy.deepcopy(entry.value)
            for key, entry in self.entries(name).items()
            if entry.source.section == name
        }

    def raw_section(self, name: str) -> dict[str, str]:
        """Values of ``[name]`` as written (continuation lines joined with newlines)."""
        return {key: entry.raw for key, entry in self.entries(name).items()}

    def get(self, section: str, key: str, default: Any = None) -> Any:
        """One evaluated value (a deep copy), or ``default`` when absent."""
        entry = self.entries(section).get(key)
        return default if entry is None else copy.deepcopy(entry.value)

    def source(self, section: str, key: str) -> ValueSource:
        """Where ``[section] key`` was set; raises :class:`KeyError` if it is not."""
        entry = self.entries(section).get(key)
        if entry is None:
            raise KeyError(f"[{section}] {key}")
        return entry.source

    def section_location(self, name: str) -> tuple[str, int] | None:
        """File and line of the first ``[name]`` header, or ``None``."""
        return self._headers.get(name)

    def find_section(self, *names: str) -> str | None:
        """The first of ``names`` that is present, or ``None``."""
        for name in names:
            if name in self._sections:
                return name
        return None

    def section_any(self, *names: str) -> dict[str, Any]:
        """Values of the first present section among aliases ``names``.

        Example: ``config.section_any("ttldb", "TtlDb")``. The sections are
        not merged; an ignored duplicate alias was reported in
        :attr:`warnings` at load time (for :data:`SECTION_ALIASES`).
        """
        found = self.find_section(*names)
        return {} if found is None else self.section(found)

    def unknown_sections(self, known: Iterable[str]) -> list[ConfigWarning]:
        """Warnings for sections not in ``known`` (no module will read them)."""
        wanted = set(known)
        result = []
        for name in self._sections:
            if name in wanted:
                continue
            path, line = self._headers.get(name, ("<unknown>", 0))
            hint = ""
            if not name.endswith(".py") and f"{name}.py" in wanted:
                hint = f"; filter sections end in .py: [{name}.py]"
            result.append(ConfigWarning(path, line, f"section [{name}] is not used{hint}"))
        return result


def parse_raw_sections(texts: Sequence[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """Parse ``(path, text)`` pairs into raw value texts, without evaluating them.

    Sections in order of first appearance, ``[DEFAULT]`` kept as its own entry
    (first) when present, values as written with continuation lines joined by
    newlines. Raises :class:`ConfigError` on syntax problems only.
    """
    parsed = _Parsed()
    for path, text in texts:
        _parse_file(parsed, path, text)
    if parsed.problems:
        raise ConfigError(parsed.problems)
    result: dict[str, dict[str, str]] = {}
    if parsed.defaults:
        result[DEFAULT_SECTION] = {key: raw.raw for key, raw in parsed.defaults.items()}
    for name, values in parsed.sections.items():
        result[name] = {key: raw.raw for key, raw in values.items()}
    return result


def parse_modules_config(texts: Sequence[tuple[str, str]]) -> ModulesConfig:
    """Parse and evaluate ``(path, text)`` pairs in order (pure, no I/O).

    Later texts override single keys of the same section in earlier ones.
    Raises :class:`ConfigError` listing every problem (syntax of any file, or a
    value that does not evaluate) with its file and line.
    """
    parsed = _Parsed()
    for path, text in texts:
        _parse_file(parsed, path, text)
    problems = list(parsed.problems)

    defaults: dict[str, ConfigValue] = {}
    for key, raw in parsed.defaults.items():
        evaluated = _evaluate(raw, problems)
        if evaluated is not None:
            defaults[key] = evaluated
    sections: dict[str, dict[str, ConfigValue]] = {}
    for name, values in parsed.sections.items():
        section: dict[str, ConfigValue] = {}
        for key, raw in values.items():
            evaluated = _evaluate(raw, problems)
            if evaluated is not None:
                section[key] = evaluated
        sections[name] = section
    if problems:
        problems.sort(key=lambda p: (_path_rank(texts, p.path), p.line or 0))
        raise ConfigError(problems)

    warnings = list(parsed.warnings)
    for group in SECTION_ALIASES:
        present = [name for name in group if name in sections]
        for ignored in present[1:]:
            path, line = parsed.headers[ignored]
            warnings.append(
                ConfigWarning(
                    path,
                    line,
                    f"section [{ignored}] is ignored because [{present[0]}] is present "
                    "(they are aliases; keep only one)",
                )
            )
    return ModulesConfig(
        sections,
        defaults,
        paths=[path for path, _ in texts],
        warnings=warnings,
        headers=parsed.headers,
    )


def _path_rank(texts: Sequence[tuple[str, str]], path: str) -> int:
    for index, (candidate, _) in enumerate(texts):
        if candidate == path:
            return index
    return len(texts)


def read_config_text(path: str) -> str | None:
    """Read a configuration file as UTF-8 text; ``None`` if it does not exist.

    Raises :class:`ConfigError` if it exists but cannot be read or decoded.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise ConfigError.single(path, None, f"cannot read: {error.strerror or error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ConfigError.single(path, line, "not valid UTF-8 text") from None


def load_modules_config(
    paths: Sequence[str] = DEFAULT_MODULES_CONFIG_PATHS,
) -> ModulesConfig:
    """Read the existing files among ``paths`` in order and parse them.

    Missing files are skipped (none at all gives an empty configuration).
    Raises :class:`ConfigError` on unreadable files or any problem inside.
    """
    texts: list[tuple[str, str]] = []
    for path in paths:
        text = read_config_text(path)
        if text is not None:
            texts.append((path, text))
    return parse_modules_config(texts)
