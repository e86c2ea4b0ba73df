"""courier.control and courier.xfilter against real Courier control files and temp copies."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import courier.control as ctl

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def sample(name: str) -> str:
    path = SAMPLES / name
    if not path.exists():  # pragma: no cover - the samples are part of the repository
        pytest.fail(f"sample {path} missing")
    return str(path)


def copy(tmp_path: Path, *names: str) -> list[str]:
    out = []
    for name in names:
        target = tmp_path / name
        shutil.copyfile(sample(name), target)
        out.append(str(target))
    return out


def test_simple_values_from_real_sample() -> None:
    paths = [sample("a-plain.ctl")]
    assert ctl.get_sender(paths) == "sender@example.com"
    assert ctl.getSendersMta(paths) == "dns; vm ([::ffff:127.0.0.1])"
    assert ctl.get_senders_ip(paths) == "127.0.0.1"  # IPv4-mapped -> IPv4
    assert ctl.getAuthUser(paths) is None
    assert ctl.get_auth_user([sample("c-auth-plain.ctl")]) == "mailtest"
    assert ctl.get_recipients(paths) == ["mailtest@courier.test"]
    assert ctl.getRecipientsData(paths) == [["mailtest@courier.test", "", ""]]


def test_dsn_recipients_shape() -> None:
    paths = [sample("b-dsn-3rcpt-alias.ctl")]
    assert ctl.get_recipients_data(paths) == [
        ["mailtest@courier.test", "orig-a@example.org", "SF"],
        ["mailtest2@courier.test", "", "N"],
        ["mailtest3@courier.test", "x+plus@y.example", "D"],
        ["mailtest@courier.test", "postmaster@courier.test", ""],
    ]


def test_control_data_dict() -> None:
    data = ctl.get_control_data([sample("b-dsn-3rcpt-alias.ctl")])
    assert data["s"] == "sender@example.com"
    assert data["e"] == "test-envid-42"
    assert data["t"] == "H"
    assert data["M"] == "0000000000162078.000000006B06C4A0.00001C14"
    assert data["u"] == "authsmtp"
    assert data["E"] == "1796210464"
    assert data["i"] is None and data["X"] is None and data["v"] is None
    assert data["U"] == ""
    assert data["8"] is False and data["V"] is False and data["w"] is False
    assert len(data["r"]) == 4
    empty = ctl.getControlData([])
    assert empty["s"] == "" and empty["f"] == "" and empty["M"] is None and empty["r"] == []


def test_several_control_files() -> None:
    paths = [sample("e-batchsize2-3rcpt.ctl1"), sample("e-batchsize2-3rcpt.ctl2")]
    assert ctl.get_recipients(paths) == [
        "mailtest@courier.test",
        "mailtest2@courier.test",
        "mailtest3@courier.test",
    ]
    assert ctl.get_lines(paths, "M") == [
        "0000000000162188.000000006B06C58B.00007A51",
        "0000000000162189.000000006B06C58B.00007A51",
    ]
    assert ctl.get_lines(paths, "r", 1) == ["mailtest@courier.test"]  # total, fixed
    assert ctl.get_lines(paths, "r", 2) == ["mailtest@courier.test", "mailtest2@courier.test"]


def test_add_and_delete_recipients(tmp_path: Path) -> None:
    paths = copy(tmp_path, "e-batchsize2-3rcpt.ctl1", "e-batchsize2-3rcpt.ctl2")
    before = Path(paths[0]).read_bytes()
    ctl.add_recipient(paths, "new@example.com")
    ctl.addRecipientData(paths, ["dsn@example.com", "rfc822;orig@example.com", "SF"])
    assert Path(paths[0]).read_bytes() == before  # only the last file grows
    assert (
        Path(paths[1])
        .read_bytes()
        .endswith(b"rnew@example.com\nR\nN\nrdsn@example.com\nRrfc822;orig@example.com\nNSF\n")
    )
    assert ctl.get_recipients(paths)[-2:] == ["new@example.com", "dsn@example.com"]

    assert ctl.del_recipient(paths, "mailtest2@courier.test") is True
    tail = Path(paths[0]).read_bytes()[len(before) :].decode()
    lines = tail.splitlines()
    assert lines[0] == "I1 R 250 Ok - Removed by courier.control.py"
    assert lines[1].startswith("S1 ") and lines[1][3:].isdigit()
    assert "mailtest2@courier.test" not in ctl.get_recipients(paths)

    # the second file's recipients are numbered within that file
    assert ctl.delRecipientData(paths, ["dsn@example.com", "rfc822;orig@example.com", "SF"])
    assert Path(paths[1]).read_text().splitlines()[-2] == (
        "I2 R 250 Ok - Removed by courier.control.py"
    )
    assert ctl.get_recipients(paths) == [
        "mailtest@courier.test",
        "mailtest3@courier.test",
        "new@example.com",
    ]
    assert ctl.del_recipient(paths, "absent@example.com") is False


def test_bad_recipient_data(tmp_path: Path) -> None:
    paths = copy(tmp_path, "a-plain.ctl")
    with pytest.raises(ValueError):
        ctl.add_recipient_data(paths, ["a@b", ""])
    with pytest.raises(ctl.ControlError):
        ctl.add_recipient(paths, "a@b\nsevil@example.com")
    with pytest.raises(ValueError):
        ctl.del_recipient_data(paths, ["only-one"])
    assert ctl.get_sender(paths) == "sender@example.com"


def test_append_after_unterminated_line(tmp_path: Path) -> None:
    path = tmp_path / "C1"
    path.write_bytes(b"ssender@example.com\nra@example.com\nR\nN")
    ctl.add_recipient([str(path)], "b@example.com")
    assert path.read_bytes() == b"ssender@example.com\nra@example.com\nR\nN\nrb@example.com\nR\nN\n"


def test_malformed_utf8_and_ipv6(tmp_path: Path) -> None:
    path = tmp_path / "C1"
    path.write_bytes(
        b"sbad\xff\xfe@example.com\nOTCPREMOTEIP=2001:db8:0:0:0:0:0:1\nr\xe9@x\nR\nN\n"
    )
    paths = [str(path)]
    assert ctl.get_sender(paths) == "(malformed utf8):bad%FF%FE@example.com"
    assert ctl.get_senders_ip(paths) == "2001:db8::1"
    assert ctl.get_recipients(paths) == ["(malformed utf8):%E9@x"]
    path.write_bytes(b"OTCPREMOTEIP=garbage\n")
    with pytest.raises(ValueError):
        ctl.get_senders_ip(paths)
    assert ctl.get_senders_ip([sample("a-plain.ctl")]) == "127.0.0.1"
