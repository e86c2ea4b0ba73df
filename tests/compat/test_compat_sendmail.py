"""courier.sendmail with a fake sendmail program."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import courier.sendmail as sm


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A sendmail that records argv and stdin; its exit status is read from a file."""
    out = tmp_path / "out"
    script = tmp_path / "sendmail"
    script.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys, os, time\n"
        f"d = {str(tmp_path)!r}\n"
        "data = sys.stdin.buffer.read().decode()\n"
        "json.dump({'argv': sys.argv[1:], 'stdin': data}, open(d + '/out', 'w'))\n"
        "if os.path.exists(d + '/sleep'): time.sleep(5)\n"
        "if os.path.exists(d + '/fail'):\n"
        "    sys.stderr.write('no such user\\n'); sys.exit(67)\n"
    )
    script.chmod(0o755)
    monkeypatch.setattr(sm, "sendmail_path", str(script))
    yield out


def result(out: Path) -> dict[str, object]:
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def test_sends_lines_with_sender(fake: Path) -> None:
    sm.sendmail(
        "a@example.com", ["b@example.com", "c@example.com"], [b"Subject: x\n", "\n", b"hi\n"]
    )
    assert result(fake) == {
        "argv": ["-f", "a@example.com", "b@example.com", "c@example.com"],
        "stdin": "Subject: x\n\nhi\n",
    }


def test_null_sender_passed_explicitly(fake: Path) -> None:
    sm.sendmail("", "b@example.com", [b"x\n"])
    assert result(fake)["argv"] == ["-f", "", "b@example.com"]
    sm.sendmail(None, ["b@example.com"], [b"x\n"])
    assert result(fake)["argv"] == ["b@example.com"]


def test_failure_raises(fake: Path, tmp_path: Path) -> None:
    (tmp_path / "fail").write_text("")
    with pytest.raises(sm.SendmailError, match="status 67: no such user"):
        sm.sendmail("", ["b@example.com"], [b"x\n"])


def test_timeout_raises(fake: Path, tmp_path: Path) -> None:
    (tmp_path / "sleep").write_text("")
    with pytest.raises(sm.SendmailError, match="did not finish"):
        sm.sendmail("", ["b@example.com"], [b"x\n"], timeout=0.5)


def test_option_like_recipient_refused(fake: Path) -> None:
    with pytest.raises(ValueError):
        sm.sendmail("", ["-bs"], [b"x\n"])
    assert not fake.exists()


def test_find_sendmail_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sm, "sendmail_path", None)
    monkeypatch.setattr(sm, "_CANDIDATES", (str(tmp_path / "missing"),))
    import courier.config as cfg

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sendmail").write_text("#!/bin/sh\n")
    (bindir / "sendmail").chmod(0o755)
    monkeypatch.setattr(cfg, "bindir", str(bindir), raising=False)
    assert sm.find_sendmail() == str(bindir / "sendmail")
    (bindir / "sendmail").unlink()
    with pytest.raises(sm.SendmailError, match="no sendmail program found"):
        sm.find_sendmail()
