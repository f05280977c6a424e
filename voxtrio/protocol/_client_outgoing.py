"""What a client sends, sans-IO: request parameters checked, messages built and encoded.

Also the defaults both clients share: the URL, the largest message they take, and
their deadlines (each a client's keyword argument of the same name).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Final

import attrs

from voxtrio.protocol._json import dump_json
from voxtrio.protocol._limits import MAX_TEXT_CHARS
from voxtrio.protocol._messages import SynthesisOptions

DEFAULT_URL: Final = "ws://127.0.0.1:8765/tts"
# A non-streaming request's audio arrives as one message: 5000 characters of speech
# at 48 kHz is tens of MB. The WebSocket libraries' own default is 1 MiB.
DEFAULT_MAX_MESSAGE_SIZE: Final = 128 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT: Final = 10.0
# The server says nothing while a request waits for a free replica; 60 s is its
# default queue_timeout, after which it answers RATE_LIMITED.
DEFAULT_RESPONSE_TIMEOUT: Final = 60.0
# Above the server's default stop_timeout (10 s): a cancelled generation stops at
# its next chunk boundary, and the server answers within stop_timeout at worst.
DEFAULT_CANCEL_TIMEOUT: Final = 15.0
DEFAULT_CLOSE_TIMEOUT: Final = 5.0
DEFAULT_SEND_TIMEOUT: Final = 10.0
DEFAULT_PING_TIMEOUT: Final = 10.0

# The `params` of a text_stream_start, and of a tts_request besides its text and
# mode (docs/PROTOCOL.md §3.1; voices and word timings included).
PARAM_NAMES: Final = frozenset(f.name for f in attrs.fields(SynthesisOptions))
# The server's own limit on one text_delta (and on a tts_request's text).
MAX_DELTA_CHARS: Final = MAX_TEXT_CHARS


def request_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """A request message's `params`: TypeError naming any unknown name, None left out."""
    unknown = sorted(set(params) - PARAM_NAMES)
    if unknown:
        raise TypeError(f"unknown synthesis parameter(s): {', '.join(unknown)}")
    # None means "the server's default": leave the key out.
    return {name: value for name, value in params.items() if value is not None}


def opening_message(kind: str, request_id: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The message that opens a request (`kind`: tts_request, text_stream_start)."""
    return {"type": kind, "request_id": request_id, "params": dict(params)}


def cancel_message(request_id: str) -> dict[str, Any]:
    return {"type": "cancel", "request_id": request_id}


def text_delta(text: str) -> dict[str, Any]:
    """A text stream's next piece (1 to MAX_DELTA_CHARS characters), or ValueError."""
    if not 1 <= len(text) <= MAX_DELTA_CHARS:
        raise ValueError(f"a text piece has 1 to {MAX_DELTA_CHARS} characters, not {len(text)}")
    return {"type": "text_delta", "text": text}


def encode_message(message: Mapping[str, Any]) -> str:
    """One message as the text frame that carries it (compact JSON, always valid UTF-8)."""
    return dump_json(message)


class PingStamps:
    """A connection's ping timestamps: wall-clock milliseconds, each one unique.

    The pong echoes the timestamp, which is how it is matched to its ping: two
    pings within one millisecond must still differ.
    """

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        self._last = max(int(time.time() * 1000), self._last + 1)
        return self._last


def ping_message(timestamp: int) -> dict[str, Any]:
    return {"type": "ping", "timestamp": timestamp}


def timeout_message(request_id: str, timeout: float, blocked_on: str | None) -> str:
    """What ResponseTimeout says; `blocked_on`: the request whose unread items stall the reader."""
    message = f"no message about request {request_id!r} for response_timeout={timeout:g} s"
    if blocked_on is not None and blocked_on != request_id:
        message += (
            f"; the connection is paused because nobody reads request {blocked_on!r}: "
            "read every open stream, each from its own task"
        )
    return message
