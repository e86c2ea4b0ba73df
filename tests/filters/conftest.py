"""Fixtures shared by the filter tests.

The store suite's fixtures (``tests/store/conftest.py``): ``store_config`` runs a test on
both backends, ``sqlite_config``/``pg_config`` on one, ``store`` opens a store with the
fake ``clock``.  PostgreSQL tests skip without a server, but fail under ``CI=true``.
``tests/store`` is put on ``sys.path``, so test modules can ``from store_testlib import
FakeClock``.

``dkim_pair``: sign and verify messages with DKIM, for the filters that must keep a
signature valid.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import pytest

_STORE_TESTS = Path(__file__).resolve().parent.parent / "store"
if str(_STORE_TESTS) not in sys.path:
    sys.path.insert(0, str(_STORE_TESTS))
_spec = importlib.util.spec_from_file_location("_cpf_store_fixtures", _STORE_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_store_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_store_fixtures)

pg_dsn = _store_fixtures.pg_dsn
pg_config = _store_fixtures.pg_config
sqlite_config = _store_fixtures.sqlite_config
store_config = _store_fixtures.store_config
clock = _store_fixtures.clock
store = _store_fixtures.store


DKIM_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id"]
"""The header fields :func:`dkim_pair` signs unless told otherwise."""


@pytest.fixture(scope="module")
def dkim_pair() -> tuple[Callable[..., bytes], Callable[[bytes], bool]]:
    """``(sign, verify)`` with a fresh RSA key, for "a DKIM signature survives" tests.

    ``sign(message, headers=DKIM_HEADERS)`` prepends a DKIM-Signature (simple/simple);
    ``verify(message)`` checks it against the key's record.  Needs dkimpy (the test
    extra) and the ``openssl`` command: skipped without them, failed under ``CI=true``.
    """
    try:
        import dkim
    except ImportError:
        _unavailable("dkimpy (test extra) is not installed")
    openssl = shutil.which("openssl")
    if openssl is None:
        _unavailable("openssl is not installed")
    pem = subprocess.run([openssl, "genrsa", "1024"], capture_output=True, check=True).stdout
    der = subprocess.run(
        [openssl, "rsa", "-pubout", "-outform", "DER"], input=pem, capture_output=True, check=True
    ).stdout
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)

    def sign(message: bytes, headers: list[bytes] = DKIM_HEADERS) -> bytes:
        signature: bytes = dkim.sign(
            message,
            b"sel",
            b"example.com",
            pem,
            canonicalize=(b"simple", b"simple"),
            include_headers=headers,
            linesep=b"\n",
        )
        return signature + message

    def verify(message: bytes) -> bool:
        return bool(dkim.verify(message, dnsfunc=lambda name, timeout=5: record))

    return sign, verify


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
        pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
    pytest.skip(reason)
