"""A native request's speech events as native frames and `progress` messages."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from voxtrio.protocol._frames import FrameType, StreamFrameHeads, encode_frame
from voxtrio.protocol._messages import (
    Progress,
    ProgressState,
    ServerMessage,
    Words,
    WordTime,
    dump_message,
)
from voxtrio.server._text_input import TextInput
from voxtrio.server._writer import FrameWriter
from voxtrio.speech._speak import AudioInfo, Utterance
from voxtrio.speech._words import SentenceWords


def _never() -> bool:
    return False


def _nothing() -> None:
    pass


@attrs.define
class NativeSink:
    """Turns a speech stream into native frames and progress messages."""

    request_id: str
    writer: FrameWriter
    streaming: bool
    text_input: TextInput
    # Whether the request is being stopped (a cancel, a shutdown): then audio waits for
    # the request task, which sends none.
    stopped: Callable[[], bool] = _never
    # Called once its first utterance has a slot or waits for one (`SetupTurn`).
    on_started: Callable[[], None] = _nothing
    audio_info: AudioInfo | None = None
    frames_sent: int = 0
    first_audio_at: float | None = None
    pieces: list[bytes] = attrs.Factory(list)
    _last_progress: tuple[str, float, str] | None = None
    _queued_reported: bool = False
    _heads: StreamFrameHeads | None = None

    async def send(self, message: ServerMessage) -> None:
        await self.writer.send(dump_message(message))

    async def progress(self, utterance: Utterance, steps: int, expected: int) -> None:
        await self.report("generating", steps / expected, f"{steps}/{expected} steps")

    def progress_nowait(self, utterance: Utterance, steps: int, expected: int) -> bool:
        if self.stopped():
            return False
        progress = self._progress("generating", steps / expected, f"{steps}/{expected} steps")
        if progress is None:
            return True  # the same as the last one: nothing to send
        if not self.writer.try_send_text(dump_message(progress)):
            return False
        self._last_progress = (progress.state, progress.progress, progress.message)
        return True

    async def report(self, state: ProgressState, value: float, message: str = "") -> None:
        progress = self._progress(state, value, message)
        if progress is not None:
            self._last_progress = (progress.state, progress.progress, progress.message)
            await self.send(progress)

    def _progress(self, state: ProgressState, value: float, message: str) -> Progress | None:
        """The progress message to send; None when it repeats the last one."""
        value = round(min(max(value, 0.0), 1.0), 4)
        if self._last_progress == (state, value, message):
            return None
        return Progress(self.request_id, state, value, message)

    def opened(self, audio: AudioInfo) -> None:
        if self.text_input.splitter is not None:
            self.on_started()  # a text stream waits for its client's text: not setting up
        self.audio_info = audio
        self._heads = StreamFrameHeads(self.request_id, audio.sample_rate, audio.format)

    async def utterance_begins(self, utterance: Utterance) -> None:
        pass

    async def waiting(self, utterance: Utterance) -> None:
        self.on_started()
        await self._report_queued()

    async def utterance_started(self, utterance: Utterance) -> None:
        self.on_started()
        await self._report_queued()  # the documented sequence starts with it
        await self.report("processing", 0.0, f"sentence {utterance.index}")

    async def _report_queued(self) -> None:
        if not self._queued_reported:
            self._queued_reported = True
            await self.report("queued", 0.0, "waiting for a generation slot")

    async def words(self, utterance: Utterance, words: SentenceWords) -> None:
        timed = [WordTime(w.text, w.start, w.end) for w in words.words]
        await self.send(Words(self.request_id, words.index, timed, words.estimated))

    async def utterance_finished(self, utterance: Utterance, samples_in: int) -> None:
        self.text_input.spoken(utterance)

    async def audio(self, data: bytes) -> None:
        if self.streaming:
            await self._send_frame(data, is_final=False)
        else:
            self.pieces.append(data)

    def audio_nowait(self, data: bytes) -> bool:
        # Never once the request is being stopped: no audio after a cancel took effect.
        if not self.streaming or self.stopped():
            return False
        assert self._heads is not None
        head = self._heads.head(self.frames_sent, is_final=False, payload_length=len(data))
        if not self.writer.try_send_frame(head, data):
            return False
        self._sent(data)
        return True

    async def _send_frame(self, data: bytes, *, is_final: bool) -> None:
        # Per chunk: one small head (no dict, no JSON dump); the audio is not copied.
        assert self._heads is not None
        head = self._heads.head(self.frames_sent, is_final=is_final, payload_length=len(data))
        await self.writer.send_frame(head, data)
        self._sent(data)

    def _sent(self, data: bytes) -> None:
        self.frames_sent += 1
        if self.first_audio_at is None and data:
            self.first_audio_at = trio.current_time()

    async def finish(self, duration: float) -> None:
        """After the last audio: the final frame (streaming), or the whole audio in one."""
        if self.streaming:
            await self._send_frame(b"", is_final=True)
            return
        assert self.audio_info is not None
        await self.report("encoding", 1.0, "sending audio")
        metadata = {
            "request_id": self.request_id,
            "sample_rate": self.audio_info.sample_rate,
            "duration": round(duration, 6),
            "format": self.audio_info.format,
        }
        payload = b"".join(self.pieces)
        await self.writer.send(encode_frame(FrameType.NON_STREAMING, metadata, payload))
        self.first_audio_at = trio.current_time()
