"""The daemon's command line: the argparse-free fast path must agree with the parser."""

from __future__ import annotations

import subprocess
import sys

import pytest

from courier_pyfilter.cli.daemon import _parser, parse_args

AGREE = [
    [],
    ["--socket", "/s"],
    ["--socket=/s", "--config", "/c"],
    ["--modules-config", "/a", "--modules-config=/b"],
    ["--log-format", "json", "--service"],
    ["--log-format=text", "--check-config"],
    ["--version"],
    ["--socket", "/s", "--socket", "/t"],  # the last one wins
    ["--config", "relative/path.conf"],
]


@pytest.mark.parametrize("argv", AGREE, ids=lambda a: " ".join(a) or "(none)")
def test_fast_path_gives_what_argparse_gives(argv: list[str]) -> None:
    assert vars(parse_args(argv)) == vars(_parser().parse_args(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-format", "xml"],
        ["--socket"],
        ["--socket", "--config", "/c"],
        ["--bogus"],
        ["stray"],
        ["--service=yes"],
    ],
)
def test_errors_go_to_argparse(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2
    assert "usage: pythonfilter" in capsys.readouterr().err


def test_abbreviations_still_work_through_argparse() -> None:
    assert parse_args(["--sock", "/s"]).socket == "/s"


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0
    assert "--modules-config" in capsys.readouterr().out


def test_usual_options_do_not_import_argparse() -> None:
    code = (
        "import sys\n"
        "from courier_pyfilter.cli.daemon import parse_args\n"
        "parse_args(['--socket', '/s', '--log-format=json', '--modules-config', '/m'])\n"
        "print('argparse' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
