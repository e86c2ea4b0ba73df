"""``whitelist_block`` accepts clients whose smtpaccess entry sets ``BLOCK`` to ``''``.

Courier's access table is written to a temporary sysconfdir as its text sources
(``smtpaccess/``) and, when Courier is installed, also compiled to ``smtpaccess.dat``
with Courier's own ``makedat -cidr`` (what ``makesmtpaccess`` runs).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import smtpaccess_testlib
from smtpaccess_testlib import etc, makesmtpaccess, messages

from courier_pyfilter.filters.whitelist_block import WhitelistBlock
from courier_pyfilter.legacyconf import parse_modules_config
from courier_pyfilter.loader import build_chain
from courier_pyfilter.mta import CourierConfig, CourierPaths
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings
from courier_pyfilter.testing import MessageFactory

__all__ = ["etc", "messages"]  # fixtures, used by name

SMTPACCESS = (
    "# Courier smtpaccess/default\n"
    "127.0.0.1\tallow,RELAYCLIENT\n"
    "192.168\tallow,BLOCK\n"
    "192.168.2.3\tallow,RELAYCLIENT\n"
    '192.168.5\tallow,BLOCK="550 Shoo, go away!"\n'
    "192.168.6\tallow,RELAYCLIENT,BLOCK\n"
    '192.168.8\tallow,BLOCK=""\n'
    "198.51.100\tdeny\n"
    "10.0.0.0/8\tallow,BLOCK\n"
    ":0000:0000:0000:0000:0000:0000:0000:0001\tallow,BLOCK\n"
    ":2001:0db8:0001\tallow,BLOCK\n"
)

WHITEBLOCKED = [
    "192.168.9.9",
    "192.168.6.1",
    "192.168.8.1",
    "10.20.30.40",
    "::1",
    "2001:db8:1::25",
]
OTHERS = [
    "127.0.0.1",  # no BLOCK
    "192.168.2.3",  # the most specific entry has no BLOCK (entries are not merged)
    "192.168.5.1",  # BLOCK with a text: couriertcpd refuses it, no whitelisting here
    "198.51.100.7",
    "203.0.113.5",  # no entry
    "2001:db8:2::1",
]


def write_sources(etc: Path, text: str = SMTPACCESS) -> None:
    smtpaccess_testlib.write_sources(etc, text)


async def decide(etc: Path, messages: MessageFactory, **kwargs: object) -> str | None:
    return await smtpaccess_testlib.decide(
        WhitelistBlock, "whitelist_block", etc, messages, **kwargs
    )


def test_is_a_whitelist() -> None:
    assert WhitelistBlock.whitelist is True


@pytest.mark.parametrize("ip", WHITEBLOCKED)
async def test_empty_block_is_accepted(etc: Path, messages: MessageFactory, ip: str) -> None:
    write_sources(etc)
    assert await decide(etc, messages, client_ip=ip) == "200 Ok"


@pytest.mark.parametrize("ip", OTHERS)
async def test_other_clients_continue(etc: Path, messages: MessageFactory, ip: str) -> None:
    write_sources(etc)
    assert await decide(etc, messages, client_ip=ip) is None


async def test_compiled_dat_is_used(etc: Path, messages: MessageFactory) -> None:
    write_sources(etc)
    makesmtpaccess(etc)
    write_sources(etc, "192.168\tallow\n")  # stale text sources: the .dat wins
    for ip in WHITEBLOCKED:
        assert await decide(etc, messages, client_ip=ip) == "200 Ok", ip
    for ip in OTHERS:
        assert await decide(etc, messages, client_ip=ip) is None, ip


async def test_ipv4_mapped_and_plain_ipv4_clients(etc: Path, messages: MessageFactory) -> None:
    write_sources(etc)
    assert await decide(etc, messages, client_ip="10.1.1.1", ipv4_mapped=True) == "200 Ok"
    assert await decide(etc, messages, client_ip="10.1.1.1", ipv4_mapped=False) == "200 Ok"


async def test_no_table_and_no_client_address_continue(etc: Path, messages: MessageFactory) -> None:
    assert await decide(etc, messages, client_ip="10.1.1.1") is None  # no smtpaccess at all
    write_sources(etc)
    assert await decide(etc, messages, client_ip=None, source="local") is None


async def test_invalid_client_address_continues_instead_of_451(
    etc: Path, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    write_sources(etc)
    with caplog.at_level(logging.WARNING):
        result = await decide(
            etc, messages, client_ip=None, extra_records=["OTCPREMOTEIP=not-an-ip"]
        )
    assert result is None
    assert "whitelist_block: ignoring invalid TCPREMOTEIP 'not-an-ip'" in caplog.messages


async def test_unreadable_table_continues_in_the_chain(
    etc: Path, messages: MessageFactory, tmp_path: Path
) -> None:
    modules = parse_modules_config([("pythonfilter-modules.conf", "")])
    services = Services(Settings(state_dir=str(tmp_path / "state")), modules.section)
    services.courier = CourierConfig(CourierPaths(sysconfdir=str(etc)), source="dat")
    chain = build_chain([("whitelist_block", frozenset())], modules.section, services)
    await chain.start()
    try:
        result = await chain.run(messages(client_ip="10.1.1.1"))
    finally:
        await chain.stop()
        await services.close()
    assert result.decision.reply() == "200 Ok"
    assert result.deciding is None
    assert result.outcomes[0].error is not None
    assert "SourceUnavailableError" in result.outcomes[0].error
