"""The server's text messages this client handles, decoded by the protocol's client decoder."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from voxtrio.protocol._client_incoming import SERVER_MESSAGE_TYPES, decode_server_text
from voxtrio.protocol._messages import ServerMessage

# No voice replies: this client sends no voice messages, so one would be a violation.
HANDLED_MESSAGES: Final[Mapping[str, type[ServerMessage]]] = {
    kind: SERVER_MESSAGE_TYPES[kind] for kind in ("progress", "complete", "error", "pong", "words")
}


def parse_server_message(text: str) -> ServerMessage:
    """Decode one text frame from the server, or raise ProtocolViolation saying what is wrong."""
    return decode_server_text(text, HANDLED_MESSAGES)
