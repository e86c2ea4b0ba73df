"""``examples/custom-filter-package``: the example third-party filter, as an admin uses it.

The package is copied to a temporary directory and its metadata generated there by
setuptools from its own ``pyproject.toml`` (``egg_info``, no network, no build tools beyond
setuptools); metadata and ``src/`` on ``sys.path`` make it an installed distribution as
far as ``importlib.metadata`` is concerned.  The filter is then found by the real loader
through its entry point, run in a chain on Courier-style messages, checked by
``pythonfilter --check-config`` in a separate process, and the package's own test suite
is run (the project's test run collects ``tests/`` only).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.decision import Verdict
from courier_pyfilter.loader import ENTRY_POINT_GROUP, build_chain, find_module
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings
from courier_pyfilter.testing import MessageFactory

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "custom-filter-package"
MODULE = "courier_pyfilter_recipient_limit"
NAME = "recipient_limit"
TARGET = f"{MODULE}.filter:RecipientLimit"
SETUP_EGG_INFO = (sys.executable, "-c", "from setuptools import setup; setup()", "egg_info")
CHECK_CONFIG = (sys.executable, "-m", "courier_pyfilter.cli.daemon", "--check-config")


def _require_setuptools() -> None:
    if importlib.util.find_spec("setuptools") is None:
        reason = "setuptools is needed to generate the example package's metadata"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)


@dataclass
class Installed:
    """The example package 'installed' from a copy: its source and its metadata."""

    src: Path
    meta: Path
    copy: Path

    @property
    def pythonpath(self) -> str:
        return os.pathsep.join([str(self.meta), str(self.src)])


def _forget() -> None:
    for name in list(sys.modules):
        if (
            name == MODULE
            or name.startswith(MODULE + ".")
            or name.startswith("courier_pyfilter_ep.")
        ):
            del sys.modules[name]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    _require_setuptools()
    base = tmp_path_factory.mktemp("example-pkg")
    copy = base / "pkg"
    shutil.copytree(
        EXAMPLE,
        copy,
        ignore=shutil.ignore_patterns(
            "__pycache__", "*.egg-info", "build", ".pytest_cache", ".mypy_cache"
        ),
    )
    meta = base / "meta"
    meta.mkdir()
    proc = subprocess.run(
        [*SETUP_EGG_INFO, "--egg-base", str(meta)],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Installed(copy / "src", meta, copy)


@pytest.fixture
def installed(built: Installed, monkeypatch: pytest.MonkeyPatch) -> Iterator[Installed]:
    _forget()
    monkeypatch.syspath_prepend(str(built.src))
    monkeypatch.syspath_prepend(str(built.meta))
    importlib.invalidate_caches()
    try:
        yield built
    finally:
        _forget()
        importlib.invalidate_caches()


@pytest.fixture
async def services() -> Any:
    svc = Services(Settings(), lambda section: {})
    yield svc
    await svc.close()


def test_pyproject_declares_the_entry_point() -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    assert project["entry-points"][ENTRY_POINT_GROUP] == {NAME: TARGET}
    assert any(dep.startswith("courier-pyfilter") for dep in project["dependencies"])
    for path in ("README.md", f"src/{MODULE}/filter.py", f"src/{MODULE}/py.typed"):
        assert (EXAMPLE / path).is_file(), path
    assert list((EXAMPLE / "tests").glob("test_*.py"))


def test_generated_metadata_has_the_entry_point(built: Installed) -> None:
    (info,) = built.meta.glob("*.egg-info")
    text = (info / "entry_points.txt").read_text()
    assert f"[{ENTRY_POINT_GROUP}]" in text
    assert f"{NAME} = {TARGET}" in text


def test_loader_finds_it_through_the_entry_point(installed: Installed) -> None:
    loaded = find_module(NAME)
    assert loaded.origin == f"entry point {TARGET}"
    cls = loaded.module.FILTER
    assert cls.__module__ == f"{MODULE}.filter"
    assert cls.__name__ == "RecipientLimit"
    assert cls.__doc__


async def test_it_runs_in_a_chain(installed: Installed, services: Services, tmp_path: Path) -> None:
    sections = {f"{NAME}.py": {"limit": 2, "auth_limit": 3}}
    chain = build_chain([(NAME, frozenset())], lambda s: dict(sections.get(s, {})), services)
    await chain.start()
    try:
        messages = MessageFactory(tmp_path, sender="someone@example.com")
        rcpts = [f"u{i}@example.net" for i in range(4)]
        result = await chain.run(messages(recipients=rcpts[:2]))
        assert result.decision.reply() == "200 Ok"
        result = await chain.run(messages(recipients=rcpts[:3]))
        assert result.decision.verdict is Verdict.REJECT
        assert result.decision.reply() == "550 5.5.3 Too many recipients (3, at most 2 allowed)"
        assert result.deciding == NAME
        result = await chain.run(messages(recipients=rcpts[:3], auth_user="alice"))
        assert result.decision.reply() == "200 Ok"
        result = await chain.run(messages(recipients=rcpts, auth_user="alice", batch_size=2))
        assert result.decision.reply() == "550 5.5.3 Too many recipients (4, at most 3 allowed)"
    finally:
        await chain.stop()


async def test_bad_setting_stops_the_chain_start(installed: Installed, services: Services) -> None:
    sections = {f"{NAME}.py": {"action": "drop"}}
    chain = build_chain([(NAME, frozenset())], lambda s: dict(sections.get(s, {})), services)
    with pytest.raises(ValueError, match="action must be one of"):
        await chain.start()


def _check_config(
    installed: Installed, tmp_path: Path, section: str
) -> subprocess.CompletedProcess[str]:
    chain = tmp_path / "pythonfilter.conf"
    chain.write_text(f"{NAME}\n")
    modules = tmp_path / "pythonfilter-modules.conf"
    modules.write_text(
        f"[courier-pyfilter]\nstate_dir = {str(tmp_path / 'state')!r}\n\n[{NAME}.py]\n{section}\n"
    )
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env["PYTHONPATH"] = installed.pythonpath
    return subprocess.run(
        [*CHECK_CONFIG, "--config", str(chain), "--modules-config", str(modules)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_pythonfilter_check_config_loads_it(installed: Installed, tmp_path: Path) -> None:
    ok = _check_config(installed, tmp_path, "limit = 20\nexempt_senders = ['lists@example.com']")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"configuration OK: {NAME}" in ok.stdout
    bad = _check_config(installed, tmp_path, "limit = 0")
    assert bad.returncode == 1
    assert "limit must be a positive whole number" in bad.stdout + bad.stderr


def test_the_packages_own_tests_pass(installed: Installed) -> None:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env["PYTHONPATH"] = installed.pythonpath  # "installed": the entry-point test runs too
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=installed.copy,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    summary = out.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary), out
    assert "skipped" not in summary and "failed" not in summary, out
