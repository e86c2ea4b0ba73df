"""The quarantine: settings, release tokens, storing, notices, release, purge, compat shim.

sendmail is replaced by a small recording program (the real Courier runs in
``tests/e2e/test_quarantine_e2e.py``); the index lives in an SQLite store in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.api import Context
from courier_pyfilter.decision import Verdict
from courier_pyfilter.message import Message
from courier_pyfilter.quarantine import (
    QuarantineError,
    QuarantineService,
    quarantine_message,
    quarantine_service,
)
from courier_pyfilter.quarantine_core import (
    ID_LENGTH,
    MAC_LENGTH,
    QuarantineConfig,
    QuarantineConfigError,
    QuarantineRecord,
    RecordError,
    StoredRecipient,
    config_from_sections,
    control_name,
    data_name,
    format_expiry,
    is_valid_id,
    item_id_of_file,
    new_id,
    parse_config,
    parse_token,
    release_mac,
    release_token,
    render_notice,
    token_matches,
)
from courier_pyfilter.testing import make_context, make_message

ME = "mx.example.org"
SECRET = b"0123456789abcdef0123456789abcdef"

RECORDER = """\
import json, os, sys, time
out = {out!r}
data = sys.stdin.buffer.read()
name = "%020d-%d" % (time.time_ns(), os.getpid())
with open(os.path.join(out, name + ".eml"), "wb") as fh:
    fh.write(data)
with open(os.path.join(out, name + ".json"), "w") as fh:
    json.dump(sys.argv[1:], fh)
sys.exit({status})
"""


# -- helpers ---------------------------------------------------------------------------------


@dataclass
class Sent:
    """One sendmail run: its arguments and standard input."""

    argv: list[str]
    content: bytes

    @property
    def sender(self) -> str:
        return self.argv[self.argv.index("-f") + 1]

    @property
    def recipients(self) -> list[str]:
        return self.argv[self.argv.index("-f") + 2 :]

    @property
    def text(self) -> str:
        return self.content.decode("utf-8")


class Outbox:
    """What the recording sendmail received."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def sent(self) -> list[Sent]:
        result = []
        for meta in sorted(self.directory.glob("*.json")):
            argv = json.loads(meta.read_text())
            result.append(Sent(argv, meta.with_suffix(".eml").read_bytes()))
        return result

    def to(self, address: str) -> list[Sent]:
        return [s for s in self.sent() if address in s.recipients]

    def clear(self) -> None:
        for path in self.directory.iterdir():
            path.unlink()


class Clock:
    """A settable clock shared by the service and the store."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    tmp: Path
    qdir: Path
    etc: Path
    state: Path
    spool: Path
    outbox: Outbox
    sendmail: str
    failing_sendmail: str
    clock: Clock
    contexts: list[Any] = field(default_factory=list)

    def sections(self, **quarantine: Any) -> dict[str, dict[str, Any]]:
        settings: dict[str, Any] = {"dir": str(self.qdir), "sendmail": self.sendmail}
        settings.update(quarantine)
        return {"quarantine": settings}

    def ctx(self, *, dry_run: bool = False, **quarantine: Any) -> Context:
        ctx: Context = make_context(
            "virus",
            sections=self.sections(**quarantine),
            state_dir=self.state,
            sysconfdir=str(self.etc),
            clock=self.clock,
            dry_run=dry_run,
        )
        self.contexts.append(ctx)
        return ctx

    def message(self, **kwargs: Any) -> Message:
        kwargs.setdefault("recipients", ["bob@example.net"])
        kwargs.setdefault("headers", {"From": "Eve <eve@example.com>", "Subject": "invoice"})
        return make_message(self.spool, **kwargs)

    def files(self) -> set[str]:
        return {p.name for p in self.qdir.iterdir() if p.name != ".secret"}


def read(path: str | Path) -> bytes:
    """A small local file's content (sync helper)."""
    return Path(path).read_bytes()


def _script(path: Path, body: str) -> str:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    qdir, etc, state, spool, out = (tmp_path / n for n in ("q", "etc", "state", "spool", "out"))
    for d in (qdir, etc, state, spool, out):
        d.mkdir()
    (etc / "me").write_text(f"{ME}\n")
    ok = _script(tmp_path / "sendmail", RECORDER.format(out=str(out), status=0))
    bad = _script(tmp_path / "sendmail-fails", RECORDER.format(out=str(out), status=75))
    e = Env(tmp_path, qdir, etc, state, spool, Outbox(out), ok, bad, Clock())
    yield e
    for ctx in e.contexts:
        await ctx.services.close()


def release_addresses(text: str) -> list[str]:
    import re

    return re.findall(r"quarantine-[a-z0-9_-]+?-[a-z2-7]{12}-[a-z2-7]{20}@[a-z0-9.]+", text)


def token_of(address: str, siteid: str = "local") -> str:
    local = address.split("@")[0]
    prefix = f"quarantine-{siteid}-"
    assert local.startswith(prefix)
    return local[len(prefix) :]


# -- settings --------------------------------------------------------------------------------


def test_defaults_are_the_originals() -> None:
    config = parse_config({})
    assert (config.siteid, config.dir, config.days) == (
        "local",
        "/var/lib/pythonfilter/quarantine",
        14.0,
    )
    assert config.notify_recipient and config.user_release and config.also_notify is None
    assert config.ttl == 14 * 86400
    assert config.secret_path == "/var/lib/pythonfilter/quarantine/.secret"


def test_snake_case_and_camel_case_keys_are_both_accepted() -> None:
    snake = parse_config(
        {"notify_recipient": 0, "also_notify": "admin@example.org", "user_release": False}
    )
    camel = parse_config(
        {"notifyRecipient": 0, "alsoNotify": "admin@example.org", "userRelease": False}
    )
    assert snake == camel
    assert (snake.notify_recipient, snake.also_notify, snake.user_release) == (
        False,
        "admin@example.org",
        False,
    )
    # both spellings with the same value are fine, with different values an error
    assert parse_config({"alsoNotify": "a@b.example", "also_notify": "a@b.example"}).also_notify
    with pytest.raises(QuarantineConfigError, match="set twice"):
        parse_config({"alsoNotify": "a@b.example", "also_notify": "c@d.example"})


def test_the_readme_section_name_is_accepted_when_the_codes_is_absent() -> None:
    sections = {"Quarantine": {"siteid": "readme"}}
    assert config_from_sections(lambda n: sections.get(n, {})).siteid == "readme"
    sections["quarantine"] = {"siteid": "code"}
    assert config_from_sections(lambda n: sections.get(n, {})).siteid == "code"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"siteid": "a.b"}, "siteid"),
        ({"siteid": "x/../y"}, "siteid"),
        ({"siteid": ""}, "siteid"),
        ({"days": 0}, "positive"),
        ({"days": "14"}, "number"),
        ({"dir": "relative/dir"}, "absolute"),
        ({"also_notify": "Admin <a@b.example>"}, "plain address"),
        ({"also_notify": "-oQ/tmp@x"}, "plain address"),
        ({"notify_recipient": "maybe"}, "True or False"),
        ({"sendmail": "sendmail"}, "absolute"),
    ],
)
def test_bad_settings_are_refused(section: dict[str, Any], message: str) -> None:
    with pytest.raises(QuarantineConfigError, match=message):
        parse_config(section)


def test_unknown_keys_are_reported_not_fatal() -> None:
    config = parse_config({"siteid": "x", "notify_recipients": True})
    assert config.ignored == ("notify_recipients",)


# -- ids and tokens ----------------------------------------------------------------------------


def test_ids_are_random_base32() -> None:
    ids = {new_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(is_valid_id(i) and len(i) == ID_LENGTH for i in ids)
    for bad in ("", "../etc/passw", "ABCDEFGHIJKL", "abcdefghijk1", "abc", None, 12):
        assert not is_valid_id(bad)


def test_release_mac_binds_secret_siteid_id_and_address() -> None:
    item = "abcdefghijkl"
    mac = release_mac(SECRET, "local", item, "Bob@Example.NET")
    assert len(mac) == MAC_LENGTH and set(mac) <= set("abcdefghijklmnopqrstuvwxyz234567")
    # the address is compared without case and without an rfc822; prefix
    assert mac == release_mac(SECRET, "local", item, "rfc822;bob@example.net")
    others = {
        release_mac(SECRET[::-1], "local", item, "bob@example.net"),
        release_mac(SECRET, "other", item, "bob@example.net"),
        release_mac(SECRET, "local", "abcdefghijkm", "bob@example.net"),
        release_mac(SECRET, "local", item, "carol@example.net"),
    }
    assert mac not in others and len(others) == 4


def test_tokens_parse_case_insensitively_and_verify() -> None:
    item = "abcdefghijkl"
    token = release_token(SECRET, "local", item, "bob@example.net")
    assert parse_token(token.upper()) == (item, token.split("-")[1])
    item_id, mac = parse_token(token) or ("", "")
    assert token_matches(SECRET, "local", item_id, "bob@example.net", mac)
    assert token_matches(SECRET, "local", item_id, "bob@example.net", mac.upper())
    assert not token_matches(SECRET, "local", item_id, "carol@example.net", mac)
    altered = mac[:-1] + ("a" if mac[-1] != "a" else "b")
    assert not token_matches(SECRET, "local", item_id, "bob@example.net", altered)
    assert not token_matches(SECRET, "local", item_id, "bob@example.net", "é" * MAC_LENGTH)
    for bad in ("", item, f"{item}-short", f"../{item}-{mac}", f"{item}-{mac}-x", f"{item}.{mac}"):
        assert parse_token(bad) is None


def test_file_names_only_from_valid_ids() -> None:
    assert data_name("abcdefghijkl") == "Dabcdefghijkl"
    assert control_name("abcdefghijkl", 0) == "Cabcdefghijkl"
    assert control_name("abcdefghijkl", 2) == "Cabcdefghijkl.2"
    for bad in ("../../etc/x", "/abs/path123", "abcdefghijk/"):
        with pytest.raises(ValueError):
            data_name(bad)
        with pytest.raises(ValueError):
            control_name(bad, 0)
    assert item_id_of_file("Dabcdefghijkl") == ("abcdefghijkl", False)
    assert item_id_of_file("Cabcdefghijkl.3") == ("abcdefghijkl", False)
    assert item_id_of_file("tmp.abcdefghijkl.D1.ab") == ("abcdefghijkl", True)
    for other in (".secret", "README", "D123", "Cabcdefghijkl.x", "Dabcdefghijkl~"):
        assert item_id_of_file(other) is None


def test_records_round_trip_and_corrupt_ones_are_refused() -> None:
    record = QuarantineRecord(
        id="abcdefghijkl",
        time=1000.5,
        expires=2000.5,
        sender="",
        recipients=(StoredRecipient("bob@example.net", "rfc822;b@x.example", "SF"),),
        explanation="virus",
        header_from="Eve <eve@example.com>",
        subject="héllo",
        released={"bob@example.net": 1500.0},
    )
    assert QuarantineRecord.from_json(record.to_json(), record.id) == record
    with pytest.raises(RecordError, match="id mismatch"):
        QuarantineRecord.from_json(record.to_json(), "bcdefghijklm")
    for junk in (None, "{", "[]", '{"v": 2}', '{"v": 1, "id": "abcdefghijkl"}'):
        with pytest.raises(RecordError):
            QuarantineRecord.from_json(junk, "abcdefghijkl")


def test_expiry_date_in_the_originals_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert format_expiry(1709510400) == "Mon March 04, 2024"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_notice_text_cannot_inject_headers() -> None:
    record = QuarantineRecord(
        id="abcdefghijkl",
        time=0,
        expires=86400,
        sender="x@example.com",
        recipients=(StoredRecipient("bob@example.net"),),
        explanation="bad\nBcc: victim@example.org",
        subject="hi\r\nBcc: victim@example.org",
    )
    content = render_notice(
        record, to="bob@example.net", me=ME, now=0, release_to=None, contact="admin@x"
    )
    head, body = content.split(b"\n\n", 1)
    assert b"Bcc" not in head
    assert b"Subject:  hi Bcc: victim@example.org" in body
    with pytest.raises(ValueError):
        render_notice(record, to="a@b\nBcc: c@d", me=ME, now=0, release_to=None, contact="x")


# -- storing and notices -----------------------------------------------------------------------


async def test_quarantine_stores_marks_delivered_and_notifies(env: Env) -> None:
    ctx = env.ctx(alsoNotify="admin@example.org")
    msg = env.message(
        recipients=["bob@example.net", ("carol@example.net", "rfc822;c@x.example", "SF")]
    )
    raw = read(msg.data_path)
    controls = [read(p) for p in msg.control_paths]

    decision = await quarantine_message(msg, ctx, "The virus Eicar-Test was found in the message")

    assert decision.verdict is Verdict.ACCEPT_SKIP_COURIER
    assert decision.reply() == "050 OK"
    # the message and control file are in the quarantine directory, unchanged
    (data,) = [n for n in env.files() if n.startswith("D")]
    item_id = data[1:]
    assert env.files() == {f"D{item_id}", f"C{item_id}"}
    assert (env.qdir / data).read_bytes() == raw
    assert (env.qdir / f"C{item_id}").read_bytes() == controls[0]
    assert stat.S_IMODE((env.qdir / data).stat().st_mode) == 0o640
    # every recipient was marked delivered in Courier's control file
    assert Message(msg.data_path, msg.control_paths).recipients == ()
    # one notice per recipient and one for alsoNotify, all from the null sender
    sent = env.outbox.sent()
    assert sorted(r for s in sent for r in s.recipients) == [
        "admin@example.org",
        "bob@example.net",
        "carol@example.net",
    ]
    assert all(s.sender == "" for s in sent)
    (bob,) = env.outbox.to("bob@example.net")
    assert "From: Mail Quarantine System <postmaster@mx.example.org>" in bob.text
    assert "\nSubject: Quarantine notice\n" in bob.text
    assert "The virus Eicar-Test was found in the message" in bob.text
    assert "From:     Eve <eve@example.com>" in bob.text
    assert "Subject:  invoice" in bob.text
    assert format_expiry(env.clock.now + 14 * 86400) in bob.text
    (address,) = release_addresses(bob.text)
    assert address.startswith(f"quarantine-local-{item_id}-") and address.endswith(f"@{ME}")
    (carol,) = env.outbox.to("carol@example.net")
    assert release_addresses(carol.text) != [address]
    (admin,) = env.outbox.to("admin@example.org")
    assert release_addresses(admin.text) == []
    assert f"courier-pyfilter quarantine release {item_id}" in admin.text
    assert "bob@example.net, carol@example.net" in admin.text
    # the index has it
    service: QuarantineService = await quarantine_service(ctx)
    (record,) = await service.items()
    assert record.id == item_id and record.sender == "a@example.com"
    assert [r.address for r in record.recipients] == ["bob@example.net", "carol@example.net"]


async def test_secret_is_created_private_and_shared(env: Env) -> None:
    first: QuarantineService = await quarantine_service(env.ctx())
    secret_file = env.qdir / ".secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    second: QuarantineService = await quarantine_service(env.ctx())
    assert first is not second
    assert await first.secret() == await second.secret() == secret_file.read_bytes().strip()
    secret_file.write_text("short\n")
    with pytest.raises(QuarantineError, match="too short"):
        await quarantine_service(env.ctx())


async def test_duplicate_recipients_get_one_notice(env: Env) -> None:
    msg = env.message(recipients=["bob@example.net", "BOB@example.net"])
    await quarantine_message(msg, env.ctx(), "spam")
    assert len(env.outbox.sent()) == 1


async def test_notify_recipient_off_only_notifies_the_admin(env: Env) -> None:
    ctx = env.ctx(notify_recipient=False, also_notify="admin@example.org")
    await quarantine_message(env.message(), ctx, "spam")
    assert [s.recipients for s in env.outbox.sent()] == [["admin@example.org"]]
    assert "The recipients were not notified." in env.outbox.sent()[0].text


async def test_without_user_release_the_notice_points_to_the_admin(env: Env) -> None:
    ctx = env.ctx(userRelease=0, alsoNotify="admin@example.org")
    await quarantine_message(env.message(), ctx, "spam")
    (bob,) = env.outbox.to("bob@example.net")
    assert release_addresses(bob.text) == []
    assert "ask admin@example.org to release it" in bob.text


async def test_a_failed_notice_tempfails_and_leaves_nothing_behind(env: Env) -> None:
    ctx = env.ctx(sendmail=env.failing_sendmail)
    msg = env.message()
    with pytest.raises(QuarantineError, match="cannot send the quarantine notice"):
        await quarantine_message(msg, ctx, "spam")
    assert env.files() == set()
    service: QuarantineService = await quarantine_service(ctx)
    assert await service.items(include_expired=True) == []


async def test_in_a_chain_a_failed_quarantine_is_a_temporary_failure(env: Env) -> None:
    from courier_pyfilter.loader import build_chain
    from courier_pyfilter.services import Services
    from courier_pyfilter.settings import Settings

    (env.tmp / "filters").mkdir()
    (env.tmp / "filters" / "quarantine_all.py").write_text(
        "from courier_pyfilter.quarantine import quarantine_message\n"
        "async def check(message, ctx):\n"
        "    return await quarantine_message(message, ctx, 'everything')\n"
    )
    for program, expected in ((env.failing_sendmail, "451"), (env.sendmail, "050")):
        sections = env.sections(sendmail=program)
        settings = Settings(state_dir=str(env.state), sysconfdir=str(env.etc))
        services = Services(settings, lambda n, s=sections: dict(s.get(n, {})))  # type: ignore[misc]
        chain = build_chain(
            [("quarantine_all", frozenset())],
            lambda n, s=sections: dict(s.get(n, {})),  # type: ignore[misc]
            services,
            filter_path=[str(env.tmp / "filters")],
        )
        await chain.start()
        try:
            result = await chain.run(env.message())
        finally:
            await chain.stop()
            await services.close()
        assert result.decision.code == expected, result.decision


async def test_missing_directory_is_created_but_not_its_parent(env: Env) -> None:
    service: QuarantineService = await quarantine_service(env.ctx(dir=str(env.tmp / "new")))
    assert (env.tmp / "new").is_dir() and service.config.dir == str(env.tmp / "new")
    with pytest.raises(QuarantineError, match="cannot be created"):
        await quarantine_service(env.ctx(dir=str(env.tmp / "no" / "such")))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
async def test_unwritable_directory_fails_at_start(env: Env) -> None:
    env.qdir.chmod(0o500)
    try:
        with pytest.raises(QuarantineError, match="not writable"):
            await quarantine_service(env.ctx())
    finally:
        env.qdir.chmod(0o750)


async def test_bad_settings_fail_when_the_service_is_built(env: Env) -> None:
    with pytest.raises(QuarantineError, match="siteid"):
        await quarantine_service(env.ctx(siteid="no/slash"))


async def test_dry_run_stores_and_sends_nothing(env: Env) -> None:
    ctx = env.ctx(dry_run=True)
    msg = env.message(dry_run=True)
    decision = await quarantine_message(msg, ctx, "spam")
    assert decision.reply() == "050 OK"
    assert env.files() == set() and env.outbox.sent() == []
    assert [r.address for r in Message(msg.data_path, msg.control_paths).recipients] == [
        "bob@example.net"
    ]


async def test_several_control_files_are_all_kept(env: Env) -> None:
    rcpts = [f"u{i}@example.net" for i in range(5)]
    msg = env.message(recipients=rcpts, batch_size=2)
    assert len(msg.control_paths) == 3
    await quarantine_message(msg, env.ctx(notify_recipient=False), "spam")
    item_id = next(n for n in env.files() if n.startswith("D"))[1:]
    assert env.files() == {f"D{item_id}", f"C{item_id}", f"C{item_id}.1", f"C{item_id}.2"}
    assert Message(msg.data_path, msg.control_paths).recipients == ()


async def test_an_installed_service_is_used_as_is(env: Env) -> None:
    class Fake:
        async def quarantine(self, message: Message, explanation: str) -> None:
            raise OSError("disk full")

    ctx = env.ctx()
    ctx.services.put("quarantine", Fake())
    with pytest.raises(OSError, match="disk full"):
        await quarantine_message(env.message(), ctx, "spam")


# -- release -----------------------------------------------------------------------------------


async def quarantined(env: Env, **kwargs: Any) -> tuple[QuarantineService, str, dict[str, str]]:
    """Quarantine a message; return the service, its id and each recipient's token."""
    quarantine = {k: kwargs.pop(k) for k in list(kwargs) if k in ("user_release", "days")}
    ctx = env.ctx(**quarantine)
    msg = env.message(**kwargs)
    await quarantine_message(msg, ctx, "spam")
    service: QuarantineService = await quarantine_service(ctx)
    tokens = {}
    for sent in env.outbox.sent():
        for address in release_addresses(sent.text):
            tokens[sent.recipients[0]] = token_of(address)
    (record,) = await service.items()
    env.outbox.clear()
    return service, record.id, tokens


async def test_release_sends_the_stored_message_to_the_requester(env: Env) -> None:
    service, item_id, tokens = await quarantined(env)
    result = await service.release_request(tokens["bob@example.net"], "bob@example.net")
    assert (result.released, result.item_id, result.address) == (
        True,
        item_id,
        "bob@example.net",
    )
    (sent,) = env.outbox.sent()
    assert (sent.sender, sent.recipients) == ("", ["bob@example.net"])
    assert sent.content == (env.qdir / f"D{item_id}").read_bytes()
    (record,) = await service.items()
    assert set(record.released) == {"bob@example.net"}
    # case does not matter, neither in the token nor in the requester
    again = await service.release_request(tokens["bob@example.net"].upper(), "Bob@Example.NET")
    assert again.released and again.address == "bob@example.net"


async def test_forged_or_foreign_tokens_are_refused_with_a_notice(env: Env) -> None:
    service, _, tokens = await quarantined(env, recipients=["bob@example.net", "c@x.org"])
    bob = tokens["bob@example.net"]
    forged = bob[:-1] + ("a" if bob[-1] != "a" else "b")
    cases = [
        (forged, "bob@example.net", "wrong token"),
        (tokens["c@x.org"], "bob@example.net", "wrong token"),  # carol's token, bob asks
        (bob, "mallory@example.com", "not a recipient"),  # bob's token, not a recipient
        (f"{new_id()}-{bob.split('-')[1]}", "bob@example.net", "no such item"),
        ("../../etc/passwd", "bob@example.net", "malformed"),
        ("", "bob@example.net", "malformed"),
    ]
    for token, requester, reason in cases:
        env.outbox.clear()
        result = await service.release_request(token, requester)
        assert not result.released and reason in result.reason, (token, requester, result)
        (notice,) = env.outbox.sent()
        assert notice.recipients == [requester] and notice.sender == ""
        assert "\nSubject: Quarantine release failed\n" in notice.text
        assert b"Return-Path" not in notice.content
    # a refusal never answers a null sender (no mail loops with bounces)
    env.outbox.clear()
    result = await service.release_request(forged, "")
    assert not result.released and not result.notified and env.outbox.sent() == []


async def test_the_alias_address_a_recipient_had_may_release_to_itself(env: Env) -> None:
    service, _, tokens = await quarantined(
        env, recipients=[("mailtest@example.net", "postmaster@example.net", "")]
    )
    result = await service.release_request(tokens["mailtest@example.net"], "postmaster@example.net")
    assert result.released and result.address == "postmaster@example.net"


async def test_expired_items_cannot_be_released(env: Env) -> None:
    service, _, tokens = await quarantined(env, days=1)
    env.clock.now += 86400 + 1
    result = await service.release_request(tokens["bob@example.net"], "bob@example.net")
    assert not result.released and "no such item" in result.reason
    assert [s.recipients for s in env.outbox.sent()] == [["bob@example.net"]]
    assert "release failed" in env.outbox.sent()[0].text


async def test_no_release_by_mail_when_user_release_is_off(env: Env) -> None:
    service, item_id, _ = await quarantined(env, user_release=False)
    secret = await service.secret()
    token = release_token(secret, "local", item_id, "bob@example.net")
    result = await service.release_request(token, "bob@example.net")
    assert not result.released and "user_release" in result.reason


async def test_missing_data_file_is_a_temporary_error(env: Env) -> None:
    service, item_id, tokens = await quarantined(env)
    (env.qdir / f"D{item_id}").unlink()
    with pytest.raises(QuarantineError, match="missing"):
        await service.release_request(tokens["bob@example.net"], "bob@example.net")


async def test_failing_sendmail_on_release_is_a_temporary_error(env: Env) -> None:
    service, _, tokens = await quarantined(env)
    broken = QuarantineService(
        service.config.__class__(**{**_fields(service.config), "sendmail": env.failing_sendmail}),
        store=service._store,
        me=lambda: ME,
    )
    with pytest.raises(QuarantineError, match="cannot send"):
        await broken.release_request(tokens["bob@example.net"], "bob@example.net")


def _fields(config: QuarantineConfig) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


async def test_admin_release_goes_only_to_recipients(env: Env) -> None:
    service, item_id, _ = await quarantined(env, recipients=["bob@example.net", "c@x.org"])
    record, targets = await service.release_to(item_id)
    assert targets == ["bob@example.net", "c@x.org"] and record.id == item_id
    assert sorted(s.recipients[0] for s in env.outbox.sent()) == ["bob@example.net", "c@x.org"]
    env.outbox.clear()
    _, targets = await service.release_to(item_id, ["C@X.ORG"])
    assert targets == ["c@x.org"]
    with pytest.raises(ValueError, match="not a recipient"):
        await service.release_to(item_id, ["mallory@example.com"])
    with pytest.raises(QuarantineError, match="no quarantined message"):
        await service.release_to(new_id())
    env.clock.now += 15 * 86400
    with pytest.raises(QuarantineError, match="expired"):
        await service.release_to(item_id)


# -- purge ------------------------------------------------------------------------------------


async def test_purge_removes_expired_items_and_old_orphans_only(env: Env) -> None:
    service, old_id, _ = await quarantined(env, days=1)
    env.clock.now += 43200
    await quarantine_message(env.message(), env.ctx(days=1), "spam")
    young_id = next(n[1:] for n in env.files() if n.startswith("D") and n[1:] != old_id)
    orphan, fresh_orphan, stale_tmp = new_id(), new_id(), new_id()
    for name in (f"D{orphan}", f"C{orphan}.1", f"D{fresh_orphan}", f"tmp.{stale_tmp}.D1.x"):
        (env.qdir / name).write_text("x")
    old = env.clock.now - 7200
    for name in (f"D{orphan}", f"C{orphan}.1", f"tmp.{stale_tmp}.D1.x"):
        os.utime(env.qdir / name, (old, old))
    (env.qdir / "README").write_text("not ours")
    os.utime(env.qdir / "README", (old, old))

    env.clock.now += 43200 + 60  # the first item is now older than one day
    recent = env.clock.now - 60  # younger than the grace period: maybe being stored now
    os.utime(env.qdir / f"D{fresh_orphan}", (recent, recent))
    report = await service.purge()

    assert report.items == [old_id] and report.errors == []
    assert report.files == 2 + 3  # the expired item's D and C, the orphans, the temporary
    assert env.files() == {f"D{young_id}", f"C{young_id}", f"D{fresh_orphan}", "README"}
    assert [r.id for r in await service.items(include_expired=True)] == [young_id]
    assert (env.qdir / ".secret").exists()


async def test_delete_removes_an_item(env: Env) -> None:
    service, item_id, _ = await quarantined(env)
    assert await service.delete(item_id)
    assert env.files() == set() and await service.items() == []
    assert not await service.delete(item_id)
    with pytest.raises(QuarantineError, match="not a quarantine id"):
        await service.delete("../x")


# -- courier.quarantine (the original's API) -------------------------------------------------


@pytest.fixture
def compat(env: Env) -> Iterator[Env]:
    import courier.config as cfg
    import courier.quarantine as shim
    from pythonfilter import ttldb

    conf = env.tmp / "modules.conf"
    conf.write_text(
        "[courier-pyfilter]\n"
        f"state_dir = {str(env.state)!r}\n"
        "[Quarantine]\n"
        f"dir = {str(env.qdir)!r}\n"
        f"sendmail = {env.sendmail!r}\n"
        "siteid = 'compat'\n"
    )
    ttldb._reset()
    cfg._reset()
    cfg._configure(sysconfdir=str(env.etc), modules_configs=[str(conf)])
    yield env
    ttldb._reset()
    cfg._reset()
    shim.config.clear()
    shim.config.update(shim.DEFAULTS)


def test_compat_quarantine_release_and_purge(compat: Env) -> None:
    import courier.quarantine as shim

    shim.init()
    assert shim.config["siteid"] == "compat" and shim.config["days"] == 14
    msg = compat.message()
    shim.quarantine(msg.data_path, list(msg.control_paths), "virus found")
    assert Message(msg.data_path, msg.control_paths).recipients == ()
    (notice,) = compat.outbox.sent()
    (address,) = release_addresses(notice.text)
    compat.outbox.clear()
    shim.release(token_of(address, "compat"), "bob@example.net")
    (released,) = compat.outbox.sent()
    assert released.recipients == ["bob@example.net"]
    shim.purge()  # nothing expired: nothing removed
    assert len([n for n in compat.files() if n.startswith("D")]) == 1
    compat.outbox.clear()
    shim.sendNotice("hello there", "carol@example.net")
    (sent,) = compat.outbox.sent()
    assert sent.sender == "" and "Subject: Quarantine notice" in sent.text
    assert sent.text.endswith("hello there\n")


def test_compat_failure_raises_and_keeps_nothing(compat: Env) -> None:
    import courier.quarantine as shim

    shim.init()
    shim.config["sendmail"] = compat.failing_sendmail
    msg = compat.message()
    with pytest.raises(QuarantineError):
        shim.quarantine(msg.data_path, list(msg.control_paths), "virus found")
    assert compat.files() == set()


async def test_compat_refuses_the_event_loop_thread(compat: Env) -> None:
    import courier.quarantine as shim
    from pythonfilter import ttldb

    ttldb._set_loop(asyncio.get_running_loop(), lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(QuarantineError, match="event loop thread"):
        shim.purge()


async def test_unusable_recipient_addresses_get_no_notice_but_do_not_block(env: Env) -> None:
    msg = env.message(recipients=["-oQ/tmp/x@example.net", "bob@example.net"])
    decision = await quarantine_message(msg, env.ctx(), "spam")
    assert decision.reply() == "050 OK"
    assert [s.recipients for s in env.outbox.sent()] == [["bob@example.net"]]


async def test_headers_the_parser_cannot_read_are_shown_raw(env: Env) -> None:
    class Broken:
        def get(self, name: str, default: str = "") -> str:
            raise ValueError("unparsable")

        def raw_items(self) -> list[tuple[str, str]]:
            return [("Subject", "=?bogus?x?\x01?= raw")]

    from courier_pyfilter.quarantine import _header_text

    assert _header_text(Broken(), "subject") == "=?bogus?x? ?= raw"
    assert _header_text(Broken(), "From") == ""


async def test_dry_run_does_not_need_the_directory(env: Env) -> None:
    ctx = env.ctx(dry_run=True, dir=str(env.tmp / "later"))
    assert await quarantine_service(ctx)
    assert not (env.tmp / "later").exists()


async def test_the_clamav_filter_finds_this_service(env: Env) -> None:
    from courier_pyfilter.filters.clamav import find_quarantine

    ctx = env.ctx()
    service = await find_quarantine(ctx)
    assert isinstance(service, QuarantineService)
    assert service is await quarantine_service(ctx)  # one shared service per configuration
    record = await service.quarantine(env.message(), "The virus X was found in the message")
    assert f"D{record.id}" in env.files()


async def test_a_failed_control_file_edit_tempfails_and_leaves_nothing(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from courier_pyfilter.edit import EditError, Editor

    async def broken(self: Editor, recipient: Any, reason: str = "") -> Any:
        raise EditError("cannot append to the control file")

    monkeypatch.setattr(Editor, "remove_recipient", broken)
    ctx = env.ctx()
    with pytest.raises(QuarantineError, match="cannot append"):
        await quarantine_message(env.message(), ctx, "spam")
    assert env.files() == set() and env.outbox.sent() == []
    service: QuarantineService = await quarantine_service(ctx)
    assert await service.items(include_expired=True) == []
