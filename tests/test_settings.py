"""Daemon settings: defaults, the ``[courier-pyfilter]`` section, environment, precedence."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.cli.daemon import build_settings
from courier_pyfilter.runtime import load_config
from courier_pyfilter.server import ServerError
from courier_pyfilter.settings import (
    CHAIN_CONFIG_CANDIDATES,
    Settings,
    SettingsError,
    apply_section,
    find_chain_config,
    setting_names,
    settings_from_env,
)


def test_defaults_are_courier_on_debian() -> None:
    s = Settings()
    assert s.socket_path == "/var/lib/courier/allfilters/pythonfilter"
    assert s.filter_name == "pythonfilter"
    assert s.tmp_dir == "/var/lib/courier/tmp"
    assert s.socket_mode == 0o660
    assert s.restrict_paths is True
    assert s.chain_config is None
    assert s.modules_configs == (
        "/etc/pythonfilter-modules.conf",
        "/usr/local/etc/pythonfilter-modules.conf",
    )


def test_apply_section_values() -> None:
    s = apply_section(
        Settings(),
        {
            "socket": "/run/pf/allfilters/myfilter",
            "tmp_dir": "/spool/tmp",
            "filter_path": ["/a", "/b"],
            "max_concurrent": 7,
            "request_timeout": 2,
            "log_summary": False,
            "socket_mode": 0o600,
        },
    )
    assert s.socket_path == "/run/pf/allfilters/myfilter"
    assert s.filter_name == "myfilter"
    assert s.tmp_dir == "/spool/tmp"
    assert s.filter_path == ("/a", "/b")
    assert s.max_concurrent == 7
    assert s.request_timeout == 2.0 and isinstance(s.request_timeout, float)
    assert s.log_summary is False
    assert s.socket_mode == 0o600


def test_apply_section_returns_new_object() -> None:
    base = Settings()
    assert apply_section(base, {}) is base
    changed = apply_section(base, {"max_concurrent": 3})
    assert base.max_concurrent == 500 and changed.max_concurrent == 3


def test_filter_path_single_string() -> None:
    assert apply_section(Settings(), {"filter_path": "/one"}).filter_path == ("/one",)


def test_locked_keys_are_kept() -> None:
    base = Settings(socket_path="/cli/sock", tmp_dir="/cli/tmp")
    s = apply_section(
        base,
        {"socket": "/conf/sock", "tmp_dir": "/conf/tmp", "max_concurrent": 9},
        locked=["socket_path"],
    )
    assert s.socket_path == "/cli/sock"
    assert s.tmp_dir == "/conf/tmp"
    assert s.max_concurrent == 9


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_concurrent", 0),
        ("max_concurrent", "10"),
        ("max_concurrent", True),
        ("max_concurrent", 2.5),
        ("listen_backlog", -1),
        ("request_timeout", 0),
        ("message_timeout", -5),
        ("drain_timeout", "1"),
        ("restrict_paths", 1),
        ("log_summary", "yes"),
        ("log_format", "xml"),
        ("tmp_dir", 5),
        ("filter_path", ["/a", 3]),
        ("filter_path", 7),
        ("no_such_setting", 1),
    ],
)
def test_bad_values_refused(key: str, value: Any) -> None:
    with pytest.raises(SettingsError):
        apply_section(Settings(), {key: value})


def test_unknown_key_lists_known_ones() -> None:
    with pytest.raises(SettingsError, match="max_concurrent"):
        apply_section(Settings(), {"max_concurent": 5})


def test_settings_from_env() -> None:
    values, names = settings_from_env(
        {
            "PYTHONFILTER_SOCKET": "/s",
            "PYTHONFILTER_CONFIG": "/c",
            "PYTHONFILTER_MODULES_CONFIG": "/m1::/m2",
            "PYTHONFILTER_LOG_FORMAT": "json",
            "OTHER": "x",
        }
    )
    assert values == {
        "socket_path": "/s",
        "chain_config": "/c",
        "modules_configs": ("/m1", "/m2"),
        "log_format": "json",
    }
    assert sorted(names) == sorted(values)
    assert settings_from_env({}) == ({}, [])
    with pytest.raises(SettingsError):
        settings_from_env({"PYTHONFILTER_LOG_FORMAT": "yaml"})


def test_find_chain_config(tmp_path: Path) -> None:
    assert find_chain_config(Settings(chain_config="/given")) == "/given"
    conf = tmp_path / "pythonfilter.conf"
    conf.write_text("debug\n")
    found = find_chain_config(Settings(sysconfdir=str(tmp_path)))
    if not any(Path(c).exists() for c in CHAIN_CONFIG_CANDIDATES):
        assert found == str(conf)
    missing = find_chain_config(Settings(sysconfdir=str(tmp_path / "nowhere")))
    if not any(Path(c).exists() for c in CHAIN_CONFIG_CANDIDATES):
        assert missing is None


def test_setting_names() -> None:
    names = setting_names()
    assert "socket_path" in names and "max_concurrent" in names


# -- precedence through the daemon's own builder ---------------------------------------------


def _args(**kw: Any) -> argparse.Namespace:
    base = {"socket": None, "config": None, "modules_config": None, "log_format": None}
    base.update(kw)
    return argparse.Namespace(**base)


def _modules(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pythonfilter-modules.conf"
    path.write_text(text)
    return str(path)


def test_precedence_cli_over_env_over_section(tmp_path: Path) -> None:
    mods = _modules(
        tmp_path,
        "[courier-pyfilter]\nsocket = '/conf/sock'\nlog_format = 'json'\nmax_concurrent = 4\n",
    )
    settings, _ = build_settings(
        _args(modules_config=[mods], socket="/cli/sock"),
        {"PYTHONFILTER_SOCKET": "/env/sock", "PYTHONFILTER_LOG_FORMAT": "text"},
    )
    assert settings.socket_path == "/cli/sock"
    assert settings.log_format == "text"  # env beats the section
    assert settings.max_concurrent == 4  # only the section sets it
    settings, _ = build_settings(_args(modules_config=[mods]), {"PYTHONFILTER_SOCKET": "/env/s"})
    assert settings.socket_path == "/env/s"
    settings, _ = build_settings(_args(modules_config=[mods]), {})
    assert settings.socket_path == "/conf/sock"
    assert settings.log_format == "json"


def test_later_modules_file_overrides(tmp_path: Path) -> None:
    one = tmp_path / "one.conf"
    two = tmp_path / "two.conf"
    one.write_text("[courier-pyfilter]\nmax_concurrent = 4\ntmp_dir = '/one'\n")
    two.write_text("[courier-pyfilter]\nmax_concurrent = 8\n")
    settings, _ = build_settings(_args(modules_config=[str(one), str(two)]), {})
    assert (settings.max_concurrent, settings.tmp_dir) == (8, "/one")


def test_missing_modules_files_are_fine(tmp_path: Path) -> None:
    settings, _ = build_settings(_args(modules_config=[str(tmp_path / "absent.conf")]), {})
    assert settings == Settings(modules_configs=(str(tmp_path / "absent.conf"),))


def test_bad_section_value_raises(tmp_path: Path) -> None:
    mods = _modules(tmp_path, "[courier-pyfilter]\nmax_concurrent = 'lots'\n")
    with pytest.raises(SettingsError):
        build_settings(_args(modules_config=[mods]), {})


def test_default_section_does_not_break_daemon_section(tmp_path: Path) -> None:
    # [DEFAULT] keys are meant for filter sections; they must not make the daemon's own
    # section fail as "unknown setting".
    mods = _modules(
        tmp_path, "[DEFAULT]\nsizeLimit = 100\n\n[courier-pyfilter]\nmax_concurrent = 4\n"
    )
    settings, _base = build_settings(_args(modules_config=[mods]), {})
    assert settings.max_concurrent == 4


# -- load_config: both files, re-read every time ---------------------------------------------


def test_load_config_reads_chain_and_daemon_section(tmp_path: Path) -> None:
    chain = tmp_path / "pythonfilter.conf"
    chain.write_text("# comment\nwhitelist_auth for greylist spfcheck\ngreylist\n")
    mods = _modules(tmp_path, "[courier-pyfilter]\ntmp_dir = '/spool/tmp'\n")
    base = Settings(chain_config=str(chain), modules_configs=(mods,))
    config = load_config(base)
    assert config.chain_path == str(chain)
    assert config.lines == [
        ("whitelist_auth", frozenset({"greylist", "spfcheck"})),
        ("greylist", frozenset()),
    ]
    assert config.settings.tmp_dir == "/spool/tmp"
    chain.write_text("debug\n")
    assert load_config(base).lines == [("debug", frozenset())]


def test_load_config_keeps_locked_socket(tmp_path: Path) -> None:
    chain = tmp_path / "pythonfilter.conf"
    chain.write_text("debug\n")
    mods = _modules(tmp_path, "[courier-pyfilter]\nsocket = '/elsewhere'\n")
    base = Settings(socket_path="/cli", chain_config=str(chain), modules_configs=(mods,))
    assert load_config(base).settings.socket_path == "/cli"


def test_load_config_missing_chain_file(tmp_path: Path) -> None:
    base = Settings(chain_config=str(tmp_path / "absent.conf"), modules_configs=())
    with pytest.raises(ServerError, match=r"absent\.conf"):
        load_config(base)


def test_reload_reverts_a_removed_setting_to_its_default(tmp_path: Path) -> None:
    # The daemon builds its settings once (build_settings) and hands them to the reload path
    # (load_config on every SIGHUP).  Deleting a key from the section and reloading must
    # bring back the default, as a fresh start would.
    chain = tmp_path / "pythonfilter.conf"
    chain.write_text("debug\n")
    mods = _modules(tmp_path, "[courier-pyfilter]\nfilter_timeout = 5\n")
    started, base = build_settings(_args(modules_config=[mods], config=str(chain)), {})
    assert started.filter_timeout == 5.0
    assert load_config(base).settings.filter_timeout == 5.0
    _modules(tmp_path, "[courier-pyfilter]\n")
    assert load_config(base).settings.filter_timeout == Settings().filter_timeout
