"""Messages of the native protocol: frozen attrs classes, parsing and serialising.

Structuring goes through the one strict converter (`_converter`): every bad field is
reported at once, as INVALID_PARAMS details.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

from voxtrio.protocol._converter import (
    converter,
    field_length,
    field_range,
    json_type,
    structure_message,
)
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._formats import OPUS_BIT_RATE_RANGE, SUPPORTED_RATES, AudioFormat
from voxtrio.protocol._json import JsonRefused, dump_json, load_json
from voxtrio.protocol._limits import (
    MAX_LEN_CAP,
    MAX_REQUEST_ID_CHARS,
    MAX_SEED,
    MAX_TEXT_CHARS,
    MAX_VOICE_DESCRIPTION_CHARS,
)
from voxtrio.protocol._voice_messages import (
    VOICE_CLIENT_MESSAGE_TYPES,
    VoiceClientMessage,
    VoiceServerMessage,
)
from voxtrio.protocol._voice_rules import VoiceId

Mode = Literal["streaming", "non_streaming"]


# ---------------------------------------------------------------- client -> server


@attrs.frozen(kw_only=True)
class SynthesisOptions:
    """How to speak: every synthesis parameter but the text itself."""

    cfg_value: float = attrs.field(default=2.0, metadata=field_range(0.1, 10.0))
    inference_timesteps: int = attrs.field(default=10, metadata=field_range(1, 50))
    normalize: bool = False
    denoise: bool = False
    retry_badcase: bool = True
    retry_badcase_max_times: int = attrs.field(default=3, metadata=field_range(0, 10))
    retry_badcase_ratio_threshold: float = attrs.field(default=6.0, metadata=field_range(1.0, 20.0))
    seed: int | None = attrs.field(default=None, metadata=field_range(0, MAX_SEED))
    max_len: int | None = attrs.field(default=None, metadata=field_range(1, MAX_LEN_CAP))
    format: AudioFormat = "pcm16"
    sample_rate: int | None = attrs.field(default=None, metadata={"choices": SUPPORTED_RATES})
    # The widest range of any codec (opus'); the encoder checks the format's own.
    bit_rate: int | None = attrs.field(default=None, metadata=field_range(*OPUS_BIT_RATE_RANGE))
    # Voice cloning: a registered voice, or prompt audio fetched from an allow-listed
    # URL (off unless the operator enables it) with its transcript.
    voice_id: VoiceId | None = None
    prompt_wav_url: str | None = attrs.field(default=None, metadata=field_length(1, 2048))
    prompt_text: str | None = attrs.field(default=None, metadata=field_length(1, 2000))
    # VoxCPM2 voice design: "a warm female voice" -> "(a warm female voice)text".
    voice_description: str | None = attrs.field(
        default=None, metadata=field_length(1, MAX_VOICE_DESCRIPTION_CHARS)
    )
    # A `words` message per sentence (docs/PROTOCOL.md "Word timestamps").
    word_timestamps: bool = False


@attrs.frozen(kw_only=True)
class TtsParams(SynthesisOptions):
    """Synthesis parameters (seed 000 §3.1, plus seed, max_len, format, sample_rate)."""

    text: str = attrs.field(metadata=field_length(1, MAX_TEXT_CHARS))
    mode: Mode = "streaming"


@attrs.frozen
class TtsRequest:
    request_id: str = attrs.field(metadata=field_length(1, MAX_REQUEST_ID_CHARS))
    params: TtsParams


@attrs.frozen
class TextStreamStart:
    """Open a request whose text arrives in pieces (an LLM's tokens); it always streams."""

    request_id: str = attrs.field(metadata=field_length(1, MAX_REQUEST_ID_CHARS))
    params: SynthesisOptions = attrs.Factory(SynthesisOptions)


@attrs.frozen
class TextDelta:
    request_id: str = attrs.field(metadata=field_length(1, MAX_REQUEST_ID_CHARS))
    text: str = attrs.field(metadata=field_length(1, MAX_TEXT_CHARS))


@attrs.frozen
class TextFlush:
    """Speak what is buffered now, even if it does not end a sentence."""

    request_id: str = attrs.field(metadata=field_length(1, MAX_REQUEST_ID_CHARS))


@attrs.frozen
class TextStreamEnd:
    """No more text: speak the rest, then complete."""

    request_id: str = attrs.field(metadata=field_length(1, MAX_REQUEST_ID_CHARS))


@attrs.frozen
class Cancel:
    request_id: str = attrs.field(metadata=field_length(1, MAX_REQUEST_ID_CHARS))


@attrs.frozen
class Ping:
    timestamp: int


ClientMessage = (
    TtsRequest
    | Cancel
    | Ping
    | TextStreamStart
    | TextDelta
    | TextFlush
    | TextStreamEnd
    | VoiceClientMessage
)
CLIENT_MESSAGE_TYPES: Final[dict[str, type[ClientMessage]]] = {
    "tts_request": TtsRequest,
    "cancel": Cancel,
    "ping": Ping,
    "text_stream_start": TextStreamStart,
    "text_delta": TextDelta,
    "text_flush": TextFlush,
    "text_stream_end": TextStreamEnd,
    **VOICE_CLIENT_MESSAGE_TYPES,
}

# ---------------------------------------------------------------- server -> client

ProgressState = Literal["queued", "processing", "generating", "encoding"]


@attrs.frozen
class Progress:
    request_id: str
    state: ProgressState
    progress: float
    message: str = ""
    type: Literal["progress"] = "progress"


@attrs.frozen
class WordTime:
    """One word: its text as sent, start and end in seconds of the request's audio."""

    text: str
    start: float
    end: float


@attrs.frozen
class Words:
    """A sentence's word times, sent before the sentence's last audio frame."""

    request_id: str
    sentence: int
    words: list[WordTime]
    estimated: bool
    type: Literal["words"] = "words"


@attrs.frozen
class Timings:
    queue_ms: float
    first_audio_ms: float | None
    total_ms: float
    rtf: float | None


@attrs.frozen
class SynthesisResult:
    duration: float
    sample_rate: int
    samples: int
    chunks: int
    seed: int
    timings: Timings
    format: AudioFormat = "pcm16"
    sentences: int = 1


@attrs.frozen
class CancelledResult:
    cancelled: Literal[True] = True


@attrs.frozen
class Complete:
    request_id: str
    result: SynthesisResult | CancelledResult
    type: Literal["complete"] = "complete"


@attrs.frozen
class ErrorBody:
    code: ErrorCode
    message: str
    details: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen
class Error:
    request_id: str | None
    error: ErrorBody
    # True when this is the request's one terminal message (it failed, or it was
    # refused before it started); false when it answers another message that named
    # the id (a duplicate, a bad cancel) while the request itself goes on.
    terminal: bool = False
    type: Literal["error"] = "error"


@attrs.frozen
class Pong:
    timestamp: int
    server_time: int
    type: Literal["pong"] = "pong"


ServerMessage = Progress | Words | Complete | Error | Pong | VoiceServerMessage


def parse_client_message(text: str) -> ClientMessage:
    """Decode one text frame from a client into a message, or raise ProtocolError."""
    try:
        payload = load_json(text)
    except JsonRefused as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, exc.message) from None
    if not isinstance(payload, dict):
        raise ProtocolError(
            ErrorCode.INVALID_JSON, f"expected a JSON object, got {json_type(payload)}"
        )
    raw_id = payload.get("request_id")
    request_id = raw_id if isinstance(raw_id, str) else None
    kind = payload.get("type")
    if not isinstance(kind, str):
        raise ProtocolError(
            ErrorCode.UNKNOWN_MESSAGE_TYPE,
            "message has no string `type`",
            details={"known_types": sorted(CLIENT_MESSAGE_TYPES)},
            request_id=request_id,
        )
    cls = CLIENT_MESSAGE_TYPES.get(kind)
    if cls is None:
        raise ProtocolError(
            ErrorCode.UNKNOWN_MESSAGE_TYPE,
            f"unknown message type {kind[:64]!r}",
            details={"known_types": sorted(CLIENT_MESSAGE_TYPES)},
            request_id=request_id,
        )
    body = {key: value for key, value in payload.items() if key != "type"}
    try:
        message: ClientMessage = structure_message(cls, body, request_id=request_id)
    except ProtocolError as exc:
        exc.message_type = kind
        raise
    return message


def dump_message(message: ServerMessage) -> str:
    """Serialise a server message to the JSON text frame the client receives."""
    return dump_json(converter.unstructure(message))


def error_message(exc: ProtocolError, *, terminal: bool = False) -> Error:
    return Error(exc.request_id, ErrorBody(exc.code, exc.message, exc.details), terminal)
