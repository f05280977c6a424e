"""One DashScope task's synthesis side: its queue, its sink, and its error mapping.

A task's sentences go to `speak` (the same path as the native endpoint) as
`Utterance`s; `TaskSink` turns what `speak` reports into DashScope events:
`sentence-begin`, `sentence-synthesis` + a binary frame per audio piece, and the
state machine's `sentence-end`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from voxtrio.protocol._dashscope import (
    DashScopeErrorCode,
    DashScopeTask,
    SpeakSentence,
    TaskAction,
    TaskParams,
)
from voxtrio.server._writer import FrameWriter
from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._errors import (
    InvalidOutput,
    InvalidText,
    Overloaded,
    QueueTimeout,
    SpeechError,
)
from voxtrio.speech._speak import AudioInfo, SpeechStats, Utterance
from voxtrio.speech._words import SentenceWords

# Sentences queued ahead of synthesis for one task; past it the task fails (Throttling).
MAX_QUEUED_SENTENCES = 256


def dashscope_error(exc: SpeechError) -> DashScopeErrorCode:
    """The one place a speech error becomes a DashScope `task-failed` code."""
    if isinstance(exc, Overloaded | QueueTimeout):
        return DashScopeErrorCode.THROTTLING
    if isinstance(exc, InvalidText | InvalidOutput):
        return DashScopeErrorCode.INVALID_PARAMETER
    return DashScopeErrorCode.INTERNAL_ERROR


@attrs.define(eq=False)
class RunningTask:
    """One DashScope task's synthesis side."""

    task_id: str
    params: TaskParams
    base_spec: SynthesisSpec
    send: trio.MemorySendChannel[Utterance]
    receive: trio.MemoryReceiveChannel[Utterance]
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)
    started_at: float = attrs.field(factory=time.perf_counter)
    first_audio_at: float | None = None
    stats: SpeechStats = attrs.Factory(SpeechStats)
    outcome: str = "ok"
    worker: trio.lowlevel.Task | None = None

    @classmethod
    def open(cls, task_id: str, params: TaskParams, base_spec: SynthesisSpec) -> RunningTask:
        send, receive = trio.open_memory_channel[Utterance](MAX_QUEUED_SENTENCES)
        return cls(task_id, params, base_spec, send, receive)

    def queue(self, sentence: SpeakSentence) -> None:
        """Queue a sentence behind the others; raises trio.WouldBlock when full."""
        self.send.send_nowait(
            Utterance(
                sentence.index,
                sentence.text,
                sentence.silence_before_ms,
                sentence.silence_after_ms,
            )
        )

    def end_input(self) -> None:
        """finish-task: no more sentences. Raises trio.WouldBlock when the queue is full."""
        if self.send.statistics().current_buffer_used >= MAX_QUEUED_SENTENCES:
            raise trio.WouldBlock
        self.send.close()


class TaskSink:
    """A task's speech events as DashScope events on the connection's writer."""

    def __init__(
        self,
        task: RunningTask,
        protocol: DashScopeTask,
        writer: FrameWriter,
        perform: Callable[[Sequence[TaskAction]], Awaitable[None]],
        *,
        input_rate: int,
    ) -> None:
        self.task = task
        self.protocol = protocol
        self.writer = writer
        self.perform = perform
        # The sentence audio belongs to; the encoder's tail goes out under the last one.
        self.index = 0
        self.input_rate = input_rate
        # The current sentence's word times, for its sentence-end (word_timestamp_enabled).
        self.sentence_words: SentenceWords | None = None

    def opened(self, audio: AudioInfo) -> None:
        pass

    async def utterance_begins(self, utterance: Utterance) -> None:
        self.index = utterance.index
        sentence = SpeakSentence(
            self.task.task_id,
            utterance.index,
            utterance.text,
            utterance.silence_before_ms,
            utterance.silence_after_ms,
        )
        await self.writer.send(self.protocol.begin_sentence(sentence).text)

    async def waiting(self, utterance: Utterance) -> None:
        pass

    async def utterance_started(self, utterance: Utterance) -> None:
        pass

    def audio_nowait(self, data: bytes) -> bool:
        return False  # every piece goes through `audio`

    def progress_nowait(self, utterance: Utterance, steps: int, expected: int) -> bool:
        return False

    async def audio(self, data: bytes) -> None:
        """One binary frame, announced by its sentence-synthesis event."""
        await self.writer.send(DashScopeTask.synthesis_event(self.task.task_id, self.index).text)
        await self.writer.send(data)
        if self.task.first_audio_at is None:
            self.task.first_audio_at = time.perf_counter()

    async def words(self, utterance: Utterance, words: SentenceWords) -> None:
        self.sentence_words = words

    async def utterance_finished(self, utterance: Utterance, samples_in: int) -> None:
        words, self.sentence_words = self.sentence_words, None
        timed = words.words if words is not None and words.index == utterance.index else ()
        await self.perform(
            self.protocol.sentence_audio_done(utterance.index, samples_in, self.input_rate, timed)
        )

    async def progress(self, utterance: Utterance, steps: int, expected: int) -> None:
        pass
