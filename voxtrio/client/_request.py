"""One request's state on the client, and the checks every frame and result must pass."""

from __future__ import annotations

import math

import attrs
import trio

from voxtrio.client._errors import ProtocolViolation
from voxtrio.client._incoming import StreamingChunkMetadata, WholeAudioMetadata
from voxtrio.client._results import AudioChunk
from voxtrio.protocol._formats import AudioFormat
from voxtrio.protocol._frames import FrameType
from voxtrio.protocol._messages import Complete, Error, Mode, Progress, SynthesisResult, Words

Item = AudioChunk | Complete | Error


@attrs.define(eq=False)
class RequestState:
    """One request's state, shared by the reader task (writes) and its stream (reads)."""

    request_id: str
    mode: Mode
    format: AudioFormat
    send: trio.MemorySendChannel[Item]
    receive: trio.MemoryReceiveChannel[Item]
    last_activity: float
    progress: Progress | None = None
    # Word times (params.word_timestamps), one message per sentence, in order; bounded
    # by the request's text (at most one per sentence).
    words: list[Words] = attrs.Factory(list)
    cancel_sent: bool = False
    terminal_received: bool = False
    # What the reader has checked so far.
    next_sequence: int = 0
    sample_rate: int | None = None
    samples: int = 0
    audio_done: bool = False

    def violation(self, problem: str) -> ProtocolViolation:
        return ProtocolViolation(f"request {self.request_id!r}: {problem}")

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
        if meta.sample_rate <= 0:
            raise self.violation(f"sample_rate {meta.sample_rate}")
        if self.sample_rate is not None and meta.sample_rate != self.sample_rate:
            raise self.violation(
                f"sample_rate changed from {self.sample_rate} to {meta.sample_rate}"
            )
        if meta.format != self.format:
            raise self.violation(f"{meta.format} audio, {self.format} was asked for")
        pcm16 = self.format == "pcm16"
        if pcm16 and len(pcm) % 2:
            raise self.violation(f"{len(pcm)} bytes of 16-bit audio (an odd count)")
        self.sample_rate = meta.sample_rate
        if isinstance(meta, WholeAudioMetadata):
            samples = len(pcm) // 2
            if pcm16 and not math.isclose(meta.duration, samples / meta.sample_rate, abs_tol=1e-3):
                raise self.violation(
                    f"duration {meta.duration} does not match {samples} samples "
                    f"at {meta.sample_rate} Hz"
                )
            self.audio_done = True
            self.samples = samples
            return AudioChunk(pcm, meta.sample_rate, 0, meta.format)
        if meta.sequence != self.next_sequence:
            raise self.violation(f"frame sequence {meta.sequence}, expected {self.next_sequence}")
        self.next_sequence += 1
        if meta.is_final:
            if pcm:
                raise self.violation(f"a final frame carrying {len(pcm)} bytes (it must be empty)")
            self.audio_done = True
            return None
        self.samples += len(pcm) // 2
        return AudioChunk(pcm, meta.sample_rate, meta.sequence, meta.format)

    def check_result(self, result: SynthesisResult) -> None:
        """A successful `complete` must describe exactly the audio that arrived."""
        if not self.audio_done:
            raise self.violation("complete before the end of its audio")
        problems = []
        if result.sample_rate != self.sample_rate:
            problems.append(f"sample_rate {result.sample_rate} != frames' {self.sample_rate}")
        if result.format != self.format:
            problems.append(f"format {result.format} != {self.format}")
        # Only raw PCM tells the sample count by its length. (`chunks` counts the
        # model's chunks, not frames: an encoder may hold a chunk back or add a tail.)
        if self.format == "pcm16" and result.samples != self.samples:
            problems.append(f"samples {result.samples} != {self.samples} received")
        if result.sample_rate > 0 and not math.isclose(
            result.duration, result.samples / result.sample_rate, abs_tol=1e-3
        ):
            problems.append(f"duration {result.duration} != samples / sample_rate")
        if problems:
            raise self.violation("result does not match the audio: " + "; ".join(problems))
