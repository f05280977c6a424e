"""A request's audio as it arrives (SynthesisStream), and text sent in pieces (TextStream)."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import trio

from voxtrio.client._connection import ClientConnection
from voxtrio.client._request import Item, RequestState
from voxtrio.protocol._client_errors import (
    ResponseTimeout,
    SynthesisError,
    VoxtrioClientError,
    synthesis_error,
)
from voxtrio.protocol._client_incoming import AudioChunk
from voxtrio.protocol._client_outgoing import text_delta
from voxtrio.protocol._messages import Complete, Error, Mode, Progress, SynthesisResult, Words

log = logging.getLogger("voxtrio.client")


class SynthesisStream:
    """One request's audio as it arrives: `async for chunk in stream`.

    The iteration ends after the audio (then `result` is set) or when the request
    was cancelled (then `cancelled` is True); an `error` from the server raises
    SynthesisError. `progress` is the latest progress message, at any time.
    """

    def __init__(self, connection: ClientConnection, request: RequestState) -> None:
        self._connection = connection
        self._request = request
        self.result: SynthesisResult | None = None
        self.cancelled = False
        self.error: SynthesisError | None = None
        self.sample_rate: int | None = None
        self.samples_received = 0
        self.chunks_received = 0
        self.finished = False
        self._closed = False

    def __repr__(self) -> str:
        state = "finished" if self.finished else "running"
        return f"<SynthesisStream {self.request_id!r} {self.mode} {state}>"

    @property
    def request_id(self) -> str:
        return self._request.request_id

    @property
    def mode(self) -> Mode:
        return self._request.mode

    @property
    def progress(self) -> Progress | None:
        return self._request.progress

    @property
    def words(self) -> list[Words]:
        """Word times received so far, one `Words` per sentence (`word_timestamps=True`).

        Each arrives before its sentence's last chunk, so after a chunk has been
        played, every word whose `end` is within the audio played was heard."""
        return list(self._request.words)

    @property
    def audio_seconds(self) -> float | None:
        """Seconds of audio received so far (None for an encoded format: not known yet)."""
        if self._request.format != "pcm16":
            return None
        return self.samples_received / self.sample_rate if self.sample_rate else 0.0

    def __aiter__(self) -> SynthesisStream:
        return self

    async def __anext__(self) -> AudioChunk:
        if self.finished or self._closed:
            raise StopAsyncIteration
        item = await self._next_item()
        return self._consume(item)

    async def cancel(self) -> None:
        """Ask the server to stop; keep iterating (or leave the context) to see the end."""
        await self._connection.send_cancel(self._request)

    async def aclose(self) -> None:
        """Cancel if unfinished and wait (`cancel_timeout`) for the end, so the id is free.

        `VoxtrioClient.synthesize` calls this when its context exits; an error
        the server sends meanwhile is kept in `error`, not raised.
        """
        if self._closed:
            return
        try:
            if not self.finished:
                await self._wind_down()
        finally:
            self._closed = True
            self._request.receive.close()

    async def _wind_down(self) -> None:
        timeout = self._connection.cancel_timeout
        # Shielded: this runs while a cancellation or an error is on its way out.
        with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout) as scope:
            try:
                await self._connection.send_cancel(self._request)
                while not self.finished:
                    item = await self._request.receive.receive()
                    with contextlib.suppress(StopAsyncIteration, SynthesisError):
                        self._consume(item)
            except (trio.EndOfChannel, VoxtrioClientError):
                return  # the connection is gone: no id is left to free
        if scope.cancelled_caught:
            log.warning(
                "request %r: no terminal message within cancel_timeout=%g s after cancelling; "
                "its id stays reserved until one arrives",
                self.request_id,
                timeout,
            )
            self._connection.state.requests.abandon(self._request)

    async def _next_item(self) -> Item:
        timeout = self._connection.response_timeout
        started = trio.current_time()
        while True:
            with trio.move_on_at(max(self._request.last_activity, started) + timeout):
                try:
                    return await self._request.receive.receive()
                except trio.EndOfChannel:
                    self._connection.state.raise_failure()
            # Progress messages refresh last_activity without waking us: go on waiting.
            if trio.current_time() >= max(self._request.last_activity, started) + timeout:
                raise ResponseTimeout(
                    self._connection.state.timeout_message(self.request_id, timeout)
                )

    def _consume(self, item: Item) -> AudioChunk:
        match item:
            case AudioChunk(samples=samples):
                self.sample_rate = item.sample_rate
                self.samples_received += samples or 0
                self.chunks_received += 1
                return item
            case Complete(result=SynthesisResult() as result):
                self.finished = True
                self.result = result
                self.sample_rate = result.sample_rate
            case Complete():
                self.finished = True
                self.cancelled = True
            case Error():
                self.finished = True
                self.error = synthesis_error(item)
                raise self.error
        raise StopAsyncIteration


class TextStream(SynthesisStream):
    """A request whose text is sent in pieces (an LLM's output); its audio always streams.

    Send text with `send_text`, force out a partial sentence with `flush`, and
    call `end` after the last piece. The server speaks whole sentences as they
    complete, so audio arrives while text is still being sent: read it from
    another task than the one sending, or the connection stalls.
    """

    def __init__(self, connection: ClientConnection, request: RequestState) -> None:
        super().__init__(connection, request)
        self.text_ended = False

    async def send_text(self, text: str) -> None:
        """Send the next piece of text (1 to 5000 characters; sentences may span pieces)."""
        await self._send_text_message(text_delta(text))

    async def flush(self) -> None:
        """Have the server speak what it holds now, even if no sentence has ended."""
        await self._send_text_message({"type": "text_flush"})

    async def end(self) -> None:
        """No more text: the server speaks the rest, then the request completes."""
        await self._send_text_message({"type": "text_stream_end"})
        self.text_ended = True

    async def _send_text_message(self, message: dict[str, Any]) -> None:
        if self.text_ended:
            raise RuntimeError(f"text stream {self.request_id!r} was already ended")
        if self._request.terminal_received or self._closed:
            raise RuntimeError(f"request {self.request_id!r} has already finished")
        # Our own text counts as activity: a server waiting for text is not silent.
        self._request.last_activity = trio.current_time()
        await self._connection.send({**message, "request_id": self.request_id})
