"""Fixtures for the end-to-end tests through the real Courier MTA.

Session fixtures, in dependency order:

``e2e_lock``
    checks the prerequisites (root, courier-mta installed) and serialises e2e sessions
    on this machine.  Missing prerequisites skip the tests, but fail them under
    ``CI=true``.
``syslog``
    a :class:`~e2e_syslog.SyslogSink` on ``/dev/log`` (Courier logs only via syslog).
``courier``
    a configured and running :class:`~e2e_courier.CourierMTA`; stopped at session end.
``pyfilter``
    a :class:`~e2e_pyfilter.PyFilterDaemon`: the project installed in a venv usable by
    the ``courier`` user, the test filters of ``tests/e2e/filters`` on its ``filter_path``;
    ``pyfilter.configure([...])`` (re)starts it under courierfilter with a new chain.

Plus ``send`` (:func:`~e2e_smtp.send_mail` bound to Courier's port) and ``maildir``
(``maildir("mailtest")`` -> :class:`~e2e_smtp.Maildir`).

Environment: ``COURIER_E2E_ROOT`` (default ``/opt/courier-pyfilter-e2e``: venv, run
directory, logs), ``COURIER_E2E_PORT`` (default 2525).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import NoReturn

import pytest
from e2e_courier import CourierError, CourierMTA, courier_installed
from e2e_pyfilter import FILTER_NAME, PyFilterDaemon, PyFilterSetup, ensure_venv
from e2e_smtp import Maildir, SmtpResult, send_mail
from e2e_syslog import SyslogSink, SyslogUnavailable

REPO = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
E2E_ROOT = Path(os.environ.get("COURIER_E2E_ROOT", "/opt/courier-pyfilter-e2e"))
PORT = int(os.environ.get("COURIER_E2E_PORT", "2525"))
LOCK_WAIT = 600.0


def in_ci() -> bool:
    """True when running under CI (``CI=true``): unavailable prerequisites are failures."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip (locally) or fail (under CI) because a prerequisite is missing."""
    if in_ci():
        pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def e2e_lock() -> Iterator[Path]:
    """Check the prerequisites and hold the machine-wide e2e lock for the session."""
    if not courier_installed():
        unavailable(
            "Courier MTA not installed (apt-get install -y --no-install-recommends "
            "courier-mta swaks python3-venv python3-gdbm)"
        )
    if os.geteuid() != 0:
        unavailable("the Courier e2e tests must run as root (they configure and start Courier)")
    if not os.access("/usr/bin/python3", os.X_OK):
        unavailable("/usr/bin/python3 (Debian's python3) is needed for the daemon's venv")
    E2E_ROOT.mkdir(parents=True, exist_ok=True)
    E2E_ROOT.chmod(0o755)
    with open(E2E_ROOT / ".lock", "w") as lock:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    pytest.fail(f"another e2e session held {E2E_ROOT}/.lock for {LOCK_WAIT:g}s")
                time.sleep(0.5)
        try:
            yield E2E_ROOT
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def syslog(e2e_lock: Path) -> Iterator[SyslogSink]:
    """The syslog sink on ``/dev/log``; its lines are also in ``<root>/syslog.log``."""
    logfile = e2e_lock / "syslog.log"
    logfile.unlink(missing_ok=True)
    sink = SyslogSink("/dev/log", logfile)
    try:
        sink.start()
    except SyslogUnavailable as exc:
        unavailable(str(exc))
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def courier(syslog: SyslogSink, e2e_lock: Path) -> Iterator[CourierMTA]:
    """Courier configured for the tests and running; stopped at the end of the session."""
    mta = CourierMTA(port=PORT, logfile=e2e_lock / "courier-commands.log")
    mta.start()
    others = mta.other_filter_sockets(FILTER_NAME)
    if others:
        pytest.fail(f"other active Courier filters would take part in the tests: {others}")
    yield mta
    errors = []
    try:
        mta.stop_filter(FILTER_NAME, remove=True, timeout=15)
    except CourierError as exc:
        errors.append(str(exc))
    try:
        mta.stop()
    except CourierError as exc:
        errors.append(str(exc))
    if errors:
        pytest.fail("Courier did not stop cleanly: " + "; ".join(errors), pytrace=False)


@pytest.fixture(scope="session")
def pyfilter_program(e2e_lock: Path) -> Path:
    """``bin/pythonfilter`` of a venv (Debian python) holding the current sources."""
    return ensure_venv(REPO, e2e_lock / "venv", log=e2e_lock / "venv-build.log")


@pytest.fixture(scope="session")
def pyfilter(
    courier: CourierMTA, syslog: SyslogSink, pyfilter_program: Path, e2e_lock: Path
) -> Iterator[PyFilterDaemon]:
    """The daemon under test, installed as courierfilter ``pythonfilter``."""
    setup = PyFilterSetup(e2e_lock / "run", pyfilter_program)
    setup.prepare(sorted((E2E_DIR / "filters").glob("*.py")))
    yield PyFilterDaemon(setup, courier, syslog)
    with contextlib.suppress(CourierError):
        courier.stop_filter(FILTER_NAME, remove=True, timeout=15)


@pytest.fixture
def send(courier: CourierMTA) -> Callable[..., SmtpResult]:
    """``send(recipients=..., subject=..., auth=..., source_ip=...)`` -> SmtpResult."""
    return functools.partial(send_mail, courier.port)


@pytest.fixture
def maildir(courier: CourierMTA) -> Callable[[str], Maildir]:
    """``maildir(user)`` -> that user's :class:`~e2e_smtp.Maildir`."""
    return Maildir


@pytest.fixture
def batchsize(courier: CourierMTA) -> Callable[[int], AbstractContextManager[None]]:
    """``with batchsize(2): ...`` temporarily splits recipients over control files."""
    return courier.batchsize
