"""``clamav``: replies, settings, oversize policy, failures and quarantine.

Scans go to the session's real clamd (``tests/clamd_fixture.py``: EICAR and a custom
signature, StreamMaxLength 1 MiB); faults come from fake servers and a private clamd
that is killed.  The quarantine subsystem is replaced by a fake.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import sys
import time
import types
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clamd_fixture import (
    CUSTOM_NAME,
    CUSTOM_SIGNATURE_TEXT,
    EICAR_NAME,
    STREAM_MAX_LENGTH,
    ClamdServer,
    FakeClamd,
    clamd_factory,
    clamd_server,
    eicar,
)
from courier_pyfilter.api import Context, Message
from courier_pyfilter.clamd import ClamdConfigError
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.filters.clamav import (
    QUARANTINE_MODULE,
    ClamAV,
    QuarantineUnavailableError,
    leaf_parts,
)
from courier_pyfilter.legacyconf import evaluate, parse_modules_config
from courier_pyfilter.loader import build_chain
from courier_pyfilter.testing import make_context, make_message

__all__ = ["clamd_factory", "clamd_server"]  # fixtures used by the tests below

LOGGER = "courier_pyfilter.filters.clamav"
VIRUS_REPLY = f"554 Virus found - Signature is {EICAR_NAME}"


def attachment(content: bytes, filename: str) -> str:
    encoded = base64.encodebytes(content).decode()
    return (
        f"--XYZ\nContent-Type: application/octet-stream\n"
        f'Content-Disposition: attachment; filename="{filename}"\n'
        f"Content-Transfer-Encoding: base64\n\n{encoded}"
    )


def mime(*attachments: tuple[bytes, str]) -> bytes:
    """A multipart message: a text part, then the attachments (base64)."""
    parts = "".join(attachment(content, name) for content, name in attachments)
    return (
        "From: a@example.com\nTo: b@example.net\nSubject: files\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="XYZ"\n\n'
        f"--XYZ\nContent-Type: text/plain\n\nSee attachment.\n{parts}--XYZ--\n"
    ).encode()


def read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


class Started:
    """Starts ClamAV filters and closes their services after the test."""

    def __init__(self) -> None:
        self.contexts: list[Context] = []

    async def __call__(
        self, settings: dict[str, Any], *, dry_run: bool = False, share: Context | None = None
    ) -> tuple[ClamAV, Context]:
        ctx = make_context("clamav", settings, defaults=ClamAV.defaults, dry_run=dry_run)
        if share is not None:
            ctx.services = share.services
        self.contexts.append(ctx)
        flt = ClamAV(ctx)
        await flt.start()
        return flt, ctx

    async def close(self) -> None:
        for ctx in self.contexts:
            await ctx.services.close()


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    """``await started(settings)`` -> a started filter and its context."""
    helper = Started()
    yield helper
    await helper.close()


@pytest.fixture(params=["unix", "tcp-builtin", "tcp-aioclamd"])
def clamd_settings(request: pytest.FixtureRequest, clamd_server: ClamdServer) -> dict[str, Any]:
    """Settings reaching the session clamd over each transport."""
    if request.param == "unix":
        return {"local_socket": clamd_server.socket_path}
    return {"clamd_address": clamd_server.tcp_address, "clamd_tcp_client": request.param[4:]}


@pytest.fixture
def unix_clamd(clamd_server: ClamdServer) -> dict[str, Any]:
    """Settings reaching the session clamd on its UNIX socket."""
    return {"local_socket": clamd_server.socket_path}


class FakeQuarantine:
    """Records what would be quarantined; optionally fails."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[Message, str]] = []
        self.error = error

    async def quarantine(self, message: Message, explanation: str) -> None:
        self.calls.append((message, explanation))
        if self.error is not None:
            raise self.error


@pytest.fixture
def no_quarantine_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the quarantine module does not exist (whether or not it does by now)."""
    monkeypatch.setitem(sys.modules, QUARANTINE_MODULE, None)


# -- verdicts ------------------------------------------------------------------------------


async def test_clean_message_continues(
    tmp_path: Path, started: Started, clamd_settings: dict[str, Any]
) -> None:
    flt, ctx = await started(clamd_settings)
    assert await flt.check(make_message(tmp_path), ctx) is CONTINUE
    clean_mime = make_message(tmp_path, raw=mime((b"just a document", "doc.txt")))
    assert await flt.check(clean_mime, ctx) is CONTINUE


async def test_virus_in_attachment_is_rejected_with_the_original_reply(
    tmp_path: Path, started: Started, clamd_settings: dict[str, Any]
) -> None:
    flt, ctx = await started(clamd_settings)
    msg = make_message(tmp_path, raw=mime((b"PK\3\4" + eicar(), "invoice.zip")))
    decision = await flt.check(msg, ctx)
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == VIRUS_REPLY


async def test_custom_signature_in_body(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any]
) -> None:
    flt, ctx = await started(unix_clamd)
    msg = make_message(tmp_path, body=b"text " + CUSTOM_SIGNATURE_TEXT + b" text\n")
    decision = await flt.check(msg, ctx)
    assert decision.reply() == f"554 Virus found - Signature is {CUSTOM_NAME}"


async def test_virus_is_logged(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    flt, ctx = await started(unix_clamd)
    msg = make_message(tmp_path, body=eicar() + b"\n")
    with caplog.at_level(logging.INFO, LOGGER):
        await flt.check(msg, ctx)
    assert f"virus {EICAR_NAME} found in message of {msg.msgid}: rejected" in caplog.text


async def test_clamav_is_not_a_whitelist() -> None:
    assert ClamAV.whitelist is False


# -- per-part scanning ---------------------------------------------------------------------


def test_leaf_parts_decodes_every_leaf() -> None:
    from email import message_from_bytes, policy

    raw = mime((b"first", "a.bin"), (b"", "empty.bin"), (b"third", "c.bin"))
    msg = message_from_bytes(raw, policy=policy.default)
    parts = leaf_parts(msg)  # type: ignore[arg-type]
    assert [content for _, content in parts] == [b"See attachment.", b"first", b"third"]
    assert [label for label, _ in parts] == [
        "part 1 (text/plain)",
        "part 2 (a.bin)",
        "part 4 (c.bin)",
    ]


async def test_scan_parts_names_the_part(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    flt, ctx = await started({**unix_clamd, "scan_parts": True})
    msg = make_message(tmp_path, raw=mime((b"fine", "a.txt"), (eicar(), "virus.com")))
    with caplog.at_level(logging.INFO, LOGGER):
        decision = await flt.check(msg, ctx)
    assert decision.reply() == VIRUS_REPLY
    assert f"virus {EICAR_NAME} found in part 3 (virus.com)" in caplog.text
    assert await flt.check(make_message(tmp_path, raw=mime((b"fine", "a.txt"))), ctx) is CONTINUE


def big_message(tmp_path: Path, *, virus: bool) -> Message:
    """1.4 MB: above clamd's 1 MiB limit as a whole, each part well below it."""
    second = b"B" * 500_000 + (eicar() if virus else b"")
    return make_message(tmp_path, raw=mime((b"A" * 500_000, "a.bin"), (second, "b.bin")))


async def test_scan_parts_scans_a_message_too_large_as_a_whole(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any]
) -> None:
    limit = {"max_msg_size": STREAM_MAX_LENGTH, "oversize": "reject"}
    whole, ctx = await started({**unix_clamd, **limit})
    parts, pctx = await started({**unix_clamd, **limit, "scan_parts": True})
    infected = big_message(tmp_path, virus=True)
    assert infected.size > STREAM_MAX_LENGTH
    assert (await whole.check(infected, ctx)).code == "552"  # not scanned: too large
    assert (await parts.check(infected, pctx)).reply() == VIRUS_REPLY
    assert await parts.check(big_message(tmp_path, virus=False), pctx) is CONTINUE


async def test_scan_parts_oversize_part(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any]
) -> None:
    flt, ctx = await started(
        {**unix_clamd, "scan_parts": True, "max_msg_size": 100_000, "oversize": "tempfail"}
    )
    msg = make_message(tmp_path, raw=mime((b"x" * 200_000, "big.bin")))
    assert (await flt.check(msg, ctx)).code == "451"
    # a virus in a small part still wins over an oversize part
    msg = make_message(tmp_path, raw=mime((b"x" * 200_000, "big.bin"), (eicar(), "v.com")))
    assert (await flt.check(msg, ctx)).reply() == VIRUS_REPLY


# -- oversize ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "reply"),
    [
        ("continue", ""),
        ("accept", ""),
        ("tempfail", "451 4.3.4 Message too large for the virus scanner"),
        ("reject", "552 5.3.4 Message too large for the virus scanner"),
    ],
)
async def test_oversize_policy(
    tmp_path: Path,
    started: Started,
    unix_clamd: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    policy: str,
    reply: str,
) -> None:
    flt, ctx = await started({**unix_clamd, "max_msg_size": 1000, "oversize": policy})
    msg = make_message(tmp_path, body=eicar() + b"\n" + b"x" * 2000 + b"\n")
    with caplog.at_level(logging.INFO, LOGGER):
        decision = await flt.check(msg, ctx)
    assert decision.reply() == reply  # "" is CONTINUE: passed unscanned, virus or not
    assert f"({msg.size} bytes)" in caplog.text
    # at the limit it is still scanned
    small = make_message(tmp_path, body=eicar() + b"\n", received=False, headers=[])
    assert small.size <= 1000
    assert (await flt.check(small, ctx)).reply() == VIRUS_REPLY


async def test_oversize_default_passes_unscanned_with_a_log_line(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    flt, ctx = await started({**unix_clamd, "max_msg_size": 1000})
    msg = make_message(tmp_path, body=b"x" * 5000 + b"\n")
    with caplog.at_level(logging.INFO, LOGGER):
        assert await flt.check(msg, ctx) is CONTINUE
    assert "is larger than max_msg_size (1000): passed unscanned" in caplog.text


async def test_clamd_limit_below_max_size(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """max_msg_size above clamd's StreamMaxLength: clamd's refusal is handled by the same
    policy (not as a scanner error), with a warning to fix max_msg_size."""
    flt, ctx = await started(
        {**unix_clamd, "max_msg_size": 4 * STREAM_MAX_LENGTH, "oversize": "reject"}
    )
    msg = make_message(tmp_path, body=b"y" * (STREAM_MAX_LENGTH + 10) + b"\n")
    with caplog.at_level(logging.INFO, LOGGER):
        decision = await flt.check(msg, ctx)
    assert decision.code == "552"
    assert "lower max_msg_size to clamd's StreamMaxLength" in caplog.text


# -- scanner failures ----------------------------------------------------------------------


async def test_clamd_down_tempfails(
    tmp_path: Path, started: Started, caplog: pytest.LogCaptureFixture
) -> None:
    socket_path = str(tmp_path / "no-clamd.sock")
    with caplog.at_level(logging.WARNING, LOGGER):
        flt, ctx = await started({"local_socket": socket_path})  # start does not fail
    assert "clamd does not answer yet" in caplog.text
    assert "failure action 451 4.3.0 Virus scanner error: clamd is unavailable" in caplog.text
    decision = await flt.check(make_message(tmp_path), ctx)
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.reply() == "451 4.3.0 Virus scanner error: clamd is unavailable"
    assert socket_path in caplog.text  # the details go to the log, not to the client
    assert socket_path not in decision.reply()


@pytest.mark.parametrize(
    ("on_error", "reply"),
    [
        ("tempfail", "451 4.3.0 Virus scanner error: clamd is unavailable"),
        ("430 Virus scanner error", "430 Virus scanner error"),
        ("continue", ""),
        ("reject", "554 5.3.0 Mail filtering failed"),
    ],
)
async def test_on_error_is_the_failure_action(
    tmp_path: Path, started: Started, on_error: str, reply: str
) -> None:
    flt, ctx = await started({"local_socket": str(tmp_path / "none"), "on_error": on_error})
    assert (await flt.check(make_message(tmp_path), ctx)).reply() == reply


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("hang_accept", "clamd timed out"),
        ("hang_reply", "clamd timed out"),
        ("slow", "clamd timed out"),
        ("reset", "clamd is unavailable"),
        ("close_silently", "clamd is unavailable"),
        ("garbage_binary", "invalid reply from clamd"),
        ("garbage_text", "invalid reply from clamd"),
        ("flood", "invalid reply from clamd"),
        ("error", "clamd could not scan the message"),
    ],
)
@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
async def test_faulty_clamd_gives_the_failure_action_in_time(
    tmp_path: Path, started: Started, behaviour: str, reason: str, tcp: bool
) -> None:
    async with FakeClamd(tmp_path, behaviour, tcp=tcp) as fake:
        flt, ctx = await started(
            {**fake.settings, "clamd_timeout": 0.2, "clamd_connect_timeout": 0.1}
        )
        t0 = time.monotonic()
        async with asyncio.timeout(5):  # a regression fails here instead of hanging
            decision = await flt.check(make_message(tmp_path, body=b"z" * 300_000), ctx)
        elapsed = time.monotonic() - t0
    assert decision.reply() == f"451 4.3.0 Virus scanner error: {reason}"
    assert elapsed < 1.0


async def test_configured_failure_action_on_a_hang(tmp_path: Path, started: Started) -> None:
    async with FakeClamd(tmp_path, "hang_reply") as fake:
        flt, ctx = await started(
            {
                **fake.settings,
                "clamd_timeout": 0.2,
                "clamd_connect_timeout": 0.1,
                "on_error": "430 Virus scanner error",
            }
        )
        decision = await flt.check(make_message(tmp_path), ctx)
    assert decision == Decision.tempfail("Virus scanner error", code="430")


@pytest.fixture
def private_clamd(clamd_factory: Callable[..., ClamdServer]) -> Iterator[ClamdServer]:
    """A clamd of this test's own, which it may kill."""
    server = clamd_factory().start()
    yield server
    server.stop()


@pytest.mark.parametrize("tcp", [False, True], ids=["unix", "tcp"])
async def test_clamd_killed(
    tmp_path: Path, started: Started, private_clamd: ClamdServer, tcp: bool
) -> None:
    settings = (
        {"clamd_address": private_clamd.tcp_address}
        if tcp
        else {"local_socket": private_clamd.socket_path}
    )
    flt, ctx = await started(settings)
    infected = make_message(tmp_path, body=eicar() + b"\n")
    assert (await flt.check(infected, ctx)).reply() == VIRUS_REPLY
    private_clamd.kill()
    t0 = time.monotonic()
    decision = await flt.check(infected, ctx)
    assert decision.reply() == "451 4.3.0 Virus scanner error: clamd is unavailable"
    assert time.monotonic() - t0 < 1.0


async def test_unreadable_data_file_is_a_filter_failure(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any]
) -> None:
    """Not a scanner error: the exception reaches the chain (its failure action)."""
    flt, ctx = await started(unix_clamd)
    msg = make_message(tmp_path)
    os.unlink(msg.data_path)
    with pytest.raises(Exception):  # noqa: B017 - MessageError or OSError
        await flt.check(msg, ctx)


# -- through the chain ---------------------------------------------------------------------


async def run_chain(
    tmp_path: Path, section: dict[str, Any], message: Message
) -> tuple[Decision, float]:
    services = make_context().services
    chain = build_chain([("clamav", frozenset())], lambda name: section, services)
    await chain.start()
    try:
        t0 = time.monotonic()
        result = await chain.run(message)
        return result.decision, time.monotonic() - t0
    finally:
        await chain.stop()
        await services.close()


async def test_chain_finds_the_builtin_filter(tmp_path: Path, unix_clamd: dict[str, Any]) -> None:
    infected = make_message(tmp_path, body=eicar() + b"\n")
    assert (await run_chain(tmp_path, unix_clamd, infected))[0].reply() == VIRUS_REPLY
    clean = make_message(tmp_path)
    assert (await run_chain(tmp_path, unix_clamd, clean))[0].reply() == "200 Ok"


async def test_scan_gives_up_before_the_filter_timeout(tmp_path: Path) -> None:
    """clamd_timeout (30 s) is cut to 90 % of the filter's timeout, so a hung clamd gives
    the scanner-error reply, not the chain's generic timeout."""
    async with FakeClamd(tmp_path, "hang_reply") as fake:
        section = {**fake.settings, "timeout": 2.0, "clamd_connect_timeout": 0.1}
        decision, elapsed = await run_chain(tmp_path, section, make_message(tmp_path))
    assert decision.reply() == "451 4.3.0 Virus scanner error: clamd timed out"
    assert 1.75 < elapsed < 2.0


async def test_timeout_share(tmp_path: Path, started: Started) -> None:
    sock = {"local_socket": str(tmp_path / "none"), "clamd_connect_timeout": 0.05}
    assert (await started(sock))[0].timeout == 30.0
    assert (await started({**sock, "timeout": 10}))[0].timeout == 9.0
    assert (await started({**sock, "timeout": 100, "clamd_timeout": 5}))[0].timeout == 5.0


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        ({"oversize": "drop"}, "oversize must be"),
        ({"scan_parts": "yes"}, "scan_parts must be"),
        ({"action": 5}, "action must be"),
        ({"clamd_address": "nowhere:99999"}, "clamd_address must be"),
        ({"clamd_max_concurrency": 0}, "clamd_max_concurrency must be"),
        ({"max_msg_size": "25M"}, "max_msg_size must be"),
        ({"clamd_tcp_client": "pyclamd"}, "clamd_tcp_client must be"),
    ],
)
async def test_bad_settings_fail_at_start(
    tmp_path: Path, started: Started, settings: dict[str, Any], text: str
) -> None:
    with pytest.raises(ClamdConfigError, match=text) as info:
        await started({"local_socket": str(tmp_path / "none"), **settings})
    assert str(info.value).startswith("[clamav.py]")


async def test_filters_share_one_client_per_clamd(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any]
) -> None:
    first, ctx = await started(unix_clamd)
    second, _ = await started(unix_clamd, share=ctx)
    other, _ = await started(
        {"local_socket": str(tmp_path / "x"), "clamd_connect_timeout": 0.05}, share=ctx
    )
    assert first.client is second.client
    assert other.client is not first.client


# -- message edits -------------------------------------------------------------------------


@pytest.mark.parametrize("dry_run", [False, True])
async def test_scans_the_message_as_edited(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any], dry_run: bool
) -> None:
    flt, ctx = await started(unix_clamd, dry_run=dry_run)
    msg = make_message(tmp_path, dry_run=dry_run)
    assert await flt.check(msg, ctx) is CONTINUE
    await msg.edit.replace_body(b"now with " + eicar() + b"\n")
    assert (await flt.check(msg, ctx)).reply() == VIRUS_REPLY
    assert (eicar() in read_file(msg.data_path)) is not dry_run


# -- quarantine ----------------------------------------------------------------------------


@pytest.mark.usefixtures("no_quarantine_module")
async def test_quarantine_without_the_module_fails_at_start(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any]
) -> None:
    with pytest.raises(QuarantineUnavailableError, match="needs the quarantine module") as info:
        await started({**unix_clamd, "action": "quarantine"})
    assert "action = 'reject'" in str(info.value)


async def quarantining(
    started: Started, settings: dict[str, Any], service: object, *, dry_run: bool = False
) -> tuple[ClamAV, Context]:
    """A filter with ``action = 'quarantine'`` and ``service`` installed."""
    ctx = make_context("clamav", {}, defaults=ClamAV.defaults)
    ctx.services.put("quarantine", service)
    started.contexts.append(ctx)
    return await started({**settings, "action": "quarantine"}, share=ctx, dry_run=dry_run)


@pytest.mark.usefixtures("no_quarantine_module")
async def test_quarantine(tmp_path: Path, started: Started, unix_clamd: dict[str, Any]) -> None:
    service = FakeQuarantine()
    flt, ctx = await quarantining(started, unix_clamd, service)
    assert await flt.check(make_message(tmp_path), ctx) is CONTINUE
    assert service.calls == []
    msg = make_message(tmp_path, raw=mime((eicar(), "v.com")))
    decision = await flt.check(msg, ctx)
    assert decision.verdict is Verdict.ACCEPT_SKIP_COURIER
    assert decision.reply() == "050 OK"
    assert service.calls == [(msg, f"The virus {EICAR_NAME} was found in the message")]


@pytest.mark.usefixtures("no_quarantine_module")
async def test_failed_quarantine_never_lets_the_virus_through(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any]
) -> None:
    service = FakeQuarantine(error=OSError("disk full"))
    flt, ctx = await quarantining(started, {**unix_clamd, "on_error": "continue"}, service)
    decision = await flt.check(make_message(tmp_path, body=eicar() + b"\n"), ctx)
    assert decision.reply() == "451 4.3.0 Virus quarantine failed, try again later"
    assert len(service.calls) == 1


@pytest.mark.usefixtures("no_quarantine_module")
async def test_quarantine_in_dry_run_stores_nothing(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any]
) -> None:
    service = FakeQuarantine()
    flt, ctx = await quarantining(started, unix_clamd, service, dry_run=True)
    decision = await flt.check(make_message(tmp_path, body=eicar() + b"\n", dry_run=True), ctx)
    assert decision.reply() == "050 OK"
    assert service.calls == []


@pytest.mark.usefixtures("no_quarantine_module")
async def test_any_other_action_quarantines_like_the_original(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    service = FakeQuarantine()
    ctx0 = make_context("clamav", {}, defaults=ClamAV.defaults)
    ctx0.services.put("quarantine", service)
    started.contexts.append(ctx0)
    with caplog.at_level(logging.WARNING, LOGGER):
        flt, ctx = await started({**unix_clamd, "action": "hold"}, share=ctx0)
    assert "infected messages are quarantined" in caplog.text
    assert (await flt.check(make_message(tmp_path, body=eicar() + b"\n"), ctx)).code == "050"
    assert len(service.calls) == 1


@pytest.mark.usefixtures("no_quarantine_module")
async def test_quarantine_service_must_have_a_quarantine_method(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any]
) -> None:
    with pytest.raises(QuarantineUnavailableError, match="no quarantine"):
        await quarantining(started, unix_clamd, object())


async def test_quarantine_module_provides_the_service(
    tmp_path: Path, started: Started, unix_clamd: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    service = FakeQuarantine()
    seen: list[Context] = []

    async def quarantine_service(ctx: Context) -> FakeQuarantine:
        seen.append(ctx)
        return service

    module = types.ModuleType(QUARANTINE_MODULE)
    module.quarantine_service = quarantine_service  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, QUARANTINE_MODULE, module)
    flt, ctx = await started({**unix_clamd, "action": "quarantine"})
    assert seen == [ctx]
    assert (await flt.check(make_message(tmp_path, body=eicar() + b"\n"), ctx)).code == "050"
    assert len(service.calls) == 1


# -- the documentation matches the code ----------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "filters" / "clamav.md"


def doc_text() -> str:
    return DOC.read_text(encoding="utf-8")


def test_doc_settings_table_matches_the_defaults() -> None:
    text = doc_text()
    section = text[text.index("## Settings\n") :]
    section = section[: section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[cells[0].strip("`")] = evaluate(cells[1].strip("`"))
    assert rows == dict(ClamAV.defaults)


async def test_doc_example_configuration_loads(
    tmp_path: Path, started: Started, clamd_server: ClamdServer
) -> None:
    block = re.search(r"```ini title=pythonfilter-modules.conf\n(.*?)```", doc_text(), re.S)
    assert block is not None
    config = parse_modules_config([("pythonfilter-modules.conf", block.group(1))])
    section = dict(config.section("clamav.py"))
    assert section["max_msg_size"] == 25 * 1024 * 1024
    assert section["local_socket"] == "/var/run/clamav/clamd.ctl"
    section["local_socket"] = clamd_server.socket_path  # the documented one is Debian's
    flt, ctx = await started(section)
    decision = await flt.check(make_message(tmp_path, body=eicar() + b"\n"), ctx)
    assert decision.reply() == VIRUS_REPLY


def test_doc_replies_are_the_code_s() -> None:
    text = doc_text()
    for reply in (
        "451 4.3.0 Virus scanner error: clamd is unavailable",
        "451 4.3.0 Virus scanner error: clamd timed out",
        "451 4.3.0 Virus scanner error: invalid reply from clamd",
        "451 4.3.0 Virus scanner error: clamd could not scan the message",
        "451 4.3.4 Message too large for the virus scanner",
        "552 5.3.4 Message too large for the virus scanner",
        "451 4.3.0 Virus quarantine failed, try again later",
    ):
        assert reply in text, reply
