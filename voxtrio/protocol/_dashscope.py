"""The DashScope (CosyVoice) duplex WebSocket protocol, sans-IO.

Clients written for DashScope's ``wss://.../api-ws/v1/inference`` (the official
``dashscope`` SDK's ``SpeechSynthesizer``, relays speaking the same JSON) talk to
voxtrio unchanged. :class:`DashScopeTask` is one connection's state: it turns each
frame the client sends into actions for the I/O layer, owns the sentence splitter and
the SSML parser, numbers the sentences, keeps the audio timeline, and builds every
event exactly as the SDK reads it. docs/dashscope-notes.md has the SDK facts behind
each choice.

States (one task at a time per connection, and the connection is reused)::

    IDLE --run-task--> STARTED --finish-task--> FINISHING --finished()--> IDLE
    STARTED/FINISHING --finish-task{directive: cancel}, error, fail()--> IDLE

A ``task-failed`` for the running task's id always stops that task (:class:`CancelTask`
comes first): the SDK takes any task-failed as the end of its task, so audio must not
go on behind it. Mistakes that name another task id (a second run-task while one runs,
a continue-task for a stale id) get their own task-failed and leave the running task
alone.
"""

from __future__ import annotations

import collections
import enum
from typing import Any, Final

import attrs

from voxtrio.audio._codecs import (
    OPUS_BIT_RATE_RANGE,
    SUPPORTED_RATES,
    AudioEncoder,
    AudioFormat,
    mp3_bit_rates,
)
from voxtrio.protocol._errors import ProtocolError
from voxtrio.protocol._json import JsonRefused, dump_json, load_json
from voxtrio.protocol._messages import structure_message
from voxtrio.protocol._sentences import SentenceSplitter, is_speakable
from voxtrio.protocol._ssml import (
    Segment,
    Sentence,
    Silence,
    SsmlError,
    SsmlLimits,
    looks_like_ssml,
    parse_ssml,
)

__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "IGNORED_PARAMETERS",
    "PATH",
    "Action",
    "CancelTask",
    "DashScopeCapabilities",
    "DashScopeErrorCode",
    "DashScopeTask",
    "FinishTask",
    "Reply",
    "SpeakSentence",
    "StartTask",
    "TaskParams",
    "TaskState",
    "count_characters",
    "dump_event",
    "make_encoder",
    "result_generated",
    "task_failed",
    "task_finished",
    "task_started",
    "volume_to_gain",
]

PATH: Final = "/api-ws/v1/inference"
MAX_TASK_ID_CHARS: Final = 128
# DashScope's own caps: 20k characters per continue-task, 200k per task.
MAX_TEXT_CHARS: Final = 20_000
MAX_TASK_CHARS: Final = 200_000
# What the SDK assumes for AudioFormat.DEFAULT, which sends format "Default" and
# sample_rate 0 (speech_synthesizer.py:515-520).
DEFAULT_FORMAT: Final = "mp3"
DEFAULT_SAMPLE_RATE: Final = 22050
RATE_RANGE: Final = (0.5, 2.0)
PITCH_RANGE: Final = (0.5, 2.0)
MAX_SEED: Final = 65535  # the SDK's documented range (speech_synthesizer.py:335)

_FORMATS: Final[dict[str, AudioFormat]] = {
    "pcm": "pcm16",
    "wav": "wav",
    "mp3": "mp3",
    "opus": "opus",
    "default": DEFAULT_FORMAT,
}

# Parameters the SDK (or DashScope's docs) send that voxtrio accepts and does not use,
# with the value that means "nothing asked". StartTask.ignored reports every one that
# came with another value, so the I/O layer logs it: none is dropped silently.
IGNORED_PARAMETERS: Final[dict[str, Any]] = {
    "text_type": "PlainText",  # always sent by the SDK; SSML is enable_ssml's job
    "word_timestamp_enabled": False,  # sentence timestamps are sent; words stay []
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


# ---------------------------------------------------------------- client -> server


def _range(low: float, high: float) -> dict[str, Any]:
    return {"range": (low, high)}


@attrs.frozen(kw_only=True)
class Header:
    action: str
    task_id: str = attrs.field(metadata={"length": (1, MAX_TASK_ID_CHARS)})
    streaming: str = "duplex"
    attributes: dict[str, Any] = attrs.Factory(dict)


@attrs.frozen(kw_only=True)
class RunTaskParameters:
    """run-task `payload.parameters`, as the SDK sends them (Request.get_start_request)."""

    voice: str = "default"
    format: str = DEFAULT_FORMAT
    sample_rate: int = 0  # 0: the default rate (the SDK's AudioFormat.DEFAULT sends 0)
    volume: int = attrs.field(default=50, metadata=_range(0, 100))
    rate: float = attrs.field(default=1.0, metadata=_range(*RATE_RANGE))
    pitch: float = attrs.field(default=1.0, metadata=_range(*PITCH_RANGE))
    seed: int | None = attrs.field(default=None, metadata=_range(0, MAX_SEED))
    bit_rate: int | None = None  # kbit/s, as the SDK's AudioFormat enum carries it
    enable_ssml: bool = False
    # Accepted, unused: see IGNORED_PARAMETERS.
    text_type: Any = None
    word_timestamp_enabled: Any = None
    language_hints: Any = None
    instruction: Any = None
    type: Any = None


@attrs.frozen(kw_only=True)
class TextInput:
    text: str | None = None


@attrs.frozen(kw_only=True)
class ContinueInput:
    text: str | None = None
    flush: bool = False


@attrs.frozen(kw_only=True)
class FinishInput:
    directive: str | None = None


@attrs.frozen(kw_only=True)
class RunTaskPayload:
    model: str = ""
    task_group: str = "audio"
    task: str = "tts"
    function: str = "SpeechSynthesizer"
    input: TextInput = attrs.Factory(TextInput)
    parameters: RunTaskParameters = attrs.Factory(RunTaskParameters)


@attrs.frozen(kw_only=True)
class ContinueTaskPayload:
    # The SDK repeats these on every continue-task; they are checked, not used.
    model: str | None = None
    task_group: str = "audio"
    task: str = "tts"
    function: str = "SpeechSynthesizer"
    input: ContinueInput = attrs.Factory(ContinueInput)


@attrs.frozen(kw_only=True)
class FinishTaskPayload:
    model: str | None = None
    task_group: str = "audio"
    task: str = "tts"
    function: str = "SpeechSynthesizer"
    input: FinishInput = attrs.Factory(FinishInput)


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


ClientMessage = RunTaskMessage | ContinueTaskMessage | FinishTaskMessage
_MESSAGE_TYPES: Final[dict[str, type[ClientMessage]]] = {
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


def _invalid(message: str, task_id: str | None) -> TaskFailure:
    return TaskFailure(DashScopeErrorCode.INVALID_PARAMETER, message, task_id=task_id)


def parse_client_message(text: str) -> ClientMessage:
    """Decode one text frame into a message, or raise TaskFailure saying what is wrong."""
    try:
        data = load_json(text)
    except JsonRefused as exc:
        raise _invalid(exc.message, None) from None
    if not isinstance(data, dict):
        raise _invalid("a message must be a JSON object with header and payload", None)
    header = data.get("header")
    if not isinstance(header, dict):
        raise _invalid("the message has no header object", None)
    raw_id = header.get("task_id")
    task_id = raw_id if isinstance(raw_id, str) and 0 < len(raw_id) <= MAX_TASK_ID_CHARS else None
    action = header.get("action")
    cls = _MESSAGE_TYPES.get(action) if isinstance(action, str) else None
    if cls is None:
        shown = repr(action[:64]) if isinstance(action, str) else "missing"
        raise _invalid(
            f"unknown header.action {shown}: expected run-task, continue-task or finish-task",
            task_id,
        )
    try:
        message: ClientMessage = structure_message(cls, data, request_id=task_id)
    except ProtocolError as exc:
        problems = "; ".join(f"{field}: {problem}" for field, problem in exc.details.items())
        raise _invalid(f"invalid {action} message: {problems or exc.message}", task_id) from None
    _check_envelope(message, task_id)
    return message


def _check_envelope(message: ClientMessage, task_id: str | None) -> None:
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
    if errors:
        raise _invalid("; ".join(errors), task_id)


# ---------------------------------------------------------------- validated parameters


def volume_to_gain(volume: int) -> float:
    """DashScope volume 0-100 -> linear gain: volume / 50 (0 mute, 50 unchanged, 100 x2).

    Linear, not a dB curve: 0 is silence without a special case, 25 is -6 dB, and the
    top half stops at +6 dB, which is already past full scale for normalised TTS
    output (the encoder clips); a dB curve steep enough to be useful at the bottom
    would spend most of the top half clipping.
    """
    return volume / 50.0


@attrs.frozen(kw_only=True)
class TaskParams:
    """A run-task's parameters, validated and translated to voxtrio's terms."""

    voice: str
    format: AudioFormat  # AudioEncoder's name ("pcm" arrives as "pcm16")
    sample_rate: int  # Hz requested (opus may encode at the next Opus rate up)
    volume: int  # 0-100 as sent
    gain: float  # volume_to_gain(volume), for AudioEncoder(volume=)
    rate: float  # speed factor; != 1.0 only when DSP is available
    pitch: float  # pitch factor; likewise
    seed: int | None
    bit_rate: int | None  # bits/s for AudioEncoder(bit_rate=); None = codec default
    enable_ssml: bool

    @property
    def needs_dsp(self) -> bool:
        return self.rate != 1.0 or self.pitch != 1.0


def make_encoder(params: TaskParams, *, input_rate: int) -> AudioEncoder:
    """The AudioEncoder for a task: one per task, all its sentences in one stream."""
    return AudioEncoder(
        params.format,
        input_rate=input_rate,
        output_rate=params.sample_rate,
        bit_rate=params.bit_rate,
        volume=params.gain,
    )


@attrs.frozen
class DashScopeCapabilities:
    """What this server offers on the DashScope endpoint."""

    voices: frozenset[str] = frozenset({"default"})
    model_names: frozenset[str] = frozenset()  # any other model is served too, and logged
    dsp_available: bool = False  # rate/pitch other than 1.0 (voxtrio.audio._dsp)
    max_text_chars: int = MAX_TEXT_CHARS
    max_task_chars: int = MAX_TASK_CHARS
    sentence_max_chars: int = 300
    ssml_limits: SsmlLimits = attrs.Factory(SsmlLimits)


def _validate(
    raw: RunTaskParameters, caps: DashScopeCapabilities, task_id: str
) -> tuple[TaskParams, dict[str, Any]]:
    errors: dict[str, str] = {}
    fmt = _FORMATS.get(raw.format.lower())
    if fmt is None:
        errors["format"] = f"must be one of pcm, wav, mp3, opus, got {raw.format[:32]!r}"
    rate = raw.sample_rate or DEFAULT_SAMPLE_RATE
    if raw.sample_rate and raw.sample_rate not in SUPPORTED_RATES:
        allowed = ", ".join(str(r) for r in SUPPORTED_RATES)
        errors["sample_rate"] = f"must be one of {allowed}, got {raw.sample_rate}"
    if raw.voice not in caps.voices:
        known = ", ".join(sorted(caps.voices)[:20])
        errors["voice"] = f"unknown voice {raw.voice[:64]!r}; this server has: {known}"
    if not caps.dsp_available:
        for name in ("rate", "pitch"):
            value = getattr(raw, name)
            if value != 1.0:
                errors[name] = (
                    f"{value} is not supported: this server cannot change {name} at good "
                    "quality while streaming; send 1.0"
                )
    bit_rate = _bit_rate(raw, fmt, rate, errors)
    if errors:
        summary = "; ".join(f"parameters.{k}: {v}" for k, v in sorted(errors.items()))
        raise _invalid(f"invalid run-task parameters: {summary}", task_id)
    assert fmt is not None  # for mypy: errors would hold "format" otherwise
    params = TaskParams(
        voice=raw.voice,
        format=fmt,
        sample_rate=rate,
        volume=raw.volume,
        gain=volume_to_gain(raw.volume),
        rate=float(raw.rate),
        pitch=float(raw.pitch),
        seed=raw.seed,
        bit_rate=bit_rate,
        enable_ssml=raw.enable_ssml,
    )
    ignored = {
        name: getattr(raw, name)
        for name, unused in IGNORED_PARAMETERS.items()
        if getattr(raw, name) not in (None, unused)
    }
    return params, ignored


def _bit_rate(
    raw: RunTaskParameters, fmt: AudioFormat | None, rate: int, errors: dict[str, str]
) -> int | None:
    """`bit_rate` is kbit/s on the wire (the SDK's enum: 16, 32, 64); the encoder takes bit/s."""
    kbps = raw.bit_rate
    if kbps is None or fmt is None:
        return None
    if fmt == "opus":
        low, high = (b // 1000 for b in OPUS_BIT_RATE_RANGE)
        if not low <= kbps <= high:
            errors["bit_rate"] = f"opus bit_rate must be {low}-{high} (kbit/s), got {kbps}"
            return None
        return kbps * 1000
    if fmt == "mp3":
        allowed = [b // 1000 for b in mp3_bit_rates(rate)]
        if kbps not in allowed:
            shown = ", ".join(str(b) for b in allowed)
            errors["bit_rate"] = f"mp3 bit_rate at {rate} Hz must be one of {shown} (kbit/s)"
            return None
        return kbps * 1000
    errors["bit_rate"] = f"applies to opus and mp3 only, not {raw.format}"
    return None


# ---------------------------------------------------------------- server -> client


def _header(task_id: str, event: str, **extra: Any) -> dict[str, Any]:
    return {"task_id": task_id, "event": event, **extra, "attributes": {}}


def task_started(task_id: str) -> dict[str, Any]:
    return {"header": _header(task_id, "task-started"), "payload": {}}


def result_generated(
    task_id: str,
    output_type: str,
    index: int,
    *,
    text: str | None = None,
    begin_time: int | None = None,
    end_time: int | None = None,
    characters: int | None = None,
) -> dict[str, Any]:
    """A result-generated event: sentence-begin, sentence-synthesis or sentence-end.

    `text` goes out twice: as `output.original_text` (DashScope's current docs) and as
    `sentence.text` (older CosyVoice events), so clients of either kind find it.
    """
    sentence: dict[str, Any] = {"index": index, "words": []}
    if text is not None:
        sentence["text"] = text
    if begin_time is not None:
        sentence["begin_time"] = begin_time
    if end_time is not None:
        sentence["end_time"] = end_time
    output: dict[str, Any] = {"sentence": sentence, "type": output_type}
    if text is not None:
        output["original_text"] = text
    payload: dict[str, Any] = {"output": output}
    if characters is not None:
        payload["usage"] = {"characters": characters}
    return {"header": _header(task_id, "result-generated"), "payload": payload}


def task_finished(task_id: str, characters: int) -> dict[str, Any]:
    return {
        "header": _header(task_id, "task-finished"),
        "payload": {"output": {"sentence": {"words": []}}, "usage": {"characters": characters}},
    }


def task_failed(task_id: str, code: str, message: str) -> dict[str, Any]:
    header = _header(task_id, "task-failed", error_code=str(code), error_message=message)
    return {"header": header, "payload": {}}


def dump_event(event: dict[str, Any]) -> str:
    return dump_json(event)


def count_characters(text: str) -> int:
    """Characters as DashScope bills them: Han ideographs count 2, everything else 1."""
    return len(text) + sum(1 for ch in text if _is_han(ch))


def _is_han(ch: str) -> bool:
    o = ord(ch)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x3FFFF  # extensions B-H and compatibility supplement
    )


# ---------------------------------------------------------------- actions


@attrs.frozen
class Reply:
    """Send this JSON text frame. `event`: its header.event, or output.type for results."""

    event: str
    text: str


@attrs.frozen
class StartTask:
    """A task starts: set up its encoder (make_encoder), voice, DSP and synthesis worker."""

    task_id: str
    model: str
    model_known: bool  # False: log that `model` is not a name this server knows
    params: TaskParams
    ignored: dict[str, Any]  # accepted parameters with a value that has no effect: log


@attrs.frozen
class SpeakSentence:
    """Queue this sentence behind the task's earlier ones.

    The worker plays `silence_before_ms` of silence, the synthesised `text` (nothing
    when `text` is "": an SSML break with no sentence to sit beside), then
    `silence_after_ms`, through the task's one encoder.
    """

    task_id: str
    index: int
    text: str
    silence_before_ms: int = 0
    silence_after_ms: int = 0


@attrs.frozen
class FinishTask:
    """No more sentences: once the queue is spoken, flush the encoder, then `finished()`.

    Any bytes `encoder.finish()` returns go out after `synthesis_event(task_id,
    last_index)` like other audio.
    """

    task_id: str
    last_index: int


@attrs.frozen
class CancelTask:
    """Stop the task now: cancel its worker, wait until it has exited, close the encoder
    (no tail bytes), drop queued sentences. Only then go on to the next action."""

    task_id: str


Action = Reply | StartTask | SpeakSentence | FinishTask | CancelTask


class TaskState(enum.Enum):
    IDLE = "idle"
    STARTED = "started"
    FINISHING = "finishing"


@attrs.define
class _Outstanding:
    sentence: SpeakSentence
    characters: int  # the running total through this sentence, for sentence-end


def _reply(event: dict[str, Any]) -> Reply:
    header = event["header"]
    name = header["event"]
    if name == "result-generated":
        name = event["payload"]["output"]["type"]
    return Reply(name, dump_event(event))


@attrs.define
class DashScopeTask:
    """One connection's DashScope protocol state (see the module docstring).

    Frames go in through :meth:`receive_text` / :meth:`receive_bytes`; the synthesis
    worker reports through :meth:`begin_sentence`, :meth:`synthesis_event`,
    :meth:`sentence_audio_done` and :meth:`finished`; :meth:`fail` ends a task the
    server cannot finish. Every call returns the actions to carry out, in order.
    """

    capabilities: DashScopeCapabilities = attrs.Factory(DashScopeCapabilities)
    # Set when the handshake's API key was refused: every run-task then gets task-failed
    # InvalidApiKey with this message. Accepting the handshake and failing the task gives
    # the SDK a clear error; refusing the handshake makes it time out after 5 s instead.
    auth_error: str | None = None
    # Set while the server drains: new run-tasks get task-failed ServiceUnavailable.
    unavailable: str | None = None
    state: TaskState = TaskState.IDLE
    task_id: str | None = None
    params: TaskParams | None = None
    _splitter: SentenceSplitter = attrs.field(init=False)
    _next_index: int = 0
    _received_chars: int = 0  # len() of all text received, for the per-task cap
    _counted: int = 0  # DashScope characters of the text cut into pieces so far
    _timeline_ms: float = 0.0  # audio sent for the finished sentences
    _outstanding: collections.deque[_Outstanding] = attrs.Factory(collections.deque)
    _last_index: int = 0
    # The last task ended by task-failed or cancel: the client may still have messages
    # for it in flight, which are dropped rather than answered with a second task-failed
    # (the SDK would report the failure twice).
    _ended_task_id: str | None = None

    def __attrs_post_init__(self) -> None:
        self._splitter = self._new_splitter()

    # ------------------------------------------------------------ frames in

    def receive_text(self, text: str) -> list[Action]:
        try:
            message = parse_client_message(text)
            if self._is_late(message):
                return []
            match message:
                case RunTaskMessage():
                    return self._run(message)
                case ContinueTaskMessage():
                    return self._continue(message)
                case FinishTaskMessage():
                    return self._finish(message)
        except TaskFailure as failure:
            return self._refuse(failure)

    def receive_bytes(self, data: bytes) -> list[Action]:
        return self._refuse(
            _invalid(
                f"binary frames from clients are not part of the protocol ({len(data)} bytes)",
                None,
            )
        )

    # ------------------------------------------------------------ worker reports

    def begin_sentence(self, sentence: SpeakSentence) -> Reply:
        """The sentence-begin event, to send before the sentence's first audio."""
        begin: int | None = None
        if self._outstanding and self._outstanding[0].sentence == sentence:
            begin = round(self._timeline_ms + sentence.silence_before_ms)
        return _reply(
            result_generated(
                sentence.task_id,
                "sentence-begin",
                sentence.index,
                text=sentence.text,
                begin_time=begin,
            )
        )

    @staticmethod
    def synthesis_event(task_id: str, index: int) -> Reply:
        """The sentence-synthesis event that must precede every binary audio frame."""
        return _reply(result_generated(task_id, "sentence-synthesis", index))

    def sentence_audio_done(self, index: int, samples: int, sample_rate: int) -> list[Action]:
        """Sentence `index` is fully sent: `samples` at `sample_rate`, its silences included.

        Returns its sentence-end event (begin/end time of the speech in ms on the task's
        audio timeline, the running character count). A report for a task that is no
        longer running (it was cancelled meanwhile) returns nothing.
        """
        if samples < 0 or sample_rate <= 0:
            raise ValueError(f"bad audio length: {samples} samples at {sample_rate} Hz")
        if self.state is TaskState.IDLE or not any(
            o.sentence.index == index for o in self._outstanding
        ):
            return []
        head = self._outstanding[0]
        if head.sentence.index != index:
            raise ValueError(
                f"sentence {index} reported before sentence {head.sentence.index}: "
                "sentences must be spoken in order"
            )
        self._outstanding.popleft()
        sentence = head.sentence
        total_ms = samples * 1000.0 / sample_rate
        begin = self._timeline_ms + sentence.silence_before_ms
        end = max(begin, self._timeline_ms + total_ms - sentence.silence_after_ms)
        self._timeline_ms += total_ms
        assert self.task_id is not None
        return [
            _reply(
                result_generated(
                    self.task_id,
                    "sentence-end",
                    index,
                    text=sentence.text,
                    begin_time=round(begin),
                    end_time=round(end),
                    characters=head.characters,
                )
            )
        ]

    def finished(self) -> list[Action]:
        """FinishTask is carried out (queue spoken, encoder tail sent): task-finished."""
        if self.state is not TaskState.FINISHING:
            return []  # cancelled or failed meanwhile: that already ended the task
        if self._outstanding:
            left = [o.sentence.index for o in self._outstanding]
            raise RuntimeError(f"finished() while sentences {left} are not done")
        assert self.task_id is not None
        reply = _reply(task_finished(self.task_id, self._characters()))
        self._reset()
        return [reply]

    def fail(self, code: DashScopeErrorCode, message: str) -> list[Action]:
        """End the running task with task-failed (synthesis error, client timeout)."""
        if self.state is TaskState.IDLE or self.task_id is None:
            return []
        return self._abort(TaskFailure(code, message, task_id=self.task_id))

    # ------------------------------------------------------------ transitions

    def _is_late(self, message: ClientMessage) -> bool:
        task_id = message.header.task_id
        return (
            not isinstance(message, RunTaskMessage)
            and task_id == self._ended_task_id
            and task_id != self.task_id
        )

    def _run(self, message: RunTaskMessage) -> list[Action]:
        task_id = message.header.task_id
        if self.state is not TaskState.IDLE:
            raise _invalid(
                f"task {self.task_id!r} is still running on this connection: one task at a "
                "time; send run-task after its task-finished",
                task_id,
            )
        if self.auth_error is not None:
            raise TaskFailure(DashScopeErrorCode.INVALID_API_KEY, self.auth_error, task_id=task_id)
        if self.unavailable is not None:
            raise TaskFailure(
                DashScopeErrorCode.SERVICE_UNAVAILABLE, self.unavailable, task_id=task_id
            )
        payload = message.payload
        params, ignored = _validate(payload.parameters, self.capabilities, task_id)
        self.state, self.task_id, self.params = TaskState.STARTED, task_id, params
        actions: list[Action] = [
            StartTask(
                task_id,
                payload.model,
                payload.model in self.capabilities.model_names,
                params,
                ignored,
            ),
            _reply(task_started(task_id)),
        ]
        if payload.input.text:
            actions += self._feed(payload.input.text)
        return actions

    def _continue(self, message: ContinueTaskMessage) -> list[Action]:
        task_id = self._check_running(message.header.task_id, "continue-task")
        if self.state is TaskState.FINISHING:
            raise _invalid("continue-task after finish-task", task_id)
        data = message.payload.input
        actions: list[Action] = []
        if data.text:
            actions += self._feed(data.text)
        if data.flush:
            actions += self._pieces(self._splitter.flush())
        return actions

    def _finish(self, message: FinishTaskMessage) -> list[Action]:
        task_id = self._check_running(message.header.task_id, "finish-task")
        if message.payload.input.directive == "cancel":
            # The SDK's streaming_cancel() waits for task-finished (speech_synthesizer.py:
            # 746-749), not task-failed; usage counts all the text received.
            reply = _reply(task_finished(task_id, self._characters()))
            self._reset()
            self._ended_task_id = task_id
            return [CancelTask(task_id), reply]
        if self.state is TaskState.FINISHING:
            return []  # a repeated finish-task: the one task-finished is on its way
        actions = self._pieces(self._splitter.flush())
        self.state = TaskState.FINISHING
        actions.append(FinishTask(task_id, self._last_index))
        return actions

    def _check_running(self, task_id: str, action: str) -> str:
        if self.state is TaskState.IDLE:
            raise _invalid(f"{action} for task {task_id!r}, but no task is running", task_id)
        if task_id != self.task_id:
            raise _invalid(
                f"{action} for task {task_id!r}, but the running task is {self.task_id!r}",
                task_id,
            )
        return task_id

    def _feed(self, text: str) -> list[Action]:
        caps = self.capabilities
        if len(text) > caps.max_text_chars:
            raise _invalid(
                f"text too long: {len(text)} characters in one message, "
                f"at most {caps.max_text_chars}",
                self.task_id,
            )
        self._received_chars += len(text)
        if self._received_chars > caps.max_task_chars:
            raise _invalid(
                f"too much text: at most {caps.max_task_chars} characters per task",
                self.task_id,
            )
        assert self.params is not None
        if self.params.enable_ssml and looks_like_ssml(text):
            # A document is a sentence boundary: what came before it is spoken first.
            actions = self._pieces(self._splitter.flush())
            try:
                segments = parse_ssml(text, caps.ssml_limits)
            except SsmlError as exc:
                raise _invalid(f"invalid SSML: {exc.message}", self.task_id) from None
            return actions + self._segments(segments)
        return self._pieces(self._splitter.feed(text))

    def _pieces(self, pieces: list[str]) -> list[Action]:
        return self._segments([Sentence(p) for p in pieces])

    def _segments(self, segments: list[Segment]) -> list[Action]:
        """Sentences to speak; each silence goes before the next sentence of the batch,
        or after the last one when none follows."""
        actions: list[Action] = []
        silence = 0
        for segment in segments:
            if isinstance(segment, Silence):
                silence += segment.ms
                continue
            self._counted += count_characters(segment.text)
            if is_speakable(segment.text):
                actions.append(self._sentence(segment.text.strip(), silence))
                silence = 0
        if silence:
            if actions:
                self._add_trailing_silence(actions, len(actions) - 1, silence)
            else:
                actions.append(self._sentence("", silence))
        return actions

    def _sentence(self, text: str, silence_before_ms: int) -> SpeakSentence:
        assert self.task_id is not None
        sentence = SpeakSentence(self.task_id, self._next_index, text, silence_before_ms)
        self._outstanding.append(_Outstanding(sentence, self._counted))
        self._last_index = self._next_index
        self._next_index += 1
        return sentence

    def _add_trailing_silence(self, actions: list[Action], at: int, ms: int) -> None:
        old = actions[at]
        assert isinstance(old, SpeakSentence)
        new = attrs.evolve(old, silence_after_ms=old.silence_after_ms + ms)
        actions[at] = new
        for record in self._outstanding:
            if record.sentence == old:
                record.sentence = new

    def _refuse(self, failure: TaskFailure) -> list[Action]:
        running = self.state is not TaskState.IDLE
        if running and failure.task_id in (None, self.task_id):
            return self._abort(failure)
        return [_reply(task_failed(failure.task_id or "", failure.code, failure.message))]

    def _abort(self, failure: TaskFailure) -> list[Action]:
        assert self.task_id is not None
        task_id = self.task_id
        self._reset()
        self._ended_task_id = task_id
        return [CancelTask(task_id), _reply(task_failed(task_id, failure.code, failure.message))]

    def _characters(self) -> int:
        return self._counted + count_characters(self._splitter.pending)

    def _new_splitter(self) -> SentenceSplitter:
        return SentenceSplitter(max_chars=self.capabilities.sentence_max_chars)

    def _reset(self) -> None:
        self.state, self.task_id, self.params = TaskState.IDLE, None, None
        self._splitter = self._new_splitter()
        self._next_index = self._received_chars = self._counted = self._last_index = 0
        self._timeline_ms = 0.0
        self._outstanding.clear()
