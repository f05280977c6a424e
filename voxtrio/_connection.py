"""One client connection: read messages, run requests as child tasks, keep alive."""

from __future__ import annotations

import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from ._config import Settings
from ._connection_state import Capabilities, ConnectionState, Reply, StartRequest, StopRequest
from ._messages import TtsRequest, dump_message
from ._replicas import ReplicaPool
from ._request import run_request
from ._writer import ConnectionGone, FrameWriter

log = structlog.get_logger("voxtrio.connection")


class Connection:
    """The nursery that owns this connection's requests; the caller owns the socket."""

    def __init__(
        self,
        ws: WebSocketConnection,
        *,
        settings: Settings,
        pool: ReplicaPool,
        capabilities: Capabilities,
    ) -> None:
        self.ws = ws
        self.settings = settings
        self.pool = pool
        self.state = ConnectionState(
            max_requests=settings.max_requests_per_connection, capabilities=capabilities
        )
        self.writer = FrameWriter(ws, write_timeout=settings.write_timeout)
        self._scopes: dict[str, trio.CancelScope] = {}

    async def run(self) -> None:
        """Serve until the client leaves; every request still running is cancelled then."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keepalive, nursery.cancel_scope)
            try:
                await self._read_loop(nursery)
            finally:
                nursery.cancel_scope.cancel()

    async def _read_loop(self, nursery: trio.Nursery) -> None:
        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed as exc:
                log.debug("client_closed", code=exc.reason.code if exc.reason else None)
                return
            if isinstance(message, bytes):
                action = self.state.receive_bytes(message)
            else:
                action = self.state.receive_text(message)
            try:
                match action:
                    case Reply(message=reply):
                        await self.writer.send(dump_message(reply))
                    case StartRequest(request=request):
                        scope = trio.CancelScope()
                        self._scopes[request.request_id] = scope
                        nursery.start_soon(self._run_request, request, scope)
                    case StopRequest(request_id=request_id):
                        self._scopes[request_id].cancel()
            except ConnectionGone as exc:
                log.info("connection_lost", reason=str(exc))
                return

    async def _run_request(self, request: TtsRequest, scope: trio.CancelScope) -> None:
        with structlog.contextvars.bound_contextvars(request_id=request.request_id):
            try:
                await run_request(
                    request,
                    writer=self.writer,
                    pool=self.pool,
                    cancel_scope=scope,
                    progress_interval=self.settings.progress_interval,
                )
            finally:
                self._scopes.pop(request.request_id, None)
                self.state.request_finished(request.request_id)
                if self.writer.broken is not None:
                    # Stalled or closed peer: stop reading too, end the connection.
                    await self._abort(self.writer.broken)

    async def _abort(self, reason: str) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await self.ws.aclose(code=1011, reason=reason[:120])

    async def _keepalive(self, connection_scope: trio.CancelScope) -> None:
        """Ping on a named interval; a peer that does not pong in time is dropped."""
        while True:
            await trio.sleep(self.settings.ping_interval)
            with trio.move_on_after(self.settings.ping_timeout) as pong_wait:
                try:
                    await self.ws.ping()
                except ConnectionClosed:
                    return
            if pong_wait.cancelled_caught:
                log.info("ping_timeout", ping_timeout=self.settings.ping_timeout)
                await self._abort("ping timeout")
                connection_scope.cancel()
                return
