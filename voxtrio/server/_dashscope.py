"""The DashScope (CosyVoice) duplex endpoint: the Trio layer over `_dashscope`'s state machine.

One connection runs one task at a time. The reader task feeds every frame to
`DashScopeTask` and carries out the actions it returns; a worker task per task
speaks the queued sentences in order through the replica pool into the task's one
encoder, sending `sentence-begin`, `sentence-synthesis` + binary audio, and
`sentence-end` events as DashScope does.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import attrs
import numpy as np
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from voxtrio._config import Settings
from voxtrio.audio._codecs import AudioEncoder, check_finite
from voxtrio.ops._metrics import Metrics
from voxtrio.protocol._dashscope import (
    CancelTask,
    DashScopeCapabilities,
    DashScopeErrorCode,
    DashScopeTask,
    FinishTask,
    SendEvent,
    SpeakSentence,
    StartTask,
    TaskAction,
    TaskParams,
    TaskState,
)
from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.server._dashscope_audio import make_encoder
from voxtrio.server._native import keepalive
from voxtrio.server._writer import ConnectionGone, FrameWriter
from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._replicas import ReplicaPool
from voxtrio.speech._speak import (
    EncodedAudio,
    SpeechStats,
    Utterance,
    encoding_transform,
    generate_utterance,
)
from voxtrio.voices._aliases import ResolvedVoice
from voxtrio.voices._service import VoiceService

log = structlog.get_logger("voxtrio.dashscope")

GOING_AWAY = 1001
# The cloud service fails a task whose client is silent this long before finish-task.
CLIENT_SILENCE_TIMEOUT = 23.0
# Sentences queued ahead of synthesis for one task; past it the task fails (Throttling).
MAX_QUEUED_SENTENCES = 256


@attrs.define(eq=False)
class RunningTask:
    """One DashScope task's synthesis side."""

    task_id: str
    params: TaskParams
    encoder: AudioEncoder
    base_spec: SynthesisSpec
    send: trio.MemorySendChannel[SpeakSentence | FinishTask]
    receive: trio.MemoryReceiveChannel[SpeakSentence | FinishTask]
    scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    done: trio.Event = attrs.Factory(trio.Event)
    started_at: float = attrs.field(factory=time.perf_counter)
    first_audio_at: float | None = None
    stats: SpeechStats = attrs.Factory(SpeechStats)
    outcome: str = "ok"
    worker: trio.lowlevel.Task | None = None
    stretch: Any = None  # a _dsp.StreamingStretch while rate/pitch are in use


class _SentenceSink:
    """Audio of one sentence: each piece is announced by a sentence-synthesis event."""

    def __init__(self, connection: DashScopeConnection, task: RunningTask, index: int) -> None:
        self.connection = connection
        self.task = task
        self.index = index

    async def audio(self, data: bytes) -> None:
        await self.connection.send_audio(self.task, self.index, data)

    async def waiting(self, utterance: Utterance) -> None:
        pass

    async def utterance_started(self, utterance: Utterance) -> None:
        pass

    async def utterance_finished(self, utterance: Utterance, samples: int) -> None:
        pass

    async def progress(self, utterance: Utterance, steps: int, expected: int) -> None:
        pass


VOICE_SOURCES = (
    "voices come from this server's voice library ('default' and registered voices) and "
    "its CosyVoice alias table (the built-in catalog plus cosyvoice-aliases.toml in the "
    "voice library directory; see docs/dashscope-notes.md)"
)


def dashscope_voices(voices: VoiceService | None) -> dict[str, ResolvedVoice]:
    """Every voice name a task may use now, in voxtrio's terms."""
    if voices is None:
        return {"default": ResolvedVoice(None, None, "library")}
    library = voices.voice_names()
    if voices.aliases is None:
        table = {name: ResolvedVoice(name, None, "library") for name in library}
        return {**table, "default": ResolvedVoice(None, None, "library")}
    return voices.aliases.resolved(library)


class DashScopeConnection:
    """One client of the DashScope endpoint; the caller owns the socket."""

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        settings: Settings,
        pool: ReplicaPool,
        metrics: Metrics,
        voices: VoiceService | None = None,
        dsp_available: bool = False,
    ) -> None:
        self.ws = ws
        self.settings = settings
        self.pool = pool
        self.metrics = metrics
        self.voice_table = dashscope_voices(voices)
        self.protocol = DashScopeTask(
            DashScopeCapabilities(
                voices=frozenset(self.voice_table),
                voice_sources=VOICE_SOURCES,
                dsp_available=dsp_available,
            )
        )
        self.writer = FrameWriter(ws, write_timeout=settings.write_timeout)
        self.task: RunningTask | None = None
        self.idle = trio.Event()
        self.idle.set()
        self._nursery: trio.Nursery | None = None

    # -- lifecycle shared with the native connection ---------------------------

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(keepalive, self.ws, self.settings, self._abort, nursery.cancel_scope)
            try:
                await self._read_loop()
            except ConnectionGone as exc:
                log.info("connection_lost", reason=str(exc))
            finally:
                if self.task is not None:
                    self.task.outcome = "disconnected"  # its worker is cancelled with us
                nursery.cancel_scope.cancel()

    def begin_drain(self) -> None:
        self.protocol.unavailable = "the server is shutting down; retry on another instance"

    async def shut_down(self) -> None:
        """Past the drain deadline: fail the running task (the SDK needs an end), close 1001."""
        with trio.move_on_after(self.settings.stop_timeout + 1):
            await self.perform(
                self.protocol.fail(
                    DashScopeErrorCode.SERVICE_UNAVAILABLE,
                    "the server is shutting down and the drain deadline passed",
                )
            )
        with trio.move_on_after(self.settings.handshake_timeout):
            await self.ws.aclose(code=GOING_AWAY, reason="server shutting down")

    async def _abort(self, reason: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await self.ws.aclose(code=1011, reason=reason[:120])

    # -- reading -----------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            message = await self._next_message()
            if message is None:
                return
            if isinstance(message, bytes):
                actions = self.protocol.receive_bytes(message)
            else:
                actions = self.protocol.receive_text(message)
            await self.perform(actions)

    async def _next_message(self) -> str | bytes | None:
        """The next frame; None when the connection should end (closed, idle)."""
        while True:
            listening = self.protocol.state is TaskState.STARTED
            timeout = CLIENT_SILENCE_TIMEOUT if listening else self.settings.idle_timeout
            with trio.move_on_after(timeout):
                try:
                    return await self.ws.get_message()
                except ConnectionClosed:
                    return None
            if self.protocol.state is TaskState.STARTED:
                # The cloud's rule: a task whose client goes quiet before finish-task fails.
                await self.perform(
                    self.protocol.fail(
                        DashScopeErrorCode.REQUEST_TIMEOUT,
                        f"no message from the client for {CLIENT_SILENCE_TIMEOUT:g} s "
                        "while the task waits for text or finish-task",
                    )
                )
            elif self.protocol.state is TaskState.IDLE:
                log.info("idle_timeout", idle_timeout=self.settings.idle_timeout)
                with trio.move_on_after(self.settings.handshake_timeout):
                    await self.ws.aclose(code=1000, reason="idle timeout")
                return None

    # -- carrying out actions ----------------------------------------------------

    async def perform(self, actions: Sequence[TaskAction]) -> None:
        """Carry out the state machine's actions, in order."""
        for action in actions:
            match action:
                case SendEvent(text=text):
                    await self.writer.send(text)
                case StartTask():
                    self._start_task(action)
                case SpeakSentence() | FinishTask():
                    await self._queue(action)
                case CancelTask():
                    await self._stop_task("cancelled")

    def _start_task(self, start: StartTask) -> None:
        assert self._nursery is not None
        if not start.model_known:
            log.info("dashscope_model_name", model=start.model[:100], served="voxcpm")
        if start.ignored:
            log.info("dashscope_ignored_parameters", parameters=start.ignored)
        params = start.params
        encoder = make_encoder(params, input_rate=self.pool.sample_rate)
        send, receive = trio.open_memory_channel[SpeakSentence | FinishTask](MAX_QUEUED_SENTENCES)
        voice = self.voice_table[params.voice]  # the protocol checked the name
        if voice.source != "library":
            log.info("dashscope_voice_alias", voice=params.voice, resolved=attrs.asdict(voice))
        base_spec = SynthesisSpec(
            text="",
            seed=params.seed if params.seed is not None else secrets.randbits(63),
            voice_id=voice.voice_id,
            voice_description=voice.description,
        )
        task = RunningTask(start.task_id, params, encoder, base_spec, send, receive)
        self.task = task
        self.idle = trio.Event()
        self._nursery.start_soon(self._worker, task)

    async def _queue(self, item: SpeakSentence | FinishTask) -> None:
        task = self.task
        if task is None:  # pragma: no cover - the state machine starts a task first
            return
        try:
            task.send.send_nowait(item)
        except trio.WouldBlock:
            await self.perform(
                self.protocol.fail(
                    DashScopeErrorCode.THROTTLING,
                    "text arrives faster than it can be spoken: "
                    f"more than {MAX_QUEUED_SENTENCES} sentences are waiting",
                )
            )

    async def _stop_task(self, outcome: str) -> None:
        """Stop the worker and wait until it has really stopped (its replica is free)."""
        task = self.task
        if task is None:
            return
        task.outcome = outcome
        task.scope.cancel()
        if trio.lowlevel.current_task() is not task.worker:
            with trio.CancelScope(shield=True), trio.move_on_after(self.settings.stop_timeout + 1):
                await task.done.wait()

    # -- the synthesis worker ------------------------------------------------------

    async def _worker(self, task: RunningTask) -> None:
        task.worker = trio.lowlevel.current_task()
        try:
            with task.scope:
                await self._speak_all(task)
        except ConnectionGone as exc:
            # An ordinary client fault (gone, or not reading): the reader ends the connection.
            task.outcome = "disconnected"
            log.info("connection_lost", reason=str(exc))
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
        except ProtocolError as exc:
            task.outcome = "error"
            code = {
                ErrorCode.RATE_LIMITED: DashScopeErrorCode.THROTTLING,
                ErrorCode.INVALID_PARAMS: DashScopeErrorCode.INVALID_PARAMETER,
            }.get(exc.code, DashScopeErrorCode.INTERNAL_ERROR)
            log.warning("dashscope_task_failed", task_id=task.task_id, error=exc.message)
            self.metrics.error_sent(exc.code)
            actions = self.protocol.fail(code, exc.message)
            # The worker is ending anyway: skip the CancelTask aimed at it.
            with trio.move_on_after(self.settings.write_timeout), suppress(ConnectionGone):
                await self.perform([a for a in actions if not isinstance(a, CancelTask)])
        finally:
            task.encoder.close()
            task.done.set()
            self._record(task)
            if self.task is task:
                self.task = None
                self.idle.set()

    async def _speak_all(self, task: RunningTask) -> None:
        transform = self._transform_for(task)
        async for item in task.receive:
            if isinstance(item, FinishTask):
                tail = task.encoder.finish()
                if tail:
                    await self.send_audio(task, item.last_index, tail)
                await self.perform(self.protocol.finished())
                return
            await self._speak(task, item, transform)

    async def _speak(
        self,
        task: RunningTask,
        sentence: SpeakSentence,
        transform: Callable[[np.ndarray], EncodedAudio],
    ) -> None:
        await self.writer.send(self.protocol.begin_sentence(sentence).text)
        # Timed in input samples: the resampler holds a few ms back across sentences.
        before = task.encoder.samples_in
        await self._silence(task, sentence.index, sentence.silence_before_ms)
        if sentence.text:
            await generate_utterance(
                self.pool,
                attrs.evolve(task.base_spec, text=sentence.text),
                transform,
                _SentenceSink(self, task, sentence.index),
                Utterance(sentence.index, sentence.text),
                task.stats,
                task.task_id,
                self.settings.progress_intervals,
            )
            await self._flush_dsp(task, sentence.index)
        await self._silence(task, sentence.index, sentence.silence_after_ms)
        samples = task.encoder.samples_in - before
        task.stats.utterances += 1
        await self.perform(
            self.protocol.sentence_audio_done(sentence.index, samples, task.encoder.input_rate)
        )

    async def _silence(self, task: RunningTask, index: int, ms: int) -> None:
        if ms <= 0:
            return
        # Off the event loop: seconds of silence in mp3 cost real codec time. The encoder
        # is never used by two threads at once (no job runs between sentences).
        silence = np.zeros(self.pool.sample_rate * ms // 1000, np.float32)
        data = await trio.to_thread.run_sync(task.encoder.encode, silence)
        if data:
            await self.send_audio(task, index, data)

    def _transform_for(self, task: RunningTask) -> Callable[[np.ndarray], EncodedAudio]:
        encode = encoding_transform(task.encoder)
        if not task.params.needs_dsp:
            return encode
        from voxtrio.audio._dsp import StreamingStretch

        stretch = StreamingStretch(task.params.rate, task.params.pitch, self.pool.sample_rate)
        task.stretch = stretch

        def stretch_then_encode(chunk: np.ndarray) -> EncodedAudio:
            check_finite(chunk)  # before the stretcher smears a NaN over its window
            return encode(stretch.process(chunk))

        return stretch_then_encode

    async def _flush_dsp(self, task: RunningTask, index: int) -> None:
        if task.stretch is None:
            return
        data = task.encoder.encode(task.stretch.flush())
        if data:
            await self.send_audio(task, index, data)

    async def send_audio(self, task: RunningTask, index: int, data: bytes) -> None:
        """One binary frame, announced by its sentence-synthesis event."""
        await self.writer.send(DashScopeTask.synthesis_event(task.task_id, index).text)
        await self.writer.send(data)
        if task.first_audio_at is None:
            task.first_audio_at = time.perf_counter()

    def _record(self, task: RunningTask) -> None:
        duration = time.perf_counter() - task.started_at
        audio_s = task.encoder.duration
        first = task.first_audio_at - task.started_at if task.first_audio_at else None
        is_error = task.outcome == "error"
        self.metrics.request_finished(
            mode="dashscope",
            status="error" if is_error else task.outcome,
            duration_s=duration,
            first_audio_s=first,
            audio_s=audio_s,
            rtf=task.stats.compute_seconds / audio_s if audio_s > 0 else None,
        )
        log.info(
            "request_finished",
            endpoint="dashscope",
            task_id=task.task_id,
            outcome=task.outcome,
            sentences=task.stats.utterances,
            audio_seconds=round(audio_s, 3),
            first_audio_ms=round(first * 1000, 3) if first is not None else None,
            total_ms=round(duration * 1000, 3),
        )
