from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from courier_pyfilter.control import (
    ControlData,
    ControlFileError,
    Recipient,
    add_recipient_records,
    decode_value,
    encode_value,
    parse_control,
    parse_controls,
    remove_recipient_records,
)

SAMPLES = Path(__file__).parent / "samples"
CTL_SAMPLES = sorted(p.name for p in SAMPLES.iterdir() if ".ctl" in p.name)


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def data_of(*names: str) -> ControlData:
    return parse_controls([sample(n) for n in names])


# -- every sample -------------------------------------------------------------------------


def test_all_samples_present() -> None:
    assert len(CTL_SAMPLES) == 12


@pytest.mark.parametrize("name", CTL_SAMPLES)
def test_sample_records_are_byte_exact(name: str) -> None:
    raw = sample(name)
    parsed = parse_control(raw)
    assert parsed.complete
    assert b"".join(r.raw + b"\n" for r in parsed.records) == raw
    for rec in parsed.records:
        assert encode_value(rec.key) == rec.raw[:1]
        assert encode_value(rec.value) == rec.raw[1:].strip()
        assert not rec.malformed


EXPECTED = {
    # name: (sender, helo, ip, source, auth_user, relay, addresses)
    "a-plain.ctl": (
        "sender@example.com",
        "vm",
        "127.0.0.1",
        "authsmtp",
        None,
        True,
        ("mailtest@courier.test",),
    ),
    "b0-dsn-with-rcpt-rejections.ctl": (
        "sender@example.com",
        "smtp-send.test",
        "127.0.0.1",
        "authsmtp",
        None,
        True,
        ("mailtest@courier.test",),
    ),
    "c-auth-plain.ctl": (
        "mailtest@courier.test",
        "vm",
        "127.0.0.1",
        "authsmtp",
        "mailtest",
        True,
        ("mailtest2@courier.test",),
    ),
    "c2-auth-norelay-ip.ctl": (
        "sender@example.com",
        "vm",
        "127.0.0.2",
        "authsmtp",
        "mailtest",
        True,
        ("mailtest2@courier.test",),
    ),
    "d-esmtp-norelay.ctl": (
        "sender@example.com",
        "vm",
        "127.0.0.2",
        "smtp",
        None,
        False,
        ("mailtest@courier.test",),
    ),
    "f-8bitmime.ctl": (
        "sender@example.com",
        "smtp-send.test",
        "127.0.0.1",
        "authsmtp",
        None,
        True,
        ("mailtest@courier.test",),
    ),
    "g-smtputf8.ctl": (
        "sénder@example.com",
        "smtp-send.test",
        "127.0.0.1",
        "authsmtp",
        None,
        True,
        ("mailtest@courier.test",),
    ),
    "h-local-sendmail.ctl": (
        "sender@example.com",
        "localhost",
        "127.0.0.1",
        "local",
        None,
        False,
        ("mailtest@courier.test",),
    ),
    "i-xverp.ctl": (
        "sender@example.com",
        "smtp-send.test",
        "127.0.0.1",
        "authsmtp",
        None,
        True,
        ("mailtest@courier.test",),
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_envelope(name: str) -> None:
    sender, helo, ip, source, auth, relay, addresses = EXPECTED[name]
    cd = data_of(name)
    assert cd.sender == sender
    assert cd.helo == helo
    assert cd.client_ip == ipaddress.IPv4Address(ip)
    assert isinstance(cd.client_ip, ipaddress.IPv4Address)
    assert not cd.client_ip_invalid
    assert cd.source == source
    assert cd.auth_user == auth
    assert cd.relay_client is relay
    assert cd.addresses == addresses
    assert cd.verp is False


def test_plain_all_fields() -> None:
    cd = data_of("a-plain.ctl")
    assert cd.received_from == "dns; vm ([::ffff:127.0.0.1])"
    assert cd.rdns is None
    assert cd.client_ip_raw == "::ffff:127.0.0.1"
    assert cd.envid is None
    assert cd.dsn_ret is None
    assert cd.msgid == "000000000016214E.000000006B06C47B.00001AE3"
    assert cd.expires == 1796210427
    assert cd.fax_expires == 1795634427
    assert cd.warning_time == 1795620027
    assert (cd.eightbit, cd.smtputf8, cd.track, cd.warning_sent) == (False,) * 4
    assert dict(cd.options) == {"RELAYCLIENT": "", "TCPREMOTEIP": "::ffff:127.0.0.1"}
    assert cd.vhost is None and cd.security is None and cd.cancelled is None
    assert cd.recipients == (Recipient("mailtest@courier.test", "", "", 0, 0, False),)
    assert cd.values("u") == ("authsmtp",)


def test_dsn_alias_sample() -> None:
    cd = data_of("b-dsn-3rcpt-alias.ctl")
    assert cd.envid == "test-envid-42"
    assert cd.dsn_ret == "H"
    assert [(r.address, r.original, r.notify, r.index) for r in cd.recipients] == [
        ("mailtest@courier.test", "orig-a@example.org", "SF", 0),
        ("mailtest2@courier.test", "", "N", 1),
        ("mailtest3@courier.test", "x+plus@y.example", "D", 2),
        ("mailtest@courier.test", "postmaster@courier.test", "", 3),
    ]
    assert cd.recipients[0].wants_success_dsn
    assert not cd.recipients[3].wants_success_dsn
    assert cd.recipients[3].original_address == "postmaster@courier.test"
    assert cd.recipients[1].original_address == "mailtest2@courier.test"


def test_norelay_sample_has_track_flag() -> None:
    cd = data_of("d-esmtp-norelay.ctl")
    assert cd.track is True
    assert "RELAYCLIENT" not in cd.options


def test_8bit_and_smtputf8_flags() -> None:
    assert data_of("f-8bitmime.ctl").eightbit is True
    assert data_of("f-8bitmime.ctl").smtputf8 is False
    g = data_of("g-smtputf8.ctl")
    assert g.eightbit and g.smtputf8


def test_sendmail_sample_rdns_and_plain_ipv4() -> None:
    cd = data_of("h-local-sendmail.ctl")
    assert cd.rdns == "localhost"
    assert cd.client_ip_raw == "127.0.0.1"
    assert cd.client_ip == ipaddress.IPv4Address("127.0.0.1")


def test_batch_split_sample() -> None:
    cd = data_of("e-batchsize2-3rcpt.ctl1", "e-batchsize2-3rcpt.ctl2")
    assert len(cd.files) == 2
    assert cd.msgid == "0000000000162188.000000006B06C58B.00007A51"
    assert cd.values("M") == (
        "0000000000162188.000000006B06C58B.00007A51",
        "0000000000162189.000000006B06C58B.00007A51",
    )
    assert [(r.address, r.file_index, r.index) for r in cd.recipients] == [
        ("mailtest@courier.test", 0, 0),
        ("mailtest2@courier.test", 0, 1),
        ("mailtest3@courier.test", 1, 0),
    ]


def test_no_files() -> None:
    cd = parse_controls([])
    assert cd.sender is None and cd.recipients == () and cd.client_ip is None


# -- delivery records ---------------------------------------------------------------------


def test_delivered_recipients_are_left_out() -> None:
    raw = sample("b-dsn-3rcpt-alias.ctl") + b"I1 R 250 Ok - x\nS1 1795605936\nF3 1795605937\n"
    cd = parse_controls([raw])
    assert [r.index for r in cd.recipients] == [0, 2]
    assert [r.done for r in cd.all_recipients] == [False, True, False, True]


def test_delivery_marks_are_per_file() -> None:
    ctl2 = sample("e-batchsize2-3rcpt.ctl2") + b"S0 1\n"
    cd = parse_controls([sample("e-batchsize2-3rcpt.ctl1"), ctl2])
    assert cd.addresses == ("mailtest@courier.test", "mailtest2@courier.test")


def test_bad_delivery_records_are_ignored() -> None:
    raw = b"sa@b\nrx@y\nR\nN\nS\nSfoo 1\nS7 1\nF-1 2\nS\xff\n"
    cd = parse_controls([raw])
    assert cd.addresses == ("x@y",)


def test_recipient_without_n_record_still_counts() -> None:
    # Courier numbers recipients by their r records
    cd = parse_controls([b"ra@x\nR\nrb@x\nR\nN\nS0 5\n"])
    assert [(r.address, r.index, r.done) for r in cd.all_recipients] == [
        ("a@x", 0, True),
        ("b@x", 1, False),
    ]


def test_empty_recipient_address_not_listed() -> None:
    cd = parse_controls([b"r\nR\nN\nrb@x\nR\nN\n"])
    assert [r.index for r in cd.recipients] == [1]
    assert len(cd.all_recipients) == 2


# -- values -------------------------------------------------------------------------------


def test_null_sender_and_missing_sender() -> None:
    assert parse_controls([b"s\nrb@x\nR\nN\n"]).sender == ""
    assert parse_controls([b"rb@x\nR\nN\n"]).sender is None


def test_auth_user_empty_is_present() -> None:
    assert parse_controls([b"i\n"]).auth_user == ""
    assert parse_controls([b"s\n"]).auth_user is None


def test_invalid_utf8_is_lossless() -> None:
    raw = b"sb\xe9d@example.com\nrok@x\nR\nN\n"
    parsed = parse_control(raw)
    rec = parsed.records[0]
    assert rec.malformed
    assert encode_value(rec.value) == b"b\xe9d@example.com"
    assert decode_value(b"\xe9") == "\udce9"
    assert ControlData.from_files([parsed]).sender == "b\udce9d@example.com"


def test_invalid_ip_is_flagged_not_raised() -> None:
    cd = parse_controls([b"OTCPREMOTEIP=999.1.2.3\n"])
    assert cd.client_ip is None
    assert cd.client_ip_invalid
    assert cd.client_ip_raw == "999.1.2.3"


def test_ipv6_client() -> None:
    cd = parse_controls([b"fdns; h6 ([2001:db8::1])\nOTCPREMOTEIP=2001:db8:0::1\n"])
    assert cd.client_ip == ipaddress.IPv6Address("2001:db8::1")
    assert cd.helo == "h6"


def test_options_without_equals_and_repeats() -> None:
    cd = parse_controls([b"OFOO\nOBAR=1\nOBAR=2=3\n"])
    assert dict(cd.options) == {"FOO": "", "BAR": "2=3"}


def test_message_level_records_from_first_file_only() -> None:
    cd = parse_controls([b"sfirst@x\n", b"ssecond@x\nimallory\n8\n"])
    assert cd.sender == "first@x"
    assert cd.auth_user is None
    assert cd.eightbit is False


def test_flags_and_misc_records() -> None:
    cd = parse_controls([b"V\nw\nvvhost.example\nUSTARTTLS\nXspam\nEnope\n"])
    assert cd.verp and cd.warning_sent
    assert cd.vhost == "vhost.example"
    assert cd.security == "STARTTLS"
    assert cd.cancelled == "spam"
    assert cd.expires is None


def test_crlf_and_whitespace_are_stripped() -> None:
    cd = parse_controls([b"s a@b \r\nrx@y\r\nR\r\nNSF\r\n"])
    assert cd.sender == "a@b"
    assert cd.recipients[0].notify == "SF"


def test_truncated_file() -> None:
    parsed = parse_control(b"sa@b\nrx@y\nR")
    assert not parsed.complete
    assert parsed.recipients == (Recipient("x@y", "", "", 0, 0),)


# -- limits -------------------------------------------------------------------------------


def test_size_limit() -> None:
    with pytest.raises(ControlFileError, match="too large"):
        parse_control(b"s" + b"x" * 100, max_size=50)
    assert parse_control(b"s" + b"x" * 49, max_size=50).records[0].value == "x" * 49


def test_record_limit() -> None:
    with pytest.raises(ControlFileError, match="records"):
        parse_control(b"8\n" * 11, max_records=10)
    assert len(parse_control(b"8\n" * 10, max_records=10).records) == 10


def test_non_bytes_rejected() -> None:
    with pytest.raises(ControlFileError):
        parse_control("sa@b\n")  # type: ignore[arg-type]


# -- records to append --------------------------------------------------------------------


def test_add_recipient_records_bytes() -> None:
    assert add_recipient_records("new@example.com") == b"rnew@example.com\nR\nN\n"
    assert add_recipient_records("n@x", "rfc822;o@x", "SF") == b"rn@x\nRrfc822;o@x\nNSF\n"
    assert add_recipient_records("ü@x") == "rü@x\nR\nN\n".encode()
    assert add_recipient_records("b\udce9@x") == b"rb\xe9@x\nR\nN\n"


@pytest.mark.parametrize(
    "args",
    [
        ("",),
        ("a@x\nrb@y",),
        ("a@x\r",),
        (" a@x",),
        ("a@x", "o\n"),
        ("a@x", "", "X"),
        ("a@x", "", "NS"),
        ("a@x", "", "S\n"),
        ("\ud800@x",),
    ],
)
def test_add_recipient_records_rejects(args: tuple[str, ...]) -> None:
    with pytest.raises(ControlFileError):
        add_recipient_records(*args)


def test_appended_recipient_parses_with_next_index() -> None:
    raw = sample("b-dsn-3rcpt-alias.ctl") + add_recipient_records("z@x", "o@x", "F")
    cd = parse_controls([raw])
    assert cd.recipients[-1] == Recipient("z@x", "o@x", "F", 0, 4)


def test_remove_recipient_records_bytes() -> None:
    assert (
        remove_recipient_records(2, 1795605936.7, "duplicate")
        == b"I2 R 250 Ok - duplicate\nS2 1795605936\n"
    )


@pytest.mark.parametrize(
    ("index", "now", "reason"),
    [(-1, 1.0, "x"), (True, 1.0, "x"), (0, -5.0, "x"), (0, 1.0, "a\nS1 2")],
)
def test_remove_recipient_records_rejects(index: int, now: float, reason: str) -> None:
    with pytest.raises(ControlFileError):
        remove_recipient_records(index, now, reason)


def test_removal_marks_recipient_done() -> None:
    raw = sample("e-batchsize2-3rcpt.ctl1") + remove_recipient_records(1, 10, "gone")
    cd = parse_controls([raw])
    assert cd.addresses == ("mailtest@courier.test",)
    assert cd.all_recipients[1].done


# -- property-based -----------------------------------------------------------------------


@given(st.binary(max_size=2000))
@settings(max_examples=300)
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        cd = parse_controls([data, data], max_size=1500, max_records=200)
    except ControlFileError:
        return
    assert len(cd.files) == 2
    for f in cd.files:
        for rec in f.records:
            assert rec.raw.startswith(encode_value(rec.key))
            assert encode_value(rec.value) == rec.raw[1:].strip(b" \t\r\v\f")


RECORD_LINE = st.builds(
    lambda k, v: k + v,
    st.sampled_from([b"s", b"f", b"r", b"R", b"N", b"S", b"F", b"O", b"i", b"E", b"M", b"8"]),
    st.binary(max_size=30).filter(lambda b: b"\n" not in b),
)


@given(st.lists(RECORD_LINE, max_size=40), st.integers(min_value=0, max_value=2000))
@settings(max_examples=300)
def test_structured_and_truncated_input(lines: list[bytes], cut: int) -> None:
    data = b"\n".join(lines) + b"\n"
    for chunk in (data, data[:cut]):
        try:
            cd = parse_controls([chunk])
        except ControlFileError:  # pragma: no cover - only limits raise
            raise AssertionError("no limit was exceeded") from None
        assert all(not r.done and r.address for r in cd.recipients)
        assert len(cd.all_recipients) == sum(1 for ln in chunk.split(b"\n") if ln[:1] == b"r")


@pytest.mark.parametrize("name", CTL_SAMPLES)
def test_every_prefix_of_samples_parses(name: str) -> None:
    raw = sample(name)
    for cut in range(len(raw) + 1):
        cd = parse_controls([raw[:cut]])
        assert len(cd.all_recipients) <= 4


SAFE_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\r\x00"),
    min_size=1,
    max_size=40,
).map(lambda s: s.strip(" \t\v\f\x1c\x1d\x1e\x1f\x85\xa0"))


@given(SAFE_TEXT, SAFE_TEXT, st.sampled_from(["", "N", "S", "SF", "FD", "SFD"]))
@settings(max_examples=200)
def test_add_recipient_round_trip(address: str, original: str, notify: str) -> None:
    try:
        records = add_recipient_records(address, original, notify)
    except ControlFileError:
        assert (
            not address
            or address != address.strip(" \t\v\f")
            or original != original.strip(" \t\v\f")
        )
        return
    cd = parse_controls([sample("a-plain.ctl") + records])
    new = cd.recipients[-1]
    assert (new.address, new.original, new.notify, new.index) == (address, original, notify, 1)
