"""Finding filters by name and wrapping each style (class, function, legacy) as a runner."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.chain import INTERNAL_ERROR, TIMED_OUT, Chain
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.loader import (
    ClassRunner,
    FilterLoadError,
    FunctionRunner,
    LegacyRunner,
    build_chain,
    find_module,
    make_runner,
)
from courier_pyfilter.message import Message
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings

MESSAGE: Any = Message("/nonexistent/D1", ["/nonexistent/C1"])


@pytest.fixture
def fp(tmp_path: Path) -> Path:
    """A filter_path directory."""
    path = tmp_path / "fp"
    path.mkdir()
    return path


@pytest.fixture
def services() -> Services:
    return Services(Settings(), lambda name: {})


@pytest.fixture
def legacy_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stand-in ``pythonfilter`` package (the original's filter package), first on sys.path."""
    root = tmp_path / "legacy"
    pkg = root / "pythonfilter"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    _forget_pythonfilter()
    monkeypatch.syspath_prepend(str(root))
    yield pkg
    _forget_pythonfilter()


def _forget_pythonfilter() -> None:
    for name in [m for m in sys.modules if m == "pythonfilter" or m.startswith("pythonfilter.")]:
        del sys.modules[name]


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


FUNC = """
    from courier_pyfilter.decision import Decision
    ORIGIN = "filter_path"
    async def check(message, ctx):
        return Decision.reject("from path", code="550")
"""

# -- search order --------------------------------------------------------------------------


def test_filter_path_before_builtin(fp: Path) -> None:
    write(fp, "debug.py", FUNC)
    loaded = find_module("debug", [str(fp)])
    assert loaded.origin == str(fp / "debug.py")
    assert loaded.module.ORIGIN == "filter_path"


def test_builtin_when_not_on_path(fp: Path) -> None:
    loaded = find_module("debug", [str(fp)])
    assert loaded.origin == "built-in"
    assert loaded.module.__name__ == "courier_pyfilter.filters.debug"


def test_first_filter_path_directory_wins(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    write(one, "f.py", "WHO = 1\nasync def check(m, c): pass\n")
    write(two, "f.py", "WHO = 2\nasync def check(m, c): pass\n")
    assert find_module("f", [str(two), str(one)]).module.WHO == 2
    assert find_module("f", [str(tmp_path / "missing"), str(one)]).module.WHO == 1


def test_dotted_name_is_a_subdirectory(fp: Path) -> None:
    write(fp, "site/rules.py", FUNC)
    assert find_module("site.rules", [str(fp)]).origin == str(fp / "site" / "rules.py")


def test_legacy_package_last(legacy_pkg: Path, fp: Path) -> None:
    write(legacy_pkg, "oldone.py", "def do_filter(b, c):\n    return ''\n")
    loaded = find_module("oldone", [str(fp)])
    assert loaded.origin == "legacy pythonfilter package"
    assert loaded.module.__name__ == "pythonfilter.oldone"
    # but a file in filter_path shadows it
    write(fp, "oldone.py", FUNC)
    assert find_module("oldone", [str(fp)]).origin == str(fp / "oldone.py")


def test_unknown_name() -> None:
    with pytest.raises(FilterLoadError, match='Module "no_such_filter_q" indicated'):
        find_module("no_such_filter_q", [])


@pytest.mark.parametrize("name", ["", "9x", "a..b", "a-b", "../x", "a/b"])
def test_invalid_name(name: str) -> None:
    with pytest.raises(FilterLoadError, match="invalid filter name"):
        find_module(name, [])


def test_import_error_in_file_names_the_file(fp: Path) -> None:
    write(fp, "broken.py", "raise RuntimeError('at import')\n")
    with pytest.raises(FilterLoadError, match=r"broken\.py failed to import: RuntimeError"):
        find_module("broken", [str(fp)])


def test_missing_dependency_of_legacy_module_is_reported(legacy_pkg: Path) -> None:
    write(legacy_pkg, "needsdep.py", "import no_such_dependency_zz\n")
    with pytest.raises(FilterLoadError, match="no_such_dependency_zz"):
        find_module("needsdep", [])


def test_new_generation_reloads_edited_file(fp: Path) -> None:
    write(fp, "f.py", "V = 1\n")
    first = find_module("f", [str(fp)], generation=1)
    write(fp, "f.py", "V = 2\n")
    second = find_module("f", [str(fp)], generation=2)
    assert (first.module.V, second.module.V) == (1, 2)
    assert first.module is not second.module


# -- runners ----------------------------------------------------------------------------------


def runner_for(
    fp: Path, source: str, services: Services, section: Mapping[str, Any] | None = None
) -> tuple[Any, Mapping[str, Any]]:
    write(fp, "t.py", source)
    return make_runner(find_module("t", [str(fp)]), "t", section or {}, services)


async def test_class_filter(fp: Path, services: Services) -> None:
    runner, settings = runner_for(
        fp,
        """
        from courier_pyfilter.api import Filter
        from courier_pyfilter.decision import Decision
        class T(Filter):
            defaults = {"code": "451", "text": "default"}
            whitelist = True
            async def start(self):
                self.started = True
            async def check(self, message, ctx):
                assert ctx is self.ctx and self.started
                return Decision.tempfail(ctx.settings["text"], code=ctx.settings["code"])
        """,
        services,
        {"text": "configured"},
    )
    assert isinstance(runner, ClassRunner)
    assert runner.whitelist is True
    assert dict(settings) == {"code": "451", "text": "configured"}
    assert runner.instance.ctx.name == "t"
    assert runner.instance.ctx.services is services
    await runner.start()
    assert (await runner.check(MESSAGE)).reply() == "451 configured"


def test_explicit_filter_attribute_picks_class(fp: Path, services: Services) -> None:
    runner, _ = runner_for(
        fp,
        """
        from courier_pyfilter.api import Filter
        class A(Filter): pass
        class B(Filter): pass
        FILTER = B
        """,
        services,
    )
    assert type(runner.instance).__name__ == "B"


def test_several_classes_without_filter_attribute(fp: Path, services: Services) -> None:
    with pytest.raises(FilterLoadError, match="several filters"):
        runner_for(
            fp,
            "from courier_pyfilter.api import Filter\nclass A(Filter): pass\n"
            "class B(Filter): pass\n",
            services,
        )


def test_imported_filter_class_is_not_the_module_filter(fp: Path, services: Services) -> None:
    # a module importing someone else's Filter subclass but defining a function filter
    runner, _ = runner_for(
        fp,
        """
        from courier_pyfilter.filters.debug import Debug
        from courier_pyfilter.decision import CONTINUE
        async def check(message, ctx):
            return CONTINUE
        """,
        services,
    )
    assert isinstance(runner, FunctionRunner)


async def test_function_filter(fp: Path, services: Services) -> None:
    runner, settings = runner_for(
        fp,
        """
        from courier_pyfilter.decision import Decision
        DEFAULTS = {"a": 1, "b": 2}
        WHITELIST = True
        events = []
        async def start(ctx):
            events.append(("start", ctx.name))
        async def stop(ctx):
            events.append(("stop", ctx.name))
        async def check(message, ctx):
            return Decision.reject("b=%d" % ctx.settings["b"])
        """,
        services,
        {"b": 5},
    )
    assert isinstance(runner, FunctionRunner)
    assert runner.whitelist is True
    assert dict(settings) == {"a": 1, "b": 5}
    await runner.start()
    assert (await runner.check(MESSAGE)).reply() == "554 b=5"
    await runner.stop()
    assert runner.module.events == [("start", "t"), ("stop", "t")]


def test_sync_check_function_is_not_a_filter(fp: Path, services: Services) -> None:
    with pytest.raises(FilterLoadError, match="is not a filter"):
        runner_for(fp, "def check(message, ctx):\n    return None\n", services)


LEGACY = """
    import threading
    sizeLimit = 10
    calls = []
    def init_filter():
        calls.append(("init", sizeLimit))
    def do_filter(body_path, control_paths):
        calls.append(("filter", body_path, control_paths, threading.current_thread().name))
        return REPLY
    REPLY = ""
"""


async def test_legacy_settings_become_globals_and_init_runs(fp: Path, services: Services) -> None:
    runner, _ = runner_for(fp, LEGACY, services, {"sizeLimit": 99, "REPLY": "550 no"})
    assert isinstance(runner, LegacyRunner)
    assert runner.module.calls == []
    await runner.start()
    assert runner.module.sizeLimit == 99
    assert runner.module.calls == [("init", 99)]
    decision = await runner.check(MESSAGE)
    assert decision == Decision(Verdict.REJECT, "550", ("no",))
    _, body, controls, thread = runner.module.calls[1]
    assert (body, controls) == ("/nonexistent/D1", ["/nonexistent/C1"])
    assert thread != "MainThread"  # legacy code runs in a worker thread


async def test_legacy_multiline_and_empty_reply(fp: Path, services: Services) -> None:
    runner, _ = runner_for(fp, LEGACY, services, {"REPLY": "517-a\n517 b"})
    await runner.start()
    assert (await runner.check(MESSAGE)).reply() == "517-a\n517 b"
    runner.module.REPLY = ""
    assert await runner.check(MESSAGE) is CONTINUE


async def test_legacy_non_string_is_continue(fp: Path, services: Services) -> None:
    runner, _ = runner_for(fp, LEGACY, services, {"REPLY": None})
    await runner.start()
    assert await runner.check(MESSAGE) is CONTINUE


async def test_legacy_invalid_reply_raises(fp: Path, services: Services) -> None:
    runner, _ = runner_for(fp, LEGACY, services, {"REPLY": "rejected!"})
    await runner.start()
    with pytest.raises(ValueError, match="invalid reply"):
        await runner.check(MESSAGE)


async def test_legacy_camel_case_names(fp: Path, services: Services) -> None:
    runner, _ = runner_for(
        fp,
        """
        inited = False
        def initFilter():
            global inited
            inited = True
        def doFilter(bodyFile, controlFileList):
            return "451 camel"
        """,
        services,
    )
    await runner.start()
    assert runner.module.inited is True
    assert (await runner.check(MESSAGE)).reply() == "451 camel"


def test_legacy_whitelist_by_name(legacy_pkg: Path, services: Services) -> None:
    write(legacy_pkg, "whitelist_thing.py", "def do_filter(b, c):\n    return ''\n")
    write(legacy_pkg, "blocker.py", "def do_filter(b, c):\n    return ''\n")
    wl, _ = make_runner(find_module("whitelist_thing"), "whitelist_thing", {}, services)
    bl, _ = make_runner(find_module("blocker"), "blocker", {}, services)
    assert (wl.whitelist, bl.whitelist) == (True, False)


def test_module_without_filter(fp: Path, services: Services) -> None:
    with pytest.raises(FilterLoadError, match="is not a filter"):
        runner_for(fp, "X = 1\n", services)


# -- build_chain -----------------------------------------------------------------------------


def sections_from(data: Mapping[str, Mapping[str, Any]]) -> Any:
    return lambda name: dict(data.get(name, {}))


BLOCKER = """
    from courier_pyfilter.decision import CONTINUE
    async def check(message, ctx):
        return CONTINUE
"""
WHITELISTER = """
    from courier_pyfilter.api import Filter
    from courier_pyfilter.decision import CONTINUE
    class W(Filter):
        whitelist = True
        async def check(self, message, ctx):
            return CONTINUE
"""


def test_build_chain_entries(fp: Path, services: Services) -> None:
    write(fp, "blk.py", BLOCKER)
    write(fp, "wl.py", WHITELISTER)
    chain = build_chain(
        [("wl", frozenset({"blk"})), ("blk", frozenset())],
        sections_from({"blk.py": {"timeout": 2, "mode": "shadow"}}),
        services,
        filter_path=[str(fp)],
        default_timeout=7.5,
    )
    assert isinstance(chain, Chain)
    wl, blk = chain.entries
    assert (wl.name, wl.bypass, wl.timeout, wl.shadow) == ("wl", frozenset({"blk"}), 7.5, False)
    assert (wl.on_error, wl.on_timeout) == (CONTINUE, CONTINUE)
    assert (blk.timeout, blk.shadow) == (2.0, True)
    assert (blk.on_error, blk.on_timeout) == (INTERNAL_ERROR, TIMED_OUT)


def test_build_chain_one_instance_per_line(fp: Path, services: Services) -> None:
    write(fp, "wl.py", WHITELISTER)
    chain = build_chain(
        [("wl", frozenset()), ("wl", frozenset())],
        sections_from({}),
        services,
        filter_path=[str(fp)],
    )
    a, b = chain.entries
    assert a.runner is not b.runner


def test_build_chain_on_error_setting(fp: Path, services: Services) -> None:
    write(fp, "wl.py", WHITELISTER)
    write(fp, "blk.py", BLOCKER)
    chain = build_chain(
        [("wl", frozenset()), ("blk", frozenset())],
        sections_from(
            {"wl.py": {"on_error": "tempfail"}, "blk.py": {"on_error": "421 4.3.0 go away"}}
        ),
        services,
        filter_path=[str(fp)],
    )
    wl, blk = chain.entries
    assert wl.on_error is INTERNAL_ERROR and wl.on_timeout is TIMED_OUT
    assert blk.on_error.reply() == blk.on_timeout.reply() == "421 4.3.0 go away"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"timeout": -1}, "timeout must be a positive number"),
        ({"timeout": "5"}, "timeout must be a positive number"),
        ({"timeout": True}, "timeout must be a positive number"),
        ({"mode": "loud"}, "mode must be 'enforce' or 'shadow'"),
        ({"on_error": "200 Ok"}, "on_error"),
        ({"on_error": "nonsense"}, "on_error"),
    ],
)
def test_build_chain_refuses_bad_chain_settings(
    fp: Path, services: Services, section: dict[str, Any], message: str
) -> None:
    write(fp, "blk.py", BLOCKER)
    with pytest.raises(FilterLoadError, match=message):
        build_chain(
            [("blk", frozenset())],
            sections_from({"blk.py": section}),
            services,
            filter_path=[str(fp)],
        )


def test_build_chain_unknown_module(services: Services) -> None:
    with pytest.raises(FilterLoadError):
        build_chain([("no_such_filter_q", frozenset())], sections_from({}), services)


async def test_builtin_debug_filter_continues(
    tmp_path: Path, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "D1"
    data.write_text("Subject: x\n\nbody\n")
    chain = build_chain([("debug", frozenset())], sections_from({}), services)
    await chain.start()
    caplog.set_level("INFO")
    result = await chain.run(Message(str(data), [str(tmp_path / "missing-C1")]))
    await chain.stop()
    assert result.decision.reply() == "200 Ok"
    assert f"data file {data}" in caplog.text
    assert "cannot stat" in caplog.text
