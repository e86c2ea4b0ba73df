"""``courier_pyfilter.spf``: parsing (literal strings, RFC 7208's examples, random input)
and the evaluator through an in-memory resolver.

The RFC 7208 test suite runs in ``test_spf_rfc7208.py``; the filters in
``tests/filters/test_filters_spfcheck.py`` and ``..._whitelist_spf.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from courier_pyfilter.dns import MX, DnsFailure, DnsTimeout
from courier_pyfilter.spf import (
    DEFAULT_EXPLANATION,
    Macro,
    MacroValues,
    SpfError,
    SpfResult,
    check_host,
    expand,
    expand_domain,
    is_spf_record,
    parse_domain_spec,
    parse_macro_string,
    parse_record,
    policy_domain,
    spf_identity,
)

# -- parsing records ------------------------------------------------------------------------


def test_parse_record_terms() -> None:
    record = parse_record(
        "v=spf1 a mx/24 -ptr:example.org ~ip4:192.0.2.0/24 ?ip6:2001:DB8::/32 "
        "include:_spf.example.com exists:%{i}.bl.example a:mail.example.com/24//64 -all "
        "exp=why.example.com x-custom=%{d}"
    )
    kinds = [(m.qualifier, m.kind) for m in record.mechanisms]
    assert kinds == [
        ("+", "a"),
        ("+", "mx"),
        ("-", "ptr"),
        ("~", "ip4"),
        ("?", "ip6"),
        ("+", "include"),
        ("+", "exists"),
        ("+", "a"),
        ("-", "all"),
    ]
    a, mx, ptr, ip4, ip6, include, exists, a2, _ = record.mechanisms
    assert (a.target, a.cidr4, a.cidr6) == (None, 32, 128)
    assert (mx.target, mx.cidr4, mx.cidr6) == (None, 24, 128)
    assert ptr.target is not None and ptr.target.text == "example.org"
    assert ip4.network == ipaddress.ip_network("192.0.2.0/24")
    assert ip6.network == ipaddress.ip_network("2001:db8::/32")
    assert include.target is not None and include.target.text == "_spf.example.com"
    assert exists.target is not None and exists.target.letters == {"i"}
    assert a2.target is not None
    assert (a2.target.text, a2.cidr4, a2.cidr6) == ("mail.example.com", 24, 64)
    assert record.explanation is not None and record.explanation.text == "why.example.com"
    assert record.redirect is None
    assert [(m.name, m.value.text) for m in record.modifiers] == [("x-custom", "%{d}")]
    assert record.mechanisms[-1].result is SpfResult.FAIL


def test_parse_record_accepts_case_spacing_and_odd_but_valid_terms() -> None:
    record = parse_record("V=SPF1  +MX  IP4:192.0.2.1 ~ALL ")
    assert [(m.qualifier, m.kind) for m in record.mechanisms] == [
        ("+", "mx"),
        ("+", "ip4"),
        ("~", "all"),
    ]
    assert parse_record("v=spf1").mechanisms == ()
    # a ':' and '/' may appear inside a domain-spec; IDN top labels have dashes
    assert parse_record("v=spf1 a:foo:bar/baz.example.com").mechanisms[0].cidr4 == 32
    assert parse_record("v=spf1 a:foo.example.xn--zckzah -all").mechanisms[0].kind == "a"
    # a domain-spec may end in a macro; unknown modifiers only need a valid macro string
    assert parse_record("v=spf1 a:%{h} default=+ redirect=%{d2}").redirect is not None
    # ip4-mapped ip6 networks are valid ip6 terms
    assert parse_record("v=spf1 ip6:::FFFF:1.2.3.4").mechanisms[0].network is not None


@pytest.mark.parametrize(
    "text",
    [
        "v=spf1 moo",  # unknown mechanism
        "v=spf1 ip4:192.0.2.1 -all moo",  # an error after a match is still an error
        "v=spf1 -all.",
        "v=spf1 -all:foo",
        "v=spf1 -all/8",
        "v=spf1 a/33",
        "v=spf1 a//129",
        "v=spf1 a/24/64",
        "v=spf1 a/024",
        "v=spf1 a:",
        "v=spf1 a:foo-bar",  # no dot: not a domain
        "v=spf1 a:museum.",
        "v=spf1 a:111.222.33.44",  # numeric top label
        "v=spf1 a:example.-com",
        "v=spf1 a:example.com:8080",
        "v=spf1 a:ex\x00ample.com",
        "v=spf1 mx:",
        "v=spf1 ptr/0",
        "v=spf1 ptr:",
        "v=spf1 include",
        "v=spf1 include:",
        "v=spf1 include:example.com/24",
        "v=spf1 exists",
        "v=spf1 exists:example.com/24",
        "v=spf1 ip4",
        "v=spf1 ip4:192.0.2",
        "v=spf1 ip4:192.0.2.1/032",
        "v=spf1 ip4:192.0.2.1/33",
        "v=spf1 ip4:192.0.2.1//32",
        "v=spf1 ip4:192.0.2.1:25",
        "v=spf1 ip4:192.0.02.1",
        "v=spf1 ip6",
        "v=spf1 ip6::CAFE::BABE",
        "v=spf1 ip6:2001:db8::/129",
        "v=spf1 ip6:2001:db8:://33",
        "v=spf1 ip6:fe80::1%eth0",
        "v=spf1 redirect=a.example.com redirect=b.example.com",
        "v=spf1 exp=a.example.com exp=b.example.com",
        "v=spf1 redirect=",
        "v=spf1 exp=",
        "v=spf1 exp=-all",
        "v=spf1 redirect:example.com",  # not a modifier: an unknown mechanism
        "v=spf1 1up=foo",
        "v=spf1 =all",
        "v=spf1 foo=%abc",
        "v=spf1 a:%{r}.example.com",  # c, r, t only in explanations
        "v=spf1 a:%{x}.example.com",
        "v=spf1 a:%{d0}.example.com",
        "v=spf1 exists:%(ir).example.com",
        "v=spf1 exists:foo%.example.com",
        "v=spf1 a\tmx",  # terms are separated by spaces only
        "v=spf1 a:ctrl.example.com\rptr",
        "v=spf1 a:\u00e9xample.com",  # 7-bit ASCII only
        "v=spf10 -all",
        "spf1 -all",
    ],
)
def test_parse_record_errors(text: str) -> None:
    with pytest.raises(SpfError):
        parse_record(text)


def test_is_spf_record() -> None:
    assert is_spf_record("v=spf1")
    assert is_spf_record("v=spf1 -all")
    assert is_spf_record("V=Spf1 ~all")
    assert not is_spf_record("v=spf1-all")
    assert not is_spf_record("v=spf10")
    assert not is_spf_record(" v=spf1 -all")
    assert not is_spf_record("google-site-verification=abc")
    assert not is_spf_record("")


# -- macros -------------------------------------------------------------------------------

RFC_VALUES = MacroValues(
    sender="strong-bad@email.example.com",
    local="strong-bad",
    sender_domain="email.example.com",
    domain="email.example.com",
    ip=ipaddress.ip_address("192.0.2.3"),
    helo="mx.example.org",
    validated="mx.example.org",
    receiver="mx.example.net",
    timestamp=1700000000,
)


@pytest.mark.parametrize(
    ("macro", "expansion"),
    [  # RFC 7208 section 7.4
        ("%{s}", "strong-bad@email.example.com"),
        ("%{o}", "email.example.com"),
        ("%{d}", "email.example.com"),
        ("%{d4}", "email.example.com"),
        ("%{d3}", "email.example.com"),
        ("%{d2}", "example.com"),
        ("%{d1}", "com"),
        ("%{dr}", "com.example.email"),
        ("%{d2r}", "example.email"),
        ("%{l}", "strong-bad"),
        ("%{l-}", "strong.bad"),
        ("%{lr}", "strong-bad"),
        ("%{lr-}", "bad.strong"),
        ("%{l1r-}", "strong"),
        ("%{ir}.%{v}._spf.%{d2}", "3.2.0.192.in-addr._spf.example.com"),
        ("%{lr-}.lp._spf.%{d2}", "bad.strong.lp._spf.example.com"),
        ("%{lr-}.lp.%{ir}.%{v}._spf.%{d2}", "bad.strong.lp.3.2.0.192.in-addr._spf.example.com"),
        ("%{ir}.%{v}.%{l1r-}.lp._spf.%{d2}", "3.2.0.192.in-addr.strong.lp._spf.example.com"),
        ("%{d2}.trusted-domains.example.net", "example.com.trusted-domains.example.net"),
    ],
)
def test_rfc7208_macro_examples(macro: str, expansion: str) -> None:
    assert expand(parse_macro_string(macro), RFC_VALUES) == expansion


def test_ipv6_macros() -> None:
    values = MacroValues("a@b.example", "a", "b.example", "b.example", _ip("2001:db8::cb01"), "h")
    expanded = expand(parse_macro_string("%{ir}.%{v}._spf.%{d2}"), values)
    # RFC 7208's example, in upper case as the RFC 7208 test suite expects
    assert expanded.lower() == (
        "1.0.b.c.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6._spf.b.example"
    )
    assert expanded.startswith("1.0.B.C.0")
    exp = parse_macro_string("%{c} via %{v}", explanation=True)
    assert expand(exp, values) == "2001:db8::cb01 via ip6"


def test_macro_escapes_url_encoding_and_explanation_letters() -> None:
    assert expand(parse_macro_string("a%%b%_c%-d"), RFC_VALUES) == "a%b c%20d"
    values = MacroValues(
        "~jack&jill=up@x.example", "~jack&jill=up", "x.example", "x.example", _ip("192.0.2.3"), "h"
    )
    assert expand(parse_macro_string("%{L}"), values) == "~jack%26jill%3Dup"
    assert expand(parse_macro_string("%{S}"), values) == "~jack%26jill%3Dup%40x.example"
    exp = parse_macro_string("%{c} %{r} %{t} %{p}", explanation=True)
    assert expand(exp, RFC_VALUES) == "192.0.2.3 mx.example.net 1700000000 mx.example.org"
    with pytest.raises(SpfError):
        parse_macro_string("%{c}")  # not in a domain-spec
    with pytest.raises(SpfError):
        parse_macro_string("with space")  # only explanations may have spaces
    # more parts asked for than exist: all of them; huge digit counts are fine
    assert expand(parse_macro_string("%{d99999999999999}"), RFC_VALUES) == "email.example.com"
    # several delimiters
    values = MacroValues(
        "foo-bar+zip@x.example", "foo-bar+zip", "x.example", "x.example", _ip("192.0.2.3"), "h"
    )
    assert expand(parse_macro_string("%{l2r+-}"), values) == "bar.foo"
    assert str(Macro("l", 2, True, "+-")) == "%{l2r+-}"


def test_domain_spec_rules() -> None:
    for good in ("example.com", "example.com.", "%{d}", "%{ir}.%{v}.x.example", "x.%%"):
        parse_domain_spec(good)
    for bad in ("", "com", "%{d}.", "%{d}com", "example.123", "example.c_m", "a b.example"):
        with pytest.raises(SpfError):
            parse_domain_spec(bad)


def test_expand_domain_drops_trailing_dot_and_truncates() -> None:
    assert expand_domain(parse_domain_spec("%{d}.x.example."), RFC_VALUES) == (
        "email.example.com.x.example"
    )
    long_values = MacroValues(
        "a@" + "l" * 60 + ".example", "a", "x", "l" * 60 + ".example", _ip("192.0.2.3"), "h"
    )
    name = expand_domain(parse_domain_spec("a.%{d}.%{d}.%{d}.%{d}.x.example"), long_values)
    assert len(name) <= 253
    assert name.endswith(".x.example") and not name.startswith("a.")


def test_identity_and_domain() -> None:
    assert spf_identity("", "mx.example.org") == (
        "helo",
        "postmaster@mx.example.org",
        "postmaster",
        "mx.example.org",
    )
    assert spf_identity("@example.net", "h")[1:] == (
        "postmaster@example.net",
        "postmaster",
        "example.net",
    )
    assert spf_identity("a@b@example.net", "h")[2:] == ("a@b", "example.net")
    assert spf_identity("example.net", "h")[1] == "postmaster@example.net"
    assert policy_domain("example.com.") == "example.com"
    assert policy_domain("b\u00fccher.example") == "xn--bcher-kva.example"
    for bad in ("", "localhost", "[192.0.2.1]", "a..example", "a" * 64 + ".example", "a b.x"):
        assert policy_domain(bad) is None, bad
    assert policy_domain("a" * 63 + ".example") is not None


# -- random input never raises anything but SpfError ----------------------------------------

_PIECES = [
    "a",
    "mx",
    "ptr",
    "all",
    "-all",
    "~all",
    "?all",
    "+a",
    "a/24",
    "mx//64",
    "a/24//64",
    "include:",
    "exists:",
    "redirect=",
    "exp=",
    "ip4:",
    "ip6:",
    "ptr:",
    "a:",
    "mx:",
    "192.0.2.1",
    "/32",
    "//128",
    "2001:db8::",
    "::ffff:1.2.3.4",
    "%{i}",
    "%{ir}",
    "%{d2}",
    "%{l-}",
    "%{p}",
    "%{h}",
    "%{O}",
    "%%",
    "%_",
    "%-",
    "%",
    "{",
    "}",
    ".",
    ":",
    "/",
    "=",
    "x.test",
    "example.com",
    "%{x}",
    "%{d0}",
    "%(",
    "\x00",
    "\u00e9",
    " ",
]
_spfish = st.lists(st.sampled_from(_PIECES) | st.text(max_size=6), max_size=12).map("".join)


@given(st.text(max_size=200) | _spfish.map(lambda t: "v=spf1 " + t))
@settings(max_examples=400, deadline=None)
def test_parse_record_raises_only_spf_error(text: str) -> None:
    try:
        record = parse_record(text)
    except SpfError:
        return
    assert is_spf_record(text)
    assert all(
        m.kind in ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
        for m in record.mechanisms
    )


@given(_spfish | st.text(max_size=60), st.booleans())
@settings(max_examples=400, deadline=None)
def test_macros_raise_only_spf_error(text: str, explanation: bool) -> None:
    try:
        parsed = parse_macro_string(text, explanation=explanation)
    except SpfError:
        parsed = None
    if parsed is not None:
        assert isinstance(expand(parsed, RFC_VALUES), str)
    try:
        spec = parse_domain_spec(text)
    except SpfError:
        return
    assert len(expand_domain(spec, RFC_VALUES)) <= 253 or "." not in expand(spec, RFC_VALUES)


@given(_spfish, _spfish, st.sampled_from(["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"]))
@settings(max_examples=150, deadline=None)
def test_check_host_always_gives_a_result(first: str, second: str, ip: str) -> None:
    records: dict[tuple[str, str], Any] = {
        ("example.test", "TXT"): ("v=spf1 " + first,),
        ("x.test", "TXT"): ("v=spf1 " + second, "v=spf1 -all" if len(second) % 7 == 0 else "x"),
        ("*", "A"): ("192.0.2.1",),
        ("*", "AAAA"): ("2001:db8::1",),
        ("*", "MX"): (MX(10, "mx.x.test"),),
        ("*", "PTR"): ("mx.x.test",),
    }
    verdict = asyncio.run(check_host(ip, "a@example.test", "h.test", FakeResolver(records)))
    assert isinstance(verdict.result, SpfResult)
    assert verdict.lookups <= 11 and verdict.void_lookups <= 3


# -- the evaluator ----------------------------------------------------------------------------


def _ip(text: str) -> Any:
    return ipaddress.ip_address(text)


class FakeResolver:
    """Answers from a dict ``(name, qtype) -> tuple | exception``; ``("*", qtype)`` is the
    answer for any other name; everything else is NXDOMAIN."""

    def __init__(self, records: Mapping[tuple[str, str], Any], delay: float = 0.0) -> None:
        self.records = {(n.lower(), t): v for (n, t), v in records.items()}
        self.delay = delay
        self.queries: list[tuple[str, str]] = []

    async def query(self, name: str, qtype: str) -> tuple[Any, ...]:
        key = (name.lower().rstrip("."), qtype)
        self.queries.append(key)
        if self.delay:
            await asyncio.sleep(self.delay)
        answer = self.records.get(key, self.records.get(("*", qtype), ()))
        if isinstance(answer, BaseException):
            raise answer
        return tuple(answer)


async def spf(
    records: Mapping[tuple[str, str], Any],
    ip: str = "192.0.2.1",
    sender: str = "user@example.com",
    helo: str = "mail.example.com",
    **kwargs: Any,
) -> Any:
    return await check_host(ip, sender, helo, FakeResolver(records), **kwargs)


def txt(name: str, *records: str) -> dict[tuple[str, str], Any]:
    return {(name, "TXT"): records}


async def test_results_of_qualifiers_and_default() -> None:
    for record, result in [
        ("v=spf1 ip4:192.0.2.0/24 -all", SpfResult.PASS),
        ("v=spf1 -ip4:192.0.2.1", SpfResult.FAIL),
        ("v=spf1 ~all", SpfResult.SOFTFAIL),
        ("v=spf1 ?all", SpfResult.NEUTRAL),
        ("v=spf1 ip4:198.51.100.1", SpfResult.NEUTRAL),
        ("v=spf1 ip4:198.51.100.1 moo", SpfResult.PERMERROR),
    ]:
        verdict = await spf(txt("example.com", record))
        assert verdict.result is result, record
    assert (await spf({})).result is SpfResult.NONE
    assert (await spf(txt("example.com", "some other text"))).result is SpfResult.NONE


async def test_verdict_details_and_explanations() -> None:
    records = {
        **txt("example.com", "v=spf1 ip4:198.51.100.0/24 -all exp=why.example.com"),
        **txt("why.example.com", "%{i} may not send for %{d}; see https://x/%{L}"),
    }
    verdict = await spf(records, sender="Bad+Guy@example.com")
    assert verdict.result is SpfResult.FAIL
    assert verdict.explanation == (
        "192.0.2.1 may not send for example.com; see https://x/Bad%2BGuy"
    )
    assert (verdict.mechanism, verdict.domain, verdict.identity) == (
        "-all",
        "example.com",
        "mailfrom",
    )
    assert verdict.reason == "example.com: -all matched"
    # without exp=, or when it cannot be used: the default explanation
    verdict = await spf(txt("example.com", "v=spf1 -all"))
    assert verdict.explanation == "example.com does not designate 192.0.2.1 as a permitted sender"
    assert DEFAULT_EXPLANATION.startswith("%{o}")
    broken = {**records, ("why.example.com", "TXT"): DnsTimeout("t", "why.example.com", "TXT")}
    assert (await spf(broken, default_explanation="nope")).explanation == "nope"
    # no explanation for other results
    assert (await spf(txt("example.com", "v=spf1 ~all exp=why.example.com"))).explanation == ""


async def test_include_and_redirect() -> None:
    records = {
        **txt("example.com", "v=spf1 include:_spf.example.net -all exp=outer.example.com"),
        **txt("_spf.example.net", "v=spf1 ip4:192.0.2.0/28 -all exp=inner.example.net"),
        **txt("outer.example.com", "outer"),
        **txt("inner.example.net", "inner"),
        **txt("redir.example.com", "v=spf1 ip4:203.0.113.1 redirect=_spf.example.net"),
    }
    assert (await spf(records)).result is SpfResult.PASS
    verdict = await spf(records, ip="198.51.100.7")
    # the include's fail does not match; the outer -all fails with the outer explanation
    assert (verdict.result, verdict.explanation) == (SpfResult.FAIL, "outer")
    verdict = await spf(records, ip="198.51.100.7", sender="u@redir.example.com")
    # a redirect's result is the result, with the target's explanation
    assert (verdict.result, verdict.explanation) == (SpfResult.FAIL, "inner")
    assert verdict.domain == "redir.example.com"
    no_record = {**txt("example.com", "v=spf1 include:nothing.example.net ~all")}
    assert (await spf(no_record)).result is SpfResult.PERMERROR
    redirect_none = {**txt("example.com", "v=spf1 redirect=nothing.example.net")}
    assert (await spf(redirect_none)).result is SpfResult.PERMERROR


async def test_several_records_are_a_permerror() -> None:
    verdict = await spf(txt("example.com", "v=spf1 +all", "v=spf1 -all"))
    assert verdict.result is SpfResult.PERMERROR
    assert "2 SPF records" in verdict.reason


@pytest.mark.parametrize("error", [DnsTimeout("timeout"), DnsFailure("SERVFAIL")])
async def test_dns_errors_give_temperror(error: Exception) -> None:
    assert (await spf({("example.com", "TXT"): error})).result is SpfResult.TEMPERROR
    records = {
        **txt("example.com", "v=spf1 a:broken.example.net -all"),
        ("broken.example.net", "A"): error,
    }
    verdict = await spf(records)
    assert verdict.result is SpfResult.TEMPERROR
    assert "broken.example.net" in verdict.reason
    records = {
        **txt("example.com", "v=spf1 mx -all"),
        ("example.com", "MX"): (MX(10, "mx1.example.com"), MX(20, "mx2.example.com")),
        ("mx1.example.com", "A"): ("192.0.2.1",),
        ("mx2.example.com", "A"): error,
    }
    assert (await spf(records)).result is SpfResult.PASS  # matched before the broken host
    records[("mx1.example.com", "A")] = ("198.51.100.1",)
    assert (await spf(records)).result is SpfResult.TEMPERROR
    # the ptr mechanism skips what it cannot look up
    records = {**txt("example.com", "v=spf1 ptr ?all"), ("1.2.0.192.in-addr.arpa", "PTR"): error}
    assert (await spf(records)).result is SpfResult.NEUTRAL


async def test_dns_lookup_limit() -> None:
    chain = {**txt("example.com", "v=spf1 include:i1.example.com -all")}
    for i in range(1, 12):
        chain.update(txt(f"i{i}.example.com", f"v=spf1 include:i{i + 1}.example.com"))
    verdict = await spf(chain)
    assert verdict.result is SpfResult.PERMERROR
    assert "more than 10 DNS lookups" in verdict.reason
    assert verdict.lookups == 11
    found = {("example.com", "A"): ("198.51.100.1",)}  # not void
    at_limit = {**txt("example.com", "v=spf1 " + "a " * 10 + "ip4:192.0.2.1"), **found}
    assert (await spf(at_limit)).result is SpfResult.PASS
    over = {**txt("example.com", "v=spf1 " + "a " * 11 + "ip4:192.0.2.1"), **found}
    assert (await spf(over)).result is SpfResult.PERMERROR
    assert (await spf(over, max_lookups=11)).result is SpfResult.PASS


async def test_void_lookup_limit() -> None:
    two = txt("example.com", "v=spf1 a:n1.example.com exists:n2.example.com ?all")
    assert (await spf(two)).result is SpfResult.NEUTRAL
    three = txt("example.com", "v=spf1 a:n1.example.com mx:n2.example.com a:n3.example.com ?all")
    verdict = await spf(three)
    assert (verdict.result, verdict.void_lookups) == (SpfResult.PERMERROR, 3)
    assert (await spf(three, max_void_lookups=3)).result is SpfResult.NEUTRAL


async def test_mx_and_ptr_name_limits() -> None:
    mxs = tuple(MX(i, f"mx{i}.example.com") for i in range(11))
    records = {
        **txt("example.com", "v=spf1 mx -all"),
        ("example.com", "MX"): mxs,
        ("*", "A"): ("198.51.100.1",),
    }
    assert (await spf(records)).result is SpfResult.PERMERROR
    records[("example.com", "MX")] = mxs[:10]
    assert (await spf(records)).result is SpfResult.FAIL
    # PTR: only the first 10 names are validated
    names = tuple(f"h{i}.example.com" for i in range(11))
    records = {
        **txt("example.com", "v=spf1 ptr -all"),
        ("1.2.0.192.in-addr.arpa", "PTR"): names,
        ("h10.example.com", "A"): ("192.0.2.1",),
    }
    assert (await spf(records)).result is SpfResult.FAIL
    records[("h9.example.com", "A")] = ("192.0.2.1",)
    assert (await spf(records)).result is SpfResult.PASS


async def test_ptr_and_p_macro_use_validated_names() -> None:
    records = {
        **txt("example.com", "v=spf1 ptr:example.com -all exp=e.example.com"),
        **txt("e.example.com", "%{p}"),
        ("1.2.0.192.in-addr.arpa", "PTR"): ("mail.example.com.", "fake.example.com"),
        ("mail.example.com", "A"): ("192.0.2.1",),
        ("fake.example.com", "A"): ("198.51.100.1",),
    }
    assert (await spf(records)).result is SpfResult.PASS
    records[("mail.example.com", "A")] = ("198.51.100.2",)
    verdict = await spf(records)
    assert (verdict.result, verdict.explanation) == (SpfResult.FAIL, "unknown")


async def test_ip_versions_and_mapped_addresses() -> None:
    records = {
        **txt("example.com", "v=spf1 a/24//64 -all"),
        ("example.com", "A"): ("192.0.2.200",),
        ("example.com", "AAAA"): ("2001:db8:1:2::1",),
    }
    assert (await spf(records, ip="192.0.2.9")).result is SpfResult.PASS
    assert (await spf(records, ip="::ffff:192.0.2.9")).result is SpfResult.PASS
    assert (await spf(records, ip="2001:db8:1:2:ffff::9")).result is SpfResult.PASS
    assert (await spf(records, ip="2001:db8:1:3::9")).result is SpfResult.FAIL
    mapped = await spf(
        txt("example.com", "v=spf1 ip6:::ffff:0:0/96 ip4:192.0.2.0/24 -all"), ip="::ffff:192.0.2.9"
    )
    assert mapped.mechanism == "ip4:192.0.2.0/24"  # treated as IPv4, not as the ip6 network
    with pytest.raises(SpfError):
        await spf({}, ip="not-an-address")


async def test_null_sender_checks_the_helo_identity() -> None:
    records = {
        **txt("mail.example.com", "v=spf1 -all exp=x.example.com"),
        **txt("x.example.com", "%{s}"),
    }
    verdict = await spf(records, sender="")
    assert (verdict.result, verdict.identity) == (SpfResult.FAIL, "helo")
    assert verdict.sender == verdict.explanation == "postmaster@mail.example.com"
    assert (await spf(records, sender="", helo="[192.0.2.1]")).result is SpfResult.NONE
    assert (await spf(records, sender="", helo="localhost")).result is SpfResult.NONE
    assert (await spf(records, sender="", helo="")).result is SpfResult.NONE


async def test_internationalized_domains_are_looked_up_as_a_labels() -> None:
    records = txt("xn--bcher-kva.example", "v=spf1 exists:%{l}.x.example -all")
    records[("xn--mller-kva.x.example", "A")] = ("127.0.0.2",)
    resolver = FakeResolver(records)
    verdict = await check_host("192.0.2.1", "m\u00fcller@b\u00fccher.example", "h", resolver)
    assert verdict.result is SpfResult.PASS
    assert resolver.queries == [("xn--bcher-kva.example", "TXT"), ("xn--mller-kva.x.example", "A")]
    # a record itself must be ASCII
    records = txt("xn--bcher-kva.example", "v=spf1 a:m\u00fcller.example -all")
    verdict = await check_host("192.0.2.1", "a@b\u00fccher.example", "h", FakeResolver(records))
    assert verdict.result is SpfResult.PERMERROR


async def test_deadline_gives_temperror() -> None:
    resolver = FakeResolver(txt("example.com", "v=spf1 a a a -all"), delay=0.05)
    started = time.monotonic()
    verdict = await check_host("192.0.2.1", "u@example.com", "h", resolver, timeout=0.12)
    assert verdict.result is SpfResult.TEMPERROR
    assert "within 0.12 s" in verdict.reason
    assert time.monotonic() - started < 0.5


async def test_macros_in_terms_and_receiver() -> None:
    records = {
        **txt("example.com", "v=spf1 exists:%{ir}.%{l1r+}._spf.%{d} -all exp=e.example.com"),
        ("1.2.0.192.bob._spf.example.com", "A"): ("127.0.0.2",),
        **txt("e.example.com", "%{r} says no to %{s} at %{t}"),
    }
    assert (await spf(records, sender="bob+tag@example.com")).result is SpfResult.PASS
    verdict = await spf(
        records, sender="eve@example.com", receiver="mx.example.net", clock=lambda: 42.0
    )
    assert verdict.explanation == "mx.example.net says no to eve@example.com at 42"
