"""`voxtrio serve --help`: defaults shown as the operator reads them."""

from __future__ import annotations

import argparse
import re

import attrs
import pytest

from voxtrio._cli import build_parser
from voxtrio._config import OPTIONS, ConfigError, Settings, load_settings


def serve_help() -> str:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    # One line per option, so a default can be matched next to its flag.
    return re.sub(r"\s+", " ", commands.choices["serve"].format_help())


def test_serve_help_never_shows_a_none_default() -> None:
    """An unset option says nothing rather than "(default: None)"."""
    assert "(default: None)" not in serve_help()


def test_optimize_default_is_auto() -> None:
    """--optimize's default reads "auto", what None means for it."""
    entry = r"--optimize auto\|true\|false [^[]*\(default: auto\) \[env TTS_OPTIMIZE\]"
    assert re.search(entry, serve_help())


def test_metrics_host_default_is_shown_once() -> None:
    """--metrics-host shows its default (--host) exactly once."""
    entry = re.search(r"--metrics-host HOST [^[]*\[env METRICS_HOST\]", serve_help())
    assert entry is not None
    assert entry.group(0).count("default") == 1
    assert "(default: --host)" in entry.group(0)


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_every_option_has_a_meaningful_placeholder() -> None:
    """No flag's placeholder is the generic VALUE."""
    assert " VALUE" not in serve_help()


def test_every_setting_is_an_option() -> None:
    """Each Settings field is declared with its flag, so none is left without one."""
    assert [option.name for option in OPTIONS] == [field.name for field in attrs.fields(Settings)]


def test_on_off_settings_are_switches() -> None:
    """`--no-join-steps` turns join steps off, over the environment's `true`."""
    settings = load_settings(serve_args("--no-join-steps"), {"TTS_JOIN_STEPS": "true"})
    assert settings.join_steps is False
    assert load_settings(serve_args("--allow-voice-upload"), {}).allow_voice_upload is True


def test_an_unset_switch_leaves_the_environment_value() -> None:
    """A switch not given on the command line does not override its variable."""
    assert load_settings(serve_args(), {"TTS_JOIN_STEPS": "false"}).join_steps is False
    assert load_settings(serve_args(), {}).join_steps is True


def test_a_bad_flag_value_names_the_flag() -> None:
    """An invalid value is refused with the flag it came from."""
    with pytest.raises(ConfigError, match=r"invalid --port='70000': must be a port number"):
        load_settings(serve_args("--port", "70000"), {"TTS_PORT": "1"})
