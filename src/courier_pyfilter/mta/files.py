"""Pure parsers and matchers for Courier's small configuration files.

Each function takes file *text* (or already parsed data) and never touches the file
system; :class:`~courier_pyfilter.mta.CourierConfig` does the reading and caching.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "domain_suffixes",
    "expand_aliases",
    "first_line",
    "match_hosted",
    "match_locals",
    "parse_alias_text",
    "parse_domain_list",
    "parse_locals",
    "parse_words",
]


def first_line(text: str) -> str | None:
    """Return the first line of *text*, stripped, or ``None`` if it is empty."""
    line = text.split("\n", 1)[0].strip()
    return line or None


def parse_words(text: str) -> frozenset[str]:
    """Return the whitespace-separated words of *text* (``#`` lines are comments).

    Used for ``enablefiltering``, a list of submit module names such as ``esmtp``.
    """
    words: set[str] = set()
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        words.update(line.split())
    return frozenset(words)


def parse_domain_list(text: str) -> frozenset[str]:
    """Return the domains of a one-domain-per-line file, lower-cased.

    Blank lines and ``#`` comments are ignored; only the first word of a line counts
    (``makedat``-style ``domain<TAB>value`` lines are accepted).
    """
    domains: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        if words and not words[0].startswith("#"):
            domains.add(words[0].lower())
    return frozenset(domains)


def parse_locals(text: str) -> tuple[str, ...]:
    """Return the rules of a ``locals`` file, in order, stripped and lower-cased.

    Empty, whitespace-only and ``#`` lines are skipped (the original crashed on
    whitespace-only lines).
    """
    rules = []
    for line in text.splitlines():
        rule = line.strip()
        if rule and not line.startswith("#") and not rule.startswith("#"):
            rules.append(rule.lower())
    return tuple(rules)


def match_locals(rules: Sequence[str], domain: str) -> bool:
    """Decide whether *domain* is local according to ``locals`` *rules*; first match wins.

    ``!dom`` equal to the domain makes it non-local; ``.suffix`` makes any domain ending
    in ``.suffix`` local; any other rule makes an exactly equal domain local.  No match
    means not local.  Matching ignores case (a documented fix: DNS names are
    case-insensitive, the original compared case-sensitively).
    """
    name = domain.strip().lower()
    for rule in rules:
        if rule.startswith("!"):
            if rule[1:] == name:
                return False
        elif rule.startswith("."):
            if name.endswith(rule):
                return True
        elif rule == name:
            return True
    return False


def domain_suffixes(domain: str) -> list[str]:
    """Return *domain* and its dot-prefixed parents: ``a.b.c`` -> ``a.b.c, .b.c, .c``."""
    name = domain.strip().lower()
    labels = name.split(".")
    return [name] + ["." + ".".join(labels[i:]) for i in range(1, len(labels))]


def match_hosted(hosted: Iterable[str] | Mapping[str, str], domain: str) -> bool:
    """Return whether *domain* or one of its dot-prefixed parents is in *hosted*.

    Keys of *hosted* must be lower-case; the lookup ignores case.
    """
    keys = hosted if isinstance(hosted, Mapping) else frozenset(hosted)
    return any(candidate in keys for candidate in domain_suffixes(domain) if candidate)


def parse_alias_text(text: str) -> list[tuple[str, list[str]]]:
    """Parse Courier ``aliases`` source text into ``(name, targets)`` entries.

    ``name: target, target`` lines; a line starting with blanks continues the previous
    entry; blank lines and ``#`` comments are ignored.  Entries are returned in order,
    repeated names included.
    """
    logical: list[str] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0] in " \t" and logical:
            logical[-1] += " " + line.strip()
        else:
            logical.append(line.strip())
    entries = []
    for entry in logical:
        name, colon, rest = entry.partition(":")
        name = name.strip()
        if not colon or not name:
            continue
        targets = [t.strip() for t in rest.split(",") if t.strip()]
        entries.append((name, targets))
    return entries


def expand_aliases(
    entries: Sequence[tuple[str, Sequence[str]]],
    *,
    me: str,
    is_local: Callable[[str], bool],
    read_include: Callable[[str], str | None],
) -> dict[str, list[str]]:
    """Resolve parsed alias *entries* into Courier's ``aliases.dat`` shape.

    Keys and unqualified targets get ``@me``; a key or target whose domain is local gets
    its domain replaced by *me*.  Targets that are aliases themselves are expanded
    recursively (a loop keeps the address itself) and an alias without targets is
    dropped, as Courier does; ``:include:FILE`` reads more targets
    through *read_include*; program (``|cmd``) and file (``/path``) deliveries become
    Courier's ``".xalias/KEY"@me`` placeholder.  Duplicates are removed, order kept.
    This approximates Courier's ``makealiases`` for use when ``aliases.dat`` is absent.
    """

    def qualify(address: str) -> str:
        local, at, domain = address.rpartition("@")
        if not at:
            return f"{address}@{me}"
        if is_local(domain):
            return f"{local}@{me}"
        return address

    raw: dict[str, list[str]] = {}
    for name, targets in entries:
        key = qualify(name)
        bucket = raw.setdefault(key, [])
        for target in targets:
            if target.startswith(":include:"):
                included = read_include(target[len(":include:") :].strip())
                for line in (included or "").splitlines():
                    bucket.extend(t.strip() for t in line.split(",") if t.strip())
            else:
                bucket.append(target)

    raw = {key: targets for key, targets in raw.items() if targets}  # Courier drops these

    def resolve(key: str, stack: tuple[str, ...]) -> list[str]:
        result: list[str] = []
        for target in raw[key]:
            if target.startswith(("|", "/")):
                result.append(f'".xalias/{key}"@{me}')
                continue
            address = qualify(target)
            if address in raw and address not in stack and address != key:
                result.extend(resolve(address, (*stack, address)))
            else:
                result.append(address)
        return list(dict.fromkeys(result))

    return {key: resolve(key, (key,)) for key in raw}
