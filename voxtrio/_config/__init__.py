"""Server settings: defaults, then environment variables (seed 000 §7), then CLI flags.

Each setting is declared once, as a `Settings` field (`_settings.py`) that carries its
flag, environment variable, help and placeholder; an invalid value fails at start-up
with a message that names the variable or flag it came from.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping

from voxtrio._config._option import ConfigError, Option, options, read_values
from voxtrio._config._option import add_arguments as _add_arguments
from voxtrio._config._settings import ProgressIntervals, Settings, is_loopback

__all__ = [
    "OPTIONS",
    "ConfigError",
    "Option",
    "ProgressIntervals",
    "Settings",
    "add_arguments",
    "is_loopback",
    "load_settings",
    "settings_from_env",
]

OPTIONS: tuple[Option, ...] = options(Settings)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting; the help shows its default and environment variable."""
    _add_arguments(parser, Settings, Settings())


def load_settings(args: argparse.Namespace | None, environ: Mapping[str, str]) -> Settings:
    """Defaults < environment < flags; raise ConfigError naming the bad source."""
    if "TTS_OPTIMIZE" in environ:
        raise ConfigError("TTS_OPTIMIZE was replaced by TTS_COMPILE (off, auto or on)")
    settings = Settings(**read_values(Settings, args, environ))
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if settings.max_concurrent < settings.workers:
        raise ConfigError(
            f"TTS_MAX_CONCURRENT/--max-concurrent ({settings.max_concurrent}) is below "
            f"--workers ({settings.workers}): instances would sit idle"
        )


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    return load_settings(None, os.environ if environ is None else environ)
