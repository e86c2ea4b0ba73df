"""Tests of the pythonfilter-modules.conf reader."""

from __future__ import annotations

import configparser
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from courier_pyfilter.legacyconf import (
    DEFAULT_MODULES_CONFIG_PATHS,
    ConfigError,
    ConfigWarning,
    LegacyConfigError,
    ModulesConfig,
    ValueSource,
    load_modules_config,
    parse_modules_config,
    parse_raw_sections,
)

ETC = "/etc/pythonfilter-modules.conf"
LOCAL = "/usr/local/etc/pythonfilter-modules.conf"

# Written for these tests in the style users write (every key from the original's table).
SAMPLE = """\
# Settings for the pythonfilter modules.
; Both comment styles work.

[add_signature.py]
domains = {'example.com': '/etc/courier/signatures/example.com',
           '': '/etc/courier/signatures/default'}

[attachments.py]
blocked_pattern = r'^.*\\.(scr|exe|com|bat|pif)$'

[auto_whitelist.py]
whitelist_ttl = 60 * 60 * 24 * 30
whitelist_purge_interval = 60 * 60 * 12

[clamav.py]
local_socket = '/run/clamav/clamd.ctl'
action = 'quarantine'

[dialback.py]
senders_ttl = 60 * 60 * 24 * 7
postmaster_addr = ''

[greylist.py]
senders_purge_interval = 60 * 60 * 2
senders_passed_ttl = 60 * 60 * 24 * 36
senders_not_passed_ttl = 60 * 60 * 24
greylist_time = 300  # five minutes

[localsenders.py]
require_auth = True

[privateaddr.py]
private_rcpts = {
    'staff@example.com': ['[^@]*@example.com'],

    # blank line and comment inside the value are fine
    'board@example.com': ['chair@example.com',
                          'treasurer@example.com'],
    }

[ratelimit.py]
max_connections = 60
interval = 1
limit_network: False

[spamassassin.py]
reject_score = 10.0
username = None

[whitelist_dnswl.py]
dnswl_zone = ['list.dnswl.org']

[ttldb]
type = 'dbm'
dir = '/var/lib/pythonfilter'

[quarantine]
siteid = 'local'
days = 14
also_notify = 'postmaster@example.com'
"""


def parse_one(text: str, path: str = ETC) -> ModulesConfig:
    return parse_modules_config([(path, text)])


def test_sample_values() -> None:
    config = parse_one(SAMPLE)
    assert config.section("add_signature.py") == {
        "domains": {
            "example.com": "/etc/courier/signatures/example.com",
            "": "/etc/courier/signatures/default",
        }
    }
    assert config.section("attachments.py")["blocked_pattern"] == ("^.*\\.(scr|exe|com|bat|pif)$")
    assert config.section("auto_whitelist.py") == {
        "whitelist_ttl": 2592000,
        "whitelist_purge_interval": 43200,
    }
    assert config.section("greylist.py") == {
        "senders_purge_interval": 7200,
        "senders_passed_ttl": 3110400,
        "senders_not_passed_ttl": 86400,
        "greylist_time": 300,
    }
    assert config.section("privateaddr.py")["private_rcpts"] == {
        "staff@example.com": ["[^@]*@example.com"],
        "board@example.com": ["chair@example.com", "treasurer@example.com"],
    }
    assert config.section("ratelimit.py") == {
        "max_connections": 60,
        "interval": 1,
        "limit_network": False,
    }
    assert config.section("spamassassin.py") == {"reject_score": 10.0, "username": None}
    assert config.section("whitelist_dnswl.py") == {"dnswl_zone": ["list.dnswl.org"]}
    assert config.section("ttldb") == {"type": "dbm", "dir": "/var/lib/pythonfilter"}
    assert config.section("dialback.py")["postmaster_addr"] == ""
    assert config.section("localsenders.py") == {"require_auth": True}
    assert config.sections()[0] == "add_signature.py"
    assert config.sections()[-1] == "quarantine"
    assert config.warnings == ()
    assert config.paths == (ETC,)


def test_raw_values_keep_text_as_written() -> None:
    config = parse_one(SAMPLE)
    assert config.raw_section("greylist.py")["greylist_time"] == "300  # five minutes"
    assert config.raw_section("add_signature.py")["domains"] == (
        "{'example.com': '/etc/courier/signatures/example.com',\n"
        "'': '/etc/courier/signatures/default'}"
    )


def test_sources_point_at_key_lines() -> None:
    config = parse_one(SAMPLE)
    source = config.source("greylist.py", "greylist_time")
    assert source == ValueSource(
        ETC,
        SAMPLE.splitlines().index("greylist_time = 300  # five minutes") + 1,
        "greylist.py",
        "greylist_time",
    )
    assert str(source).startswith(f"{ETC}:{source.line}: [greylist.py] greylist_time")
    with pytest.raises(KeyError):
        config.source("greylist.py", "nope")


def test_unquoted_word_is_reported_with_file_line_section_key() -> None:
    text = "[ttldb]\ndir = '/var/lib/pythonfilter'\ntype = dbm\n"
    with pytest.raises(ConfigError) as info:
        parse_one(text)
    error = info.value
    assert (error.path, error.line, error.section, error.key) == (ETC, 3, "ttldb", "type")
    assert str(error) == (
        f"{ETC}:3: [ttldb] type: unquoted word 'dbm': strings need quotes, write 'dbm'"
    )


def test_error_inside_multiline_value_points_at_its_physical_line() -> None:
    text = (
        "[privateaddr.py]\n"
        "private_rcpts = {\n"
        "    'a@example.com': ['x'],\n"
        "\n"
        "    # comment\n"
        "    'b@example.com': [nobody],\n"
        "    }\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_one(text)
    assert info.value.line == 6
    assert info.value.key == "private_rcpts"
    assert "unquoted word 'nobody'" in info.value.reason


def test_all_problems_are_reported_in_file_order() -> None:
    first = "[a.py]\nx = one\ny = 2\n"
    second = "[b.py]\nz = __import__('os')\n[b.py]\n"
    with pytest.raises(ConfigError) as info:
        parse_modules_config([(ETC, first), (LOCAL, second)])
    lines = str(info.value).splitlines()
    assert len(info.value.problems) == 3
    assert lines[0].startswith(f"{ETC}:2: [a.py] x: unquoted word 'one'")
    assert lines[1].startswith(f"{LOCAL}:2: [b.py] z: function calls are not allowed")
    assert lines[2] == f"{LOCAL}:3: duplicate section [b.py] (already started at line 1)"


def test_later_file_overrides_single_keys() -> None:
    config = parse_modules_config(
        [
            (ETC, "[greylist.py]\ngreylist_time = 300\nsenders_passed_ttl = 100\n"),
            (LOCAL, "[greylist.py]\ngreylist_time = 600\n[ttldb]\ntype = 'pg'\n"),
        ]
    )
    assert config.section("greylist.py") == {"greylist_time": 600, "senders_passed_ttl": 100}
    assert config.source("greylist.py", "greylist_time") == ValueSource(
        LOCAL, 2, "greylist.py", "greylist_time"
    )
    assert config.source("greylist.py", "senders_passed_ttl").path == ETC
    assert config.sections() == ["greylist.py", "ttldb"]
    assert config.section_location("greylist.py") == (ETC, 1)


def test_overridden_bad_value_is_not_evaluated() -> None:
    # Like the original, only the effective value of a key is evaluated.
    config = parse_modules_config(
        [(ETC, "[ttldb]\ntype = dbm\n"), (LOCAL, "[ttldb]\ntype = 'dbm'\n")]
    )
    assert config.section("ttldb") == {"type": "dbm"}


def test_same_section_in_two_files_is_not_a_duplicate() -> None:
    config = parse_modules_config([(ETC, "[x]\na = 1\n"), (LOCAL, "[x]\na = 2\n")])
    assert config.get("x", "a") == 2


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("[x]\na = 1\na = 2\n", 3, "duplicate key (already set at line 2)"),
        ("[x]\na = 1\n[y]\n[x]\n", 4, "duplicate section [x] (already started at line 1)"),
        ("a = 1\n[x]\n", 1, "text before the first [section] header"),
        ("[x]\njust words\n", 2, "not a 'key = value' line"),
        ("[x]\n= 1\n", 2, "missing key name before '='"),
        ("[x]\n[]\n", 2, "not a 'key = value' line"),
    ],
)
def test_syntax_problems(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_one(text)
    assert info.value.path == ETC
    assert info.value.line == line
    assert fragment in info.value.reason
    with pytest.raises(ConfigError):
        parse_raw_sections([(ETC, text)])


def test_names_keep_their_case_and_sections_are_case_sensitive() -> None:
    config = parse_one("[TtlDb]\nType = 'dbm'\n[ttldb]\ntype = 'pg'\n")
    assert config.section("TtlDb") == {"Type": "dbm"}
    assert config.section("ttldb") == {"type": "pg"}
    assert config.section("TTLDB") == {}


def test_separators_and_whitespace() -> None:
    config = parse_one("[x]\na=1\nb : 2\nc:3\nd = 'p=q:r'\ne: 'u = v'\n  \n")
    assert config.section("x") == {"a": 1, "b": 2, "c": 3, "d": "p=q:r", "e": "u = v"}


def test_first_separator_splits_key_and_value() -> None:
    # "a:b = c" is key 'a' with value "b = c" (RawConfigParser's rule).
    assert parse_raw_sections([(ETC, "[x]\na:b = c\n")]) == {"x": {"a": "b = c"}}


def test_semicolon_is_not_an_inline_comment() -> None:
    with pytest.raises(ConfigError) as info:
        parse_one("[x]\na = 1 ; one\n")
    assert info.value.key == "a"
    assert parse_raw_sections([(ETC, "[x]\na = 1 ; one\n")]) == {"x": {"a": "1 ; one"}}


def test_continuation_needs_deeper_indentation() -> None:
    text = "[x]\n  a = [1,\n  2]\n"
    with pytest.raises(ConfigError) as info:
        parse_one(text)
    by_line = {p.line: p.reason for p in info.value.problems}
    assert "indented more than its key" in by_line[3]
    assert "'[' was never closed" in by_line[2]
    assert parse_one("[x]\n  a = [1,\n   2]\n").section("x") == {"a": [1, 2]}


def test_indented_comment_inside_value_is_skipped() -> None:
    text = "[x]\na = [1,\n    # 2,\n    3]\n"
    assert parse_one(text).section("x") == {"a": [1, 3]}


def test_crlf_and_bom() -> None:
    text = "\ufeff[x]\r\na = {1: 'one',\r\n     2: 'two'}\r\n\r\nb = 'c'\r\n"
    config = parse_one(text)
    assert config.section("x") == {"a": {1: "one", 2: "two"}, "b": "c"}
    assert config.source("x", "b").line == 5


def test_default_section_applies_to_every_section() -> None:
    config = parse_one("[DEFAULT]\nshared = 1\n[a.py]\nown = 2\n[b.py]\nshared = 3\n")
    assert config.section("a.py") == {"shared": 1, "own": 2}
    assert config.section("b.py") == {"shared": 3}
    assert config.sections() == ["a.py", "b.py"]
    assert config.section("missing.py") == {}
    assert config.source("a.py", "shared").section == "DEFAULT"


def test_missing_section_and_empty_config() -> None:
    config = parse_modules_config([])
    assert config.sections() == []
    assert config.section("greylist.py") == {}
    assert config.get("greylist.py", "greylist_time", 300) == 300
    assert not config.has_section("greylist.py")


def test_section_results_are_copies() -> None:
    config = parse_one("[x]\na = [1]\n")
    config.section("x")["a"].append(2)
    config.get("x", "a").append(3)
    assert config.section("x") == {"a": [1]}


def test_section_any_first_present_wins_and_duplicates_warn() -> None:
    config = parse_one("[TtlDb]\ntype = 'pg'\n[ttldb]\ntype = 'dbm'\ndir = '/x'\n")
    assert config.section_any("ttldb", "TtlDb") == {"type": "dbm", "dir": "/x"}
    assert config.section_any("TtlDb", "ttldb") == {"type": "pg"}
    assert config.find_section("quarantine", "Quarantine") is None
    assert config.section_any("quarantine", "Quarantine") == {}
    assert config.warnings == (
        ConfigWarning(
            ETC,
            1,
            "section [TtlDb] is ignored because [ttldb] is present "
            "(they are aliases; keep only one)",
        ),
    )


def test_single_alias_gives_no_warning() -> None:
    config = parse_one("[Quarantine]\ndays = 7\n")
    assert config.section_any("quarantine", "Quarantine") == {"days": 7}
    assert config.warnings == ()


def test_header_trailing_text_warns() -> None:
    config = parse_one("[x] # the x module\na = 1\n")
    assert config.section("x") == {"a": 1}
    assert [str(w) for w in config.warnings] == [
        f"{ETC}:1: text after ']' ignored: '# the x module'"
    ]


def test_unknown_sections() -> None:
    config = parse_one("[greylist]\na = 1\n[ttldb]\ntype = 'dbm'\n")
    warnings = config.unknown_sections(["greylist.py", "ttldb"])
    assert [str(w) for w in warnings] == [
        f"{ETC}:1: section [greylist] is not used; filter sections end in .py: [greylist.py]"
    ]


# -- I/O wrapper -------------------------------------------------------------


def test_default_paths() -> None:
    assert DEFAULT_MODULES_CONFIG_PATHS == (ETC, LOCAL)


def test_load_reads_existing_files_in_order(tmp_path: Path) -> None:
    first = tmp_path / "first.conf"
    second = tmp_path / "second.conf"
    first.write_text("[x]\na = 1\nb = 1\n")
    second.write_text("[x]\nb = 2\n")
    missing = tmp_path / "missing.conf"
    config = load_modules_config([str(first), str(missing), str(second)])
    assert config.section("x") == {"a": 1, "b": 2}
    assert config.paths == (str(first), str(second))
    assert load_modules_config([str(missing)]).sections() == []


def test_load_refuses_unreadable_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_modules_config([str(tmp_path)])
    assert info.value.path == str(tmp_path)
    assert "cannot read" in info.value.reason

    bad = tmp_path / "bad.conf"
    bad.write_bytes(b"[x]\na = 1\nb = '\xff'\n")
    with pytest.raises(ConfigError) as info:
        load_modules_config([str(bad)])
    assert (info.value.line, info.value.reason) == (3, "not valid UTF-8 text")


def test_load_refuses_permission_denied(tmp_path: Path) -> None:
    locked = tmp_path / "locked.conf"
    locked.write_text("[x]\n")
    locked.chmod(0)
    if os.geteuid() != 0:
        with pytest.raises(ConfigError):
            load_modules_config([str(locked)])
        return
    # root reads anything: check as an unprivileged user in a forked child instead
    tmp_path.chmod(0o755)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, try, report through the pipe, exit hard
        status = 3
        try:
            os.close(read_end)
            os.setgid(65534)
            os.setuid(65534)
            try:
                load_modules_config([str(locked)])
            except ConfigError as exc:
                os.write(write_end, str(exc).encode())
                status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, message
    assert "cannot read" in message


def test_load_reports_value_errors_with_real_path(tmp_path: Path) -> None:
    conf = tmp_path / "pythonfilter-modules.conf"
    conf.write_text("[greylist.py]\n\ngreylist_time = five\n")
    with pytest.raises(ConfigError) as info:
        load_modules_config([str(conf)])
    assert str(info.value).startswith(f"{conf}:3: [greylist.py] greylist_time: unquoted word")


# -- property-based -----------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=300), min_size=1, max_size=3))
def test_random_text_raises_only_own_errors(texts: list[str]) -> None:
    try:
        parse_modules_config([(f"/f{i}", text) for i, text in enumerate(texts)])
    except LegacyConfigError as error:
        assert isinstance(error, ConfigError)
        assert all(p.path.startswith("/f") for p in error.problems)


_SECTION_NAMES = ["greylist.py", "ttldb", "TtlDb", "DEFAULT", "a b", "x]y", "z"]
_KEYS = ["a", "B", "key name", "greylist_time", "Type", "x.y"]
_SEPARATORS = ["=", " = ", ":", " : ", "\t=\t"]
_VALUES = ["1", "'dbm'", "60 * 60", "[1,", "2]", "{'a': 1,", "'b': 2}", "", "True", "x = y"]
_INDENTS = ["", " ", "  ", "\t", "    "]

_lines = st.one_of(
    st.builds(
        lambda i, n, k: f"{i}[{n}{k}]",
        st.sampled_from(["", " "]),
        st.sampled_from(_SECTION_NAMES),
        st.sampled_from(["", "", "1", "2", "3", "4"]),
    ),
    st.builds(
        lambda i, k, n, s, v: f"{i}{k}{n}{s}{v}",
        st.sampled_from(_INDENTS),
        st.sampled_from(_KEYS),
        st.integers(min_value=0, max_value=40),
        st.sampled_from(_SEPARATORS),
        st.sampled_from(_VALUES),
    ),
    st.builds(lambda i, v: f"{i}{v}", st.sampled_from(_INDENTS[1:]), st.sampled_from(_VALUES)),
    st.builds(
        lambda i, c, t: f"{i}{c}{t}",
        st.sampled_from(_INDENTS),
        st.sampled_from(["#", ";"]),
        st.sampled_from(["", " note", " a = 1"]),
    ),
    st.sampled_from(["", "   ", "\t"]),
)
_rare_lines = st.sampled_from(["junk", "[unclosed", "= 1", "[z]"]) | st.just("")


@settings(max_examples=800, deadline=None)
@given(
    st.sampled_from(["", "[greylist.py]", "[DEFAULT]", "[ttldb]", "[TtlDb]", "[a b]"]),
    st.lists(_lines, max_size=14),
    _rare_lines,
    st.integers(min_value=0, max_value=20),
    st.sampled_from(["\n", "\r\n"]),
)
def test_raw_parse_agrees_with_rawconfigparser(
    first: str, lines: list[str], rare: str, where: int, newline: str
) -> None:
    lines = [first, *lines]
    lines.insert(where, rare)
    text = newline.join(lines) + newline
    reference = configparser.RawConfigParser()
    reference.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        reference.read_string(text, source=ETC)
    except configparser.Error:
        with pytest.raises(ConfigError):
            parse_raw_sections([(ETC, text)])
        return
    ours = parse_raw_sections([(ETC, text)])
    defaults = ours.pop("DEFAULT", {})
    assert dict(reference.defaults()) == defaults
    assert reference.sections() == list(ours)
    for name, values in ours.items():
        merged = dict(defaults)
        merged.update(values)
        assert dict(reference.items(name)) == merged
