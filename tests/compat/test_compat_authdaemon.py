"""courier.authdaemon against a fake authdaemond on a UNIX socket."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import courier.authdaemon as ad
import courier.config as cfg


class FakeAuthdaemon:
    """Serves one canned answer per connection and records requests and closes."""

    def __init__(self, path: str, answer: bytes, delay: float = 0.0) -> None:
        self.path = path
        self.answer = answer
        self.delay = delay
        self.requests: list[bytes] = []
        self.closed_by_client: list[bool] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(5)
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(1024)
                    if not chunk:
                        break
                    data += chunk
                self.requests.append(data)
                time.sleep(self.delay)
                try:
                    conn.sendall(self.answer)
                    self.closed_by_client.append(conn.recv(1) == b"")
                except OSError:
                    self.closed_by_client.append(True)

    def stop(self) -> None:
        self._stop = True
        self.thread.join(2)
        self.sock.close()


@pytest.fixture(autouse=True)
def _reset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    cfg._reset()
    cfg._configure(modules_configs=[str(empty)])
    monkeypatch.setattr(ad, "_config_loaded", False)
    monkeypatch.setattr(ad, "socket_path", ad.DEFAULT_SOCKET_PATH)
    monkeypatch.setattr(ad, "TIMEOUT_READ", 30)
    yield
    cfg._reset()


def serve(tmp_path: Path, answer: bytes, delay: float = 0.0) -> FakeAuthdaemon:
    return FakeAuthdaemon(str(tmp_path / "sock"), answer, delay)


def test_user_info(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = serve(tmp_path, b"ADDRESS=mailtest\nUID=1001\nHOME=/home/mailtest\nMAILDIR=\n.\n")
    monkeypatch.setattr(ad, "socket_path", fake.path)
    try:
        info = ad.get_user_info("courier", "mailtest")
    finally:
        fake.stop()
    assert info == {"ADDRESS": "mailtest", "UID": "1001", "HOME": "/home/mailtest", "MAILDIR": ""}
    assert fake.requests == [b"PRE . courier mailtest\n"]
    assert fake.closed_by_client == [True]


def test_unknown_user_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = serve(tmp_path, b"FAIL\n")
    monkeypatch.setattr(ad, "socket_path", fake.path)
    try:
        assert ad.getUserInfo("courier", "nobody") is None
    finally:
        fake.stop()


def test_socket_path_from_modules_config(tmp_path: Path) -> None:
    fake = serve(tmp_path, b"UID=7\n.\n")
    conf = tmp_path / "m.conf"
    conf.write_text(f"[authdaemon.py]\nsocket_path = {fake.path!r}\nTIMEOUT_READ = 5\n")
    cfg._configure(modules_configs=[str(conf)])
    try:
        assert ad.get_user_info("smtp", "u") == {"UID": "7"}
    finally:
        fake.stop()
    assert ad.socket_path == fake.path
    assert ad.TIMEOUT_READ == 5


def test_filter_assignment_beats_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = serve(tmp_path, b"UID=8\n.\n")
    conf = tmp_path / "m.conf"
    conf.write_text("[authdaemon.py]\nsocket_path = '/nonexistent/socket'\n")
    cfg._configure(modules_configs=[str(conf)])
    monkeypatch.setattr(ad, "socket_path", fake.path)
    try:
        assert ad.get_user_info("smtp", "u") == {"UID": "8"}
    finally:
        fake.stop()


def test_debian_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = serve(tmp_path, b"UID=9\n.\n")
    monkeypatch.setattr(ad, "DEFAULT_SOCKET_PATH", str(tmp_path / "absent"))
    monkeypatch.setattr(ad, "socket_path", str(tmp_path / "absent"))
    monkeypatch.setattr(ad, "DEBIAN_SOCKET_PATH", fake.path)
    try:
        assert ad.get_user_info("smtp", "u") == {"UID": "9"}
    finally:
        fake.stop()


def test_read_timeout_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = serve(tmp_path, b"UID=1\n.\n", delay=1.0)
    monkeypatch.setattr(ad, "socket_path", fake.path)
    monkeypatch.setattr(ad, "TIMEOUT_READ", 0.2)
    started = time.monotonic()
    try:
        with pytest.raises(OSError, match="cannot read"):
            ad.get_user_info("smtp", "u")
        assert time.monotonic() - started < 0.9
    finally:
        fake.stop()
    monkeypatch.setattr(ad, "socket_path", str(tmp_path / "nothing-here"))
    with pytest.raises(ad.AuthDaemonError, match="cannot connect"):
        ad.get_user_info("smtp", "u")
    with pytest.raises(ValueError):
        ad.get_user_info("smtp", "two words")
