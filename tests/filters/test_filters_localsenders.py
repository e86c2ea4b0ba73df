"""``localsenders``: senders in local and hosted domains must exist (real authdaemond)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import authdaemon_fixture
import pytest
from authdaemon_fixture import (
    FakeAuthdaemon,
    Handler,
    RealAuthdaemon,
    answer,
    courier_sysconfdir,
    dead_socket,
    hang,
)

from courier_pyfilter.api import Context, Filter
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.filters.localsenders import AUTHDAEMON_FAILURE, LocalSenders
from courier_pyfilter.loader import find_module
from courier_pyfilter.message import Message
from courier_pyfilter.testing import make_context, make_message

real_authdaemon = authdaemon_fixture.real_authdaemon
fake_authdaemon = authdaemon_fixture.fake_authdaemon

Fake = Callable[[Handler], Awaitable[FakeAuthdaemon]]
Run = Callable[..., Awaitable[Decision]]


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Decision]]]:
    """``await run(socket_path, message=None, **settings, **message_kwargs)``."""
    contexts: list[Context] = []
    sysconfdir = courier_sysconfdir(tmp_path / "etc")

    async def run_filter(
        socket_path: str, *, message: Message | None = None, settings: Any = None, **kw: Any
    ) -> Decision:
        ctx = make_context(
            "localsenders",
            settings,
            defaults=LocalSenders.defaults,
            sections={"authdaemon.py": {"socket_path": socket_path, "TIMEOUT_READ": 0.5}},
            sysconfdir=sysconfdir,
        )
        contexts.append(ctx)
        flt = LocalSenders(ctx)
        await flt.start()
        msg = message if message is not None else make_message(tmp_path, **kw)
        decision = await flt.check(msg, ctx)
        assert isinstance(decision, Decision)
        return decision

    yield run_filter
    for ctx in contexts:
        await ctx.services.close()


@pytest.fixture
def down(tmp_path: Path) -> str:
    """A socket path where nothing answers: any lookup would give 451."""
    return dead_socket(tmp_path / "down.sock")


def test_defaults_and_loading() -> None:
    assert LocalSenders.defaults == {"require_auth": False}
    assert LocalSenders.whitelist is False
    loaded = find_module("localsenders")
    assert loaded.origin == "built-in"
    classes = [
        v
        for v in vars(loaded.module).values()
        if isinstance(v, type) and issubclass(v, Filter) and v is not Filter
    ]
    assert classes == [LocalSenders]  # the loader takes the only Filter subclass


# -- decisions (real authdaemond) -------------------------------------------------------


async def test_existing_local_sender_continues(run: Run, real_authdaemon: RealAuthdaemon) -> None:
    assert await run(real_authdaemon.socket_path, sender="alice@courier.test") is CONTINUE
    # the domain part is matched like Courier's locals (case-insensitively)
    assert await run(real_authdaemon.socket_path, sender="bob@Courier.TEST") is CONTINUE


async def test_unknown_local_sender_is_refused(run: Run, real_authdaemon: RealAuthdaemon) -> None:
    decision = await run(real_authdaemon.socket_path, sender="mallory@courier.test")
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == "517 Sender does not exist: mallory@courier.test"


async def test_local_domain_looks_up_the_local_part(
    run: Run, real_authdaemon: RealAuthdaemon
) -> None:
    # userdb knows "carol@hosted.test" but no "carol": the local domain asks for "carol"
    decision = await run(real_authdaemon.socket_path, sender="carol@courier.test")
    assert decision.reply() == "517 Sender does not exist: carol@courier.test"


async def test_hosted_domain_looks_up_the_whole_address(
    run: Run, real_authdaemon: RealAuthdaemon
) -> None:
    assert await run(real_authdaemon.socket_path, sender="carol@hosted.test") is CONTINUE
    # "alice" exists, but a hosted domain needs an account named by the whole address
    decision = await run(real_authdaemon.socket_path, sender="alice@hosted.test")
    assert decision.reply() == "517 Sender does not exist: alice@hosted.test"


async def test_require_auth(run: Run, real_authdaemon: RealAuthdaemon) -> None:
    path = real_authdaemon.socket_path
    strict = {"require_auth": True}
    decision = await run(path, settings=strict, sender="alice@courier.test")
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == "517 Policy requires local senders to authenticate."
    authed = await run(path, settings=strict, sender="alice@courier.test", auth_user="alice")
    assert authed is CONTINUE
    # an empty AUTH record counts as authenticated, as in the original
    empty = await run(path, settings=strict, sender="alice@courier.test", extra_records=["i"])
    assert empty is CONTINUE
    # the account check comes first
    unknown = await run(path, settings=strict, sender="nobody@courier.test")
    assert unknown.reply() == "517 Sender does not exist: nobody@courier.test"
    # require_auth only concerns local senders
    assert await run(path, settings=strict, sender="x@example.org") is CONTINUE


async def test_require_auth_off_lets_unauthenticated_local_senders_pass(
    run: Run, real_authdaemon: RealAuthdaemon
) -> None:
    assert await run(real_authdaemon.socket_path, sender="dave@courier.test") is CONTINUE


# -- no lookup needed ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    [
        "someone@example.org",  # neither local nor hosted
        "",  # the null sender <>
        "postmaster",  # no domain
        '"a@b"@courier.test',  # three parts when split at "@", as in the original
    ],
)
async def test_passes_without_asking_authdaemond(run: Run, down: str, sender: str) -> None:
    assert await run(down, sender=sender) is CONTINUE


async def test_name_authdaemond_cannot_be_asked_about_is_unknown(run: Run, down: str) -> None:
    # A local part with a space names no account; the daemon is not even asked.
    decision = await run(down, sender='"john doe"@courier.test')
    assert decision.reply() == '517 Sender does not exist: "john doe"@courier.test'


def _without_sender_record(msg: Message) -> Message:
    for path in msg.control_paths:
        lines = Path(path).read_bytes().split(b"\n")
        Path(path).write_bytes(b"\n".join(line for line in lines if not line.startswith(b"s")))
    return Message(msg.data_path, msg.control_paths)


async def test_no_sender_record(run: Run, down: str, tmp_path: Path) -> None:
    reloaded = _without_sender_record(make_message(tmp_path, sender="alice@courier.test"))
    assert reloaded.sender is None
    decision = await run(down, message=reloaded)
    assert decision.reply() == "451 Internal failure locating control files"


async def test_unreadable_control_file(run: Run, down: str, tmp_path: Path) -> None:
    msg = make_message(tmp_path, sender="alice@courier.test")
    os.unlink(msg.control_paths[0])
    decision = await run(down, message=msg)
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.reply() == "451 Internal failure locating control files"


# -- authdaemond failures: 451, never let through ---------------------------------------


def test_failure_reply_text() -> None:
    assert AUTHDAEMON_FAILURE.reply() == (
        "451 4.4.3 Cannot verify the sender address now, try again later"
    )


async def test_daemon_down(run: Run, down: str, caplog: pytest.LogCaptureFixture) -> None:
    decision = await run(down, sender="alice@courier.test")
    assert decision == AUTHDAEMON_FAILURE
    assert "cannot look up sender alice@courier.test" in caplog.text


async def test_daemon_hangs(run: Run, fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(hang)
    started = asyncio.get_running_loop().time()
    decision = await run(daemon.path, sender="alice@courier.test")
    assert decision == AUTHDAEMON_FAILURE
    assert asyncio.get_running_loop().time() - started < 3  # TIMEOUT_READ = 0.5
    assert daemon.requests == [b"PRE . smtp alice\n"]


async def test_daemon_answers_garbage(run: Run, fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(answer(b"Welcome!\n"))
    assert await run(daemon.path, sender="carol@hosted.test") == AUTHDAEMON_FAILURE
    assert daemon.requests == [b"PRE . smtp carol@hosted.test\n"]


async def test_fake_fail_answer_is_unknown_sender(run: Run, fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(answer(b"FAIL\n"))
    decision = await run(daemon.path, sender="alice@courier.test")
    assert decision.reply() == "517 Sender does not exist: alice@courier.test"
