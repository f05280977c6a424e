"""`voxtrio serve --help`: defaults shown as the operator reads them."""

from __future__ import annotations

import argparse
import re

from voxtrio._cli import build_parser


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
    assert re.search(r"--optimize VALUE [^[]*\(default: auto\) \[env TTS_OPTIMIZE\]", serve_help())


def test_metrics_host_default_is_shown_once() -> None:
    """--metrics-host shows its default (--host) exactly once."""
    entry = re.search(r"--metrics-host VALUE [^[]*\[env METRICS_HOST\]", serve_help())
    assert entry is not None
    assert entry.group(0).count("default") == 1
    assert "(default: --host)" in entry.group(0)
