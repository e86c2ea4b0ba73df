"""Keep the documentation honest: its examples run, its tables match the code.

* every ```` ```python title=PATH ```` block in ``docs/`` is the exact content of ``PATH``,
  and every example filter in ``examples/filters/`` is shown in the docs;
* the example filters run through the real loader and chain on Courier-style messages;
* the configuration snippets parse, the ``>>>`` examples pass as doctests, and the test
  snippet of ``writing-filters.md`` passes;
* the settings, chain keys, environment variables and command-line options the docs list
  are exactly those of the code, with the same defaults;
* relative links between the documents point to existing files.
"""

from __future__ import annotations

import doctest
import re
import types
from collections.abc import AsyncIterator, Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.chain import Chain, ChainResult
from courier_pyfilter.cli.daemon import _parser
from courier_pyfilter.decision import Decision, Verdict
from courier_pyfilter.legacyconf import evaluate, parse_chain_config, parse_modules_config
from courier_pyfilter.loader import CHAIN_KEYS, build_chain
from courier_pyfilter.message import Message
from courier_pyfilter.services import Services
from courier_pyfilter.settings import (
    DAEMON_SECTION,
    Settings,
    apply_section,
    settings_from_env,
)
from courier_pyfilter.testing import make_message

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples" / "filters"
DOC_FILES = sorted(DOCS.glob("*.md"))
REQUIRED_DOCS = {
    "index.md",
    "writing-filters.md",
    "running.md",
    "migrating.md",
    "configuration.md",
    "design.md",
}

FENCE = re.compile(r"^```(?P<lang>[\w-]*)(?P<info>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def blocks(path: Path) -> list[tuple[str, str, str]]:
    """``(language, title, body)`` of every top-level fenced code block of a document."""
    result = []
    for m in FENCE.finditer(path.read_text(encoding="utf-8")):
        title = re.search(r"title=(\S+)", m.group("info"))
        result.append((m.group("lang"), title.group(1) if title else "", m.group("body")))
    return result


def titled(doc: str, lang: str, title: str) -> str:
    """The body of the one block of ``doc`` with this language and title."""
    found = [b for lng, t, b in blocks(DOCS / doc) if lng == lang and t == title]
    assert len(found) == 1, f"{doc}: expected one {lang} block titled {title}"
    return found[0]


def section_text(doc: str, heading: str) -> str:
    """The text of a ``## heading`` section, up to the next level-2 heading."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    start = text.index(f"## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def table_rows(text: str) -> list[list[str]]:
    """Cells of the Markdown table rows in ``text`` (header and rule rows skipped)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:] if rows else rows


def code(cell: str) -> str:
    """The text of a cell that is exactly one ``code span``."""
    m = re.fullmatch(r"`([^`]*)`", cell)
    assert m, f"expected a single code span, got {cell!r}"
    return m.group(1)


# -- the chain, built the way the server builds it ------------------------------------------


class Harness:
    """Builds started chains from configuration text, with the example filters found."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._open: list[tuple[Chain, Services]] = []

    async def chain(self, chain_text: str, modules_text: str = "") -> Chain:
        """Parse both files' text, load the filters from ``examples/filters`` and start them."""
        modules = parse_modules_config([("pythonfilter-modules.conf", modules_text)])
        lines = [(e.name, e.bypass) for e in parse_chain_config(chain_text).entries]
        services = Services(Settings(state_dir=str(self.state_dir)), modules.section)
        chain = build_chain(lines, modules.section, services, filter_path=[str(EXAMPLES)])
        await chain.start()
        self._open.append((chain, services))
        return chain

    async def close(self) -> None:
        """Stop every chain and close its services."""
        for chain, services in reversed(self._open):
            await chain.stop()
            await services.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    state = tmp_path / "state"
    state.mkdir()
    h = Harness(state)
    yield h
    await h.close()


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool"
    path.mkdir()
    return path


def read_bytes(path: str) -> bytes:
    """The current content of a file (a sync helper: tiny local files)."""
    return Path(path).read_bytes()


async def run(chain: Chain, message: Message) -> ChainResult:
    result = await chain.run(message)
    await message.drain_edits()
    return result


# -- the documents exist and their python blocks are the example files ----------------------


def test_all_documents_exist() -> None:
    assert {p.name for p in DOC_FILES} >= REQUIRED_DOCS


def test_titled_python_blocks_are_the_files_they_name() -> None:
    shown = set()
    for doc in DOC_FILES:
        for lang, title, body in blocks(doc):
            if lang != "python" or not title:
                continue
            path = ROOT / title
            assert path.is_file(), f"{doc.name}: {title} does not exist"
            assert body == path.read_text(encoding="utf-8"), f"{doc.name}: {title} differs"
            shown.add(path.name)
    examples = {p.name for p in EXAMPLES.glob("*.py")}
    assert examples, "no example filters"
    assert examples <= shown, f"example filters not shown in the docs: {examples - shown}"


def test_relative_links_point_to_existing_files() -> None:
    for doc in DOC_FILES:
        text = doc.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            assert (doc.parent / target).exists(), f"{doc.name}: broken link {target}"


def test_anchor_links_within_running_md() -> None:
    text = (DOCS / "running.md").read_text(encoding="utf-8")
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, re.M)
    }
    for anchor in re.findall(r"\]\(#([^)]+)\)", text):
        assert anchor in anchors


# -- executable snippets --------------------------------------------------------------------


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: p.name)
def test_doctest_examples(doc: Path) -> None:
    text = "\n".join(body for lang, _title, body in blocks(doc) if lang == "pycon")
    test = doctest.DocTestParser().get_doctest(text, {}, doc.name, str(doc), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0
    if doc.name == "writing-filters.md":
        assert result.attempted >= 5


def test_ini_blocks_parse_and_daemon_sections_are_valid() -> None:
    seen = 0
    for doc in DOC_FILES:
        for lang, title, body in blocks(doc):
            if lang != "ini":
                continue
            config = parse_modules_config([(f"{doc.name}:{title}", body)])
            if config.has_section(DAEMON_SECTION):
                apply_section(Settings(), config.section(DAEMON_SECTION))
            seen += 1
    assert seen >= 4


def test_chain_blocks_parse_without_warnings() -> None:
    seen = 0
    for doc in DOC_FILES:
        for lang, title, body in blocks(doc):
            if lang == "text" and title == "pythonfilter.conf":
                parsed = parse_chain_config(body)
                assert parsed.entries
                assert not parsed.warnings, [str(w) for w in parsed.warnings]
                seen += 1
    assert seen >= 2


async def test_writing_filters_test_snippet_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snippet = [
        body
        for lang, title, body in blocks(DOCS / "writing-filters.md")
        if lang == "python" and not title and "async def test_" in body
    ]
    assert len(snippet) == 1
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = types.ModuleType("docs_snippet")
    exec(compile(snippet[0], "writing-filters.md", "exec"), module.__dict__)  # test code only
    tests = [v for k, v in vars(module).items() if k.startswith("test_")]
    assert len(tests) == 2
    for i, test in enumerate(tests):
        directory = tmp_path / f"t{i}"
        directory.mkdir()
        await test(directory)


# -- the example filters, through the real loader and chain ---------------------------------


async def test_reject_subject(harness: Harness, spool: Path) -> None:
    chain = await harness.chain("reject_subject\n")
    spam = await run(chain, make_message(spool, headers={"Subject": "  [SPAM] cheap"}))
    assert spam.decision.verdict is Verdict.REJECT
    assert spam.decision.reply() == "554 5.7.1 Message refused by content policy"
    assert spam.deciding == "reject_subject"
    ham = await run(chain, make_message(spool, headers={"Subject": "Minutes of the meeting"}))
    assert ham.decision.reply() == "200 Ok"
    assert ham.deciding is None


async def test_reject_subject_settings_come_from_its_section(harness: Harness, spool: Path) -> None:
    chain = await harness.chain(
        "reject_subject\n",
        "[reject_subject.py]\npatterns = [r'\\blottery\\b']\nreply = '5.7.1 Go away'\n",
    )
    hit = await run(chain, make_message(spool, headers={"Subject": "You won the LOTTERY"}))
    assert hit.decision.reply() == "554 5.7.1 Go away"
    default_pattern = await run(chain, make_message(spool, headers={"Subject": "[SPAM] x"}))
    assert default_pattern.decision.verdict is Verdict.ACCEPT


async def test_tag_header_adds_a_header_and_keeps_the_rest(harness: Harness, spool: Path) -> None:
    chain = await harness.chain("tag_header\n")
    msg = make_message(spool, client_ip="192.0.2.7", helo="client.example")
    before = read_bytes(msg.data_path)
    result = await run(chain, msg)
    assert result.decision.reply() == "200 Ok"
    after = read_bytes(msg.data_path)
    expected = b"X-Filtered-By: courier-pyfilter (client 192.0.2.7, helo client.example)\n"
    assert after == expected + before


async def test_tag_header_settings(harness: Harness, spool: Path) -> None:
    chain = await harness.chain(
        "tag_header\n", "[tag_header.py]\nname = 'X-Scanned'\nvalue = 'yes {helo}'\n"
    )
    msg = make_message(spool, helo="h.example")
    await run(chain, msg)
    assert (await msg.headers())["X-Scanned"] == "yes h.example"
    assert read_bytes(msg.data_path).startswith(b"X-Scanned: yes h.example\n")


@pytest.mark.parametrize(
    ("sender", "accepted"),
    [
        ("a@example.org", True),
        ("a@EXAMPLE.org", True),
        ("a@sub.example.net", True),
        ("a@example.net", False),
        ("a@badexample.org", False),
        ("", False),
    ],
)
async def test_whitelist_domains(
    harness: Harness, spool: Path, sender: str, accepted: bool
) -> None:
    chain = await harness.chain(
        "whitelist_domains\nreject_subject\n",
        "[whitelist_domains.py]\ndomains = ['example.org', '.example.net']\n",
    )
    result = await run(chain, make_message(spool, sender=sender, headers={"Subject": "[SPAM]"}))
    if accepted:
        assert result.decision.verdict is Verdict.ACCEPT
        assert result.deciding == "whitelist_domains"
        assert result.decision.reply().startswith("200 Ok, ")
    else:
        assert result.decision.verdict is Verdict.REJECT


async def test_a_broken_whitelist_lets_the_chain_continue(harness: Harness, spool: Path) -> None:
    # domains = None makes the filter raise: as a whitelist, its failure action is CONTINUE.
    chain = await harness.chain(
        "whitelist_domains\nreject_subject\n", "[whitelist_domains.py]\ndomains = None\n"
    )
    result = await run(chain, make_message(spool, headers={"Subject": "[SPAM] x"}))
    assert result.outcomes[0].error is not None
    assert result.decision.verdict is Verdict.REJECT
    clean = await run(chain, make_message(spool, headers={"Subject": "fine"}))
    assert clean.decision.reply() == "200 Ok"


async def test_a_broken_ordinary_filter_tempfails(harness: Harness, spool: Path) -> None:
    chain = await harness.chain("reject_subject\n", "[reject_subject.py]\nreply = 'a\\nb\\rc'\n")
    result = await run(chain, make_message(spool, headers={"Subject": "[SPAM] x"}))
    assert result.decision.verdict is Verdict.TEMPFAIL
    assert result.decision.reply().startswith("451 4.3.0 ")


async def test_legacy_maxsize(harness: Harness, spool: Path) -> None:
    chain = await harness.chain("legacy_maxsize\n", "[legacy_maxsize.py]\nmax_bytes = 2 * 1024\n")
    big = await run(chain, make_message(spool, body=b"x" * 4096 + b"\n"))
    assert big.decision == Decision.reject("5.3.4 Message too big for this system", code="552")
    small = await run(chain, make_message(spool))
    assert small.decision.reply() == "200 Ok"


async def test_the_configuration_of_writing_filters_md(harness: Harness, spool: Path) -> None:
    chain_text = titled("writing-filters.md", "text", "pythonfilter.conf")
    modules_text = titled("writing-filters.md", "ini", "pythonfilter-modules.conf")
    chain = await harness.chain(chain_text, modules_text)
    assert chain.names == ["whitelist_domains", "reject_subject", "tag_header"]

    # Trusted sender: reject_subject is bypassed, tag_header still runs.
    trusted = make_message(spool, sender="boss@example.org", headers={"Subject": "lottery"})
    result = await run(chain, trusted)
    assert result.decision.verdict is Verdict.ACCEPT
    assert [o.name for o in result.outcomes] == ["whitelist_domains", "tag_header"]
    assert "X-Filtered-By" in await trusted.headers()

    # Anyone else: checked with the configured pattern; refused mail is not tagged.
    other = make_message(spool, sender="x@example.com", headers={"Subject": "The lottery"})
    result = await run(chain, other)
    assert result.decision.verdict is Verdict.REJECT
    assert "X-Filtered-By" not in await other.headers()


# -- tables match the code ------------------------------------------------------------------


def _same(documented: Any, actual: Any) -> bool:
    if isinstance(actual, tuple) and isinstance(documented, list | tuple):
        return tuple(documented) == actual
    return bool(documented == actual) and type(documented) in (type(actual), int)


def test_settings_table_matches_settings() -> None:
    rows = table_rows(section_text("configuration.md", "The `[courier-pyfilter]` section"))
    documented = {code(row[0]): code(row[1]) for row in rows}
    defaults = {f.name: getattr(Settings(), f.name) for f in fields(Settings)}
    assert set(documented) == set(defaults)
    for name, text in documented.items():
        assert _same(evaluate(text), defaults[name]), f"{name}: documented default {text}"


def test_section_keys_named_in_the_table_are_accepted() -> None:
    rows = table_rows(section_text("configuration.md", "The `[courier-pyfilter]` section"))
    for row in rows:
        name, default = code(row[0]), evaluate(code(row[1]))
        settable = "not settable" not in row[2] and "not the section" not in row[2]
        if settable and default is not None:
            apply_section(Settings(), {name: default})
        elif not settable:
            with pytest.raises(ValueError):
                apply_section(Settings(), {name: default})


def test_chain_keys_table_matches_the_loader() -> None:
    rows = table_rows(section_text("configuration.md", "Per-filter chain keys"))
    assert {code(row[0]) for row in rows} == set(CHAIN_KEYS)


def test_limits_table_names_real_settings() -> None:
    rows = table_rows(section_text("running.md", "Limits"))
    names = {n for row in rows for n in re.findall(r"`(\w+)`", row[0])}
    assert names
    assert names <= {f.name for f in fields(Settings)} | set(CHAIN_KEYS)


def test_environment_variables_match_the_code() -> None:
    text = section_text("running.md", "Command line and environment")
    documented = set(re.findall(r"`(PYTHONFILTER_\w+)`", text))
    source = (ROOT / "src" / "courier_pyfilter" / "settings.py").read_text(encoding="utf-8")
    assert documented == set(re.findall(r"\b(PYTHONFILTER_\w+)\b", source))
    samples = {"PYTHONFILTER_LOG_FORMAT": "json"}
    for name in documented:
        values, locked = settings_from_env({name: samples.get(name, "/x")})
        assert values and locked, f"{name} is not read"


def test_command_line_options_match_the_parser() -> None:
    table = table_rows(section_text("running.md", "Command line and environment"))
    documented = {m for row in table for m in re.findall(r"`(--[\w-]+)", row[0])}
    actual = {
        opt
        for action in _parser()._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    }
    assert documented == actual


def test_decision_table_replies() -> None:
    rows = table_rows(section_text("writing-filters.md", "Decisions"))
    constructors: dict[str, Callable[..., Decision]] = {
        "accept": Decision.accept,
        "accept_skip_courier": Decision.accept_skip_courier,
        "tempfail": Decision.tempfail,
        "reject": Decision.reject,
    }
    checked = 0
    for row in rows:
        m = re.match(r"`Decision\.(\w+)\(", row[0])
        assert m, row
        verdict = code(row[1])
        if m.group(1) == "continue_":
            assert Decision.continue_().verdict is Verdict[verdict]
            continue
        reply = code(row[2])
        code_, _, text = reply.partition(" ")
        decision = constructors[m.group(1)]() if text in ("Ok", "OK") else None
        if decision is None:
            decision = constructors[m.group(1)](text)
        assert decision.verdict is Verdict[verdict]
        assert decision.reply() == reply
        assert decision.code == code_
        checked += 1
    assert checked == 4


def _example_filter_defaults(name: str) -> set[str]:
    """The setting names a built-in filter knows (its class ``defaults``)."""
    from courier_pyfilter.loader import _filter_class, find_module

    module = find_module(name).module
    cls = _filter_class(module)
    assert cls is not None, f"{name} has no Filter class"
    return set(cls.defaults)


def test_example_configuration_files_match_the_filters() -> None:
    """Every section of the example modules file belongs to a filter or service that
    exists, every key set there is one the filter knows, and the example chain (its
    commented-out lines included) names built-in filters only."""
    from courier_pyfilter.legacyconf import parse_chain_config, parse_modules_config
    from courier_pyfilter.loader import find_module

    examples = ROOT / "examples"
    modules_text = (examples / "pythonfilter-modules.conf").read_text()
    modules = parse_modules_config([("pythonfilter-modules.conf", modules_text)])
    services = {"courier-pyfilter", "ttldb", "dns", "authdaemon.py", "quarantine"}
    filter_sections = [s for s in modules.sections() if s not in services]
    assert len(filter_sections) > 15
    for section in filter_sections:
        assert section.endswith(".py"), section
        known = _example_filter_defaults(section[:-3])
        for key in modules.section(section):
            assert key in known, f"[{section}] {key} is not a setting of the filter"
    chain_text = (examples / "pythonfilter.conf").read_text()
    active = [e.name for e in parse_chain_config(chain_text, "pythonfilter.conf").entries]
    commented = re.findall(r"^# ([a-z][a-z_]*)(?: for [a-z_ ]+)?$", chain_text, re.M)
    assert len(commented) > 10
    for name in [*active, *commented]:
        assert find_module(name).module.__name__ == f"courier_pyfilter.filters.{name}"
