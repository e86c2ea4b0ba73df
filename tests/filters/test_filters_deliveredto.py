"""``deliveredto`` refuses messages whose first Delivered-To names a local/hosted domain."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from courier_pyfilter.decision import CONTINUE, Verdict
from courier_pyfilter.filters.deliveredto import DeliveredTo, delivered_to_domain
from courier_pyfilter.legacyconf import parse_modules_config
from courier_pyfilter.loader import build_chain
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings
from courier_pyfilter.testing import MessageFactory, make_context

LOOP = "501 Mail loop - already have my Delivered-To: header."
MAKEDATPROG = Path("/usr/lib/courier/courier/makedatprog")


def makedat(text: bytes, dat: Path) -> None:
    """Compile makedat source text into a .dat with Courier's makedatprog."""
    subprocess.run(
        [str(MAKEDATPROG), "-", f"{dat}.tmp", str(dat)],
        input=text + b".\n",
        check=True,
        timeout=30,
    )


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    path = tmp_path / "etc"
    path.mkdir()
    (path / "me").write_text("mx.example.org\n")
    (path / "locals").write_text(
        "# local domains\nexample.org\n!no.lan.example.org\n.lan.example.org\n"
    )
    (path / "hosteddomains").write_text("hosted.example\n.virtual.example\n")
    return path


@pytest.fixture
def messages(tmp_path: Path) -> MessageFactory:
    path = tmp_path / "msgs"
    path.mkdir()
    return MessageFactory(path, sender="list@lists.example.net", recipients=["u@example.org"])


def with_headers(*delivered_to: str) -> list[tuple[str, str]]:
    return [
        ("From", "list@lists.example.net"),
        *(("Delivered-To", value) for value in delivered_to),
        ("Subject", "hello"),
    ]


async def decide(etc: Path, messages: MessageFactory, **kwargs: object) -> str | None:
    ctx = make_context("deliveredto", sysconfdir=str(etc))
    decision = await DeliveredTo(ctx).check(messages(**kwargs), ctx)
    return None if decision is CONTINUE else decision.reply()


@pytest.mark.parametrize(
    "value",
    [
        "user@example.org",
        "user@EXAMPLE.org",
        "user@host.lan.example.org",
        "user@hosted.example",
        "user@a.virtual.example",
        "<user@example.org>",
        "  user@example.org  ",
        " < user@hosted.example > ",
    ],
)
async def test_our_delivered_to_is_a_loop(etc: Path, messages: MessageFactory, value: str) -> None:
    ctx = make_context("deliveredto", sysconfdir=str(etc))
    decision = await DeliveredTo(ctx).check(messages(headers=with_headers(value)), ctx)
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == LOOP


@pytest.mark.parametrize(
    "value",
    [
        "user@elsewhere.example",
        "user@no.lan.example.org",  # excluded by !no.lan.example.org
        "user@example.org.evil",
        "user",
        "a@b@example.org",
        "user@",
        "Some One <user@example.org>",
        "",
    ],
)
async def test_other_values_continue(etc: Path, messages: MessageFactory, value: str) -> None:
    assert await decide(etc, messages, headers=with_headers(value)) is None


async def test_only_the_first_header_counts(etc: Path, messages: MessageFactory) -> None:
    foreign_first = with_headers("user@elsewhere.example", "user@example.org")
    assert await decide(etc, messages, headers=foreign_first) is None
    ours_first = with_headers("user@example.org", "user@elsewhere.example")
    assert await decide(etc, messages, headers=ours_first) == LOOP


async def test_no_header_and_header_in_the_body_continue(
    etc: Path, messages: MessageFactory
) -> None:
    assert await decide(etc, messages) is None
    body = b"Delivered-To: user@example.org\n\nquoted bounce\n"
    assert await decide(etc, messages, headers=with_headers(), body=body) is None


async def test_folded_header_is_unfolded(etc: Path, messages: MessageFactory) -> None:
    raw = b"From: x@y.example\nDelivered-To:\n user@example.org\nSubject: s\n\nbody\n"
    assert await decide(etc, messages, raw=raw) == LOOP


async def test_me_is_local_without_a_locals_file(etc: Path, messages: MessageFactory) -> None:
    (etc / "locals").unlink()
    assert await decide(etc, messages, headers=with_headers("u@mx.example.org")) == LOOP
    assert await decide(etc, messages, headers=with_headers("u@example.org")) is None


async def test_hosteddomains_dat(etc: Path, messages: MessageFactory) -> None:
    if not os.access(MAKEDATPROG, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{MAKEDATPROG} is missing")
        pytest.skip(f"{MAKEDATPROG} is missing (apt-get install courier-mta)")
    (etc / "hosteddomains").write_text("stale.example\n")
    makedat(b"compiled.example\t1\n", etc / "hosteddomains.dat")
    assert await decide(etc, messages, headers=with_headers("u@compiled.example")) == LOOP
    assert await decide(etc, messages, headers=with_headers("u@stale.example")) is None


async def test_unreadable_data_file_is_a_temporary_failure(
    etc: Path, messages: MessageFactory
) -> None:
    msg = messages(headers=with_headers("user@example.org"))
    os.unlink(msg.data_path)
    ctx = make_context("deliveredto", sysconfdir=str(etc))
    decision = await DeliveredTo(ctx).check(msg, ctx)
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.reply() == "451 Internal failure parsing message data file"


def test_domain_parsing() -> None:
    assert delivered_to_domain("user@Example.org") == "Example.org"
    assert delivered_to_domain(" <user@example.org> ") == "example.org"
    assert delivered_to_domain("@example.org") == "example.org"  # as the original: 2 parts
    assert delivered_to_domain("user@") is None
    assert delivered_to_domain("user") is None
    assert delivered_to_domain("a@b@c") is None
    assert delivered_to_domain("<user@example.org") == "example.org"  # unbalanced: raw
    assert delivered_to_domain("user@example.org>") == "example.org>"


async def test_through_the_loader_and_chain(
    etc: Path, messages: MessageFactory, tmp_path: Path
) -> None:
    modules = parse_modules_config([("pythonfilter-modules.conf", "")])
    settings = Settings(state_dir=str(tmp_path / "state"), sysconfdir=str(etc))
    services = Services(settings, modules.section)
    chain = build_chain([("deliveredto", frozenset())], modules.section, services)
    await chain.start()
    try:
        loop = await chain.run(messages(headers=with_headers("user@example.org")))
        fine = await chain.run(messages(headers=with_headers("user@elsewhere.example")))
    finally:
        await chain.stop()
        await services.close()
    assert (loop.deciding, loop.decision.reply()) == ("deliveredto", LOOP)
    assert (fine.deciding, fine.decision.reply()) == (None, "200 Ok")
