"""Third-party filters found through the ``courier_pyfilter.filters`` entry-point group.

Each test installs a throw-away distribution the way pip leaves one in ``site-packages``
(a package directory and a ``*.dist-info`` with ``METADATA`` and ``entry_points.txt``) in
a temporary directory put on ``sys.path``; ``importlib.metadata`` then sees it like any
installed package.  The filters are loaded with the real loader and run in a real chain on
messages written by :func:`courier_pyfilter.testing.make_message`.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.decision import Verdict
from courier_pyfilter.loader import (
    ENTRY_POINT_GROUP,
    ClassRunner,
    FilterLoadError,
    FunctionRunner,
    build_chain,
    find_module,
    make_runner,
)
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings
from courier_pyfilter.testing import make_message

PKG = "cpf_ep_mypkg"
"""The fake package's import name (unusual, so it never meets a real one)."""

FILTERS_PY = '''
from courier_pyfilter.api import Context, Filter, Message
from courier_pyfilter.decision import CONTINUE, Decision

CONSTANT = 42

class MyFilter(Filter):
    """Rejects messages whose subject contains the configured word."""

    defaults = {"word": "lottery", "code": "550"}
    started = 0

    async def start(self) -> None:
        type(self).started += 1

    async def check(self, message: Message, ctx: Context) -> Decision:
        subject = (await message.headers()).get("Subject", "")
        if ctx.settings["word"] in subject:
            text = f"5.7.1 no {ctx.settings['word']} here"
            return Decision.reject(text, code=ctx.settings["code"])
        return CONTINUE

def sync_check(message, ctx):
    return CONTINUE

class NotAFilter:
    pass
'''

MODCHECK_PY = """
from courier_pyfilter.decision import CONTINUE, Decision

DEFAULTS = {"sender": "spam@example.com"}
events = []

async def start(ctx):
    events.append(("start", ctx.name))

async def stop(ctx):
    events.append(("stop", ctx.name))

async def check(message, ctx):
    if message.sender == ctx.settings["sender"]:
        return Decision.tempfail("4.7.1 " + ctx.name + " says later")
    return CONTINUE
"""

EXPLODES_PY = """
raise RuntimeError("boom 42 at import")
"""

ENTRY_POINTS = {
    "myfilter": f"{PKG}.filters:MyFilter",
    "site.tagger": f"{PKG}.filters:MyFilter",
    "modfilter": f"{PKG}.modcheck",
    "fnfilter": f"{PKG}.modcheck:check",
    "debug": f"{PKG}.modcheck",
    "missing_module": "cpf_ep_nonexistent.filters:Thing",
    "missing_attr": f"{PKG}.filters:Nope",
    "explodes": f"{PKG}.explodes:Whatever",
    "constant": f"{PKG}.filters:CONSTANT",
    "syncfn": f"{PKG}.filters:sync_check",
    "plainclass": f"{PKG}.filters:NotAFilter",
}


def _forget_modules() -> None:
    for name in list(sys.modules):
        if name == PKG or name.startswith(PKG + ".") or name.startswith("courier_pyfilter_ep."):
            del sys.modules[name]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fake installed distribution ``cpf-ep-mypkg`` on ``sys.path``."""
    root = tmp_path / "site-packages"
    pkg = root / PKG
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "filters.py").write_text(FILTERS_PY)
    (pkg / "modcheck.py").write_text(MODCHECK_PY)
    (pkg / "explodes.py").write_text(EXPLODES_PY)
    info = root / "cpf_ep_mypkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cpf-ep-mypkg\nVersion: 1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in ENTRY_POINTS.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    _forget_modules()
    monkeypatch.syspath_prepend(str(root))  # also invalidates importlib's caches
    importlib.invalidate_caches()
    try:
        yield root
    finally:
        _forget_modules()
        importlib.invalidate_caches()


@pytest.fixture
async def services() -> Any:
    svc = Services(Settings(), lambda section: {})
    yield svc
    await svc.close()


def _sections(values: Mapping[str, Mapping[str, Any]]) -> Any:
    return lambda name: dict(values.get(name, {}))


# -- found by name ---------------------------------------------------------------------------


def test_fake_distribution_is_visible_to_importlib_metadata(site: Path) -> None:
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert {"myfilter", "modfilter", "fnfilter"} <= names


def test_class_entry_point_found_and_wrapped(site: Path, services: Services) -> None:
    loaded = find_module("myfilter")
    assert loaded.name == "myfilter"
    assert loaded.origin == f"entry point {PKG}.filters:MyFilter"
    runner, settings = make_runner(loaded, "myfilter", {"word": "viagra"}, services)
    assert isinstance(runner, ClassRunner)
    assert type(runner.instance).__name__ == "MyFilter"
    assert type(runner.instance).__module__ == f"{PKG}.filters"
    assert settings == {"word": "viagra", "code": "550"}  # section over class defaults
    assert runner.instance.ctx.name == "myfilter"
    assert runner.whitelist is False


async def test_class_entry_point_runs_in_a_chain(
    site: Path, services: Services, tmp_path: Path
) -> None:
    chain = build_chain(
        [("myfilter", frozenset())],
        _sections({"myfilter.py": {"code": "554"}}),
        services,
    )
    assert chain.names == ["myfilter"]
    await chain.start()
    try:
        cls = type(chain.entries[0].runner.instance)  # type: ignore[attr-defined]
        assert cls.started == 1
        spam = make_message(tmp_path, headers={"Subject": "you won the lottery"})
        result = await chain.run(spam)
        assert result.decision.verdict is Verdict.REJECT
        assert result.decision.reply() == "554 5.7.1 no lottery here"
        assert result.deciding == "myfilter"
        ham = make_message(tmp_path, headers={"Subject": "minutes of the meeting"})
        result = await chain.run(ham)
        assert result.decision.reply() == "200 Ok"
    finally:
        await chain.stop()


def test_dotted_entry_point_name(site: Path) -> None:
    # "site.tagger" is not a built-in sub-module; the entry point of that name is used.
    loaded = find_module("site.tagger")
    assert loaded.origin == f"entry point {PKG}.filters:MyFilter"


async def test_module_entry_point_with_async_check(
    site: Path, services: Services, tmp_path: Path
) -> None:
    loaded = find_module("modfilter")
    assert loaded.module.__name__ == f"{PKG}.modcheck"
    runner, settings = make_runner(loaded, "modfilter", {}, services)
    assert isinstance(runner, FunctionRunner)
    assert settings == {"sender": "spam@example.com"}  # the module's DEFAULTS
    chain = build_chain(
        [("modfilter", frozenset())],
        _sections({"modfilter.py": {"sender": "bad@example.org"}}),
        services,
    )
    await chain.start()
    events = loaded.module.events
    try:
        assert events == [("start", "modfilter")]
        bad = make_message(tmp_path, sender="bad@example.org")
        result = await chain.run(bad)
        assert result.decision.verdict is Verdict.TEMPFAIL
        assert result.decision.reply() == "451 4.7.1 modfilter says later"
        good = make_message(tmp_path, sender="spam@example.com")  # default overridden
        assert (await chain.run(good)).decision.reply() == "200 Ok"
    finally:
        await chain.stop()
    assert events[-1] == ("stop", "modfilter")


async def test_function_entry_point(site: Path, services: Services, tmp_path: Path) -> None:
    loaded = find_module("fnfilter")
    assert loaded.origin == f"entry point {PKG}.modcheck:check"
    chain = build_chain(
        [("fnfilter", frozenset())],
        _sections({"fnfilter.py": {"sender": "x@example.com"}}),
        services,
    )
    await chain.start()
    try:
        assert isinstance(chain.entries[0].runner, FunctionRunner)
        msg = make_message(tmp_path, sender="x@example.com")
        assert (await chain.run(msg)).decision.reply() == "451 4.7.1 fnfilter says later"
    finally:
        await chain.stop()


# -- broken entry points -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("missing_module", "cpf_ep_nonexistent"),
        ("missing_attr", "Nope"),
        ("explodes", "boom 42 at import"),
    ],
)
def test_entry_point_that_fails_to_load(site: Path, name: str, expected: str) -> None:
    with pytest.raises(FilterLoadError) as info:
        find_module(name)
    text = str(info.value)
    assert f'entry point "{name}"' in text
    assert ENTRY_POINTS[name] in text  # what the package declared, to find the culprit
    assert "failed to load" in text
    assert expected in text
    assert info.value.__cause__ is not None


def test_entry_point_naming_a_non_callable(site: Path) -> None:
    with pytest.raises(FilterLoadError, match=r'entry point "constant" is neither'):
        find_module("constant")


@pytest.mark.parametrize("name", ["syncfn", "plainclass"])
def test_entry_point_naming_something_that_is_no_filter(
    site: Path, services: Services, name: str
) -> None:
    # Callable, so found; but neither an async check nor a Filter: refused at chain build.
    with pytest.raises(FilterLoadError) as info:
        build_chain([(name, frozenset())], _sections({}), services)
    text = str(info.value)
    assert f'"{name}"' in text
    assert "is not a filter" in text
    assert f"entry point {ENTRY_POINTS[name]}" in text


def test_unknown_name_is_a_clear_error(site: Path) -> None:
    with pytest.raises(FilterLoadError, match=r'Module "nosuchfilter_xyz" indicated in'):
        find_module("nosuchfilter_xyz")


# -- search order --------------------------------------------------------------------------


FILE_FILTER = """
from courier_pyfilter.decision import Decision

async def check(message, ctx):
    return Decision.reject("5.7.1 from filter_path")
"""


async def test_filter_path_wins_over_entry_point(
    site: Path, services: Services, tmp_path: Path
) -> None:
    fp = tmp_path / "fp"
    fp.mkdir()
    (fp / "myfilter.py").write_text(FILE_FILTER)
    loaded = find_module("myfilter", [str(fp)])
    assert loaded.origin == str(fp / "myfilter.py")
    chain = build_chain([("myfilter", frozenset())], _sections({}), services, filter_path=[str(fp)])
    await chain.start()
    try:
        msg = make_message(tmp_path, headers={"Subject": "no match for the entry point"})
        assert (await chain.run(msg)).decision.reply() == "554 5.7.1 from filter_path"
    finally:
        await chain.stop()


def test_filter_path_wins_over_built_in(site: Path, tmp_path: Path) -> None:
    fp = tmp_path / "fp"
    fp.mkdir()
    (fp / "debug.py").write_text(FILE_FILTER)
    assert find_module("debug", [str(fp)]).origin == str(fp / "debug.py")


def test_built_in_wins_over_entry_point(site: Path) -> None:
    # The fake distribution also declares "debug"; the shipped filter is used.
    loaded = find_module("debug")
    assert loaded.origin == "built-in"
    assert loaded.module.__name__ == "courier_pyfilter.filters.debug"


LEGACY_FILTER = """
def do_filter(body_path, control_paths):
    return "550 legacy"
"""


def test_entry_point_wins_over_legacy_package(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    try:
        legacy = importlib.import_module("pythonfilter")
    except ImportError:
        pytest.skip("no legacy 'pythonfilter' package in this installation")
    extra = tmp_path / "legacy"
    extra.mkdir()
    (extra / "myfilter.py").write_text(LEGACY_FILTER)
    (extra / "cpf_ep_onlylegacy.py").write_text(LEGACY_FILTER)
    monkeypatch.setattr(legacy, "__path__", [*legacy.__path__, str(extra)])
    for mod in ("pythonfilter.myfilter", "pythonfilter.cpf_ep_onlylegacy"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    try:
        # The legacy location works for a name nobody else has ...
        assert find_module("cpf_ep_onlylegacy").origin == "legacy pythonfilter package"
        # ... but an installed entry point of the same name comes first.
        assert find_module("myfilter").origin == f"entry point {PKG}.filters:MyFilter"
    finally:
        for mod in ("pythonfilter.myfilter", "pythonfilter.cpf_ep_onlylegacy"):
            sys.modules.pop(mod, None)


def test_removed_distribution_is_no_longer_found(site: Path) -> None:
    assert find_module("modfilter").origin.startswith("entry point")
    (site / "cpf_ep_mypkg-1.0.dist-info" / "entry_points.txt").write_text("")
    importlib.invalidate_caches()
    with pytest.raises(FilterLoadError):
        find_module("modfilter")


def test_group_name_is_the_documented_one() -> None:
    assert ENTRY_POINT_GROUP == "courier_pyfilter.filters"
