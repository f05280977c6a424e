"""The `/v1/audio/speech` request body, parsed strictly by the protocol's converter.

Fields OpenAI defines are checked (a wrong type or value is a 400 naming the
field); fields this server does not know are dropped first, since OpenAI's SDKs
and the frameworks on top of them add their own over time.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

from voxtrio.audio._codecs import EncoderFormat
from voxtrio.protocol._converter import field_length, field_range, structure_message
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._json import JsonRefused, load_json
from voxtrio.protocol._limits import MAX_TEXT_CHARS, MAX_VOICE_DESCRIPTION_CHARS, SPEED_RANGE

# OpenAI's six, then voxtrio's telephony additions (raw 8 kHz G.711, docs/OPENAI.md).
ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm", "ulaw_8000", "alaw_8000"]
StreamFormat = Literal["audio", "sse"]


@attrs.frozen(kw_only=True)
class OutputFormat:
    """What one `response_format` becomes: the encoder's format, rate and media type."""

    codec: EncoderFormat
    sample_rate: int
    media_type: str


# OpenAI's own rates: everything at 24 kHz but Opus, whose decoders run at 48 kHz.
OUTPUT_FORMATS: Final[dict[ResponseFormat, OutputFormat]] = {
    "mp3": OutputFormat(codec="mp3", sample_rate=24000, media_type="audio/mpeg"),
    "opus": OutputFormat(codec="opus", sample_rate=48000, media_type="audio/ogg; codecs=opus"),
    "aac": OutputFormat(codec="aac", sample_rate=24000, media_type="audio/aac"),
    "flac": OutputFormat(codec="flac", sample_rate=24000, media_type="audio/flac"),
    "wav": OutputFormat(codec="wav", sample_rate=24000, media_type="audio/wav"),
    "pcm": OutputFormat(codec="pcm16", sample_rate=24000, media_type="audio/pcm"),
    # audio/basic is 8 kHz mono mu-law by definition (RFC 2046); A-law has no such
    # type, and audio/x-alaw-basic is the name Asterisk, SoX and browsers know.
    "ulaw_8000": OutputFormat(codec="ulaw_8000", sample_rate=8000, media_type="audio/basic"),
    "alaw_8000": OutputFormat(codec="alaw_8000", sample_rate=8000, media_type="audio/x-alaw-basic"),
}


@attrs.frozen(kw_only=True)
class SpeechRequest:
    input: str = attrs.field(metadata=field_length(1, MAX_TEXT_CHARS))
    model: str = attrs.field(default="voxtrio", metadata=field_length(1, 200))
    voice: str = attrs.field(default="alloy", metadata=field_length(1, 200))
    instructions: str | None = attrs.field(
        default=None, metadata=field_length(0, MAX_VOICE_DESCRIPTION_CHARS)
    )
    response_format: ResponseFormat = "mp3"
    # Pitch-preserving time-scale modification of the model's audio (voxtrio.audio._tsm).
    speed: float = attrs.field(default=1.0, metadata=field_range(*SPEED_RANGE))
    stream_format: StreamFormat = "audio"


_KNOWN_FIELDS: Final = frozenset(field.name for field in attrs.fields(SpeechRequest))


def parse_speech_request(body: bytes) -> SpeechRequest:
    """Decode and check a request body, or raise INVALID_PARAMS / INVALID_JSON."""
    try:
        payload: Any = load_json(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError(ErrorCode.INVALID_JSON, "the request body is not valid JSON") from None
    except JsonRefused as exc:  # the same bounded decoding as the WebSocket endpoints
        raise ProtocolError(ErrorCode.INVALID_JSON, exc.message) from None
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "the request body must be a JSON object")
    if isinstance(payload.get("voice"), dict):
        # The newer SDKs' `{"id": "voice_123"}` form of a custom voice.
        payload["voice"] = payload["voice"].get("id")
    known = {key: value for key, value in payload.items() if key in _KNOWN_FIELDS}
    request: SpeechRequest = structure_message(SpeechRequest, known, request_id=None)
    if not request.input.strip():
        # The same rule as a native tts_request's text (nothing to speak is an error).
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS,
            "input: must contain something to speak, not only whitespace",
            details={"input": "only whitespace"},
        )
    return request
