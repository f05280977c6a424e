"""One declaration per setting: `setting()` / `switch()` put the flag, environment
variable, help and placeholder in the attrs field's metadata, next to its default.

`options()` reads them back; the argparse flags, the environment parsing and the
deployment's env-file check are all derived from that one list.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs

from voxtrio._config import _parse

T = TypeVar("T")

_KEY = "voxtrio.option"


class ConfigError(ValueError):
    """A setting has an invalid value; the message names where it came from."""


@attrs.frozen(kw_only=True)
class Option:
    """How one setting is read: its flag, environment variable, parser and help."""

    name: str = ""  # the Settings field; filled in by options()
    env: str | None
    parse: Callable[[str], object]
    help: str
    metavar: str | None  # None: a true/false switch (see switch())
    only_on: bool = False  # a switch with one flag, `--x`, and no `--no-x`
    # What --help shows as the default when the value itself (often None) says nothing.
    default_help: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def is_switch(self) -> bool:
        return self.metavar is None


def setting(
    default: T,
    env: str | None,
    parse: Callable[[str], T],
    help: str,
    *,
    metavar: str,
    default_help: str | None = None,
) -> T:
    """A field taking a value: `--name METAVAR` or the environment variable `env`."""
    option = Option(env=env, parse=parse, help=help, metavar=metavar, default_help=default_help)
    return attrs.field(default=default, metadata={_KEY: option})


def switch(default: bool, env: str, help: str, *, only_on: bool = False) -> bool:
    """A true/false field: `--name [true|false]` and `--no-name`, or `env` set to true/false.

    `only_on`: the flag can only switch it on (`--name`), for settings off by default
    that open something up; the environment variable can still say either.
    """
    option = Option(env=env, parse=_parse.boolean, help=help, metavar=None, only_on=only_on)
    return attrs.field(default=default, metadata={_KEY: option})


def options(cls: type[attrs.AttrsInstance]) -> tuple[Option, ...]:
    """The options of every field of `cls` declared with setting() or switch()."""
    return tuple(
        attrs.evolve(field.metadata[_KEY], name=field.name)
        for field in attrs.fields(cls)
        if _KEY in field.metadata
    )


def _shown(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def add_arguments(
    parser: argparse.ArgumentParser, cls: type[attrs.AttrsInstance], defaults: object
) -> None:
    """One flag per option of `cls`; the help shows the default and environment variable."""
    for option in options(cls):
        env = f" [env {option.env}]" if option.env else ""
        default = option.default_help or getattr(defaults, option.name)
        # None means "not set"; the option's own help says what that does.
        shown = "" if default is None else f" (default: {_shown(default)})"
        help_text = f"{option.help}{shown}{env}"
        # Every flag's own default stays None, so an unset flag leaves the environment's
        # value; switches store text too, parsed (and refused) like the variable's.
        if option.only_on:
            parser.add_argument(
                option.flag, dest=option.name, action="store_const", const="true", help=help_text
            )
        elif option.is_switch:
            # `--join-steps false` keeps working beside `--no-join-steps`.
            parser.add_argument(
                option.flag, dest=option.name, nargs="?", const="true",
                metavar="true|false", help=help_text,
            )  # fmt: skip
            parser.add_argument(
                "--no-" + option.flag.removeprefix("--"), dest=option.name,
                action="store_const", const="false", help=f"same as {option.flag} false",
            )  # fmt: skip
        else:
            parser.add_argument(
                option.flag, dest=option.name, metavar=option.metavar, help=help_text
            )


def read_values(
    cls: type[attrs.AttrsInstance], args: argparse.Namespace | None, environ: Mapping[str, str]
) -> dict[str, Any]:
    """The values set by flags, else the environment; ConfigError names the bad source."""
    values: dict[str, Any] = {}
    for option in options(cls):
        flag_value = getattr(args, option.name, None) if args is not None else None
        if flag_value is not None:
            raw, source = str(flag_value), option.flag
        elif option.env and option.env in environ:
            raw, source = environ[option.env], option.env
        else:
            continue
        try:
            values[option.name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {source}={raw!r}: {exc}") from None
    return values
