"""One connection's DashScope task: the state machine (see :mod:`voxtrio.protocol._dashscope`)."""

from __future__ import annotations

import collections
import enum
from collections.abc import Sequence
from typing import Any

import attrs

from voxtrio.protocol._dashscope_actions import (
    CancelTask,
    FinishTask,
    SendEvent,
    SpeakSentence,
    StartTask,
    TaskAction,
)
from voxtrio.protocol._dashscope_events import (
    count_characters,
    dump_event,
    result_generated,
    task_failed,
    task_finished,
    task_started,
)
from voxtrio.protocol._dashscope_messages import (
    ContinueTaskMessage,
    DashScopeErrorCode,
    DashScopeMessage,
    FinishTaskMessage,
    RunTaskMessage,
    TaskFailure,
    invalid_parameter,
    parse_dashscope_message,
)
from voxtrio.protocol._dashscope_params import (
    DashScopeCapabilities,
    TaskParams,
    validate_parameters,
)
from voxtrio.protocol._sentences import SentenceSplitter, is_speakable
from voxtrio.protocol._ssml import (
    Segment,
    Sentence,
    Silence,
    SsmlError,
    is_speak_document,
    looks_like_ssml,
    parse_ssml,
)
from voxtrio.protocol._words import TimedWord


class TaskState(enum.Enum):
    IDLE = "idle"
    STARTED = "started"
    FINISHING = "finishing"


@attrs.define
class _Outstanding:
    sentence: SpeakSentence
    characters: int  # the running total through this sentence, for sentence-end


def _send(event: dict[str, Any]) -> SendEvent:
    header = event["header"]
    name = header["event"]
    if name == "result-generated":
        name = event["payload"]["output"]["type"]
    return SendEvent(name, dump_event(event))


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

    def receive_text(self, text: str) -> list[TaskAction]:
        try:
            message = parse_dashscope_message(text)
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

    def receive_bytes(self, data: bytes) -> list[TaskAction]:
        return self._refuse(
            invalid_parameter(
                f"binary frames from clients are not part of the protocol ({len(data)} bytes)",
                None,
            )
        )

    # ------------------------------------------------------------ worker reports

    def begin_sentence(self, sentence: SpeakSentence) -> SendEvent:
        """The sentence-begin event, to send before the sentence's first audio."""
        begin: int | None = None
        if self._outstanding and self._outstanding[0].sentence == sentence:
            begin = round(self._timeline_ms + sentence.silence_before_ms)
        return _send(
            result_generated(
                sentence.task_id,
                "sentence-begin",
                sentence.index,
                text=sentence.text,
                begin_time=begin,
            )
        )

    @staticmethod
    def synthesis_event(task_id: str, index: int) -> SendEvent:
        """The sentence-synthesis event that must precede every binary audio frame."""
        return _send(result_generated(task_id, "sentence-synthesis", index))

    def sentence_audio_done(
        self,
        index: int,
        samples: int,
        sample_rate: int,
        words: Sequence[TimedWord] = (),
    ) -> list[TaskAction]:
        """Sentence `index` is fully sent: `samples` at `sample_rate`, its silences included.

        Returns its sentence-end event (begin/end time of the speech in ms on the task's
        audio timeline, the running character count, and `words` when the task asked for
        word timestamps). A report for a task that is no longer running (it was cancelled
        meanwhile) returns nothing.
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
            _send(
                result_generated(
                    self.task_id,
                    "sentence-end",
                    index,
                    text=sentence.text,
                    begin_time=round(begin),
                    end_time=round(end),
                    characters=head.characters,
                    words=words,
                )
            )
        ]

    def finished(self) -> list[TaskAction]:
        """FinishTask is carried out (queue spoken, encoder tail sent): task-finished."""
        if self.state is not TaskState.FINISHING:
            return []  # cancelled or failed meanwhile: that already ended the task
        if self._outstanding:
            left = [o.sentence.index for o in self._outstanding]
            raise RuntimeError(f"finished() while sentences {left} are not done")
        assert self.task_id is not None
        reply = _send(task_finished(self.task_id, self._characters()))
        self._reset()
        return [reply]

    def fail(self, code: DashScopeErrorCode, message: str) -> list[TaskAction]:
        """End the running task with task-failed (synthesis error, client timeout)."""
        if self.state is TaskState.IDLE or self.task_id is None:
            return []
        return self._abort(TaskFailure(code, message, task_id=self.task_id))

    # ------------------------------------------------------------ transitions

    def _is_late(self, message: DashScopeMessage) -> bool:
        task_id = message.header.task_id
        return (
            not isinstance(message, RunTaskMessage)
            and task_id == self._ended_task_id
            and task_id != self.task_id
        )

    def _run(self, message: RunTaskMessage) -> list[TaskAction]:
        task_id = message.header.task_id
        if self.state is not TaskState.IDLE:
            raise invalid_parameter(
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
        params, ignored = validate_parameters(payload.parameters, self.capabilities, task_id)
        self.state, self.task_id, self.params = TaskState.STARTED, task_id, params
        actions: list[TaskAction] = [
            StartTask(
                task_id,
                payload.model,
                payload.model in self.capabilities.model_names,
                params,
                ignored,
            ),
            _send(task_started(task_id)),
        ]
        if payload.input.text:
            actions += self._feed(payload.input.text)
        return actions

    def _continue(self, message: ContinueTaskMessage) -> list[TaskAction]:
        task_id = self._check_running(message.header.task_id, "continue-task")
        if self.state is TaskState.FINISHING:
            raise invalid_parameter("continue-task after finish-task", task_id)
        data = message.payload.input
        actions: list[TaskAction] = []
        if data.text:
            actions += self._feed(data.text)
        if data.flush:
            actions += self._pieces(self._splitter.flush())
        return actions

    def _finish(self, message: FinishTaskMessage) -> list[TaskAction]:
        task_id = self._check_running(message.header.task_id, "finish-task")
        if message.payload.input.directive == "cancel":
            # The SDK's streaming_cancel() waits for task-finished (speech_synthesizer.py:
            # 746-749), not task-failed; usage counts all the text received.
            reply = _send(task_finished(task_id, self._characters()))
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
            raise invalid_parameter(
                f"{action} for task {task_id!r}, but no task is running", task_id
            )
        if task_id != self.task_id:
            raise invalid_parameter(
                f"{action} for task {task_id!r}, but the running task is {self.task_id!r}",
                task_id,
            )
        return task_id

    def _feed(self, text: str) -> list[TaskAction]:
        caps = self.capabilities
        if len(text) > caps.max_text_chars:
            raise invalid_parameter(
                f"text too long: {len(text)} characters in one message, "
                f"at most {caps.max_text_chars}",
                self.task_id,
            )
        self._received_chars += len(text)
        if self._received_chars > caps.max_task_chars:
            raise invalid_parameter(
                f"too much text: at most {caps.max_task_chars} characters per task",
                self.task_id,
            )
        assert self.params is not None
        if (self.params.enable_ssml and looks_like_ssml(text)) or is_speak_document(text):
            # A document is a sentence boundary: what came before it is spoken first.
            actions = self._pieces(self._splitter.flush())
            try:
                segments = parse_ssml(text, caps.ssml_limits)
            except SsmlError as exc:
                raise invalid_parameter(f"invalid SSML: {exc.message}", self.task_id) from None
            return actions + self._segments(segments)
        return self._pieces(self._splitter.feed(text))

    def _pieces(self, pieces: list[str]) -> list[TaskAction]:
        return self._segments([Sentence(p) for p in pieces])

    def _segments(self, segments: list[Segment]) -> list[TaskAction]:
        """Sentences to speak; each silence goes before the next sentence of the batch,
        or after the last one when none follows."""
        actions: list[TaskAction] = []
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

    def _add_trailing_silence(self, actions: list[TaskAction], at: int, ms: int) -> None:
        old = actions[at]
        assert isinstance(old, SpeakSentence)
        new = attrs.evolve(old, silence_after_ms=old.silence_after_ms + ms)
        actions[at] = new
        for record in self._outstanding:
            if record.sentence == old:
                record.sentence = new

    def _refuse(self, failure: TaskFailure) -> list[TaskAction]:
        running = self.state is not TaskState.IDLE
        if running and failure.task_id in (None, self.task_id):
            return self._abort(failure)
        return [_send(task_failed(failure.task_id or "", failure.code, failure.message))]

    def _abort(self, failure: TaskFailure) -> list[TaskAction]:
        assert self.task_id is not None
        task_id = self.task_id
        self._reset()
        self._ended_task_id = task_id
        return [CancelTask(task_id), _send(task_failed(task_id, failure.code, failure.message))]

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
