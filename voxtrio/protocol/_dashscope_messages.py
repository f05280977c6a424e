"""DashScope client messages: run-task, continue-task, finish-task, and their parsing.

The classes mirror what the official SDK sends (``Request.get_start_request`` and
friends); parsing goes through the protocol's one strict converter, and every
refusal is a :class:`TaskFailure` answered with task-failed.
"""

from __future__ import annotations

import enum
from typing import Any, Final

import attrs

from voxtrio.protocol._converter import field_length, field_range, structure_message
from voxtrio.protocol._errors import ProtocolError
from voxtrio.protocol._json import JsonRefused, load_json

PATH: Final = "/api-ws/v1/inference"
MAX_TASK_ID_CHARS: Final = 128
# DashScope's own caps: 20k characters per continue-task, 200k per task.
MAX_MESSAGE_TEXT_CHARS: Final = 20_000
MAX_TASK_CHARS: Final = 200_000
# What the SDK assumes for AudioFormat.DEFAULT, which sends format "Default" and
# sample_rate 0 (speech_synthesizer.py:515-520).
DEFAULT_FORMAT: Final = "mp3"
DEFAULT_SAMPLE_RATE: Final = 22050
RATE_RANGE: Final = (0.5, 2.0)
PITCH_RANGE: Final = (0.5, 2.0)
SDK_MAX_SEED: Final = 65535  # the SDK's documented range (speech_synthesizer.py:335)

TEXT_TYPES: Final = ("PlainText", "SSML")  # "SSML" turns SSML on, as enable_ssml does
# Parameters the SDK (or DashScope's docs) send that voxtrio accepts and does not use,
# with the value that means "nothing asked". StartTask.ignored reports every one that
# came with another value, so the I/O layer logs it: none is dropped silently.
IGNORED_PARAMETERS: Final[dict[str, Any]] = {
    "language_hints": None,  # the model detects the language from the text
    "instruction": None,  # CosyVoice instruct models only
    "type": 0,  # the SDK's synthesis_type, always 0
}


class DashScopeErrorCode(enum.StrEnum):
    """`header.error_code` values of task-failed, named as DashScope names them."""

    INVALID_PARAMETER = "InvalidParameter"  # any client mistake; the message says which
    INVALID_API_KEY = "InvalidApiKey"
    THROTTLING = "Throttling"  # server busy / over a limit
    SERVICE_UNAVAILABLE = "ServiceUnavailable"  # shutting down: retry elsewhere
    REQUEST_TIMEOUT = "RequestTimeOut"  # the client went quiet for too long
    INTERNAL_ERROR = "InternalError"  # synthesis failed on the server


@attrs.frozen(kw_only=True)
class Header:
    action: str
    task_id: str = attrs.field(metadata=field_length(1, MAX_TASK_ID_CHARS))
    streaming: str = "duplex"
    attributes: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class RunTaskParameters:
    """run-task `payload.parameters`, as the SDK sends them (Request.get_start_request)."""

    voice: str = "default"
    format: str = DEFAULT_FORMAT
    sample_rate: int = 0  # 0: the default rate (the SDK's AudioFormat.DEFAULT sends 0)
    volume: int = attrs.field(default=50, metadata=field_range(0, 100))
    rate: float = attrs.field(default=1.0, metadata=field_range(*RATE_RANGE))
    pitch: float = attrs.field(default=1.0, metadata=field_range(*PITCH_RANGE))
    seed: int | None = attrs.field(default=None, metadata=field_range(0, SDK_MAX_SEED))
    bit_rate: int | None = None  # kbit/s, as the SDK's AudioFormat enum carries it
    enable_ssml: bool = False
    text_type: str = "PlainText"
    # Accepted, unused: see IGNORED_PARAMETERS.
    word_timestamp_enabled: Any = None
    language_hints: Any = None
    instruction: Any = None
    type: Any = None


@attrs.frozen(kw_only=True)
class RunTaskInput:
    text: str | None = None


@attrs.frozen(kw_only=True)
class ContinueInput:
    text: str | None = None
    flush: bool = False


@attrs.frozen(kw_only=True)
class FinishInput:
    directive: str | None = None
    # Go relays reuse run-task's input struct, so finish-task carries `"text": ""`.
    text: str | None = None


@attrs.frozen(kw_only=True)
class RunTaskPayload:
    model: str = ""
    task_group: str = "audio"
    task: str = "tts"
    function: str = "SpeechSynthesizer"
    input: RunTaskInput = attrs.Factory(RunTaskInput)
    parameters: RunTaskParameters = attrs.Factory(RunTaskParameters)


# A task's parameters are fixed by its run-task. Go's encoding/json cannot omit an empty
# struct, so relays send `"parameters": {"voice": "", "rate": 0, ...}` on continue-task
# and finish-task; DashScope accepts and ignores it, and so does voxtrio (any object).
@attrs.frozen(kw_only=True)
class ContinueTaskPayload:
    # The SDK repeats these on every continue-task; they are checked, not used.
    model: str | None = None
    task_group: str = "audio"
    task: str = "tts"
    function: str = "SpeechSynthesizer"
    input: ContinueInput = attrs.Factory(ContinueInput)
    parameters: dict[str, Any] | None = None  # ignored (see above)


@attrs.frozen(kw_only=True)
class FinishTaskPayload:
    model: str | None = None
    task_group: str = "audio"
    task: str = "tts"
    function: str = "SpeechSynthesizer"
    input: FinishInput = attrs.Factory(FinishInput)
    parameters: dict[str, Any] | None = None  # ignored, as on continue-task


@attrs.frozen
class RunTaskMessage:
    header: Header
    payload: RunTaskPayload


@attrs.frozen
class ContinueTaskMessage:
    header: Header
    payload: ContinueTaskPayload = attrs.Factory(ContinueTaskPayload)


@attrs.frozen
class FinishTaskMessage:
    header: Header
    payload: FinishTaskPayload = attrs.Factory(FinishTaskPayload)


_HEADER_KEYS: Final = frozenset(a.name for a in attrs.fields(Header))

DashScopeMessage = RunTaskMessage | ContinueTaskMessage | FinishTaskMessage
_MESSAGE_TYPES: Final[dict[str, type[DashScopeMessage]]] = {
    "run-task": RunTaskMessage,
    "continue-task": ContinueTaskMessage,
    "finish-task": FinishTaskMessage,
}


class TaskFailure(Exception):
    """A refusal: answered with task-failed for `task_id` (None: not attributable)."""

    def __init__(
        self, code: DashScopeErrorCode, message: str, *, task_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.task_id = task_id


def invalid_parameter(message: str, task_id: str | None) -> TaskFailure:
    """task-failed InvalidParameter: a client mistake, `message` says which."""
    return TaskFailure(DashScopeErrorCode.INVALID_PARAMETER, message, task_id=task_id)


def parse_dashscope_message(text: str) -> DashScopeMessage:
    """Decode one text frame into a message, or raise TaskFailure saying what is wrong."""
    try:
        data = load_json(text)
    except JsonRefused as exc:
        raise invalid_parameter(exc.message, None) from None
    if not isinstance(data, dict):
        raise invalid_parameter("a message must be a JSON object with header and payload", None)
    header = data.get("header")
    if not isinstance(header, dict):
        raise invalid_parameter("the message has no header object", None)
    raw_id = header.get("task_id")
    task_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_TASK_ID_CHARS else None
    action = header.get("action")
    cls = _MESSAGE_TYPES.get(action) if isinstance(action, str) else None
    # Header keys this server does not know are dropped: DashScope ignores them, and
    # relays add their own (tracing ids and the like). The keys it knows stay strict.
    data = {**data, "header": {k: v for k, v in header.items() if k in _HEADER_KEYS}}
    if cls is None:
        shown = repr(action[:64]) if isinstance(action, str) else "missing"
        raise invalid_parameter(
            f"unknown header.action {shown}: expected run-task, continue-task or finish-task",
            task_id,
        )
    try:
        message: DashScopeMessage = structure_message(cls, data, request_id=task_id)
    except ProtocolError as exc:
        problems = "; ".join(f"{field}: {problem}" for field, problem in exc.details.items())
        raise invalid_parameter(
            f"invalid {action} message: {problems or exc.message}", task_id
        ) from None
    _check_envelope(message, task_id)
    return message


def _check_envelope(message: DashScopeMessage, task_id: str | None) -> None:
    errors = []
    if message.header.streaming != "duplex":
        errors.append(f"header.streaming must be 'duplex', got {message.header.streaming!r}")
    payload = message.payload
    for name, expected in (("task_group", "audio"), ("task", "tts")):
        value = getattr(payload, name)
        if value != expected:
            errors.append(f"payload.{name} must be {expected!r}, got {value[:64]!r}")
    if payload.function != "SpeechSynthesizer":
        errors.append(
            "payload.function must be 'SpeechSynthesizer' (this server only synthesises "
            f"speech), got {payload.function[:64]!r}"
        )
    if isinstance(payload, FinishTaskPayload) and payload.input.directive not in (None, "cancel"):
        directive = payload.input.directive or ""
        errors.append(f"payload.input.directive must be 'cancel', got {directive[:64]!r}")
    if isinstance(payload, FinishTaskPayload) and payload.input.text:
        errors.append("payload.input.text must be empty on finish-task: send text in continue-task")
    if errors:
        raise invalid_parameter("; ".join(errors), task_id)
