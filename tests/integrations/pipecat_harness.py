"""A Pipecat pipeline around one TTS service, recording what leaves it each way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.tts_service import TTSService
from pipecat.workers.runner import WorkerRunner


class Recorder(FrameProcessor):
    """Passes frames on; keeps those going `direction`, with their arrival times."""

    def __init__(self, direction: FrameDirection) -> None:
        super().__init__()
        self._direction = direction
        self.frames: list[tuple[float, Frame]] = []
        self.changed = asyncio.Event()

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self._direction:
            self.frames.append((time.monotonic(), frame))
            self.changed.set()
        await self.push_frame(frame, direction)

    def of(self, kind: type[Frame]) -> list[Frame]:
        return [frame for _, frame in self.frames if isinstance(frame, kind)]

    async def wait_for(self, kind: type[Frame], count: int = 1, timeout: float = 60.0) -> Frame:
        """The `count`-th frame of `kind` to have arrived (waiting for it)."""
        async with asyncio.timeout(timeout):
            while len(self.of(kind)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.of(kind)[count - 1]


class Harness:
    def __init__(self, worker: PipelineWorker, source: Recorder, sink: Recorder) -> None:
        self.worker = worker
        self.errors = source  # ErrorFrames travel upstream
        self.out = sink

    async def say(self, tokens: list[str], *, end: bool = True) -> float:
        """Push one LLM turn token by token; the time its first token went in."""
        await self.worker.queue_frame(LLMFullResponseStartFrame())
        first = time.monotonic()
        for token in tokens:
            await self.worker.queue_frame(LLMTextFrame(token))
        if end:
            await self.worker.queue_frame(LLMFullResponseEndFrame())
        return first

    async def turn(self, tokens: list[str]) -> list[TTSAudioRawFrame]:
        """One whole turn; the audio frames it produced."""
        before = len(self.out.of(TTSAudioRawFrame))
        stopped = len(self.out.of(TTSStoppedFrame))
        await self.say(tokens)
        await self.out.wait_for(TTSStoppedFrame, stopped + 1)
        audio = self.out.of(TTSAudioRawFrame)[before:]
        return [frame for frame in audio if isinstance(frame, TTSAudioRawFrame)]

    def error_texts(self) -> list[str]:
        errors = self.errors.of(ErrorFrame)
        return [frame.error for frame in errors if isinstance(frame, ErrorFrame)]


@asynccontextmanager
async def pipeline(tts: TTSService, sample_rate: int = 16000) -> AsyncIterator[Harness]:
    """Run [source, tts, sink] in a PipelineWorker until the block ends."""
    source = Recorder(FrameDirection.UPSTREAM)
    sink = Recorder(FrameDirection.DOWNSTREAM)
    worker = PipelineWorker(
        Pipeline([source, tts, sink]),
        params=PipelineParams(audio_out_sample_rate=sample_rate),
        cancel_on_idle_timeout=False,
    )
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker: PipelineWorker, frame: Frame) -> None:
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        async with asyncio.timeout(30):
            await started.wait()
        yield Harness(worker, source, sink)
        await worker.queue_frame(EndFrame())
        async with asyncio.timeout(30):
            await running
    finally:
        if not running.done():
            await worker.cancel()
            await asyncio.wait([running], timeout=10)
