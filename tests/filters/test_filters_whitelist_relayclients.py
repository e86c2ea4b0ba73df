"""``whitelist_relayclients`` accepts clients whose smtpaccess entry sets RELAYCLIENT.

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

from courier_pyfilter.decision import CONTINUE
from courier_pyfilter.filters.whitelist_relayclients import WhitelistRelayclients
from courier_pyfilter.legacyconf import parse_modules_config
from courier_pyfilter.loader import build_chain
from courier_pyfilter.mta import CourierConfig, CourierPaths
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings
from courier_pyfilter.testing import MessageFactory, make_context

__all__ = ["etc", "messages"]  # fixtures, used by name

SMTPACCESS = (
    "# Courier smtpaccess/default\n"
    "127.0.0.1\tallow,RELAYCLIENT\n"
    ":0000:0000:0000:0000:0000:0000:0000:0001\tallow,RELAYCLIENT\n"
    "192.168\tallow,RELAYCLIENT\n"
    "192.168.2.3\tallow,BLOCK\n"
    "192.168.7\tallow,RELAYCLIENT=@relay.example\n"
    "172.16.1.1\tallow\n"
    "198.51.100\tdeny\n"
    "10.0.0.0/8\tallow,RELAYCLIENT\n"
    ":2001:0db8:0001\tallow,RELAYCLIENT\n"
)

RELAYED = ["127.0.0.1", "::1", "192.168.9.9", "192.168.7.1", "10.20.30.40", "2001:db8:1::25"]
NOT_RELAYED = ["192.168.2.3", "172.16.1.1", "198.51.100.7", "203.0.113.5", "2001:db8:2::1"]


def write_sources(etc: Path, text: str = SMTPACCESS) -> None:
    smtpaccess_testlib.write_sources(etc, text)


async def decide(etc: Path, messages: MessageFactory, **kwargs: object) -> str | None:
    return await smtpaccess_testlib.decide(
        WhitelistRelayclients, "whitelist_relayclients", etc, messages, **kwargs
    )


def test_is_a_whitelist() -> None:
    assert WhitelistRelayclients.whitelist is True


@pytest.mark.parametrize("ip", RELAYED)
async def test_relay_clients_from_text_sources_are_accepted(
    etc: Path, messages: MessageFactory, ip: str
) -> None:
    write_sources(etc)
    assert await decide(etc, messages, client_ip=ip) == "200 Ok"


@pytest.mark.parametrize("ip", NOT_RELAYED)
async def test_other_clients_continue(etc: Path, messages: MessageFactory, ip: str) -> None:
    write_sources(etc)
    assert await decide(etc, messages, client_ip=ip) is None


async def test_compiled_dat_is_used(etc: Path, messages: MessageFactory) -> None:
    write_sources(etc)
    makesmtpaccess(etc)
    # the text sources change after compiling: the .dat wins, as in Courier
    write_sources(etc, "127.0.0.1\tallow\n")
    for ip in RELAYED:
        assert await decide(etc, messages, client_ip=ip) == "200 Ok", ip
    for ip in NOT_RELAYED:
        assert await decide(etc, messages, client_ip=ip) is None, ip


async def test_rebuilt_table_is_seen_without_restart(etc: Path, messages: MessageFactory) -> None:
    write_sources(etc)
    makesmtpaccess(etc)
    ctx = make_context("whitelist_relayclients", sysconfdir=str(etc))
    flt = WhitelistRelayclients(ctx)
    assert await flt.check(messages(client_ip="203.0.113.5"), ctx) is CONTINUE
    write_sources(etc, SMTPACCESS + "203.0.113\tallow,RELAYCLIENT\n")
    makesmtpaccess(etc)
    assert (await flt.check(messages(client_ip="203.0.113.5"), ctx)).reply() == "200 Ok"


async def test_ipv4_mapped_and_plain_ipv4_clients(etc: Path, messages: MessageFactory) -> None:
    write_sources(etc)
    msg = messages(client_ip="127.0.0.1", ipv4_mapped=True)
    assert msg.control.client_ip_raw == "::ffff:127.0.0.1"
    ctx = make_context("whitelist_relayclients", sysconfdir=str(etc))
    assert (await WhitelistRelayclients(ctx).check(msg, ctx)).reply() == "200 Ok"
    assert await decide(etc, messages, client_ip="127.0.0.1", ipv4_mapped=False) == "200 Ok"


async def test_authenticated_relaying_alone_does_not_count(
    etc: Path, messages: MessageFactory
) -> None:
    # The control file's RELAYCLIENT option (set for SMTP AUTH) is not smtpaccess.
    write_sources(etc)
    msg = messages(client_ip="203.0.113.5", auth_user="alice", relay_client=True)
    assert msg.control.relay_client
    ctx = make_context("whitelist_relayclients", sysconfdir=str(etc))
    assert await WhitelistRelayclients(ctx).check(msg, ctx) is CONTINUE


async def test_no_table_and_no_client_address_continue(etc: Path, messages: MessageFactory) -> None:
    assert await decide(etc, messages, client_ip="127.0.0.1") is None  # no smtpaccess at all
    write_sources(etc)
    assert await decide(etc, messages, client_ip=None, source="local") is None


async def test_invalid_client_address_continues_and_logs(
    etc: Path, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    write_sources(etc)
    with caplog.at_level(logging.WARNING):
        result = await decide(
            etc, messages, client_ip=None, extra_records=["OTCPREMOTEIP=not-an-ip"]
        )
    assert result is None
    assert "whitelist_relayclients: ignoring invalid TCPREMOTEIP 'not-an-ip'" in caplog.messages


async def test_unreadable_table_continues_in_the_chain(
    etc: Path, messages: MessageFactory, tmp_path: Path
) -> None:
    # source='dat' without a .dat file raises in the lookup: a whitelist failure continues.
    modules = parse_modules_config([("pythonfilter-modules.conf", "")])
    services = Services(Settings(state_dir=str(tmp_path / "state")), modules.section)
    services.courier = CourierConfig(CourierPaths(sysconfdir=str(etc)), source="dat")
    chain = build_chain([("whitelist_relayclients", frozenset())], modules.section, services)
    await chain.start()
    try:
        result = await chain.run(messages(client_ip="127.0.0.1"))
    finally:
        await chain.stop()
        await services.close()
    assert result.decision.reply() == "200 Ok"
    assert result.deciding is None
    assert result.outcomes[0].error is not None
    assert "SourceUnavailableError" in result.outcomes[0].error
