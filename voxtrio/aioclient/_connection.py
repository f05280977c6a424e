"""One connection on asyncio: the WebSocket, the reader task, the active requests, failure.

The reader task reads every message, has the protocol `state` decode and check it,
and hands what it yields to the request it names through that request's *bounded*
queue: a request nobody reads fills its queue and then pauses the reader, so
backpressure reaches the server instead of audio piling up here. Progress is not
queued: the state keeps the latest one on the request. The first failure (the
server closed, the network broke, the server broke the protocol) wakes every waiter
with ConnectionLost or ProtocolViolation. A dropped connection is not reopened
here: the framework integrations open a new one for their next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from voxtrio.aioclient._request import Failure, Item, RequestState
from voxtrio.protocol._client_connection import (
    ClientConnectionState,
    Ended,
    Reply,
    ServerNotice,
    WordsFor,
)
from voxtrio.protocol._client_errors import (
    ConnectionLost,
    ProtocolViolation,
    ResponseTimeout,
    VoxtrioClientError,
)
from voxtrio.protocol._client_incoming import SERVER_MESSAGE_TYPES
from voxtrio.protocol._client_outgoing import encode_message

log = logging.getLogger("voxtrio.aioclient")


class AsyncConnection:
    """The WebSocket and its tasks over the protocol `state` (see the module docstring)."""

    def __init__(
        self,
        ws: ClientConnection,
        *,
        url: str,
        queue_size: int,
        response_timeout: float,
        cancel_timeout: float,
        send_timeout: float,
        close_timeout: float,
    ) -> None:
        self.url = url
        self.response_timeout = response_timeout
        self.cancel_timeout = cancel_timeout
        self.send_timeout = send_timeout
        self.close_timeout = close_timeout
        self._ws = ws
        self._queue_size = queue_size
        # Sans-IO: the requests, the first failure, the text of what is sent, and
        # what each received message means (every type a server sends: this client
        # has voice calls).
        self.state = ClientConnectionState[RequestState](SERVER_MESSAGE_TYPES)
        # One-off replies (voice_list, ping) by request id / timestamp.
        self._replies: dict[str | int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reader = self.spawn(self._read_loop())

    def spawn(self, coroutine: Any) -> asyncio.Task[Any]:
        """A background task this connection keeps a reference to (asyncio drops weak ones)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- sending --------------------------------------------------------------

    async def open_request(
        self, kind: str, request_id: str | None, params: dict[str, Any]
    ) -> RequestState:
        """Register a request and send its opening message (tts_request, text_stream_start)."""
        self.state.check_usable()
        rid = self.state.requests.reserve(request_id)
        request = RequestState(
            request_id=rid,
            mode=params.get("mode", "streaming"),
            format=params.get("format", "pcm16"),
            queue=asyncio.Queue(self._queue_size),
            last_activity=time.monotonic(),
        )
        text = self.state.open_request(request, kind, params)
        try:
            await self._send_text(text)
        except BaseException:
            self.state.requests.discard(request)
            raise
        return request

    async def send_cancel(self, request: RequestState) -> bool:
        text = self.state.cancel(request)
        if text is None:
            return False
        await self._send_text(text)
        return True

    async def send(self, message: dict[str, Any]) -> None:
        await self._send_text(encode_message(message))

    async def _send_text(self, text: str) -> None:
        self.state.check_usable()
        try:
            async with asyncio.timeout(self.send_timeout):
                await self._ws.send(text)
        except ConnectionClosed as exc:
            self._fail(self._lost(exc))
            self.state.raise_failure()
        except TimeoutError:
            self._fail(ConnectionLost(f"a message was not sent within {self.send_timeout:g} s"))
            self.state.raise_failure()

    async def request_reply(self, message: dict[str, Any], reply_timeout: float) -> Any:
        """Send a message that one reply answers (voice_list...) and return the reply."""
        rid = message["request_id"]
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[rid] = future
        self.state.await_reply(rid)
        try:
            await self.send(message)
            async with asyncio.timeout(reply_timeout):
                return await future
        except TimeoutError:
            raise ResponseTimeout(
                f"no answer to {message['type']} within {reply_timeout:g} s"
            ) from None
        finally:
            self._replies.pop(rid, None)
            self.state.stop_awaiting(rid)

    async def ping(self, ping_timeout: float) -> float:
        """A protocol `ping`; the round trip in seconds."""
        timestamp, text = self.state.ping()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[timestamp] = future
        started = time.monotonic()
        try:
            await self._send_text(text)
            async with asyncio.timeout(ping_timeout):
                await future
        except TimeoutError:
            raise ResponseTimeout(f"no pong within {ping_timeout:g} s") from None
        finally:
            self._replies.pop(timestamp, None)
        return time.monotonic() - started

    # -- the reader task --------------------------------------------------------

    async def _read_loop(self) -> None:
        """Read and dispatch until the connection ends; never raises (but CancelledError)."""
        try:
            async for message in self._ws:
                if isinstance(message, str):
                    await self._on_text(message)
                else:
                    await self._on_frame(message)
            code, reason = self._ws.close_code, self._ws.close_reason
            detail = f" ({reason})" if reason else ""
            lost = ConnectionLost(f"the server closed the connection: {code}{detail}", code=code)
            self._fail(lost)
        except ConnectionClosed as exc:
            self._fail(self._lost(exc))
        except ProtocolViolation as exc:
            log.error("closing the connection to %s: %s", self.url, exc)
            self._fail(exc)
            await self._close(1002, str(exc)[:120])
        except Exception as exc:  # a bug here must not leave waiters hanging
            log.exception("the reader of %s failed", self.url)
            self._fail(ConnectionLost(f"the client's reader failed: {exc!r}"))
            await self._close(1011, "client error")

    async def _on_text(self, text: str) -> None:
        match self.state.text_received(text, now=time.monotonic()):
            case Reply(key=key, value=value):
                self._resolve(key, value)
            case WordsFor(request=request, words=words):
                await self._deliver(request, words)
            case Ended(request=request, message=message):
                # The state has freed the id (the server did when it sent this).
                await self._deliver(request, message)
            case ServerNotice(error=error):
                log.warning("connection-level error from %s: %s %s", self.url, error, error.details)

    async def _on_frame(self, data: bytes) -> None:
        if audio := self.state.frame_received(data, now=time.monotonic()):
            await self._deliver(audio.request, audio.chunk)

    def _resolve(self, key: str | int, value: Any) -> None:
        future = self._replies.get(key)
        if future is None or future.done():
            log.debug("a reply for %r came after its caller stopped waiting", key)
        elif isinstance(value, BaseException):
            future.set_exception(value)
        else:
            future.set_result(value)

    async def _deliver(self, request: RequestState, item: Item) -> None:
        if request.closed:
            return
        if request.queue.full():
            # The consumer is behind: wait for it (this pauses the whole connection).
            self.state.reader_blocked_on = request.request_id
        try:
            await request.queue.put(item)
        finally:
            self.state.reader_blocked_on = None

    # -- failure and closing ----------------------------------------------------

    def _fail(self, exc: VoxtrioClientError) -> None:
        """The connection is unusable: wake every waiter (the first failure wins)."""
        for request in self.state.fail(exc):
            request.wake(Failure(exc))
        for future in self._replies.values():
            if not future.done():
                future.set_exception(ConnectionLost(str(exc)))

    def _lost(self, exc: ConnectionClosed) -> ConnectionLost:
        if self.state.failure is not None:
            return ConnectionLost(str(self.state.failure))
        received = exc.rcvd
        if received is None:
            return ConnectionLost("the connection broke (no close frame)")
        reason = f" ({received.reason})" if received.reason else ""
        return ConnectionLost(
            f"the server closed the connection: {received.code}{reason}", code=received.code
        )

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.close_timeout):
                await self._ws.close(code, reason)

    async def aclose(self) -> None:
        """Close (1000) within close_timeout; stop the reader and background tasks."""
        self._fail(ConnectionLost("the client was closed"))
        await self._close(1000, "")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.close_timeout)
