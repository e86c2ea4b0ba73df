"""Tests of the pythonfilter.conf (filter chain) reader."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from courier_pyfilter.legacyconf import (
    ChainEntry,
    ConfigError,
    LegacyConfigError,
    default_chain_candidates,
    find_chain_config,
    is_module_name,
    load_chain_config,
    parse_chain,
    parse_chain_config,
)

PATH = "/etc/pythonfilter.conf"


def test_basic_chain_in_order() -> None:
    text = (
        "# Filters run in this order\n"
        "whitelist_relayclients\n"
        "whitelist_auth for greylist spfcheck\n"
        "greylist\n"
        "spfcheck\n"
    )
    assert parse_chain(text, PATH) == [
        ChainEntry("whitelist_relayclients", frozenset(), 2),
        ChainEntry("whitelist_auth", frozenset({"greylist", "spfcheck"}), 3),
        ChainEntry("greylist", frozenset(), 4),
        ChainEntry("spfcheck", frozenset(), 5),
    ]
    assert parse_chain_config(text, PATH).warnings == ()


def test_for_without_names_is_an_empty_bypass_set() -> None:
    assert parse_chain("whitelist_auth for\ngreylist\n") == [
        ChainEntry("whitelist_auth", frozenset(), 1),
        ChainEntry("greylist", frozenset(), 2),
    ]


def test_dotted_module_names() -> None:
    assert parse_chain("site.custom_filter\n") == [ChainEntry("site.custom_filter", frozenset(), 1)]


def test_whitespace_only_and_crlf_lines_are_skipped() -> None:
    # The original crashed on these lines.
    text = "greylist\r\n\r\n   \r\n\t\nspfcheck\r\n   \n"
    assert parse_chain(text) == [
        ChainEntry("greylist", frozenset(), 1),
        ChainEntry("spfcheck", frozenset(), 5),
    ]


def test_old_mac_line_ends_and_missing_final_newline() -> None:
    assert [e.name for e in parse_chain("a\rb\r\nc")] == ["a", "b", "c"]


def test_leading_whitespace_and_indented_comments() -> None:
    text = "   greylist\n   # an indented comment\n#comment\n\tspfcheck for greylist\n"
    assert parse_chain(text) == [
        ChainEntry("greylist", frozenset(), 1),
        ChainEntry("spfcheck", frozenset({"greylist"}), 4),
    ]


def test_trailing_text_is_ignored_with_a_warning() -> None:
    config = parse_chain_config("greylist # five minutes\nspfcheck\n", PATH)
    assert config.entries == (
        ChainEntry("greylist", frozenset(), 1),
        ChainEntry("spfcheck", frozenset(), 2),
    )
    assert [str(w) for w in config.warnings] == [
        f"{PATH}:1: ignored trailing text '# five minutes' after module name "
        "(only 'for NAME ...' may follow)"
    ]


def test_comment_after_for_clause_becomes_bypass_names_as_in_the_original() -> None:
    config = parse_chain_config("whitelist_auth for greylist # note\ngreylist\n", PATH)
    assert config.entries[0].bypass == frozenset({"greylist", "#", "note"})
    messages = [w.message for w in config.warnings]
    assert "bypass name '#' is not a module name and matches no filter" in messages
    assert "bypass name 'note' names no filter listed after 'whitelist_auth'; it has no effect" in (
        messages
    )


def test_bypass_name_without_later_filter_warns() -> None:
    config = parse_chain_config("greylist\nwhitelist_auth for greylist\n", PATH)
    assert len(config.entries) == 2
    assert [(w.line, w.message) for w in config.warnings] == [
        (
            2,
            "bypass name 'greylist' names no filter listed after 'whitelist_auth'; "
            "it has no effect",
        )
    ]


def test_repeated_module_is_kept_and_warned_about() -> None:
    config = parse_chain_config("greylist\nratelimit\ngreylist\n", PATH)
    assert config.names == ["greylist", "ratelimit", "greylist"]
    assert [(w.line, w.message) for w in config.warnings] == [
        (3, "module 'greylist' is listed again (first at line 1); it will run once per listing")
    ]


def test_file_name_instead_of_module_name_warns() -> None:
    config = parse_chain_config("greylist.py\n", PATH)
    assert config.names == ["greylist.py"]
    assert "the module is called 'greylist'" in config.warnings[0].message


@pytest.mark.parametrize(
    ("line", "name"),
    [("grey-list", "grey-list"), ("1filter", "1filter"), ("a..b", "a..b"), ("class", "class"),
     (".hidden", ".hidden"), ("x/y", "x/y"), ("greylist;", "greylist;")],
)  # fmt: skip
def test_invalid_module_names_name_file_and_line(line: str, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_chain(f"# header\n{line} for x\n", PATH)
    assert (info.value.path, info.value.line) == (PATH, 2)
    assert str(info.value) == (
        f"{PATH}:2: invalid module name {name!r}: use Python identifiers separated by dots"
    )


def test_all_invalid_lines_are_reported() -> None:
    with pytest.raises(ConfigError) as info:
        parse_chain("a-b\nok\nc-d\n", PATH)
    assert [p.line for p in info.value.problems] == [1, 3]


def test_empty_file() -> None:
    assert parse_chain("") == []
    assert parse_chain("# nothing\n\n") == []


def test_bom_is_ignored() -> None:
    assert parse_chain("\ufeffgreylist\n") == [ChainEntry("greylist", frozenset(), 1)]


@pytest.mark.parametrize(
    ("name", "valid"),
    [("greylist", True), ("a.b.c", True), ("_x1", True), ("ünïcode", True), ("", False),
     ("a.", False), ("a b", False), ("for", False), ("a.None", False)],
)  # fmt: skip
def test_is_module_name(name: str, valid: bool) -> None:
    assert is_module_name(name) is valid


# -- search and I/O ----------------------------------------------------------


def test_default_candidates_follow_the_original_order() -> None:
    assert default_chain_candidates("/etc/courier") == (
        "/etc/pythonfilter.conf",
        "/usr/local/etc/pythonfilter.conf",
        "/etc/courier/pythonfilter.conf",
    )


def test_find_chain_config_returns_first_readable_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.conf"
    directory = tmp_path / "dir.conf"
    directory.mkdir()
    fifo = tmp_path / "fifo.conf"
    os.mkfifo(fifo)
    second = tmp_path / "second.conf"
    third = tmp_path / "third.conf"
    second.write_text("greylist\n")
    third.write_text("spfcheck\n")
    candidates = [str(p) for p in (missing, directory, fifo, second, third)]
    assert find_chain_config(candidates) == str(second)
    assert find_chain_config([str(missing), str(directory)]) is None
    assert find_chain_config([]) is None


def test_load_chain_config(tmp_path: Path) -> None:
    conf = tmp_path / "pythonfilter.conf"
    conf.write_bytes(b"whitelist_auth for greylist\r\n\r\ngreylist\r\n")
    config = load_chain_config(str(conf))
    assert config.path == str(conf)
    assert config.names == ["whitelist_auth", "greylist"]
    with pytest.raises(ConfigError) as info:
        load_chain_config(str(tmp_path / "missing.conf"))
    assert "file not found" in str(info.value)
    conf.write_text("bad-name\n")
    with pytest.raises(ConfigError) as info:
        load_chain_config(str(conf))
    assert str(info.value).startswith(f"{conf}:1: invalid module name")


# -- property-based -----------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(st.text(max_size=300))
def test_random_text_raises_only_own_errors(text: str) -> None:
    try:
        config = parse_chain_config(text, PATH)
    except LegacyConfigError as error:
        assert isinstance(error, ConfigError)
        return
    for entry in config.entries:
        assert is_module_name(entry.name)
        assert entry.line >= 1


_names = st.sampled_from(["greylist", "spfcheck", "whitelist_auth", "a.b", "ratelimit"])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["", " ", "\t"]),
            _names,
            st.none() | st.lists(_names, max_size=3),
        ),
        max_size=8,
    ),
    st.sampled_from(["\n", "\r\n"]),
    st.lists(st.sampled_from(["", "   ", "# c", "  # c"]), max_size=3),
)
def test_generated_chains_round_trip(
    lines: list[tuple[str, str, list[str] | None]], newline: str, fillers: list[str]
) -> None:
    rendered = []
    expected = []
    for indent, name, bypass in lines:
        rendered.extend(fillers)
        text = f"{indent}{name}" if bypass is None else f"{indent}{name} for {' '.join(bypass)}"
        rendered.append(text)
        expected.append(ChainEntry(name, frozenset(bypass or ()), len(rendered)))
    assert parse_chain(newline.join(rendered) + newline) == expected
