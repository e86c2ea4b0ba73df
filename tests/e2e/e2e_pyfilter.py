"""Install courier-pyfilter as a real courierfilter for the e2e tests.

Under courierfilter the filter runs as user ``courier`` with cwd ``/usr``, argv[0] only and
a scrubbed environment.  So the project is installed (non-editable, from a copy of the
checkout) into a venv made with Debian's ``/usr/bin/python3`` in a directory ``courier``
can read, and the filter program is a small ``/bin/sh`` wrapper that execs the venv's
``pythonfilter`` with the test's configuration files.

The venv is rebuilt only when the sources changed (a hash of ``pyproject.toml`` and
``src/``), so reruns are fast.
"""

from __future__ import annotations

import contextlib
import grp
import hashlib
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from e2e_courier import CourierError, CourierMTA, find_pids
from e2e_syslog import SyslogSink

__all__ = [
    "FILTER_NAME",
    "PyFilterDaemon",
    "PyFilterSetup",
    "VenvError",
    "ensure_venv",
    "render_modules_conf",
    "source_hash",
]

FILTER_NAME = "pythonfilter"
SYSTEM_PYTHON = "/usr/bin/python3"
_STAMP = ".courier-pyfilter-e2e-hash"
_SKIP_DIRS = {"__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache"}


class VenvError(RuntimeError):
    """The daemon's venv could not be built."""


def _source_files(repo: Path) -> list[Path]:
    files: list[Path] = []
    for root, dirs, names in os.walk(repo / "src"):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
        files.extend(Path(root, n) for n in sorted(names) if not n.endswith((".pyc", ".pyo")))
    return files


def _digest(repo: Path, files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(repo)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def source_hash(repo: Path) -> str:
    """A digest of everything that ends up in the installed package (pyproject + src/)."""
    return _digest(repo, [repo / "pyproject.toml", *_source_files(repo)])


def _clean_env() -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _make_readable(top: Path) -> None:
    """chmod a+rX below ``top`` (the venv must be usable by the courier user)."""
    for root, dirs, files in os.walk(top):
        for name in dirs:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o555)
        for name in files:
            path = os.path.join(root, name)
            if os.path.islink(path):
                continue
            mode = os.stat(path).st_mode
            os.chmod(path, mode | 0o444 | (0o111 if mode & 0o100 else 0))
    os.chmod(top, os.stat(top).st_mode | 0o555)


def _copy_sources(repo: Path, build: Path) -> None:
    for name in ("pyproject.toml", "README.md", "LICENSE", "COPYING"):
        if (repo / name).exists():
            shutil.copy2(repo / name, build / name)
    shutil.copytree(
        repo / "src",
        build / "src",
        ignore=lambda _d, names: [
            n for n in names if n in _SKIP_DIRS or n.endswith((".egg-info", ".pyc"))
        ],
    )


def ensure_venv(repo: Path, venv: Path, *, extras: str = "all", log: Path | None = None) -> Path:
    """Make sure ``venv`` holds the current sources of ``repo``; return its ``bin/pythonfilter``.

    The stamp file records two digests: ``pyproject.toml`` (a change rebuilds the venv
    from scratch, dependencies included) and the sources (a change only reinstalls the
    project, without dependencies).  Raises :class:`VenvError` with pip's output when
    the build fails.
    """
    deps_hash = _digest(repo, [repo / "pyproject.toml"])
    src_hash = source_hash(repo)
    stamp = venv / _STAMP
    program = venv / "bin" / FILTER_NAME
    python = venv / "bin" / "python"
    recorded = stamp.read_text().split() if stamp.exists() else []
    if program.exists() and recorded == [deps_hash, src_hash]:
        return program
    full = not (python.exists() and recorded[:1] == [deps_hash])
    output: list[str] = []

    def run(*argv: str) -> None:
        proc = subprocess.run(
            argv,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=900,
        )
        output.append(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}")
        if log is not None:
            with open(log, "a") as fh:
                fh.write(output[-1])
        if proc.returncode != 0:
            raise VenvError(f"{' '.join(argv)} failed ({proc.returncode}):\n{output[-1][-4000:]}")

    stamp.unlink(missing_ok=True)
    if full:
        if venv.exists():
            shutil.rmtree(venv)
        venv.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(venv.parent, os.stat(venv.parent).st_mode | 0o555)
        run(SYSTEM_PYTHON, "-m", "venv", str(venv))
        # build tools inside the venv, so later source-only reinstalls skip build isolation
        run(str(python), "-m", "pip", "install", "-q", "setuptools>=68", "wheel")
    with tempfile.TemporaryDirectory(prefix="courier-pyfilter-build-") as tmp:
        build = Path(tmp) / "src-copy"
        build.mkdir()
        _copy_sources(repo, build)
        pip = [str(python), "-m", "pip", "install", "-q", "--no-build-isolation"]
        if full:
            run(*pip, f"{build}[{extras}]" if extras else str(build))
        else:
            run(*pip, "--no-deps", "--force-reinstall", str(build))
    if not program.exists():
        raise VenvError(f"{program} missing after pip install")
    _make_readable(venv)
    stamp.write_text(f"{deps_hash} {src_hash}\n")
    return program


def render_modules_conf(sections: Mapping[str, Mapping[str, Any]]) -> str:
    """``pythonfilter-modules.conf`` text: each value written as a Python literal."""
    out = []
    for section, values in sections.items():
        out.append(f"[{section}]")
        for key, value in values.items():
            literal = repr(value)
            if "\n" in literal:
                raise ValueError(f"{section}.{key}: value must fit on one line")
            out.append(f"{key} = {literal}")
        out.append("")
    return "\n".join(out)


class PyFilterSetup:
    """The test directory of one e2e session: configuration files, filter modules, state.

    ``run_dir`` must be reachable by the courier user (every parent directory
    searchable); it is recreated by :meth:`prepare`.
    """

    def __init__(self, run_dir: Path, program: Path) -> None:
        self.run_dir = run_dir
        self.program = program
        self.chain_conf = run_dir / "pythonfilter.conf"
        self.modules_conf = run_dir / "pythonfilter-modules.conf"
        self.filters_dir = run_dir / "filters"
        self.state_dir = run_dir / "state"
        self.wrapper = run_dir / "pythonfilter-wrapper.sh"

    def prepare(self, filter_sources: Sequence[Path]) -> None:
        """Create the directory, copy the test filter modules, write the wrapper."""
        if self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        self.run_dir.mkdir(parents=True)
        self.run_dir.chmod(0o755)
        self.filters_dir.mkdir(mode=0o755)
        for source in filter_sources:
            shutil.copy2(source, self.filters_dir / source.name)
            (self.filters_dir / source.name).chmod(0o644)
        self.state_dir.mkdir(mode=0o750)
        os.chown(self.state_dir, pwd.getpwnam("courier").pw_uid, grp.getgrnam("courier").gr_gid)
        self.wrapper.write_text(
            "#!/bin/sh\n"
            "# courier-pyfilter e2e test wrapper: courierfilter runs this as the filter\n"
            f"exec {shlex.quote(str(self.program))}"
            f" --config {shlex.quote(str(self.chain_conf))}"
            f" --modules-config {shlex.quote(str(self.modules_conf))}"
            " --log-format text\n"
        )
        self.wrapper.chmod(0o755)
        self.write_config(["debug"])

    def write_config(
        self,
        chain: Sequence[str],
        sections: Mapping[str, Mapping[str, Any]] | None = None,
        daemon: Mapping[str, Any] | None = None,
    ) -> None:
        """Write ``pythonfilter.conf`` (one chain entry per line) and the modules file.

        ``daemon`` adds to the ``[courier-pyfilter]`` section, which always sets
        ``filter_path`` to the test filters and ``state_dir`` to the session's state dir.
        """
        self.chain_conf.write_text("".join(f"{entry}\n" for entry in chain))
        all_sections: dict[str, Mapping[str, Any]] = {
            "courier-pyfilter": {
                "filter_path": [str(self.filters_dir)],
                "state_dir": str(self.state_dir),
                **(daemon or {}),
            }
        }
        all_sections.update(sections or {})
        self.modules_conf.write_text(render_modules_conf(all_sections))
        for path in (self.chain_conf, self.modules_conf):
            path.chmod(0o644)

    def daemon_pids(self) -> list[int]:
        """Live processes running the daemon with this session's configuration."""
        return find_pids(cmdline_contains=f"--config {self.chain_conf}")

    def cleanup(self) -> None:
        """Remove the test directory."""
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.run_dir)


class PyFilterDaemon:
    """Drive the installed daemon: (re)configure its chain, find it, stop it."""

    def __init__(self, setup: PyFilterSetup, courier: CourierMTA, syslog: SyslogSink) -> None:
        self.setup = setup
        self.courier = courier
        self.syslog = syslog

    def configure(
        self,
        chain: Sequence[str],
        sections: Mapping[str, Mapping[str, Any]] | None = None,
        daemon: Mapping[str, Any] | None = None,
        *,
        timeout: float = 20.0,
    ) -> int:
        """Write the configuration and (re)start the filter under courierfilter.

        Returns the daemon's pid once its socket exists.  On failure the error carries the
        ``courierfilter`` syslog lines (the daemon's stderr) logged meanwhile.
        """
        self.setup.write_config(chain, sections, daemon)
        mark = self.syslog.mark()
        try:
            self.courier.install_filter(FILTER_NAME, self.setup.wrapper, timeout=timeout)
        except CourierError as exc:
            raise CourierError(
                f"{exc}\ncourierfilter log lines since the restart:\n"
                f"{self.syslog.tail(60, since=mark) or '(none)'}"
            ) from exc
        pids = self.setup.daemon_pids()
        if len(pids) != 1:
            raise CourierError(f"expected one daemon process, found {pids}")
        return pids[0]

    def pid(self) -> int | None:
        """The running daemon's pid, None when none runs."""
        pids = self.setup.daemon_pids()
        return pids[0] if pids else None

    def socket(self) -> Path | None:
        """The daemon's socket if it exists."""
        return self.courier.socket_path(FILTER_NAME)

    def stop(self, *, timeout: float = 20.0) -> None:
        """``filterctl stop pythonfilter`` and wait for the socket to go."""
        self.courier.stop_filter(FILTER_NAME, timeout=timeout)
