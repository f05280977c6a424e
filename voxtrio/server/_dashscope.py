"""The DashScope (CosyVoice) duplex endpoint: the Trio layer over `_dashscope`'s state machine.

One connection runs one task at a time. The reader task feeds every frame to
`DashScopeTask` and carries out the actions it returns; a worker task per task
hands the queued sentences to `speak` (the native endpoint's path too), whose
events `_dashscope_task.TaskSink` sends as DashScope's `sentence-begin`,
`sentence-synthesis` + binary audio, and `sentence-end`.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from contextlib import suppress

import attrs
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from voxtrio._config import Settings
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
    TaskState,
)
from voxtrio.server._dashscope_audio import output_for
from voxtrio.server._dashscope_task import (
    MAX_QUEUED_SENTENCES,
    RunningTask,
    TaskSink,
    dashscope_error,
)
from voxtrio.server._endpoint import WebSocketEndpoint
from voxtrio.server._native_errors import native_error
from voxtrio.server._writer import ConnectionGone
from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech._errors import SpeechError
from voxtrio.speech._pool import InstancePool
from voxtrio.speech._speak import speak
from voxtrio.voices._aliases import ResolvedVoice
from voxtrio.voices._service import VoiceService

log = structlog.get_logger("voxtrio.dashscope")

# The cloud service fails a task whose client is silent this long before finish-task.
CLIENT_SILENCE_TIMEOUT = 23.0


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


class DashScopeConnection(WebSocketEndpoint):
    """One client of the DashScope endpoint; the caller owns the socket."""

    log = log

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        settings: Settings,
        pool: InstancePool,
        metrics: Metrics,
        voices: VoiceService | None = None,
        dsp_available: bool = False,
    ) -> None:
        super().__init__(ws, settings=settings)
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
        self.task: RunningTask | None = None

    def begin_drain(self) -> None:
        self.protocol.unavailable = "the server is shutting down; retry on another instance"

    async def end_for_shutdown(self) -> None:
        """Fail the running task: the SDK needs an end."""
        await self.perform(
            self.protocol.fail(
                DashScopeErrorCode.SERVICE_UNAVAILABLE,
                "the server is shutting down and the drain deadline passed",
            )
        )

    def closing(self) -> None:
        if self.task is not None:
            self.task.outcome = "disconnected"  # its worker is cancelled with us

    async def handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            actions = self.protocol.receive_bytes(message)
        else:
            actions = self.protocol.receive_text(message)
        await self.perform(actions)

    async def next_message(self) -> str | bytes | None:
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
                await self.close_idle()
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
        if not start.model_known:
            log.info("dashscope_model_name", model=start.model[:100], served="voxcpm")
        if start.ignored:
            log.info("dashscope_ignored_parameters", parameters=start.ignored)
        params = start.params
        voice = self.voice_table[params.voice]  # the protocol checked the name
        if voice.source != "library":
            log.info("dashscope_voice_alias", voice=params.voice, resolved=attrs.asdict(voice))
        base_spec = SynthesisSpec(
            text="",
            seed=params.seed if params.seed is not None else secrets.randbits(63),
            voice_id=voice.voice_id,
            voice_description=voice.description,
        )
        task = RunningTask.open(start.task_id, params, base_spec)
        self.task = task
        self.idle = trio.Event()
        self.nursery.start_soon(self._worker, task)

    async def _queue(self, item: SpeakSentence | FinishTask) -> None:
        task = self.task
        if task is None:  # pragma: no cover - the state machine starts a task first
            return
        try:
            if isinstance(item, FinishTask):
                task.end_input()
            else:
                task.queue(item)
        except trio.WouldBlock:
            await self.perform(
                self.protocol.fail(
                    DashScopeErrorCode.THROTTLING,
                    "text arrives faster than it can be spoken: "
                    f"more than {MAX_QUEUED_SENTENCES} sentences are waiting",
                )
            )

    async def _stop_task(self, outcome: str) -> None:
        """Stop the worker and wait until it has really stopped (its slot is free)."""
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
        sink = TaskSink(
            task, self.protocol, self.writer, self.perform, input_rate=self.pool.sample_rate
        )
        try:
            with task.scope:
                await speak(
                    task.receive,
                    pool=self.pool,
                    base_spec=task.base_spec,
                    output=output_for(task.params),
                    sink=sink,
                    request_id=task.task_id,
                    progress=self.settings.progress_intervals,
                    stats=task.stats,
                    word_timestamps=task.params.word_timestamps,
                )
                await self.perform(self.protocol.finished())
        except ConnectionGone as exc:
            # An ordinary client fault (gone, or not reading): the reader ends the connection.
            task.outcome = "disconnected"
            log.info("connection_lost", reason=str(exc))
            self.nursery.cancel_scope.cancel()
        except SpeechError as exc:
            task.outcome = "error"
            log.warning("dashscope_task_failed", task_id=task.task_id, error=exc.message)
            # Counted under the native code, as every endpoint's errors are.
            self.metrics.error_sent(native_error(exc, task.task_id).code)
            actions = self.protocol.fail(dashscope_error(exc), exc.message)
            # The worker is ending anyway: skip the CancelTask aimed at it.
            with trio.move_on_after(self.settings.write_timeout), suppress(ConnectionGone):
                await self.perform([a for a in actions if not isinstance(a, CancelTask)])
        finally:
            task.done.set()
            self._record(task)
            if self.task is task:
                self.task = None
                self.idle.set()

    def _record(self, task: RunningTask) -> None:
        duration = time.perf_counter() - task.started_at
        audio_s = task.stats.duration
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
