"""What a server sends a client, decoded and checked: text messages and audio frames.

Each decoder takes what one WebSocket message carried and returns a typed value,
or raises ProtocolViolation saying what is wrong with it; a client that gets one
closes the connection (1002), since nothing the server says can be trusted after.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import attrs

from voxtrio.protocol._client_errors import ProtocolViolation
from voxtrio.protocol._converter import structure_message
from voxtrio.protocol._errors import ProtocolError
from voxtrio.protocol._formats import AudioFormat
from voxtrio.protocol._frames import FrameError, FrameType, decode_frame
from voxtrio.protocol._messages import (
    CancelledResult,
    Complete,
    Error,
    Pong,
    Progress,
    ServerMessage,
    Words,
)
from voxtrio.protocol._voice_messages import VoiceDeleted, VoiceRegistered, Voices

T = TypeVar("T")

# Every text message a server sends, by its `type`.
SERVER_MESSAGE_TYPES: Final[Mapping[str, type[ServerMessage]]] = {
    "progress": Progress,
    "complete": Complete,
    "error": Error,
    "pong": Pong,
    "words": Words,
    "voices": Voices,
    "voice_registered": VoiceRegistered,
    "voice_deleted": VoiceDeleted,
}


@attrs.frozen
class StreamingChunkMetadata:
    """The metadata of a 0x01 frame."""

    request_id: str
    sequence: int
    sample_rate: int
    is_final: bool
    format: AudioFormat = "pcm16"


@attrs.frozen
class WholeAudioMetadata:
    """The metadata of a 0x02 frame."""

    request_id: str
    sample_rate: int
    duration: float
    format: AudioFormat = "pcm16"


@attrs.frozen
class AudioChunk:
    """A piece of audio. A non-streaming request yields one, with sequence 0.

    With the default format, pcm16, `pcm` is mono 16-bit little-endian PCM;
    with another `format` (wav, mp3, opus, flac) it holds the next bytes of
    that encoded stream, and the chunks concatenated make the whole file.
    """

    pcm: bytes = attrs.field(repr=lambda pcm: f"<{len(pcm)} bytes>")
    sample_rate: int
    sequence: int
    format: AudioFormat = "pcm16"

    @property
    def samples(self) -> int | None:
        """Samples in this chunk; None for an encoded format (see the result's `samples`)."""
        return len(self.pcm) // 2 if self.format == "pcm16" else None

    @property
    def duration(self) -> float | None:
        """Seconds of audio in this chunk; None for an encoded format."""
        samples = self.samples
        return None if samples is None else samples / self.sample_rate


@attrs.frozen
class IncomingAudio:
    """One audio frame from the server, its metadata checked for shape (not yet for sense)."""

    type: FrameType
    metadata: StreamingChunkMetadata | WholeAudioMetadata
    payload: bytes = attrs.field(repr=lambda payload: f"<{len(payload)} bytes>")


def structure_payload(cls: type[T], payload: Any, what: str) -> T:
    """`cls` from the server's decoded JSON, or ProtocolViolation naming `what`."""
    try:
        value: T = structure_message(cls, payload, request_id=None)
    except ProtocolError as exc:
        raise ProtocolViolation(
            f"the server sent an invalid {what}: {exc.message}", details=exc.details
        ) from None
    return value


def decode_server_text(text: str, types: Mapping[str, type[T]]) -> T:
    """One text frame from the server as one of `types` (by its `type`), or ProtocolViolation.

    A client passes the part of SERVER_MESSAGE_TYPES it handles: any other type is a
    violation, not a message it would drop without a word.
    """
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolViolation(f"the server sent a text frame that is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ProtocolViolation("the server sent a JSON text frame that is not an object")
    kind = payload.get("type")
    cls = types.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolViolation(f"the server sent a message of unknown type {kind!r:.80}")
    message = structure_payload(cls, payload, f"{kind} message")
    match message:
        case Complete(result=CancelledResult()) if payload["result"].get("cancelled") is not True:
            # CancelledResult's field has a default, so `"result": {}` would pass as cancelled.
            raise ProtocolViolation("the server sent a complete message with an empty result")
        case Progress(progress=value) if not 0.0 <= value <= 1.0:
            raise ProtocolViolation(f"the server sent progress {value}, outside 0..1")
        case Words(words=words) if any(word.end < word.start for word in words):
            raise ProtocolViolation("the server sent a word that ends before it starts")
    return message


def decode_audio_frame(data: bytes | bytearray | memoryview) -> IncomingAudio:
    """One binary frame from the server, its metadata typed by the frame's type."""
    try:
        frame = decode_frame(data)
    except FrameError as exc:
        raise ProtocolViolation(f"the server sent a malformed audio frame: {exc}") from None
    metadata: StreamingChunkMetadata | WholeAudioMetadata
    if frame.type is FrameType.STREAMING_CHUNK:
        metadata = structure_payload(
            StreamingChunkMetadata, frame.metadata, "streaming frame's metadata"
        )
    else:
        metadata = structure_payload(WholeAudioMetadata, frame.metadata, "audio frame's metadata")
    return IncomingAudio(frame.type, metadata, frame.payload)
