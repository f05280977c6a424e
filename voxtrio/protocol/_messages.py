"""Messages of the native protocol: frozen attrs classes and the one converter.

Parsing is strict (no "7" for 7, no 1 for true, no lone surrogates in text), refuses
unknown keys (typos), checks every range declared on a field while it structures the
field, and reports every bad field at once as
`details: {"params.cfg_value": "must be between 0.1 and 10.0", ...}`: type, range and
unknown-key errors together, at most MAX_REPORTED_KEYS unknown keys per object.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Final, Literal, get_args

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.literals import is_literal

from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._field_limits import LimitError, install_limit_hooks
from voxtrio.protocol._formats import SUPPORTED_RATES, AudioFormat
from voxtrio.protocol._json import JsonRefused, dump_json, load_json, lone_surrogate_problem, shown
from voxtrio.protocol._voice_messages import (
    MAX_VOICE_DESCRIPTION_CHARS,
    VOICE_CLIENT_MESSAGE_TYPES,
    VoiceId,
    VoiceServerMessage,
    install_voice_hooks,
)

MAX_REQUEST_ID_CHARS: Final = 128
MAX_TEXT_CHARS: Final = 5000
MAX_SEED: Final = 2**63 - 1
MAX_LEN_CAP: Final = 4096  # voxcpm's own default cap on LM steps
# Unknown keys named per object; the rest are counted. Bounds the work and the reply.
MAX_REPORTED_KEYS: Final = 10
MAX_PROBLEM_CHARS: Final = 200

Mode = Literal["streaming", "non_streaming"]


def _range(low: float, high: float) -> dict[str, Any]:
    return {"range": (low, high)}


# ---------------------------------------------------------------- client -> server


@attrs.frozen(kw_only=True)
class SynthesisOptions:
    """How to speak: every synthesis parameter but the text itself."""

    cfg_value: float = attrs.field(default=2.0, metadata=_range(0.1, 10.0))
    inference_timesteps: int = attrs.field(default=10, metadata=_range(1, 50))
    normalize: bool = False
    denoise: bool = False
    retry_badcase: bool = True
    retry_badcase_max_times: int = attrs.field(default=3, metadata=_range(0, 10))
    retry_badcase_ratio_threshold: float = attrs.field(default=6.0, metadata=_range(1.0, 20.0))
    seed: int | None = attrs.field(default=None, metadata=_range(0, MAX_SEED))
    max_len: int | None = attrs.field(default=None, metadata=_range(1, MAX_LEN_CAP))
    format: AudioFormat = "pcm16"
    sample_rate: int | None = attrs.field(default=None, metadata={"choices": SUPPORTED_RATES})
    bit_rate: int | None = attrs.field(default=None, metadata=_range(6000, 510_000))
    # Voice cloning: a registered voice, or prompt audio fetched from an allow-listed
    # URL (off unless the operator enables it) with its transcript.
    voice_id: VoiceId | None = None
    prompt_wav_url: str | None = attrs.field(default=None, metadata={"length": (1, 2048)})
    prompt_text: str | None = attrs.field(default=None, metadata={"length": (1, 2000)})
    # VoxCPM2 voice design: "a warm female voice" -> "(a warm female voice)text".
    voice_description: str | None = attrs.field(
        default=None, metadata={"length": (1, MAX_VOICE_DESCRIPTION_CHARS)}
    )


@attrs.frozen(kw_only=True)
class TtsParams(SynthesisOptions):
    """Synthesis parameters (seed 000 §3.1, plus seed, max_len, format, sample_rate)."""

    text: str = attrs.field(metadata={"length": (1, MAX_TEXT_CHARS)})
    mode: Mode = "streaming"


@attrs.frozen
class TtsRequest:
    request_id: str = attrs.field(metadata={"length": (1, MAX_REQUEST_ID_CHARS)})
    params: TtsParams


@attrs.frozen
class TextStreamStart:
    """Open a request whose text arrives in pieces (an LLM's tokens); it always streams."""

    request_id: str = attrs.field(metadata={"length": (1, MAX_REQUEST_ID_CHARS)})
    params: SynthesisOptions = attrs.Factory(SynthesisOptions)


@attrs.frozen
class TextDelta:
    request_id: str = attrs.field(metadata={"length": (1, MAX_REQUEST_ID_CHARS)})
    text: str = attrs.field(metadata={"length": (1, MAX_TEXT_CHARS)})


@attrs.frozen
class TextFlush:
    """Speak what is buffered now, even if it does not end a sentence."""

    request_id: str = attrs.field(metadata={"length": (1, MAX_REQUEST_ID_CHARS)})


@attrs.frozen
class TextStreamEnd:
    """No more text: speak the rest, then complete."""

    request_id: str = attrs.field(metadata={"length": (1, MAX_REQUEST_ID_CHARS)})


@attrs.frozen
class Cancel:
    request_id: str = attrs.field(metadata={"length": (1, MAX_REQUEST_ID_CHARS)})


@attrs.frozen
class Ping:
    timestamp: int


ClientMessage = TtsRequest | Cancel | Ping | TextStreamStart | TextDelta | TextFlush | TextStreamEnd
CLIENT_MESSAGE_TYPES: Final[dict[str, type[Any]]] = {
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


ServerMessage = Progress | Complete | Error | Pong | VoiceServerMessage

# ---------------------------------------------------------------- the converter


class _FieldError(ValueError):
    pass


def _strict_int(value: Any, _: type) -> int:
    # bool is an int subclass; a client that sends true for a count has a bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(f"must be an integer, got {_json_type(value)}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError(f"must be a number, got {_json_type(value)}")
    if not math.isfinite(value):
        raise _FieldError("must be a finite number")
    return float(value)


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _FieldError(f"must be a string, got {_json_type(value)}")
    # The one check every inbound string passes, on both endpoints.
    if (problem := lone_surrogate_problem(value)) is not None:
        raise _FieldError(problem)
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise _FieldError(f"must be a boolean, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__


def _strict_literal(cls: Any) -> Any:
    allowed = get_args(cls)

    def structure(value: Any, _: type) -> Any:
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            choices = ", ".join(repr(a) for a in allowed)
            raise _FieldError(f"must be one of {choices}, got {value!r}"[:200])
        return value

    return structure


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    install_limit_hooks(conv)
    conv.register_structure_hook_factory(is_literal, _strict_literal)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    install_voice_hooks(conv)
    return conv


converter: Final = _make_converter()


def _collect_errors(exc: BaseException, path: str, errors: dict[str, str]) -> None:
    """Flatten a cattrs error tree into {"a.b.c": "what is wrong"}."""
    if isinstance(exc, ClassValidationError):
        with_notes, without_notes = exc.group_exceptions()
        for sub, note in with_notes:
            _collect_errors(sub, f"{path}.{note.name}" if path else str(note.name), errors)
        for sub in without_notes:
            _collect_errors(sub, path, errors)
    elif isinstance(exc, IterableValidationError):
        indexed, unindexed = exc.group_exceptions()
        for sub, index_note in indexed:
            _collect_errors(sub, f"{path}[{index_note.index}]", errors)
        for sub in unindexed:
            _collect_errors(sub, path, errors)
    elif isinstance(exc, ForbiddenExtraKeysError):
        # A message may carry ~10^5 unknown keys: name a few, count the rest.
        named = heapq.nsmallest(MAX_REPORTED_KEYS, exc.extra_fields)
        for key in named:
            errors[f"{path}.{shown(key)}" if path else shown(key)] = "unknown key"
        if (more := len(exc.extra_fields) - len(named)) > 0:
            errors[f"{path}.*" if path else "*"] = f"and {more} more unknown keys"
    elif isinstance(exc, KeyError):
        errors[path] = "is required"
    elif isinstance(exc, _FieldError | LimitError):
        errors[path] = str(exc)[:MAX_PROBLEM_CHARS]
    elif isinstance(exc, ExceptionGroup):
        for sub in exc.exceptions:
            _collect_errors(sub, path, errors)
    else:
        # cattrs' own checks (Literal values, unions, non-dict where an object goes).
        errors[path] = _describe_cattrs_error(exc)


def _describe_cattrs_error(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, AttributeError | TypeError):
        return "has the wrong type"
    return shown(text, MAX_PROBLEM_CHARS) if text else type(exc).__name__


def structure_message(cls: type[Any], payload: Any, *, request_id: str | None) -> Any:
    """Build `cls` from decoded JSON, or raise INVALID_PARAMS naming every bad field."""
    errors: dict[str, str] = {}
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.INVALID_PARAMS, "message must be a JSON object")
    try:
        return converter.structure(payload, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        _collect_errors(exc, "", errors)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        _collect_errors(exc, "", errors)
    # By path; a count of further unknown keys ("params.*") after the keys it follows.
    details = dict(sorted(errors.items(), key=lambda item: (item[0].endswith("*"), item[0])))
    summary = "; ".join(f"{field}: {problem}" for field, problem in details.items())
    raise ProtocolError(
        ErrorCode.INVALID_PARAMS,
        f"invalid {cls.__name__} message: {summary}",
        details=details,
        request_id=request_id,
    )


def parse_client_message(text: str) -> ClientMessage:
    """Decode one text frame from a client into a message, or raise ProtocolError."""
    try:
        payload = load_json(text)
    except JsonRefused as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, exc.message) from None
    if not isinstance(payload, dict):
        raise ProtocolError(
            ErrorCode.INVALID_JSON, f"expected a JSON object, got {_json_type(payload)}"
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
