"""The one place client JSON is decoded and server JSON is encoded, for both endpoints.

Decoding is bounded before it starts: a message may hold at most
:data:`MAX_SEPARATORS` ``,`` and ``:`` characters, so one message cannot make the
event loop build a million-key object (every key needs a ``:``, every further value a
``,``). The limit is far above anything a valid message holds: its texts are at most
20,000 characters and the rest is a few dozen fields.

``"\\ud800"`` is a legal JSON escape, but what it decodes to, a lone surrogate, is not
Unicode text and cannot be encoded as UTF-8. Inbound, every string field refuses it
(:func:`lone_surrogate_problem`, called by the converter's string hook); outbound,
:func:`dump_json` escapes any that an echo carries back (a request id, a key name), so
a reply is always valid UTF-8 and never takes the connection down.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

MAX_SEPARATORS: Final = 65_536
# What a key or value is shortened to when a message names it.
MAX_SHOWN_CHARS: Final = 64

_LONE_SURROGATE: Final = re.compile("[\ud800-\udfff]")


class JsonRefused(ValueError):
    """Text that is not JSON this server decodes; `message` says why, for the client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def load_json(text: str) -> Any:
    """Decode one client message, or raise JsonRefused (not JSON, too deep, too big)."""
    separators = text.count(",") + text.count(":")
    if separators > MAX_SEPARATORS:
        raise JsonRefused(
            f"JSON not accepted: {separators} ',' and ':' characters, at most "
            f"{MAX_SEPARATORS} (too many keys or values for one message)"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonRefused(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise JsonRefused("JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer literal past Python's 4300-digit limit
        raise JsonRefused(f"JSON not accepted: {exc}"[:200]) from None


def dump_json(value: Any) -> str:
    """Compact JSON text that always encodes as UTF-8 (lone surrogates are escaped)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if text.isascii():
        return text
    # A raw surrogate can only sit inside a JSON string: its \u escape is the same string.
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def lone_surrogate_problem(text: str) -> str | None:
    """Why `text` is not valid Unicode text, or None when it is."""
    if text.isascii():
        return None
    found = _LONE_SURROGATE.search(text)
    if found is None:
        return None
    return (
        f"contains a lone surrogate (U+{ord(found.group()):04X} at character {found.start()}); "
        "send valid Unicode text (a surrogate escape must be half of a pair)"
    )


def shown(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """`text` as a message may quote it: at most `limit` characters, surrogates escaped."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
