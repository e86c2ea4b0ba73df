"""courier.xfilter: XFilter / DummyXFilter rewrite the data file like the original."""

from __future__ import annotations

import email
import os
import shutil
from pathlib import Path

import pytest

import courier.xfilter as xf

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def sample(name: str) -> str:
    path = SAMPLES / name
    if not path.exists():  # pragma: no cover - the samples are part of the repository
        pytest.fail(f"sample {path} missing")
    return str(path)


def test_xfilter_modifies_data_file_in_place(tmp_path: Path) -> None:
    data, ctlfile = tmp_path / "D1", tmp_path / "C1"
    shutil.copyfile(sample("a-plain.data"), data)
    shutil.copyfile(sample("a-plain.ctl"), ctlfile)
    original = data.read_bytes()
    inode = os.stat(data).st_ino
    flt = xf.XFilter("test", str(data), [str(ctlfile)])
    assert flt.getControlData()["s"] == "sender@example.com"
    msg = flt.get_message()
    msg["X-Compat"] = "yes"
    assert flt.submit() == ""
    new = data.read_bytes()
    assert os.stat(data).st_ino == inode
    assert new.endswith(b"\n")
    head, _, body = new.partition(b"\n\n")
    assert b"X-Compat: yes" in head.split(b"\n")
    assert original.partition(b"\n\n")[2] == body  # body unchanged
    assert original.partition(b"\n\n")[0] in head  # untouched headers byte-identical


def test_xfilter_set_message_shorter(tmp_path: Path) -> None:
    data = tmp_path / "D1"
    data.write_bytes(b"Subject: long\n\n" + b"x" * 5000 + b"\n")
    flt = xf.XFilter("test", str(data), [])
    flt.setMessage(email.message_from_bytes(b"Subject: short\n\nbody"))
    flt.submit()
    assert data.read_bytes() == b"Subject: short\n\nbody\n"


def test_dummy_xfilter_and_init_error(tmp_path: Path) -> None:
    data = tmp_path / "D1"
    data.write_bytes(b"Subject: a\n\nb\n")
    dummy = xf.DummyXFilter("test", str(data), [])
    dummy.get_message()["X-Added"] = "1"
    assert dummy.submit() == ""
    assert data.read_bytes() == b"Subject: a\n\nb\n"
    with pytest.raises(xf.InitError, match="Internal failure parsing message data file"):
        xf.XFilter("test", str(tmp_path / "missing"), [])
