"""The server's text messages, decoded by the protocol's client decoder; word timing names.

This client handles every message a server sends, voice replies included.
"""

from __future__ import annotations

from voxtrio.protocol._client_incoming import SERVER_MESSAGE_TYPES, decode_server_text
from voxtrio.protocol._messages import ServerMessage, Words, WordTime

# The names this client exports: a sentence's word timings, and one word of them.
WordTimings = Words
Word = WordTime


def parse_server_text(text: str) -> ServerMessage:
    """One text frame from the server, or ProtocolViolation saying what is wrong."""
    return decode_server_text(text, SERVER_MESSAGE_TYPES)
