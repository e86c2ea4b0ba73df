"""RFC 7208 conformance: the SPF project's test suite against ``courier_pyfilter.spf``.

``tests/data/spf/rfc7208-tests.yml`` (from pyspf's source distribution, see the README
there) holds scenarios: DNS data (``zonedata``) and test cases (client address, sender,
HELO name, expected result(s) and, for some, the explanation).  Every case is run against
:func:`~courier_pyfilter.spf.check_host`:

* all of them through :class:`ZoneResolver`, an in-memory resolver with the interface
  and the answers of :class:`courier_pyfilter.dns.Resolver` (``()`` for NXDOMAIN, NODATA
  and names that cannot exist; :class:`~courier_pyfilter.dns.DnsTimeout` for the suite's
  ``TIMEOUT`` entries);
* a selection of them through the real resolver and the test DNS server
  (``tests/dnsserver.py``), with the scenario's records loaded into the server, to show
  that the real path gives the same results.

The suite's conventions, as its own drivers apply them: ``SPF`` records are served as
``TXT`` records unless the name lists ``TXT`` records of its own (``TXT: NONE`` means
"no TXT record"), a ``TIMEOUT`` entry makes queries of the types not listed before it
time out, a result given as a list accepts any of its entries, and the explanation, when
given, is compared with the default explanation set to ``DEFAULT``.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.dns import MX, DnsFailure, DnsTimeout
from courier_pyfilter.spf import SpfResult, check_host

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

pytest_plugins = ["dns_fixture"]  # dns, resolver

DATA = Path(__file__).resolve().parent / "data" / "spf" / "rfc7208-tests.yml"
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the environment
    yaml = None


Entry = str | tuple[str, Any]
"""A zone entry: ``"TIMEOUT"`` or ``(type, value)``."""
Zone = dict[str, list[Entry]]


@dataclass(frozen=True)
class Case:
    """One test case of the suite."""

    scenario: str
    name: str
    helo: str
    host: str
    mailfrom: str
    results: tuple[str, ...]
    explanation: str | None
    spec: str
    zone: Zone

    @property
    def id(self) -> str:
        return f"{self.scenario}/{self.name}"


def _scenario_id(description: str) -> str:
    return description.lower().replace(" ", "-")


def load_zone(zonedata: dict[str, list[Any]]) -> Zone:
    """The suite's ``zonedata`` as entries, with generated TXT records."""
    zone: Zone = {}
    for name, items in zonedata.items():
        entries: list[Entry] = []
        generated: list[Entry] = []
        has_txt = False
        for item in items or []:
            if isinstance(item, str):
                entries.append(item)  # TIMEOUT
                continue
            for rtype, value in item.items():
                if rtype in ("TXT", "SPF") and isinstance(value, str):
                    value = [value]
                if rtype == "TXT":
                    has_txt = True
                elif rtype == "SPF":
                    generated.append(("TXT", value))
                if value != ["NONE"]:
                    entries.append((rtype, value))
        if not has_txt:
            entries.extend(generated)
        zone[name.lower()] = entries
    return zone


def load_cases() -> list[Case]:
    """Every test case of the suite file."""
    assert yaml is not None
    cases: list[Case] = []
    with DATA.open("rb") as fh:
        for scenario in yaml.safe_load_all(fh):
            zone = load_zone(scenario["zonedata"])
            sid = _scenario_id(scenario["description"])
            for name, test in scenario["tests"].items():
                result = test["result"]
                results = tuple(result) if isinstance(result, list) else (result,)
                cases.append(
                    Case(
                        scenario=sid,
                        name=name,
                        helo=str(test["helo"]),
                        host=str(test["host"]),
                        mailfrom=str(test["mailfrom"]),
                        results=results,
                        explanation=test.get("explanation"),
                        spec=str(test.get("spec", "")),
                        zone=zone,
                    )
                )
    return cases


def _valid_name(name: str) -> bool:
    # the same rule as courier_pyfilter.dns.Resolver: such names are never sent
    if not name or len(name) > 253:
        return False
    return all(0 < len(label) <= 63 for label in name.split("."))


class ZoneResolver:
    """An in-memory resolver serving one scenario's zone, with the interface and the
    answer conventions of :class:`courier_pyfilter.dns.Resolver`."""

    def __init__(self, zone: Zone) -> None:
        self.zone = zone
        self.queries: list[tuple[str, str]] = []

    async def query(self, name: str, qtype: str) -> tuple[Any, ...]:
        key = name.rstrip(".").lower()
        self.queries.append((key, qtype))
        if not _valid_name(key):
            return ()
        return self._lookup(key, qtype, 0)

    def _lookup(self, key: str, qtype: str, depth: int) -> tuple[Any, ...]:
        entries = self.zone.get(key)
        if entries is None:
            if key.startswith("error."):
                raise DnsTimeout(f"{key}/{qtype}: timeout", key, qtype)
            return ()  # NXDOMAIN
        values: list[Any] = []
        seen = False
        for entry in entries:
            if entry == "TIMEOUT":
                if not seen:
                    raise DnsTimeout(f"{key}/{qtype}: timeout", key, qtype)
                break
            rtype, value = entry
            if rtype == qtype:
                seen = True
                values.append(self._value(qtype, value))
        if not values and qtype != "CNAME":
            cnames = [e[1] for e in entries if not isinstance(e, str) and e[0] == "CNAME"]
            if cnames:
                if depth >= 8:
                    raise DnsFailure(f"{key}/{qtype}: CNAME loop", key, qtype)
                return self._lookup(str(cnames[0]).rstrip(".").lower(), qtype, depth + 1)
        if qtype == "MX":
            values.sort()
        return tuple(values)

    @staticmethod
    def _value(qtype: str, value: Any) -> Any:
        if qtype == "TXT":
            # the DNS carries bytes; the resolver joins the strings and decodes UTF-8
            raw = b"".join(str(s).encode("utf-8") for s in value)
            return raw.decode("utf-8", "replace")
        if qtype == "MX":
            return MX(int(value[0]), str(value[1]).rstrip("."))
        if qtype in ("A", "AAAA"):
            return str(ipaddress.ip_address(str(value)))
        return str(value).rstrip(".")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
    pytest.skip(reason)


CASES = load_cases() if yaml is not None and DATA.exists() else []


async def _evaluate(case: Case, resolver: Any) -> tuple[str, str]:
    verdict = await check_host(
        case.host, case.mailfrom, case.helo, resolver, default_explanation="DEFAULT"
    )
    return str(verdict.result), verdict.explanation


def _check(case: Case, result: str, explanation: str) -> None:
    assert result in case.results, f"{case.id} ({case.spec}): {result}, expected {case.results}"
    if case.explanation is not None:
        assert explanation == case.explanation, f"{case.id}: explanation {explanation!r}"


def test_the_suite_is_complete() -> None:
    if yaml is None:
        _unavailable("the RFC 7208 suite needs PyYAML (pip install pyyaml)")
    scenarios = {c.scenario for c in CASES}
    assert len(scenarios) == 16
    assert len(CASES) == 203
    assert len({c.id for c in CASES}) == len(CASES)
    assert {r for c in CASES for r in c.results} == {r.value for r in SpfResult}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_rfc7208(case: Case) -> None:
    result, explanation = await _evaluate(case, ZoneResolver(case.zone))
    _check(case, result, explanation)


# -- the same cases through the real resolver and the test DNS server ------------------------

REAL_DNS_CASES = {
    "include-mechanism-semantics-and-syntax": None,  # all of them, include-temperror too
    "mx-mechanism-syntax": {"mx-multi-ip1", "mx-cidr6-0-ip6", "mx-empty", "mx-implicit"},
    "ptr-mechanism-syntax": {"ptr-match-target", "ptr-nomatch-invalid", "ptr-match-ip6"},
    "processing-limits": {"void-over-limit", "mech-over-limit", "include-at-limit", "mx-limit"},
    "macro-expansion-rules": {
        "macro-reverse-split-on-dash",
        "p-macro-ip4-valid",
        "exp-txt-macro-char",
        "upper-macro",
    },
}


def _real_cases() -> Iterator[Case]:
    for case in CASES:
        if case.scenario in REAL_DNS_CASES:
            names = REAL_DNS_CASES[case.scenario]
            if names is None or case.name in names:
                yield case


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def zone_file(zone: Zone) -> tuple[list[str], set[str], set[str]]:
    """Zone-file lines for the test server, the names that never answer (``TIMEOUT``),
    and the zones (SOA) the names need."""
    lines: list[str] = []
    drop: set[str] = set()
    zones: set[str] = set()
    for name, entries in zone.items():
        if any(ch.isspace() for ch in name):
            continue  # cannot be written in a zone file (no selected case needs it)
        if not name.endswith(".arpa"):
            zones.add(".".join(name.split(".")[-2:]))
        for entry in entries:
            if entry == "TIMEOUT":
                drop.add(name)
                continue
            rtype, value = entry
            if rtype == "SPF":
                continue
            if rtype == "TXT":
                data = " ".join(_quoted(str(s)) for s in value) or '""'
            elif rtype == "MX":
                data = f"{int(value[0])} {str(value[1]).rstrip('.')}."
            elif rtype in ("PTR", "CNAME"):
                data = str(value).rstrip(".") + "."
            else:
                data = str(value)
            lines.append(f"{name}. 0 IN {rtype} {data}")
    return lines, drop, zones


@pytest.mark.parametrize("case", list(_real_cases()), ids=lambda c: c.id)
async def test_rfc7208_real_dns(case: Case, dns: Any, resolver: Any) -> None:
    lines, drop, zones = zone_file(case.zone)
    for zone in sorted(zones):
        dns.add(f"{zone}. 0 IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 60 0")
    for line in lines:
        dns.add(line)
    dns.drop.update(drop)
    result, explanation = await _evaluate(case, resolver)
    _check(case, result, explanation)
    if case.name != "include-temperror":
        assert resolver.stats.timeouts == 0
    assert dns.queries, "the test server was asked"
