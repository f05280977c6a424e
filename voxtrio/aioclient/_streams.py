"""A request's audio and word timings as they arrive, and text sent in pieces."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from voxtrio.aioclient._connection import AsyncConnection
from voxtrio.aioclient._incoming import WordTimings
from voxtrio.aioclient._request import Failure, Item, RequestState
from voxtrio.protocol._client_errors import (
    ResponseTimeout,
    SynthesisError,
    clone_failure,
    synthesis_error,
)
from voxtrio.protocol._client_incoming import AudioChunk
from voxtrio.protocol._client_outgoing import text_delta
from voxtrio.protocol._messages import Complete, Error, Progress, SynthesisResult

log = logging.getLogger("voxtrio.aioclient")

Event = AudioChunk | WordTimings


class SynthesisStream:
    """One request's events in order: `async for event in stream` (AudioChunk, WordTimings).

    The iteration ends after the audio (`result` is set) or when the request was
    cancelled (`cancelled`); a server `error` raises SynthesisError, a lost
    connection ConnectionLost. `aclose()` cancels an unfinished request and waits
    (`cancel_timeout`) for its end, so the id is free and the server's slot too.
    """

    def __init__(self, connection: AsyncConnection, request: RequestState) -> None:
        self._connection = connection
        self._request = request
        self.result: SynthesisResult | None = None
        self.cancelled = False
        self.finished = False
        self._closed = False
        self._wind_down: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "finished" if self.finished else "running"
        return f"<{type(self).__name__} {self.request_id!r} {state}>"

    @property
    def request_id(self) -> str:
        return self._request.request_id

    @property
    def progress(self) -> Progress | None:
        return self._request.progress

    @property
    def sample_rate(self) -> int | None:
        return self._request.sample_rate

    def __aiter__(self) -> SynthesisStream:
        return self

    async def __anext__(self) -> Event:
        if self.finished or self._closed:
            raise StopAsyncIteration
        return self._consume(await self._next_item())

    async def cancel(self) -> None:
        """Ask the server to stop now; iterate on (or `aclose`) to see the end."""
        if not self.finished:
            await self._connection.send_cancel(self._request)

    async def aclose(self) -> None:
        """Cancel if unfinished and wait for the terminal message (at most cancel_timeout).

        The wait runs in its own task, shielded: a caller cancelled meanwhile (an
        interruption) returns at once while the request is still wound down.
        """
        if self._closed:
            return
        if not self.finished and self._wind_down is None:
            self._wind_down = self._connection.spawn(self._cancel_and_drain())
        try:
            if self._wind_down is not None:
                await asyncio.shield(self._wind_down)
        finally:
            if self._wind_down is None or self._wind_down.done():
                self._release()

    def close_nowait(self) -> None:
        """`aclose` without waiting: the cancel and the wait for the end run in the background.

        For an interruption, where the caller must not wait for the server's answer.
        """
        if self._closed or self._wind_down is not None:
            return
        if self.finished:
            self._release()
        else:
            self._wind_down = self._connection.spawn(self._cancel_and_drain())

    def _release(self) -> None:
        self._closed = True
        self._request.closed = True
        while not self._request.queue.empty():  # unblock a reader waiting to put
            self._request.queue.get_nowait()

    async def _cancel_and_drain(self) -> None:
        timeout = self._connection.cancel_timeout
        try:
            async with asyncio.timeout(timeout):
                with contextlib.suppress(Exception):
                    await self._connection.send_cancel(self._request)
                while not self.finished:
                    item = await self._request.queue.get()
                    if isinstance(item, Failure):
                        return  # the connection is gone: no id is left to free
                    with contextlib.suppress(StopAsyncIteration, SynthesisError):
                        self._consume(item)
        except TimeoutError:
            log.warning(
                "request %r: no terminal message within cancel_timeout=%g s after cancelling",
                self.request_id,
                timeout,
            )
            self._connection.state.requests.abandon(self._request)
        finally:
            self._release()

    async def _next_item(self) -> Item:
        timeout = self._connection.response_timeout
        started = time.monotonic()
        while True:
            deadline = max(self._request.last_activity, started) + timeout
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    return await self._request.queue.get()
            except TimeoutError:
                # Progress messages refresh last_activity without waking us.
                if time.monotonic() >= max(self._request.last_activity, started) + timeout:
                    message = self._connection.state.timeout_message(self.request_id, timeout)
                    raise ResponseTimeout(message) from None

    def _consume(self, item: Item) -> Event:
        match item:
            case AudioChunk() | WordTimings():
                return item
            case Complete(result=SynthesisResult() as result):
                self.finished = True
                self.result = result
            case Complete():
                self.finished = True
                self.cancelled = True
            case Error():
                self.finished = True
                raise synthesis_error(item)
            case Failure(error=error):
                self.finished = True
                raise clone_failure(error)
        raise StopAsyncIteration


class TextStream(SynthesisStream):
    """A request whose text arrives in pieces (an LLM's tokens); its audio always streams.

    `send_text` each piece, `flush` to speak a partial sentence now, `end` after the
    last. Read the events from another task than the one sending: audio arrives
    while text is still being sent.
    """

    def __init__(self, connection: AsyncConnection, request: RequestState) -> None:
        super().__init__(connection, request)
        self.text_ended = False

    async def send_text(self, text: str) -> None:
        """The next piece (1 to 5000 characters; sentences and words may span pieces)."""
        await self._send(text_delta(text))

    async def flush(self) -> None:
        """Have the server speak what it holds now, even if no sentence has ended."""
        await self._send({"type": "text_flush"})

    async def end(self) -> None:
        """No more text: the server speaks the rest, then the request completes."""
        await self._send({"type": "text_stream_end"})
        self.text_ended = True

    async def _send(self, message: dict[str, Any]) -> None:
        if self.text_ended:
            raise RuntimeError(f"text stream {self.request_id!r} was already ended")
        if self._request.terminal_received or self._closed:
            raise RuntimeError(f"request {self.request_id!r} has already finished")
        self._request.last_activity = time.monotonic()
        await self._connection.send({**message, "request_id": self.request_id})
