"""Static checks of ``examples/pythonfilter.service`` against the code it starts.

The project's machines run no systemd (no PID 1 systemd, no D-Bus), so the unit cannot be
started here.  These tests parse it and check that what it says agrees with the program:
the command line parses with ``pythonfilter``'s own argument parser, the service mode is
used, the time it allows for stopping covers the drain, the paths it makes writable are the
defaults the server writes to, and the runtime directory holds the ``backend`` socket its
comment tells admins to configure.  ``systemd-analyze verify`` (which works without a
running systemd) is run as well when the binary is installed; it is skipped otherwise,
also under CI, because systemd is not part of what the project installs.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from courier_pyfilter.cli.daemon import _parser
from courier_pyfilter.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "examples" / "pythonfilter.service"
MODULES_EXAMPLE = ROOT / "examples" / "pythonfilter-modules.conf"

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """Sections -> ``(key, value)`` pairs in order, as systemd reads a unit file.

    Comments start with ``#`` or ``;``; a trailing backslash continues a line; keys may
    repeat (each pair is kept).  Raises ``ValueError`` on anything else.
    """
    unit: Unit = {}
    section: str | None = None
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = pending + raw.strip() if pending else raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            if section in unit:
                raise ValueError(f"line {number}: section [{section}] repeated")
            unit[section] = []
            continue
        if section is None or "=" not in line:
            raise ValueError(f"line {number}: not a section header or key=value: {raw!r}")
        key, value = line.split("=", 1)
        unit[section].append((key.strip(), value.strip()))
    if pending:
        raise ValueError("file ends with a continuation line")
    return unit


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every value given to ``key`` in ``section`` (systemd's list-valued keys repeat)."""
    return [v for k, v in unit.get(section, []) if k == key]


def value(unit: Unit, section: str, key: str) -> str:
    """The single value of ``key``; fails when it is missing or given twice."""
    found = values(unit, section, key)
    assert len(found) == 1, f"[{section}] {key} given {len(found)} times"
    return found[0]


_SPAN_UNITS = {
    "us": 1e-6,
    "usec": 1e-6,
    "ms": 1e-3,
    "msec": 1e-3,
    "": 1.0,
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
}


def timespan(text: str) -> float:
    """A systemd time span (``90``, ``90s``, ``1min 30s``, ``infinity``) in seconds."""
    if text.strip() == "infinity":
        return float("inf")
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if not parts or re.sub(r"[\d.\sa-z]", "", text):
        raise ValueError(f"not a time span: {text!r}")
    for number, unit in parts:
        if unit not in _SPAN_UNITS:
            raise ValueError(f"unknown time unit {unit!r} in {text!r}")
        total += float(number) * _SPAN_UNITS[unit]
    return total


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text())


def test_parse_unit_helper() -> None:
    parsed = parse_unit("# c\n[A]\nX=1\nX=2\nY=a \\\n  b\n; c\n[B]\nZ = z\n")
    assert parsed == {"A": [("X", "1"), ("X", "2"), ("Y", "a b")], "B": [("Z", "z")]}
    with pytest.raises(ValueError):
        parse_unit("X=1\n")
    with pytest.raises(ValueError):
        parse_unit("[A]\nnot a pair\n")
    assert timespan("90") == 90
    assert timespan("1min 30s") == 90
    assert timespan("2s") == 2
    with pytest.raises(ValueError):
        timespan("soon")


def test_sections(unit: Unit) -> None:
    assert {"Unit", "Service", "Install"} <= set(unit)
    assert value(unit, "Install", "WantedBy") == "multi-user.target"


def test_execstart_parses_with_our_argument_parser(unit: Unit) -> None:
    argv = shlex.split(value(unit, "Service", "ExecStart"))
    program, args = argv[0], argv[1:]
    assert os.path.isabs(program)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert os.path.basename(program) in scripts
    assert scripts[os.path.basename(program)] == "courier_pyfilter.cli.daemon:main"
    parsed = _parser().parse_args(args)  # argparse exits (fails the test) on unknown options
    assert parsed.service is True
    assert parsed.check_config is False
    # The service owns the backend socket, never Courier's socket.
    assert parsed.socket is None


def test_type_matches_how_the_server_starts(unit: Unit) -> None:
    # The server does not speak sd_notify: Type=notify would time out at every start.
    assert value(unit, "Service", "Type") in ("simple", "exec")
    assert value(unit, "Service", "Restart") in ("on-failure", "always", "on-abnormal")
    assert timespan(value(unit, "Service", "RestartSec")) > 0


def test_runs_as_courier(unit: Unit) -> None:
    # The relay runs as courier under courierfilter; the spool files are courier's 0660.
    assert value(unit, "Service", "User") == "courier"
    assert value(unit, "Service", "Group") == "courier"


def test_reload_sends_hup_and_stop_sends_term(unit: Unit) -> None:
    argv = shlex.split(value(unit, "Service", "ExecReload"))
    assert os.path.basename(argv[0]) == "kill"
    assert "$MAINPID" in argv
    assert "-HUP" in argv or ("-s" in argv and argv[argv.index("-s") + 1] in ("HUP", "SIGHUP"))
    assert value(unit, "Service", "KillSignal") in ("SIGTERM", "TERM")


def test_stop_timeout_exceeds_drain_timeout(unit: Unit) -> None:
    stop = timespan(value(unit, "Service", "TimeoutStopSec"))
    assert stop > Settings().drain_timeout


def test_writable_paths_cover_the_server_defaults(unit: Unit) -> None:
    writable = " ".join(values(unit, "Service", "ReadWritePaths")).split()
    writable = [p.lstrip("-") for p in writable]  # "-/path" = ignore if missing
    defaults = Settings()
    assert defaults.tmp_dir in writable
    assert defaults.state_dir in writable
    assert value(unit, "Service", "ProtectSystem") == "strict"  # so the list matters
    # StateDirectory= creates (and chowns) the default state_dir.
    assert "/var/lib/" + value(unit, "Service", "StateDirectory") == defaults.state_dir


def _backend_in(text: str) -> str:
    found: set[str] = set(re.findall(r"backend\s*=\s*'([^']+)'", text))
    assert len(found) == 1, found
    return found.pop()


def test_runtime_directory_holds_the_documented_backend(unit: Unit) -> None:
    backend = _backend_in(UNIT.read_text())  # from the set-up instructions in the comment
    runtime = value(unit, "Service", "RuntimeDirectory")
    assert os.path.dirname(backend) == f"/run/{runtime}"
    # The same path as the commented example in pythonfilter-modules.conf.
    assert _backend_in(MODULES_EXAMPLE.read_text()) == backend
    # The relay (user courier, group courier) must reach the socket in that directory.
    mode = int(value(unit, "Service", "RuntimeDirectoryMode"), 8)
    assert mode & 0o700 == 0o700
    assert "AF_UNIX" in value(unit, "Service", "RestrictAddressFamilies").split()
    # Kept across restarts, so the relay's target path never disappears for long.
    assert value(unit, "Service", "RuntimeDirectoryPreserve") in ("restart", "yes")


def test_service_mode_reads_backend_from_the_documented_section(tmp_path: Path) -> None:
    """``pythonfilter --service`` with the modules file the unit's comment describes."""
    from courier_pyfilter.cli.daemon import build_settings

    backend = _backend_in(UNIT.read_text())
    modules = tmp_path / "pythonfilter-modules.conf"
    modules.write_text(f"[courier-pyfilter]\nbackend = {backend!r}\n")
    args = _parser().parse_args(["--service", "--modules-config", str(modules)])
    settings, _ = build_settings(args, {})
    assert settings.backend == backend


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        # Not a missing service but a missing tool: the project's machines do not install
        # systemd, so this is skipped under CI too.
        pytest.skip("systemd-analyze is not installed (these machines run no systemd)")
    script = Path(sys.executable).parent / "pythonfilter"
    if not script.exists():
        found = shutil.which("pythonfilter")
        if found is None:
            pytest.skip("the pythonfilter console script is not installed")
        script = Path(found)
    # verify insists that ExecStart's program exists: point it at the installed script.
    text = UNIT.read_text()
    program = shlex.split(value(parse_unit(text), "Service", "ExecStart"))[0]
    copy = tmp_path / "pythonfilter.service"
    copy.write_text(text.replace(f"ExecStart={program} ", f"ExecStart={script} "))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = proc.stdout + proc.stderr
    # verify exits 0 even for unknown keys or unparsable values, printing a warning.
    complaints = [line for line in output.splitlines() if "pythonfilter.service" in line]
    assert proc.returncode == 0, output
    assert complaints == [], output
