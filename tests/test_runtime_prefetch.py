"""The chain's DNS prefetch, as the server builds it from the configuration files.

``whitelist_dnswl`` then ``dnsbl`` against the test DNS server answering every query
late: with the prefetch step both filters' lookups start when the message arrives, so
the chain waits about one round trip; without it, two.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from courier_pyfilter.decision import Verdict
from courier_pyfilter.runtime import build_generation
from courier_pyfilter.settings import Settings
from courier_pyfilter.testing import make_message

pytest_plugins = ["dns_fixture"]  # dns_server, dns

LISTED_IP = "127.0.0.2"  # in bl.test (the test zones follow the DNSBL convention)
DELAY = 0.2


async def _generation(tmp_path: Path, nameserver: str) -> Any:
    chain = tmp_path / "pythonfilter.conf"
    chain.write_text("whitelist_dnswl\ndnsbl\n")
    modules = tmp_path / "pythonfilter-modules.conf"
    modules.write_text(
        "[dns]\n"
        f"nameservers = [{nameserver!r}]\n"
        "timeout = 2\n"
        "[whitelist_dnswl.py]\n"
        "dnswl_zone = ['wl2.test']\n"
        "[dnsbl.py]\n"
        "lists = ['bl.test', 'bl2.test']\n"
    )
    settings = replace(
        Settings(),
        chain_config=str(chain),
        modules_configs=(str(modules),),
        state_dir=str(tmp_path / "state"),
    )
    return await build_generation(settings, 1)


async def test_dns_filters_are_prefetched_together(dns: Any, tmp_path: Path) -> None:
    generation = await _generation(tmp_path, dns.nameserver)
    try:
        chain = generation.chain
        assert chain.prefetch is not None
        dns.delay_all = DELAY
        message = make_message(tmp_path, client_ip=LISTED_IP)
        t0 = time.monotonic()
        result = await chain.run(message)
        elapsed = time.monotonic() - t0
        assert result.decision.verdict is Verdict.REJECT
        assert result.deciding == "dnsbl"
        assert elapsed < 1.6 * DELAY, elapsed

        # the same chain without the prefetch step: one round trip per filter
        chain.prefetch = None
        message = make_message(tmp_path, client_ip="192.0.2.1")
        t0 = time.monotonic()
        result = await chain.run(message)
        assert time.monotonic() - t0 >= 2 * DELAY
        assert result.decision.verdict is Verdict.ACCEPT  # nothing listed: 200 Ok
    finally:
        await generation.retire()


async def test_chain_without_dns_filters_has_no_prefetch(tmp_path: Path) -> None:
    chain = tmp_path / "pythonfilter.conf"
    chain.write_text("whitelist_auth\n")
    modules = tmp_path / "pythonfilter-modules.conf"
    modules.write_text("")
    settings = replace(Settings(), chain_config=str(chain), modules_configs=(str(modules),))
    generation = await build_generation(settings, 1)
    try:
        assert generation.chain.prefetch is None
    finally:
        await generation.retire()
