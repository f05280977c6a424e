"""What the server sends, decoded and checked with the protocol's strict converter.

The protocol's server messages (word timings included: `Words`, one per sentence),
and audio frames, which become AudioChunk after their metadata has been checked.
"""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar

import attrs

from voxtrio.aioclient._errors import ProtocolViolation
from voxtrio.protocol._converter import structure_message
from voxtrio.protocol._errors import ProtocolError
from voxtrio.protocol._formats import AudioFormat
from voxtrio.protocol._messages import (
    CancelledResult,
    Complete,
    Error,
    Pong,
    Progress,
    Words,
    WordTime,
)
from voxtrio.protocol._voice_messages import VoiceDeleted, VoiceRegistered, Voices

T = TypeVar("T")


@attrs.frozen
class StreamingChunkMetadata:
    request_id: str
    sequence: int
    sample_rate: int
    is_final: bool
    format: AudioFormat = "pcm16"


@attrs.frozen
class WholeAudioMetadata:
    request_id: str
    sample_rate: int
    duration: float
    format: AudioFormat = "pcm16"


@attrs.frozen
class AudioChunk:
    """A piece of a request's audio: mono 16-bit little-endian PCM for `pcm16`."""

    pcm: bytes = attrs.field(repr=lambda pcm: f"<{len(pcm)} bytes>")
    sample_rate: int
    sequence: int
    format: AudioFormat = "pcm16"

    @property
    def duration(self) -> float | None:
        return len(self.pcm) / 2 / self.sample_rate if self.format == "pcm16" else None


# The names this client exports: a sentence's word timings, and one word of them.
WordTimings = Words
Word = WordTime

ServerReply = Progress | Complete | Error | Pong | Words | Voices | VoiceRegistered | VoiceDeleted
_TYPES: Final[dict[str, type[Any]]] = {
    "progress": Progress,
    "complete": Complete,
    "error": Error,
    "pong": Pong,
    "words": Words,
    "voices": Voices,
    "voice_registered": VoiceRegistered,
    "voice_deleted": VoiceDeleted,
}


def structure_payload(cls: type[T], payload: Any, what: str) -> T:
    """`cls` from the server's decoded JSON, or ProtocolViolation naming `what`."""
    try:
        value: T = structure_message(cls, payload, request_id=None)
    except ProtocolError as exc:
        raise ProtocolViolation(f"the server sent an invalid {what}: {exc.message}") from None
    return value


def parse_server_text(text: str) -> ServerReply:
    """One text frame from the server, or ProtocolViolation saying what is wrong."""
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolViolation(f"the server sent a text frame that is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ProtocolViolation("the server sent a JSON text frame that is not an object")
    kind = payload.get("type")
    cls = _TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolViolation(f"the server sent a message of unknown type {kind!r:.80}")
    message: ServerReply = structure_payload(cls, payload, f"{kind} message")
    match message:
        case Complete(result=CancelledResult()) if payload["result"].get("cancelled") is not True:
            raise ProtocolViolation("the server sent a complete message with an empty result")
        case Words(words=words) if any(w.end < w.start for w in words):
            raise ProtocolViolation("the server sent a word that ends before it starts")
    return message
