"""Opening a connection: the URL, TCP/TLS, the WebSocket handshake, and their deadlines."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Final, cast
from urllib.parse import urlsplit

import trio
from trio_websocket import (
    ConnectionRejected,
    HandshakeError,
    WebSocketConnection,
    wrap_client_stream,
)

from voxtrio.client._client import VoxtrioClient
from voxtrio.client._connection import ClientConnection
from voxtrio.protocol._client_errors import ConnectError
from voxtrio.protocol._client_outgoing import (
    DEFAULT_CANCEL_TIMEOUT,
    DEFAULT_CLOSE_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_PING_TIMEOUT,
    DEFAULT_RESPONSE_TIMEOUT,
    DEFAULT_SEND_TIMEOUT,
    DEFAULT_URL,
)

log = logging.getLogger("voxtrio.client")

DEFAULT_MESSAGE_QUEUE_SIZE: Final = 16
_RECEIVE_BUFFER_BYTES: Final = 64 * 1024
_REJECTION_HINTS: Final = {
    401: " (no valid API key: pass api_key=)",
    404: " (the path is /tts)",
    503: " (the server is full or shutting down)",
}


@asynccontextmanager
async def connect(
    url: str = DEFAULT_URL,
    *,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    api_key: str | None = None,
    message_queue_size: int = DEFAULT_MESSAGE_QUEUE_SIZE,
    response_timeout: float = DEFAULT_RESPONSE_TIMEOUT,
    cancel_timeout: float = DEFAULT_CANCEL_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    ping_timeout: float = DEFAULT_PING_TIMEOUT,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> AsyncIterator[VoxtrioClient]:
    """Open a connection, yield a VoxtrioClient, close it on exit.

    Deadlines, in seconds: `connect_timeout` (TCP + WebSocket handshake),
    `response_timeout` (nothing at all from the server about a request),
    `cancel_timeout` (the terminal message after a cancel on leaving a
    `synthesize` context), `close_timeout` (closing handshake), `send_timeout`
    (one outgoing message), `ping_timeout` (the pong). `message_queue_size` is
    the number of messages buffered per request before the reader waits.
    `api_key` is sent as `Authorization: Bearer KEY`.
    """
    if message_queue_size < 1:
        raise ValueError("message_queue_size must be at least 1")
    extra_headers = [
        (name.encode(), value.encode())
        for name, value in (headers.items() if isinstance(headers, Mapping) else headers or ())
    ]
    if api_key is not None:
        extra_headers.append((b"authorization", f"Bearer {api_key}".encode()))
    async with open_nursery_unwrapped() as nursery:
        ws, stream = await _open_websocket(
            nursery,
            url,
            connect_timeout=connect_timeout,
            extra_headers=extra_headers,
            max_message_size=max_message_size,
        )
        connection = ClientConnection(
            ws,
            stream,
            nursery,
            url=url,
            message_queue_size=message_queue_size,
            response_timeout=response_timeout,
            cancel_timeout=cancel_timeout,
            close_timeout=close_timeout,
            send_timeout=send_timeout,
            ping_timeout=ping_timeout,
        )
        client = VoxtrioClient(connection)
        nursery.start_soon(connection.read_loop)
        try:
            yield client
        finally:
            await client.aclose()


def _split_url(url: str) -> tuple[str, int, str, bool]:
    """(host, port, resource, tls) of a ws:// or wss:// URL, or ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    tls = parts.scheme == "wss"
    port = parts.port or (443 if tls else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, resource, tls


class _ReaderNursery:
    """The nursery trio-websocket gets for its own reader task, guarded.

    trio-websocket raises a handshake rejection (HTTP 404, 503...) from that
    task, not from the call that waits for the handshake, and leaves the socket
    open. Run through here, a failure of the task is recorded and cancels the
    handshake wait instead of crashing the client's nursery.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.failure: Exception | None = None
        self.handshake_scope = trio.CancelScope()

    def start_soon(
        self, fn: Callable[..., Awaitable[object]], *args: object, name: object = None
    ) -> None:
        self._nursery.start_soon(self._guard, fn, *args, name=name)

    async def _guard(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            if self.failure is None:
                self.failure = exc
            self.handshake_scope.cancel()
            if not isinstance(exc, HandshakeError):
                log.error("the WebSocket reader task failed", exc_info=exc)


async def _open_websocket(
    nursery: trio.Nursery,
    url: str,
    *,
    connect_timeout: float,
    extra_headers: list[tuple[bytes, bytes]],
    max_message_size: int,
) -> tuple[WebSocketConnection, trio.abc.Stream]:
    """The connection and the stream under it (which the caller must close)."""
    host, port, resource, tls = _split_url(url)
    host_header = host if port in (80, 443) else f"{host}:{port}"
    guard = _ReaderNursery(nursery)
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream] | None = None
    with trio.move_on_after(connect_timeout):
        try:
            if tls:
                context = ssl.create_default_context()
                stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=context, https_compatible=True
                )
            else:
                stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {url}: {exc}") from exc
        with guard.handshake_scope:
            ws = await wrap_client_stream(
                cast(trio.Nursery, guard),
                stream,
                host_header,
                resource,
                extra_headers=extra_headers,
                max_message_size=max_message_size,
                receive_buffer_size=_RECEIVE_BUFFER_BYTES,
            )
            return ws, stream
    if stream is not None:
        await trio.aclose_forcefully(stream)
    failure = guard.failure
    if isinstance(failure, ConnectionRejected):
        body = (failure.body or b"").decode("utf-8", "replace").strip()
        detail = f": {body[:200]}" if body else _REJECTION_HINTS.get(failure.status_code, "")
        raise ConnectError(
            f"{url}: the server rejected the WebSocket handshake with HTTP "
            f"{failure.status_code}{detail}",
            status_code=failure.status_code,
        ) from None
    if failure is not None:
        raise ConnectError(f"cannot connect to {url}: {failure!r}") from failure
    raise ConnectError(
        f"cannot connect to {url}: no answer within connect_timeout={connect_timeout:g} s"
    )


@asynccontextmanager
async def open_nursery_unwrapped() -> AsyncIterator[trio.Nursery]:
    """A nursery whose body's exception escapes bare, not inside an ExceptionGroup.

    Its background tasks must never raise (but Cancelled): then a group holds
    the body's exception and Cancelled at most, and callers get a plain
    SynthesisError or KeyboardInterrupt instead of having to use `except*`.
    The nursery is cancelled when the body ends.
    """
    try:
        async with trio.open_nursery() as nursery:
            try:
                yield nursery
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        _raise_lone_exception(group)
        raise


def _raise_lone_exception(group: BaseExceptionGroup[BaseException]) -> None:
    """Re-raise the group's one non-Cancelled exception, if it has exactly one."""
    leaves = list(_leaves(group))
    others = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    lone = others[0] if len(others) == 1 else leaves[0] if len(leaves) == 1 else None
    if lone is None:
        return
    context = lone.__context__
    try:
        raise lone
    finally:
        # Keep the exception's own context, not the group it was unwrapped from.
        lone.__context__ = context
        del lone, context


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
