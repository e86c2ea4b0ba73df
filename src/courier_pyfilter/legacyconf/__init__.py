"""Readers for the original courier-pythonfilter configuration files, without ``eval()``.

* :mod:`~courier_pyfilter.legacyconf.chainconf`: ``pythonfilter.conf`` (which
  filters run, in which order, with ``for`` bypass sets);
* :mod:`~courier_pyfilter.legacyconf.modulesconf`: ``pythonfilter-modules.conf``
  (per-module settings, INI with Python literal values);
* :mod:`~courier_pyfilter.legacyconf.evaluator`: the restricted evaluator for
  those values.
"""

from __future__ import annotations

from courier_pyfilter.legacyconf.chainconf import (
    CHAIN_CONFIG_NAME,
    ChainConfig,
    ChainEntry,
    default_chain_candidates,
    find_chain_config,
    is_module_name,
    load_chain_config,
    parse_chain,
    parse_chain_config,
)
from courier_pyfilter.legacyconf.errors import (
    ConfigError,
    ConfigProblem,
    ConfigValueError,
    ConfigWarning,
    LegacyConfigError,
)
from courier_pyfilter.legacyconf.evaluator import evaluate
from courier_pyfilter.legacyconf.modulesconf import (
    DEFAULT_MODULES_CONFIG_PATHS,
    DEFAULT_SECTION,
    SECTION_ALIASES,
    ConfigValue,
    ModulesConfig,
    ValueSource,
    load_modules_config,
    parse_modules_config,
    parse_raw_sections,
    read_config_text,
)

__all__ = [
    "CHAIN_CONFIG_NAME",
    "DEFAULT_MODULES_CONFIG_PATHS",
    "DEFAULT_SECTION",
    "SECTION_ALIASES",
    "ChainConfig",
    "ChainEntry",
    "ConfigError",
    "ConfigProblem",
    "ConfigValue",
    "ConfigValueError",
    "ConfigWarning",
    "LegacyConfigError",
    "ModulesConfig",
    "ValueSource",
    "default_chain_candidates",
    "evaluate",
    "find_chain_config",
    "is_module_name",
    "load_chain_config",
    "load_modules_config",
    "parse_chain",
    "parse_chain_config",
    "parse_modules_config",
    "parse_raw_sections",
    "read_config_text",
]
