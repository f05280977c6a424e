"""A client's requests, sans-IO: each one's state and checks, and a connection's table of them.

A client's transport (Trio memory channels, an asyncio queue) subclasses
ClientRequest with where the request's items go; everything the wire protocol says
about a request (frames in sequence, one sample rate, a result that matches the
audio, word times that run forward, one terminal message) is checked here.
"""

from __future__ import annotations

import math
import uuid
from typing import Generic, TypeVar

import attrs

from voxtrio.protocol._client_errors import ProtocolViolation
from voxtrio.protocol._client_incoming import AudioChunk, IncomingAudio, WholeAudioMetadata
from voxtrio.protocol._formats import AudioFormat
from voxtrio.protocol._frames import FrameType
from voxtrio.protocol._messages import Mode, Progress, SynthesisResult, Words

# How far a word may start before the previous one ended (the server's float rounding).
WORD_TIME_SLACK = 1e-6
# How far a result's or frame's duration may be from samples / sample_rate.
DURATION_SLACK = 1e-3


@attrs.define(eq=False, kw_only=True)
class ClientRequest:
    """One request as its client sees it: what the server has said so far, and the checks."""

    request_id: str
    mode: Mode
    format: AudioFormat
    # When the server last said anything about it, on the client's own clock.
    last_activity: float
    progress: Progress | None = None
    cancel_sent: bool = False
    terminal_received: bool = False
    # What the checks have seen so far.
    next_sequence: int = 0
    sample_rate: int | None = None
    samples: int = 0
    audio_done: bool = False
    last_word_end: float = 0.0

    def violation(self, problem: str) -> ProtocolViolation:
        return ProtocolViolation(f"request {self.request_id!r}: {problem}")

    def claim_cancel(self) -> bool:
        """True when a cancel should go out now; False once one has or the request ended."""
        if self.cancel_sent or self.terminal_received:
            return False
        self.cancel_sent = True
        return True

    def accept_audio(self, frame: IncomingAudio) -> AudioChunk | None:
        """Check one audio frame against what came before; the chunk to hand on, if any."""
        meta, pcm = frame.metadata, frame.payload
        expected = (
            FrameType.STREAMING_CHUNK if self.mode == "streaming" else FrameType.NON_STREAMING
        )
        if frame.type is not expected:
            raise self.violation(f"a {frame.type.name} frame for a {self.mode} request")
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
            if pcm16 and not math.isclose(
                meta.duration, samples / meta.sample_rate, abs_tol=DURATION_SLACK
            ):
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

    def accept_words(self, words: Words) -> None:
        """Word times run forward through a request: a step back is a server bug."""
        for word in words.words:
            if word.start < self.last_word_end - WORD_TIME_SLACK:
                raise self.violation(
                    f"word {word.text!r} starts at {word.start}, before {self.last_word_end}"
                )
            self.last_word_end = max(self.last_word_end, word.end)

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
            result.duration, result.samples / result.sample_rate, abs_tol=DURATION_SLACK
        ):
            problems.append(f"duration {result.duration} != samples / sample_rate")
        if problems:
            raise self.violation("result does not match the audio: " + "; ".join(problems))


R = TypeVar("R", bound=ClientRequest)


class RequestTable(Generic[R]):
    """One connection's active requests by id, and the ids it gave up waiting for.

    An id is busy from its opening message until its terminal one: the server frees
    it when it sends that, and so does the table. An abandoned id (no terminal
    message within the client's cancel deadline) stays busy, and whatever the server
    still sends for it is dropped, until its terminal message arrives.
    """

    def __init__(self) -> None:
        self._active: dict[str, R] = {}
        self._abandoned: set[str] = set()

    @property
    def ids(self) -> frozenset[str]:
        """The ids of the active requests."""
        return frozenset(self._active)

    def get(self, request_id: str) -> R | None:
        """The active request with that id, if any."""
        return self._active.get(request_id)

    def reserve(self, request_id: str | None) -> str:
        """The id for a new request: `request_id`, or a fresh one; ValueError while it is busy."""
        rid = uuid.uuid4().hex if request_id is None else request_id
        if rid in self._active or rid in self._abandoned:
            raise ValueError(f"request id {rid!r} is still active on this connection")
        return rid

    def add(self, request: R) -> None:
        """Make `request` active (its id from `reserve`)."""
        self.reserve(request.request_id)
        self._active[request.request_id] = request

    def discard(self, request: R) -> None:
        """Forget `request` (its opening message never went out)."""
        if self._active.get(request.request_id) is request:
            del self._active[request.request_id]

    def lookup(self, request_id: str, what: str, *, now: float, terminal: bool = False) -> R | None:
        """The active request a message names (its activity now); None for an abandoned one.

        `what` names the message for the ProtocolViolation an unknown id raises;
        `terminal` frees an abandoned id, as its end has come.
        """
        request = self._active.get(request_id)
        if request is not None:
            request.last_activity = now
            return request
        if request_id in self._abandoned:
            if terminal:
                self._abandoned.discard(request_id)
            return None
        raise ProtocolViolation(f"the server sent {what} for unknown request {request_id!r:.140}")

    def finish(self, request: R) -> None:
        """Its terminal message arrived: the request is over and its id free."""
        request.terminal_received = True
        self.discard(request)

    def abandon(self, request: R) -> None:
        """Stop waiting for `request`; its id stays busy until the server ends it."""
        if self._active.get(request.request_id) is request:
            del self._active[request.request_id]
            self._abandoned.add(request.request_id)

    def drain(self) -> list[R]:
        """Every active request, the table left empty (the connection failed)."""
        requests = list(self._active.values())
        self._active.clear()
        return requests
