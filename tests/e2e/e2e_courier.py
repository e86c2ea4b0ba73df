"""Configure, start and stop the real Courier MTA (Debian package) for the e2e tests.

Works without systemd: the daemons are started with Courier's own start commands, which
daemonise.  Every step is idempotent, so a second session (or a rerun after a crash)
reuses what is running and only restarts what a configuration change requires.

Things learnt the hard way (see the project's e2e notes):

* PID 1 of a container may not reap orphans, so a stopped daemon can linger as a zombie;
  :func:`alive` treats zombies as gone.
* ``filterctl`` sends courierfilter a SIGHUP, and a HUP that arrives while courierfilter
  is still busy with the previous one is lost: the filter helpers re-send it until the
  filter's socket has appeared (or disappeared).
* ``locals``/``defaultdomain`` are read by courierd at start, esmtpd's settings by esmtpd
  at start: a change restarts them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ALLFILTERS",
    "COURIER_ETC",
    "FILTERS_BIN",
    "CourierError",
    "CourierMTA",
    "alive",
    "courier_installed",
    "find_pids",
]

COURIER_ETC = Path("/etc/courier")
FILTERS_BIN = Path("/usr/lib/courier/filters")
FILTERS_ACTIVE = COURIER_ETC / "filters" / "active"
ALLFILTERS = Path("/var/lib/courier/allfilters")
FILTERS_OPTIONAL = Path("/var/lib/courier/filters")
RUN_DIR = Path("/run/courier")
COURIERFILTER_PID = RUN_DIR / "courierfilter.pid"
ESMTPD_PID = RUN_DIR / "esmtpd.pid"
AUTHDAEMON_PID = RUN_DIR / "authdaemon" / "pid"
COURIERD_EXE = "/usr/lib/courier/courier/courierd"
SBIN = Path("/usr/sbin")

_COMMAND_TIMEOUT = 60.0
_HUP_INTERVAL = 0.25
"""Seconds between SIGHUPs while waiting for a filter socket (a HUP may be lost)."""


class CourierError(RuntimeError):
    """Courier could not be configured, started, stopped or driven as asked."""


def courier_installed() -> bool:
    """True when the courier-mta package's commands are present."""
    return all((SBIN / cmd).exists() for cmd in ("courier", "courierfilter", "esmtpd", "filterctl"))


def alive(pid: int | None) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # the state follows the parenthesised command name, which may itself contain ")"
    return stat[stat.rindex(")") + 2 :].split()[0] not in ("Z", "X")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def find_pids(*, exe: str | None = None, cmdline_contains: str | None = None) -> list[int]:
    """Live (non-zombie) processes by executable path and/or a substring of the command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if exe is not None and os.readlink(entry / "exe") != exe:
                continue
            if cmdline_contains is not None:
                cmdline = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
                )
                if cmdline_contains not in cmdline:
                    continue
        except OSError:
            continue
        pid = int(entry.name)
        if alive(pid):
            found.append(pid)
    return sorted(found)


def _wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true (True) or ``timeout`` seconds passed (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


@dataclass
class CourierMTA:
    """The machine's Courier, configured for tests: ESMTP on ``127.0.0.1:port``.

    ``users`` get a Maildir and the password ``password`` (for SMTP AUTH); the first one
    receives postmaster's mail.  ``domain`` must contain a dot (Courier refuses dotless
    recipient domains over ESMTP).
    """

    port: int = 2525
    domain: str = "courier.test"
    users: Sequence[str] = ("mailtest", "mailtest2", "mailtest3")
    password: str = "test123"
    logfile: Path = Path("/tmp/courier-e2e-commands.log")
    started: list[str] = field(default_factory=list)

    # -- running commands ----------------------------------------------------------------

    def run(self, *argv: str, check: bool = True, timeout: float = _COMMAND_TIMEOUT) -> int:
        """Run a Courier command; output goes to :attr:`logfile` (daemons keep it open,
        so it must not be a pipe).  Returns the exit status."""
        with open(self.logfile, "ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, timeout=timeout
                )
            except subprocess.TimeoutExpired as exc:
                raise CourierError(f"{' '.join(argv)} did not finish in {timeout:g}s") from exc
        if check and proc.returncode != 0:
            raise CourierError(
                f"{' '.join(argv)} exited with {proc.returncode}; output in {self.logfile}:\n"
                f"{self._log_tail()}"
            )
        return proc.returncode

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # -- configuration -------------------------------------------------------------------

    def configure(self) -> bool:
        """Apply the test configuration; True when running daemons must be restarted."""
        changed = False
        esmtpd = COURIER_ETC / "esmtpd"
        backup = COURIER_ETC / "esmtpd.e2e-orig"
        if not backup.exists():
            shutil.copy2(esmtpd, backup)
        changed |= _set_shell_vars(
            esmtpd,
            {
                "PORT": f"127.0.0.1.{self.port}",
                "BOFHCHECKDNS": "0",
                "TARPIT": "0",
                "ESMTPDSTART": "YES",
                "ESMTPAUTH": '"LOGIN PLAIN"',
            },
        )
        changed |= _write_if_changed(
            COURIER_ETC / "locals", f"localhost\n{socket.gethostname()}\n{self.domain}\n"
        )
        changed |= _write_if_changed(COURIER_ETC / "defaultdomain", f"{self.domain}\n")
        aliases = COURIER_ETC / "aliases" / "system"
        postmaster = f"postmaster: {self.users[0]}"
        text = aliases.read_text() if aliases.exists() else ""
        if not re.search(rf"^{re.escape(postmaster)}\s*$", text, re.M):
            if re.search(r"^postmaster:.*$", text, re.M):
                text = re.sub(r"^postmaster:.*$", postmaster, text, count=1, flags=re.M)
            else:
                text += ("" if text.endswith("\n") or not text else "\n") + postmaster + "\n"
            aliases.write_text(text)
            changed = True
        if changed or not (COURIER_ETC / "aliases.dat").exists():
            self.run(str(SBIN / "makealiases"))
        if not (COURIER_ETC / "smtpaccess.dat").exists():
            self.run(str(SBIN / "makesmtpaccess"))
        accept = COURIER_ETC / "esmtpacceptmailfor.dir" / "e2e"
        if (
            _write_if_changed(accept, f"{self.domain}\n")
            or not (COURIER_ETC / "esmtpacceptmailfor.dat").exists()
        ):
            self.run(str(SBIN / "makeacceptmailfor"))
        # Debian's courier-filter-perl activates itself at install time.
        with contextlib.suppress(FileNotFoundError):
            (FILTERS_ACTIVE / "courier-filter-perl").unlink()
        with contextlib.suppress(FileNotFoundError):
            (COURIER_ETC / "batchsize").unlink()
        self._ensure_users()
        self._ensure_run_dirs()
        return changed

    def _ensure_users(self) -> None:
        for user in self.users:
            try:
                entry = pwd.getpwnam(user)
            except KeyError:
                self.run("useradd", "-m", "-s", "/bin/bash", user)
                entry = pwd.getpwnam(user)
            if not Path(entry.pw_dir, "Maildir", "new").is_dir():
                self.run("su", "-", user, "-c", "maildirmake ~/Maildir")
        chpasswd = "".join(f"{user}:{self.password}\n" for user in self.users)
        subprocess.run(["chpasswd"], input=chpasswd.encode(), check=True, timeout=30)

    @staticmethod
    def _ensure_run_dirs() -> None:
        import grp

        courier_uid = pwd.getpwnam("courier").pw_uid
        courier_gid = grp.getgrnam("courier").gr_gid
        auth = RUN_DIR / "authdaemon"
        auth.mkdir(parents=True, exist_ok=True)
        os.chown(RUN_DIR, 0, courier_gid)
        RUN_DIR.chmod(0o775)
        os.chown(auth, courier_uid, courier_gid)
        auth.chmod(0o750)

    # -- daemons -------------------------------------------------------------------------

    @staticmethod
    def courierd_pid() -> int | None:
        """The root courierd (the scheduler's parent), None when not running."""
        for pid in find_pids(exe=COURIERD_EXE):
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}").st_uid == 0:
                    return pid
        return None

    def daemon_pids(self) -> dict[str, int | None]:
        """The pids of the four daemons (None = not running)."""

        def live(pid: int | None) -> int | None:
            return pid if alive(pid) else None

        return {
            "esmtpd": live(_read_pid(ESMTPD_PID)),
            "courierd": self.courierd_pid(),
            "courierfilter": live(_read_pid(COURIERFILTER_PID)),
            "authdaemond": live(_read_pid(AUTHDAEMON_PID)),
        }

    def start(self, *, keep_filters: Sequence[str] = ()) -> None:
        """Configure and start whatever is not running; wait for the SMTP banner.

        When courierfilter itself must be started, every active filter except those in
        ``keep_filters`` is deactivated first, so a filter left over from an earlier run
        cannot block the start.
        """
        changed = self.configure()
        pids = self.daemon_pids()
        if changed:
            if pids["esmtpd"]:
                self.run(str(SBIN / "esmtpd"), "stop")
                _wait_until(lambda: not alive(pids["esmtpd"]), 10)
                pids["esmtpd"] = None
            if pids["courierd"]:
                self.run(str(SBIN / "courier"), "stop")
                _wait_until(lambda: not alive(pids["courierd"]), 10)
                pids["courierd"] = None
        if not pids["authdaemond"]:
            self.run(str(SBIN / "authdaemond"), "start")
            self.started.append("authdaemond")
        if not pids["courierfilter"]:
            for link in FILTERS_ACTIVE.iterdir():
                if link.name not in keep_filters:
                    link.unlink()
            self.run(str(SBIN / "courierfilter"), "start")
            self.started.append("courierfilter")
        if not pids["courierd"]:
            self.run(str(SBIN / "courier"), "start")
            self.started.append("courierd")
        if not pids["esmtpd"]:
            self.run(str(SBIN / "esmtpd"), "start")
            self.started.append("esmtpd")
        if not _wait_until(self._banner_ok, 15, 0.05):
            raise CourierError(
                f"no 220 banner on 127.0.0.1:{self.port} after 15s; daemons: "
                f"{self.daemon_pids()}; command log:\n{self._log_tail()}"
            )

    def _banner_ok(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                banner = conn.recv(512)
                conn.sendall(b"QUIT\r\n")
        except OSError:
            return False
        return banner.startswith(b"220")

    def stop(self) -> dict[str, int]:
        """Stop all four daemons with their own stop commands; returns the pids ended.

        Raises :class:`CourierError` when one of them is still alive 10 s later.
        """
        pids = self.daemon_pids()
        ended: dict[str, int] = {}
        stuck = []
        for name, cmd in (
            ("esmtpd", "esmtpd"),
            ("courierd", "courier"),
            ("courierfilter", "courierfilter"),
            ("authdaemond", "authdaemond"),
        ):
            pid = pids[name]
            if pid is None:
                continue
            self.run(str(SBIN / cmd), "stop", check=False, timeout=30)
            if _wait_until(lambda pid=pid: not alive(pid), 10):  # type: ignore[misc]
                ended[name] = pid
            else:
                stuck.append(f"{name}={pid}")
        if stuck:
            raise CourierError(f"still running after stop: {', '.join(stuck)}")
        return ended

    # -- filters -------------------------------------------------------------------------

    @staticmethod
    def socket_path(name: str) -> Path | None:
        """The filter's socket if it exists, in allfilters/ or filters/."""
        for directory in (ALLFILTERS, FILTERS_OPTIONAL):
            path = directory / name
            if path.is_socket():
                return path
        return None

    @staticmethod
    def other_filter_sockets(*names: str) -> list[str]:
        """Filter sockets present besides ``names`` (they would take part in every test)."""
        found: list[str] = []
        for directory in (ALLFILTERS, FILTERS_OPTIONAL):
            with contextlib.suppress(FileNotFoundError):
                found.extend(
                    str(p)
                    for p in directory.iterdir()
                    if not p.name.startswith(".") and p.name not in names
                )
        return found

    def _hup(self) -> None:
        pid = _read_pid(COURIERFILTER_PID)
        if alive(pid):
            assert pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    @staticmethod
    def filter_processes() -> set[int]:
        """Live children of courierfilter: the running filter programs."""
        parent = _read_pid(COURIERFILTER_PID)
        if not alive(parent):
            return set()
        children = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if fields[0] not in ("Z", "X") and int(fields[1]) == parent:
                children.add(int(entry.name))
        return children

    def _wait_socket(self, name: str, present: bool, timeout: float) -> bool:
        """Wait for the socket to (dis)appear, re-sending SIGHUP meanwhile (lost HUPs)."""
        deadline = time.monotonic() + timeout
        next_hup = time.monotonic() + _HUP_INTERVAL
        while True:
            if (self.socket_path(name) is not None) == present:
                return True
            now = time.monotonic()
            if now >= deadline:
                return False
            if now >= next_hup:
                self._hup()
                next_hup = now + _HUP_INTERVAL
            time.sleep(0.02)

    def filter_active(self, name: str) -> bool:
        """True when ``name`` is linked into filters/active."""
        return (FILTERS_ACTIVE / name).is_symlink() or (FILTERS_ACTIVE / name).exists()

    def install_filter(self, name: str, executable: Path, *, timeout: float = 20.0) -> Path:
        """Install ``executable`` as filter ``name``, (re)start it and wait for its socket.

        A running instance is stopped first, so a changed program or configuration is
        picked up.  Returns the socket path.
        """
        if not _valid_filter_name(name):
            raise CourierError(f"bad filter name {name!r}")
        self.stop_filter(name, timeout=timeout)
        target = FILTERS_BIN / name
        tmp = target.with_name(f".{name}.e2e-tmp")
        shutil.copyfile(executable, tmp)
        tmp.chmod(0o755)
        tmp.replace(target)
        self.run(str(SBIN / "filterctl"), "start", name)
        if not self._wait_socket(name, True, timeout):
            raise CourierError(
                f"filter {name} did not create its socket within {timeout:g}s "
                "(see the courierfilter lines in syslog)"
            )
        path = self.socket_path(name)
        assert path is not None
        return path

    def stop_filter(self, name: str, *, timeout: float = 20.0, remove: bool = False) -> None:
        """``filterctl stop name`` and wait until its socket is gone.

        With ``remove`` the program is deleted from the filters directory as well.  A
        socket still there after ``timeout`` (the filter ignored stdin EOF) raises
        :class:`CourierError` after deleting it, so later mail is not blocked.
        """
        running = self.socket_path(name) is not None
        before = self.filter_processes()
        if self.filter_active(name):
            if (FILTERS_BIN / name).exists():
                self.run(str(SBIN / "filterctl"), "stop", name)
            else:
                (FILTERS_ACTIVE / name).unlink()
                self._hup()
        ok = self._wait_socket(name, False, timeout)
        if ok and running and before:
            # The socket goes first, the process exits after draining; until then
            # courierfilter sits in wait() and would lose the next filterctl's SIGHUP.
            _wait_until(lambda: bool(before - self.filter_processes()), timeout)
        if remove:
            with contextlib.suppress(FileNotFoundError):
                (FILTERS_BIN / name).unlink()
        if not ok:
            for directory in (ALLFILTERS, FILTERS_OPTIONAL):
                with contextlib.suppress(FileNotFoundError):
                    (directory / name).unlink()
            raise CourierError(f"filter {name} still had its socket {timeout:g}s after stop")

    @contextlib.contextmanager
    def batchsize(self, size: int) -> Iterator[None]:
        """Temporarily set ``/etc/courier/batchsize`` (read by every submit)."""
        path = COURIER_ETC / "batchsize"
        path.write_text(f"{size}\n")
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


def _valid_filter_name(name: str) -> bool:
    return bool(name) and "/" not in name and not name.startswith(".")


def _write_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.write_text(text)
    return True


def _set_shell_vars(path: Path, values: dict[str, str]) -> bool:
    """Set ``VAR=value`` lines in a Courier shell-style config file; True if changed."""
    text = path.read_text()
    new = text
    for var, value in values.items():
        line = f"{var}={value}"
        pattern = re.compile(rf"^{re.escape(var)}=.*$", re.M)
        if pattern.search(new):
            new = pattern.sub(lambda _m, line=line: line, new)  # type: ignore[misc]
        else:
            new += ("" if new.endswith("\n") else "\n") + line + "\n"
    if new == text:
        return False
    path.write_text(new)
    return True
