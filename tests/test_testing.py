from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

from courier_pyfilter.control import Recipient, parse_control
from courier_pyfilter.message import Message
from courier_pyfilter.testing import (
    MessageFactory,
    SentMessage,
    courier_msgid,
    make_message,
    received_header,
    render_controls,
)

SAMPLES = Path(__file__).parent / "samples"
NOW = 1795605627.0


def read(path: str) -> bytes:
    return Path(path).read_bytes()


def keys(data: bytes) -> list[str]:
    return [r.key for r in parse_control(data).records]


def test_default_message(tmp_path: Path) -> None:
    msg = make_message(tmp_path, now=NOW)
    assert isinstance(msg, Message)
    data = Path(msg.data_path)
    assert data.name == f"D{data.stat().st_ino}"
    assert data.parent.parent == tmp_path
    assert len(msg.control_paths) == 1
    assert re.fullmatch(rf"{int(NOW)}\.{os.getpid()}\.mx", Path(msg.control_paths[0]).name)
    assert oct(data.stat().st_mode & 0o777) == "0o660"
    assert msg.sender == "a@example.com"
    assert msg.addresses == ("b@example.net",)
    assert msg.client_ip == ipaddress.IPv4Address("192.0.2.1")
    assert msg.control.client_ip_raw == "::ffff:192.0.2.1"
    assert msg.helo == "mail.example.com"
    assert msg.auth_user is None
    assert msg.source == "smtp"
    assert msg.control.track is True
    assert msg.control.relay_client is False
    assert msg.msgid == courier_msgid(data.stat().st_ino, NOW, os.getpid())
    assert msg.control.expires == int(NOW) + 7 * 86400


def test_record_order_matches_real_courier(tmp_path: Path) -> None:
    plain = make_message(tmp_path, auth_user=None, relay_client=True, source="authsmtp")
    assert keys(Path(plain.control_paths[0]).read_bytes()) == keys(
        (SAMPLES / "a-plain.ctl").read_bytes()
    )
    auth = make_message(tmp_path, auth_user="mailtest")
    assert keys(Path(auth.control_paths[0]).read_bytes()) == keys(
        (SAMPLES / "c-auth-plain.ctl").read_bytes()
    )
    norelay = make_message(tmp_path)
    assert keys(Path(norelay.control_paths[0]).read_bytes()) == keys(
        (SAMPLES / "d-esmtp-norelay.ctl").read_bytes()
    )
    utf8 = make_message(
        tmp_path, sender="sénder@example.com", body="ü\n".encode(), relay_client=True
    )
    assert keys(Path(utf8.control_paths[0]).read_bytes()) == keys(
        (SAMPLES / "g-smtputf8.ctl").read_bytes()
    )


def test_control_bytes_like_sample(tmp_path: Path) -> None:
    env = SentMessage(
        sender="sender@example.com",
        recipients=(("mailtest@courier.test", "", ""),),
        client_ip=ipaddress.IPv4Address("127.0.0.1"),
        helo="vm",
        source="authsmtp",
        relay_client=True,
        now=1795605627,
    )
    (data,) = render_controls(env, ["000000000016214E.000000006B06C47B.00001AE3"])
    assert data == (SAMPLES / "a-plain.ctl").read_bytes()


def test_received_header_like_sample() -> None:
    env = SentMessage(
        client_ip=ipaddress.IPv4Address("127.0.0.1"),
        helo="vm",
        hostname="vm",
        auth_user="mailtest",
        now=1795605771,
    )
    expected = (SAMPLES / "c-auth-plain.data").read_bytes().split(b"Date:")[0]
    assert received_header(env, "0000000000162172.000000006B06C50B.00002592") == expected


async def test_data_file_content(tmp_path: Path) -> None:
    msg = make_message(
        tmp_path,
        auth_user="alice",
        headers=[("Subject", "hello"), ("From", "a@example.com")],
        body=b"one\r\ntwo",
        hostname="vm.example",
    )
    raw = await msg.raw()
    assert raw.startswith(b"Received: from mail.example.com ([::ffff:192.0.2.1])\n")
    assert b"\n  (AUTH: PLAIN alice)\n  by vm.example with ESMTPA\n  id " in raw
    assert raw.endswith(b"\nSubject: hello\nFrom: a@example.com\n\none\ntwo\n")
    assert msg.source == "authsmtp" and msg.control.relay_client
    assert msg.control.track is False
    parsed = await msg.email()
    assert parsed["Subject"] == "hello"
    assert parsed["Received"] is not None


async def test_default_headers_and_raw(tmp_path: Path) -> None:
    msg = make_message(tmp_path, recipients=("x@y.example", "z@y.example"))
    hdrs = await msg.headers()
    assert hdrs["To"] == "x@y.example, z@y.example"
    assert hdrs["From"] == "a@example.com"
    assert hdrs["Message-ID"] is not None
    raw_msg = make_message(tmp_path, raw=b"Subject: r\r\n\r\nbody", received=False)
    assert await raw_msg.raw() == b"Subject: r\n\nbody\n"


def test_batches(tmp_path: Path) -> None:
    msg = make_message(
        tmp_path,
        recipients=("r1@x", ("r2@x", "orig@x", "SF"), Recipient("r3@x", "", "N")),
        batch_size=2,
        now=NOW,
    )
    ino = os.stat(msg.data_path).st_ino
    assert [Path(p).name for p in msg.control_paths] == [f"C{ino}.1", f"C{ino}.2"]
    assert [(r.address, r.original, r.notify, r.file_index, r.index) for r in msg.recipients] == [
        ("r1@x", "", "", 0, 0),
        ("r2@x", "orig@x", "SF", 0, 1),
        ("r3@x", "", "N", 1, 0),
    ]
    assert msg.control.values("M") == (
        courier_msgid(ino, NOW, os.getpid()),
        courier_msgid(ino + 1, NOW, os.getpid()),
    )
    assert msg.control.values("s") == ("a@example.com", "a@example.com")
    # batch size not exceeded: a single, normally named file
    single = make_message(tmp_path, recipients=("a@x", "b@x"), batch_size=2)
    assert len(single.control_paths) == 1
    assert not Path(single.control_paths[0]).name.startswith("C")


def test_null_sender_no_ip_flags_and_extra_records(tmp_path: Path) -> None:
    msg = make_message(
        tmp_path,
        sender="",
        client_ip=None,
        extra_records=["V", b"vvhost.example"],
        envid="env-1",
        dsn_ret="H",
        eightbit=True,
    )
    cd = msg.control
    assert cd.sender == ""
    assert cd.client_ip is None and cd.client_ip_raw is None
    assert cd.received_from == "dns; mail.example.com"
    assert cd.verp and cd.vhost == "vhost.example"
    assert cd.envid == "env-1" and cd.dsn_ret == "H"
    assert cd.eightbit and not cd.smtputf8


def test_ipv6_and_rdns(tmp_path: Path) -> None:
    msg = make_message(tmp_path, client_ip="2001:db8::5", rdns="host.example.com")
    assert msg.client_ip == ipaddress.IPv6Address("2001:db8::5")
    assert msg.control.rdns == "host.example.com"
    assert msg.control.received_from == "dns; mail.example.com (host.example.com [2001:db8::5])"
    v4 = make_message(tmp_path, client_ip="198.51.100.7", ipv4_mapped=False)
    assert v4.control.client_ip_raw == "198.51.100.7"


def test_factory(tmp_path: Path) -> None:
    factory = MessageFactory(tmp_path, auth_user="alice", recipients=("u@courier.test",))
    one = factory()
    two = factory.make(sender="", auth_user=None)
    assert factory.made == [one, two]
    assert one.auth_user == "alice" and one.sender == "a@example.com"
    assert two.auth_user is None and two.sender == ""
    assert one.addresses == two.addresses == ("u@courier.test",)
    assert one.data_path != two.data_path


async def test_dry_run_message(tmp_path: Path) -> None:
    msg = make_message(tmp_path, dry_run=True)
    before = read(msg.data_path)
    await msg.edit.add_header("X-A", "1")
    assert read(msg.data_path) == before
    assert (await msg.raw()).startswith(b"X-A: 1\n")
