"""The Trio WebSocket server: handshake routing, an error boundary per connection, drain."""

from __future__ import annotations

import itertools
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, WebSocketServer
from wsproto import ConnectionType, WSConnection

from voxtrio._config import Settings
from voxtrio.audio._dsp import dsp_available
from voxtrio.ops._auth import KeyStore
from voxtrio.ops._metrics import Metrics
from voxtrio.protocol._connection_state import Capabilities
from voxtrio.protocol._dashscope import PATH as DASHSCOPE_PATH
from voxtrio.server._dashscope import DashScopeConnection
from voxtrio.server._endpoint import Endpoint
from voxtrio.server._native import Connection
from voxtrio.server._origin import BrowserPolicy
from voxtrio.server._pending import PendingRequests
from voxtrio.server._registry import ShrinkingSet
from voxtrio.server._request import SETUP_TURNS
from voxtrio.server._sniff import (
    HeadTooLarge,
    ReplayStream,
    malformed_request_line,
    read_head,
    wants_websocket,
)
from voxtrio.server._websocket import (
    HeadFirstStream,
    MessageLimits,
    PartialMessageBudget,
    VoxWebSocketConnection,
)
from voxtrio.server.openai._exchange import refuse_unread
from voxtrio.server.openai._routes import HttpFront, HttpRequestHandle
from voxtrio.server.openai._speech import SpeechContext
from voxtrio.speech._pool import InstancePool
from voxtrio.voices._service import VoiceService

log = structlog.get_logger("voxtrio.server")

TTS_PATHS = frozenset({"/tts", "/"})
_MAX_HEAD_BYTES = 16384


@attrs.define
class ServerStats:
    connections_total: int = 0
    rejected_handshakes: int = 0


@attrs.frozen
class ServerHandle:
    """What `serve` reports once it is listening and the model is warm."""

    host: str
    port: int
    server: TtsServer = attrs.field(eq=False, repr=False)
    metrics_port: int | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/tts"


class _GuardedWebSocketServer(WebSocketServer):
    """trio-websocket's server with an error boundary around its own per-connection tasks.

    trio-websocket 0.12.2 can raise inside the connection task it runs beside our
    handler (e.g. wsproto's LocalProtocolError when a ping crosses our close frame,
    python-trio/trio-websocket#184); uncaught, that tears down every connection.
    """

    http: Callable[[trio.abc.Stream], Awaitable[None]] | None = None
    head_timeout: float = 10.0
    write_timeout: float = 10.0

    def __init__(
        self, *args: Any, limits: MessageLimits, pending: PendingRequests, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._pending = pending

    async def _handle_connection(self, stream: trio.abc.Stream) -> None:
        try:
            if self.http is not None and isinstance(stream, trio.SocketStream):
                # Plain HTTP shares the port: read the head, then replay it to its side.
                # Until then the connection is pending: deadline, evictable, not counted.
                head = await self._read_head(stream)
                if not head:
                    await trio.aclose_forcefully(stream)  # closed, evicted, or too slow
                    return
                if malformed_request_line(head):
                    await refuse_unread(stream, 400, "not an HTTP/1.x request", self.write_timeout)
                    await trio.aclose_forcefully(stream)
                    return
                replay = ReplayStream(stream, head)
                if not wants_websocket(head):
                    await self.http(replay)
                    return
                stream = replay
            await self._serve_connection(stream)
        except HeadTooLarge as exc:
            with trio.move_on_after(self.head_timeout):
                await refuse_unread(stream, exc.status, str(exc), self.write_timeout)
            await trio.aclose_forcefully(stream)
        except Exception:
            log.warning("websocket_connection_error", exc_info=True)

    async def _read_head(self, stream: trio.SocketStream) -> bytes | None:
        """The request head within the head deadline; None if evicted or too slow."""
        with self._pending.reading(), trio.move_on_after(self.head_timeout):
            return await read_head(stream, _MAX_HEAD_BYTES)
        return None

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        """trio-websocket's own per-connection routine, on voxtrio's connection class."""
        connection = VoxWebSocketConnection(
            HeadFirstStream(stream),
            WSConnection(ConnectionType.SERVER),
            limits=self._limits,
            message_queue_size=self._message_queue_size,
            receive_buffer_size=self._receive_buffer_size,
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(connection._reader_task)
                with trio.move_on_after(self._connect_timeout) as connect_scope:
                    request = await connection._get_request()
                if connect_scope.cancelled_caught:
                    nursery.cancel_scope.cancel()
                    await stream.aclose()
                    return
                try:
                    await self._handler(request)
                finally:
                    with trio.move_on_after(self._disconnect_timeout):
                        # aclose() shuts the reader task down even when cancelled.
                        await connection.aclose()
        finally:
            connection.release_budget()


class TtsServer:
    def __init__(
        self,
        settings: Settings,
        pool: InstancePool,
        *,
        keys: KeyStore | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.keys = keys if keys is not None else KeyStore()
        self.metrics = metrics if metrics is not None else Metrics()
        self.stats = ServerStats()
        self.capabilities = Capabilities(max_text_chars=settings.max_text_chars)
        self.connections: ShrinkingSet[Endpoint] = ShrinkingSet()
        self.setup_turns = trio.CapacityLimiter(SETUP_TURNS)
        self.voices: VoiceService | None = None  # set once the model is loaded
        self.dsp_available = dsp_available()
        self.draining = False
        self.http: HttpFront | None = None
        self._listener_scope = trio.CancelScope()
        self._ids = itertools.count(1)
        self._prefix = os.urandom(3).hex()
        self._partial_budget = PartialMessageBudget(settings.partial_message_budget_bytes)
        # Connections still sending their request (both sides of the port): bounded apart.
        self.pending = PendingRequests(settings.max_connections)
        self.policy = BrowserPolicy.from_settings(settings, keyed=self.keys.enabled)

    @property
    def open_connections(self) -> int:
        """WebSocket connections and admitted HTTP requests (active_connections)."""
        return len(self.connections) + (self.http.active if self.http is not None else 0)

    async def serve(self, *, task_status: trio.TaskStatus[ServerHandle]) -> None:
        """Listen until cancelled; the caller owns this task (`nursery.start`)."""
        async with trio.open_nursery() as handlers:
            listeners = await trio.open_tcp_listeners(self.settings.port, host=self.settings.host)
            ws_server = _GuardedWebSocketServer(
                self.handle,
                listeners,
                handler_nursery=handlers,
                message_queue_size=1,
                limits=MessageLimits(
                    small=self.settings.max_message_bytes,
                    upload=self.voices.max_message_bytes if self.voices else 0,
                    upload_paths=TTS_PATHS,
                    budget=self._partial_budget,
                ),
                pending=self.pending,
                connect_timeout=self.settings.handshake_timeout,
                disconnect_timeout=self.settings.handshake_timeout,
            )
            ws_server.head_timeout = self.settings.handshake_timeout
            ws_server.write_timeout = self.settings.write_timeout
            ws_server.http = self.http_front().handle
            with self._listener_scope:
                async with trio.open_nursery() as listening:
                    await listening.start(ws_server.run)
                    handle = ServerHandle(self.settings.host, ws_server.port, self)
                    log.info("listening", url=handle.url, workers=len(self.pool.instances))
                    task_status.started(handle)

    def http_front(self) -> HttpFront:
        """Plain HTTP on this port: the OpenAI-compatible API and the browser page."""
        context = SpeechContext(
            settings=self.settings, pool=self.pool, metrics=self.metrics, voices=self.voices
        )
        front = HttpFront(
            context,
            self.keys,
            self.settings.web_page_enabled,
            lambda: self.draining,
            pending=self.pending,
            policy=self.policy,
            budget=self._partial_budget,
        )
        self.http = front
        return front

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop accepting, let running requests finish within the deadline, then end them.

        Requests still running at the deadline end with SHUTTING_DOWN; connections
        close with 1001 (going away).
        """
        self.draining = True
        self._listener_scope.cancel()
        log.info("draining", connections=len(self.connections), drain_timeout=drain_timeout)
        http_requests = list(self.http.requests) if self.http is not None else []
        ending: list[Endpoint | HttpRequestHandle] = [
            *self.connections,
            *http_requests,
        ]
        for item in ending:  # an idle keep-alive HTTP connection closes now
            item.begin_drain()
        with trio.move_on_after(drain_timeout):
            for item in ending:
                await item.idle.wait()
        async with trio.open_nursery() as nursery:
            for item in ending:
                nursery.start_soon(item.shut_down)
        log.info("drained")

    async def handle(self, request: WebSocketRequest) -> None:
        """The error boundary: nothing a connection does may escape into the server."""
        connection_id = f"{self._prefix}-{next(self._ids)}"
        with structlog.contextvars.bound_contextvars(connection_id=connection_id):
            try:
                await self._handle(request)
            except ConnectionClosed as exc:
                log.debug("connection_closed", code=exc.reason.code if exc.reason else None)
            except Exception:
                log.exception("connection_failed")

    async def _reject(
        self,
        request: WebSocketRequest,
        status: int,
        why: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.stats.rejected_handshakes += 1
        self.metrics.handshake_rejected(status)
        log.info("handshake_rejected", status=status, reason=why)
        await request.reject(status, extra_headers=headers, body=f"{why}\n".encode())

    async def _handle(self, request: WebSocketRequest) -> None:
        path = urlsplit(request.path).path
        if path not in TTS_PATHS and path != DASHSCOPE_PATH:
            await self._reject(
                request, 404, f"unknown path {path[:100]!r}: use /tts or {DASHSCOPE_PATH}"
            )
            return
        refusal = self.policy.refusal(_handshake_headers(request))
        if refusal is not None:  # a browser page from elsewhere (CSRF, DNS rebinding)
            await self._reject(request, 403, refusal)
            return
        if not self.keys.authorize(request.headers, request.path):
            # Before any message is read; never log what was presented.
            await self._reject(
                request,
                401,
                "missing or invalid API key (Authorization: Bearer KEY, or ?api_key=KEY)",
                [(b"WWW-Authenticate", b"Bearer")],
            )
            return
        if self.draining:
            await self._reject(request, 503, "server shutting down")
            return
        if len(self.connections) >= self.settings.max_connections:
            await self._reject(request, 503, "too many connections")
            return
        ws = await request.accept()
        try:
            remote = str(request.remote)
        except OSError:  # the peer reset the connection right after the handshake
            return
        connection: Endpoint
        if path == DASHSCOPE_PATH:
            connection = DashScopeConnection(
                ws,
                settings=self.settings,
                pool=self.pool,
                metrics=self.metrics,
                dsp_available=self.dsp_available,
                voices=self.voices,
            )
        else:
            connection = Connection(
                ws,
                settings=self.settings,
                pool=self.pool,
                capabilities=self.capabilities,
                metrics=self.metrics,
                voices=self.voices,
                setup_turns=self.setup_turns,
            )
        self.connections.add(connection)
        self.metrics.connection_opened()
        self.stats.connections_total += 1
        log.info("connection_opened", remote=remote)
        try:
            await connection.run()
        except Exception:
            log.exception("connection_failed")
            with trio.move_on_after(self.settings.handshake_timeout):
                await ws.aclose(code=1011, reason="internal error")
        finally:
            self.connections.discard(connection)
            log.info("connection_closed")


def _handshake_headers(request: WebSocketRequest) -> list[tuple[bytes, bytes]]:
    """The handshake's headers with its Host, which wsproto keeps apart from the rest."""
    # trio-websocket exposes the headers but not the wsproto Request's `host` field.
    host: str | None = getattr(getattr(request, "_event", None), "host", None)
    extra = [(b"host", host.encode("idna"))] if host else []
    return [*request.headers, *extra]
