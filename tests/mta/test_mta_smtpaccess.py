"""smtpaccess lookup semantics (sans I/O)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from courier_pyfilter.mta.errors import InvalidAddressError
from courier_pyfilter.mta.smtpaccess import (
    access_var,
    lookup,
    normalize_key,
    smtpaccess_keys,
    split_value,
    value_block,
    value_is_relayed,
    value_is_whiteblocked,
)

V6_ONE = ":0000:0000:0000:0000:0000:0000:0000:0001"


def test_ipv4_keys_shorter_and_shorter() -> None:
    assert smtpaccess_keys("1.2.3.4") == ["1.2.3.4", "1.2.3", "1.2", "1"]
    assert smtpaccess_keys("1.2.3.4", include_wildcard=True)[-1] == "*"


def test_ipv6_keys_expanded_with_leading_colon() -> None:
    keys = smtpaccess_keys("2001:db8::1")
    assert keys[0] == ":2001:0db8:0000:0000:0000:0000:0000:0001"
    assert keys[1] == ":2001:0db8:0000:0000:0000:0000:0000"
    assert keys[-2:] == [":2001:0db8", ":2001"]
    assert len(keys) == 8
    assert smtpaccess_keys("[::1]")[0] == V6_ONE
    assert smtpaccess_keys("fe80::1%eth0")[0].startswith(":fe80:0000")


def test_ipv4_mapped_uses_ipv4_keys() -> None:
    assert smtpaccess_keys("::ffff:127.0.0.1") == ["127.0.0.1", "127.0.0", "127.0", "127"]


@pytest.mark.parametrize("bad", ["", "localhost", "1.2.3", "1.2.3.4.5", "::g", "unknown"])
def test_invalid_address_raises(bad: str) -> None:
    with pytest.raises(InvalidAddressError):
        smtpaccess_keys(bad)


def test_most_specific_entry_only() -> None:
    table = {
        "192.168": "allow,RELAYCLIENT",
        "192.168.2.3": "allow,BLOCK",
        "10": "allow,RELAYCLIENT",
        V6_ONE: "allow,RELAYCLIENT",
        ":2001:0db8": "deny",
    }
    assert lookup(table, "192.168.2.3") == "allow,BLOCK"
    assert lookup(table, "192.168.2.4") == "allow,RELAYCLIENT"
    assert not value_is_relayed(lookup(table, "192.168.2.3"))  # not merged with 192.168
    assert value_is_relayed(lookup(table, "10.9.8.7"))
    assert lookup(table, "11.0.0.1") is None
    assert lookup(table, "::1") == "allow,RELAYCLIENT"
    assert lookup(table, "2001:db8:ffff::5") == "deny"
    assert lookup(table, "2001:db9::5") is None


def test_wildcard_is_last_resort() -> None:
    table = {"*": "allow,BLOCK=go away", "1.2": "allow"}
    assert lookup(table, "9.9.9.9") is None
    assert lookup(table, "9.9.9.9", include_wildcard=True) == "allow,BLOCK=go away"
    assert lookup(table, "1.2.3.4", include_wildcard=True) == "allow"


def test_value_variables() -> None:
    value = 'allow,RELAYCLIENT,BLOCK="550 Shoo, go away!",SIZELIMIT=1000'
    assert split_value(value) == [
        "allow",
        "RELAYCLIENT",
        'BLOCK="550 Shoo, go away!"',
        "SIZELIMIT=1000",
    ]
    assert access_var("RELAYCLIENT", value) == ""
    assert access_var("SIZELIMIT", value) == "1000"
    assert access_var("SIZE", value) is None
    assert value_block(value) == "550 Shoo, go away!"
    assert not value_is_whiteblocked(value)
    assert value_is_relayed(value)


def test_block_values() -> None:
    assert value_is_whiteblocked("allow,BLOCK")
    assert value_is_whiteblocked("allow,BLOCK=")
    assert value_block("allow,BLOCK") == ""
    assert value_block("allow,BLOCKED") is None
    assert value_block(None) is None
    assert not value_is_whiteblocked(None)
    assert not value_is_relayed(None)
    assert value_is_relayed("allow,RELAYCLIENT=")
    assert not value_is_relayed("allow,RELAYCLIENTX")
    # first matching item wins
    assert access_var("X", "X=1,X=2") == "1"


def test_normalize_key() -> None:
    assert normalize_key("::1") == V6_ONE
    assert normalize_key(V6_ONE) == V6_ONE
    assert normalize_key(":2001:DB8") == ":2001:0db8"
    assert normalize_key("2001:db8::1") == ":2001:0db8:0000:0000:0000:0000:0000:0001"
    assert normalize_key("::ffff:10.1.2.3") == "10.1.2.3"
    assert normalize_key("192.168") == "192.168"
    assert normalize_key("*") == "*"


@given(st.ip_addresses(v=4))
def test_ipv4_keys_property(address: ipaddress.IPv4Address) -> None:
    keys = smtpaccess_keys(str(address))
    assert keys[0] == str(address)
    assert [k.count(".") for k in keys] == [3, 2, 1, 0]
    assert all(keys[0].startswith(k) for k in keys)


@given(st.ip_addresses(v=6))
def test_ipv6_keys_property(address: ipaddress.IPv6Address) -> None:
    keys = smtpaccess_keys(str(address))
    if address.ipv4_mapped is not None:
        assert keys[0] == str(address.ipv4_mapped)
        return
    assert keys[0] == ":" + address.exploded
    assert [k.count(":") for k in keys] == list(range(8, 0, -1))
    assert all(keys[0].startswith(k) for k in keys)
    assert ipaddress.IPv6Address(keys[0][1:]) == address


@given(st.lists(st.text(alphabet='ABCXYZ=,"ab 1', max_size=12), max_size=6))
def test_split_value_roundtrip(items: list[str]) -> None:
    joined = ",".join(items)
    assert ",".join(split_value(joined)) == joined
