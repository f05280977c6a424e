"""One request's state on the asyncio client, and the checks its frames and result pass."""

from __future__ import annotations

import asyncio
import math

import attrs

from voxtrio.aioclient._errors import ProtocolViolation, VoxtrioClientError
from voxtrio.aioclient._incoming import (
    AudioChunk,
    StreamingChunkMetadata,
    WholeAudioMetadata,
    WordTimings,
)
from voxtrio.protocol._formats import AudioFormat
from voxtrio.protocol._frames import FrameType
from voxtrio.protocol._messages import Complete, Error, Mode, Progress, SynthesisResult


@attrs.frozen
class Failure:
    """The connection failed: what the request's reader raises."""

    error: VoxtrioClientError


Item = AudioChunk | WordTimings | Complete | Error | Failure


@attrs.define(eq=False)
class RequestState:
    """Shared by the reader task (writes) and the request's stream (reads)."""

    request_id: str
    mode: Mode
    format: AudioFormat
    queue: asyncio.Queue[Item]
    last_activity: float
    progress: Progress | None = None
    cancel_sent: bool = False
    terminal_received: bool = False
    # The stream stopped reading: whatever still arrives for it is dropped.
    closed: bool = False
    next_sequence: int = 0
    sample_rate: int | None = None
    samples: int = 0
    audio_done: bool = False
    last_word_end: float = 0.0

    def violation(self, problem: str) -> ProtocolViolation:
        return ProtocolViolation(f"request {self.request_id!r}: {problem}")

    def wake(self, failure: Failure) -> None:
        """Put the failure in the queue even when it is full (the oldest item makes room)."""
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(failure)

    def accept_words(self, words: WordTimings) -> None:
        """Word times run forward through a request: a step back is a server bug."""
        for word in words.words:
            if word.start < self.last_word_end - 1e-6:
                raise self.violation(
                    f"word {word.text!r} starts at {word.start}, before {self.last_word_end}"
                )
            self.last_word_end = max(self.last_word_end, word.end)

    def accept_frame(
        self, frame_type: FrameType, meta: StreamingChunkMetadata | WholeAudioMetadata, pcm: bytes
    ) -> AudioChunk | None:
        """Check one audio frame against what came before; the chunk to hand on, if any."""
        expected = (
            FrameType.STREAMING_CHUNK if self.mode == "streaming" else FrameType.NON_STREAMING
        )
        if frame_type is not expected:
            raise self.violation(f"a {frame_type.name} frame for a {self.mode} request")
        if self.audio_done:
            raise self.violation("an audio frame after its audio had ended")
        if self.sample_rate is not None and meta.sample_rate != self.sample_rate:
            raise self.violation(
                f"sample_rate changed from {self.sample_rate} to {meta.sample_rate}"
            )
        if meta.sample_rate <= 0 or meta.format != self.format:
            raise self.violation(f"{meta.format} at {meta.sample_rate} Hz, {self.format} asked")
        if self.format == "pcm16" and len(pcm) % 2:
            raise self.violation(f"{len(pcm)} bytes of 16-bit audio (an odd count)")
        self.sample_rate = meta.sample_rate
        if isinstance(meta, WholeAudioMetadata):
            self.audio_done = True
            self.samples = len(pcm) // 2
            return AudioChunk(pcm, meta.sample_rate, 0, meta.format)
        if meta.sequence != self.next_sequence:
            raise self.violation(f"frame sequence {meta.sequence}, expected {self.next_sequence}")
        self.next_sequence += 1
        if meta.is_final:
            if pcm:
                raise self.violation(f"a final frame carrying {len(pcm)} bytes")
            self.audio_done = True
            return None
        self.samples += len(pcm) // 2
        return AudioChunk(pcm, meta.sample_rate, meta.sequence, meta.format)

    def check_result(self, result: SynthesisResult) -> None:
        """A successful `complete` must describe exactly the audio that arrived."""
        if not self.audio_done:
            raise self.violation("complete before the end of its audio")
        if result.sample_rate != self.sample_rate or result.format != self.format:
            raise self.violation("the result's rate or format is not the audio's")
        if self.format == "pcm16" and result.samples != self.samples:
            raise self.violation(f"result says {result.samples} samples, {self.samples} came")
        if result.sample_rate > 0 and not math.isclose(
            result.duration, result.samples / result.sample_rate, abs_tol=1e-3
        ):
            raise self.violation(f"duration {result.duration} != samples / sample_rate")
