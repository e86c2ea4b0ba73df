"""The ``pythonfilter`` package: PYTHONFILTER_LEGACY_PATH, and the quarantine shim."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pythonfilter


def test_extend_path_dedups_and_absolutises(tmp_path: Path) -> None:
    base = ["/a"]
    value = f"{tmp_path}::{tmp_path}:/a"
    assert pythonfilter._extend_path(base, value) == ["/a", str(tmp_path)]
    assert pythonfilter._extend_path(base, None) == ["/a"]


def test_legacy_path_environment(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "oldfilter.py").write_text("def do_filter(body, controls):\n    return '250 one'\n")
    (two / "other.py").write_text("VALUE = 'two'\n")
    code = (
        "import pythonfilter.oldfilter as f, pythonfilter.other as o\n"
        "print(f.do_filter('', []), o.VALUE)\n"
    )
    env = {**os.environ, "PYTHONFILTER_LEGACY_PATH": f"{one}:{two}"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "250 one two"
