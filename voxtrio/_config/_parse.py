"""Text-to-value parsers for settings: each raises ValueError with what was expected."""

from __future__ import annotations

import re
from collections.abc import Callable


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def optional_boolean(text: str) -> bool | None:
    return None if text.strip().lower() in {"", "auto"} else boolean(text)


def no_denoiser(text: str) -> str:
    # voxcpm's ZipEnhancer needs modelscope and a hub model; until a request's
    # `denoise` is wired to it, a configured denoiser would be loaded and never used.
    raise ValueError(
        "prompt denoising is not supported by this server (voxcpm's ZipEnhancer is not "
        "wired in; see issue #23): remove this setting"
    )


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"must be a port number 0-65535, got {value}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be a positive number of seconds, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(f"must be zero or more, got {text}")
    return value


def choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {text!r}")
        return text

    return parse


def log_level(text: str) -> str:
    return choice("DEBUG", "INFO", "WARNING", "ERROR")(text.upper())


def origins(text: str) -> tuple[str, ...]:
    """Comma-separated origins, each `http(s)://host[:port]` as a browser sends it, or `*`."""
    found = []
    for raw in text.split(","):
        origin = raw.strip().rstrip("/").lower()
        if not origin:
            continue
        if origin != "*" and not re.fullmatch(
            r"https?://(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(:\d{1,5})?", origin
        ):
            raise ValueError(f"{raw.strip()!r} is not an origin like https://app.example.com:8443")
        found.append(origin)
    return tuple(found)


def text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value
