"""What the server sends, decoded and checked: messages and audio frame metadata."""

from __future__ import annotations

import json
from typing import Any, Final, TypeVar

import attrs

from voxtrio.client._errors import ProtocolViolation
from voxtrio.protocol._converter import structure_message
from voxtrio.protocol._errors import ProtocolError
from voxtrio.protocol._formats import AudioFormat
from voxtrio.protocol._messages import (
    CancelledResult,
    Complete,
    Error,
    Pong,
    Progress,
    ServerMessage,
    Words,
)

T = TypeVar("T")


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


_SERVER_MESSAGE_TYPES: Final[dict[str, type[Any]]] = {
    "progress": Progress,
    "complete": Complete,
    "error": Error,
    "pong": Pong,
    "words": Words,
}


def structure_payload(cls: type[T], payload: Any, what: str) -> T:
    """`cls` from the server's decoded JSON, or ProtocolViolation naming `what`."""
    try:
        value: T = structure_message(cls, payload, request_id=None)
    except ProtocolError as exc:
        raise ProtocolViolation(
            f"the server sent an invalid {what}: {exc.message}", details=exc.details
        ) from None
    return value


def parse_server_message(text: str) -> ServerMessage:
    """Decode one text frame from the server, or raise ProtocolViolation saying what is wrong."""
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolViolation(f"the server sent a text frame that is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ProtocolViolation("the server sent a JSON text frame that is not an object")
    kind = payload.get("type")
    cls = _SERVER_MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ProtocolViolation(f"the server sent a message of unknown type {kind!r:.80}")
    message: ServerMessage = structure_payload(cls, payload, f"{kind} message")
    match message:
        case Complete(result=CancelledResult()) if payload["result"].get("cancelled") is not True:
            # CancelledResult's field has a default, so `"result": {}` would pass as cancelled.
            raise ProtocolViolation("the server sent a complete message with an empty result")
        case Progress(progress=value) if not 0.0 <= value <= 1.0:
            raise ProtocolViolation(f"the server sent progress {value}, outside 0..1")
    return message
