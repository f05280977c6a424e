"""The public client object: requests, pings and closing on one connection."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from voxtrio.client._connection import ClientConnection
from voxtrio.client._results import Speech
from voxtrio.client._streams import SynthesisStream, TextStream
from voxtrio.protocol._client_errors import SynthesisCancelled, SynthesisError
from voxtrio.protocol._client_outgoing import request_params
from voxtrio.protocol._messages import Mode


class VoxtrioClient:
    """One connection to a voxtrio server; make one with `connect()`."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<VoxtrioClient {self.url} {state}, {len(self.active_requests)} active>"

    @property
    def url(self) -> str:
        return self._connection.url

    @property
    def closed(self) -> bool:
        """True once the connection is unusable (closed, lost, or the server misbehaved)."""
        return self._connection.state.closed

    @property
    def active_requests(self) -> frozenset[str]:
        return self._connection.state.requests.ids

    @property
    def connection_errors(self) -> deque[SynthesisError]:
        """The latest errors the server sent about no request (see the connection module)."""
        return self._connection.connection_errors

    @property
    def response_timeout(self) -> float:
        return self._connection.response_timeout

    @property
    def cancel_timeout(self) -> float:
        return self._connection.cancel_timeout

    @property
    def close_timeout(self) -> float:
        return self._connection.close_timeout

    @property
    def send_timeout(self) -> float:
        return self._connection.send_timeout

    @property
    def ping_timeout(self) -> float:
        return self._connection.ping_timeout

    # -- requests -------------------------------------------------------------

    @asynccontextmanager
    async def synthesize(
        self,
        text: str,
        *,
        mode: Mode = "streaming",
        request_id: str | None = None,
        **params: Any,
    ) -> AsyncIterator[SynthesisStream]:
        """Send a tts_request and yield its stream.

        `params` are the protocol's (cfg_value, inference_timesteps, normalize,
        denoise, retry_badcase, retry_badcase_max_times,
        retry_badcase_ratio_threshold, seed, max_len, format, sample_rate,
        bit_rate, speed: docs/PROTOCOL.md §3.1); None means the server's default; an
        unknown name is a TypeError here. Leaving the context before the end
        cancels the request and waits for its terminal message (`cancel_timeout`).
        """
        body = {"text": text, "mode": mode, **request_params(params)}
        request = await self._connection.open_request("tts_request", request_id, body)
        stream = SynthesisStream(self._connection, request)
        try:
            yield stream
        finally:
            await stream.aclose()

    @asynccontextmanager
    async def text_stream(
        self, *, request_id: str | None = None, **params: Any
    ) -> AsyncIterator[TextStream]:
        """Send a text_stream_start and yield its TextStream (text in pieces, audio out).

        `params` as for `synthesize`, but there is no text and no mode. Leaving
        the context before the request completed cancels it.
        """
        body = request_params(params)
        request = await self._connection.open_request("text_stream_start", request_id, body)
        stream = TextStream(self._connection, request)
        try:
            yield stream
        finally:
            await stream.aclose()

    async def speak(
        self,
        text: str,
        *,
        mode: Mode = "streaming",
        request_id: str | None = None,
        **params: Any,
    ) -> Speech:
        """Synthesize and collect the whole audio (either mode)."""
        pcm = bytearray()
        async with self.synthesize(text, mode=mode, request_id=request_id, **params) as stream:
            async for chunk in stream:
                pcm += chunk.pcm
        result = stream.result
        if result is None:
            raise SynthesisCancelled(f"request {stream.request_id!r} was cancelled")
        return Speech(bytes(pcm), result.sample_rate, result, result.format)

    async def cancel(self, request_id: str) -> bool:
        """Cancel an active request of this client; False if there is none or it is cancelling."""
        request = self._connection.state.requests.get(request_id)
        if request is None:
            return False
        return await self._connection.send_cancel(request)

    async def ping(self, *, ping_timeout: float | None = None) -> float:
        """Send a protocol `ping` and return the round trip in seconds."""
        timeout = self._connection.ping_timeout if ping_timeout is None else ping_timeout
        return await self._connection.ping(timeout)

    async def aclose(self) -> None:
        """Close the connection (1000), waiting at most `close_timeout` for the handshake."""
        await self._connection.aclose()
