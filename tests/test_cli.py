"""`voxtrio serve --help`: defaults shown as the operator reads them."""

from __future__ import annotations

import argparse
import re

import pytest

from voxtrio._cli import build_parser
from voxtrio._config import ConfigError, settings_from_env


def serve_help() -> str:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    # One line per option, so a default can be matched next to its flag.
    return re.sub(r"\s+", " ", commands.choices["serve"].format_help())


def test_serve_help_never_shows_a_none_default() -> None:
    """An unset option says nothing rather than "(default: None)"."""
    assert "(default: None)" not in serve_help()


def test_compile_default_is_auto() -> None:
    """--compile's default reads "auto"; --optimize is gone (one flag)."""
    assert re.search(r"--compile VALUE [^[]*\(default: auto\) \[env TTS_COMPILE\]", serve_help())
    assert "--optimize" not in serve_help()


def test_metrics_host_default_is_shown_once() -> None:
    """--metrics-host shows its default (--host) exactly once."""
    entry = re.search(r"--metrics-host VALUE [^[]*\[env METRICS_HOST\]", serve_help())
    assert entry is not None
    assert entry.group(0).count("default") == 1
    assert "(default: --host)" in entry.group(0)


def test_compile_setting_reads_off_auto_on() -> None:
    """TTS_COMPILE takes off, auto or on; anything else names the variable."""
    assert settings_from_env({}).compile == "auto"
    assert settings_from_env({"TTS_COMPILE": "on"}).compile == "on"
    with pytest.raises(ConfigError, match="TTS_COMPILE"):
        settings_from_env({"TTS_COMPILE": "fast"})


def test_old_optimize_variable_is_refused_with_its_replacement() -> None:
    """A leftover TTS_OPTIMIZE fails at start-up, naming TTS_COMPILE."""
    with pytest.raises(ConfigError, match="TTS_COMPILE"):
        settings_from_env({"TTS_OPTIMIZE": "true"})
