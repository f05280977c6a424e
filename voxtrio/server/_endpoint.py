"""The lifecycle every WebSocket endpoint shares, and the contract the listener uses.

The listener (`_listener.py`) knows an endpoint only as an `Endpoint`: run it, tell
it to drain, end it at the drain deadline, and wait for it to be idle.
`WebSocketEndpoint` is that lifecycle written once (read loop, keepalive, idle
close, abort, close with 1001 on shutdown); the native (`_native.py`) and DashScope
(`_dashscope.py`) endpoints fill in how to read a message and what it means.
"""

from __future__ import annotations

import abc
from typing import Protocol

import structlog
import trio
from trio_websocket import WebSocketConnection

from voxtrio._config import Settings
from voxtrio.server._activity import PeerActivity
from voxtrio.server._keepalive import keepalive
from voxtrio.server._websocket import VoxWebSocketConnection
from voxtrio.server._writer import ConnectionGone, FrameWriter

# WebSocket close codes (RFC 6455, 7.4.1).
NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
INTERNAL_ERROR = 1011


class Endpoint(Protocol):
    """One client connection, as the listener sees it."""

    @property
    def idle(self) -> trio.Event:
        """Set while no request (task) is running."""
        ...

    async def run(self) -> None:
        """Serve until the client leaves; whatever is still running is cancelled then."""

    def begin_drain(self) -> None:
        """Refuse new requests; the running ones go on."""

    async def shut_down(self) -> None:
        """Past the drain deadline: end what runs with a shutdown error, close with 1001."""


class WebSocketEndpoint(abc.ABC):
    """The shared lifecycle; subclasses say how to read and what a message means."""

    log: structlog.stdlib.BoundLogger

    def __init__(self, ws: WebSocketConnection, *, settings: Settings) -> None:
        self.ws = ws
        self.settings = settings
        # A plain trio-websocket connection (no activity notes) gets whole-message deadlines.
        self.activity = ws.activity if isinstance(ws, VoxWebSocketConnection) else PeerActivity()
        self.writer = FrameWriter(ws, write_timeout=settings.write_timeout, activity=self.activity)
        self.idle = trio.Event()
        self.idle.set()
        self._nursery: trio.Nursery | None = None

    @property
    def nursery(self) -> trio.Nursery:
        """The connection's nursery (its requests, the keepalive); exists while running."""
        assert self._nursery is not None, "the endpoint is not running"
        return self._nursery

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = self.writer.tails = nursery
                nursery.start_soon(
                    keepalive,
                    self.ws,
                    self.activity,
                    self.settings,
                    self.abort,
                    nursery.cancel_scope,
                )
                try:
                    while (message := await self.next_message()) is not None:
                        await self.handle(message)
                except ConnectionGone as exc:
                    self.log.info("connection_lost", reason=str(exc))
                finally:
                    self.closing()
                    nursery.cancel_scope.cancel()
        finally:
            self.writer.tails = None

    @abc.abstractmethod
    def begin_drain(self) -> None: ...

    async def shut_down(self) -> None:
        with trio.move_on_after(self.settings.stop_timeout + 1):
            await self.end_for_shutdown()
        with trio.move_on_after(self.settings.handshake_timeout):
            await self.ws.aclose(code=GOING_AWAY, reason="server shutting down")

    async def abort(self, reason: str) -> None:
        """Close at once with 1011 (a stalled or broken peer); never waits long."""
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await self.ws.aclose(code=INTERNAL_ERROR, reason=reason[:120])

    async def close_idle(self) -> None:
        self.log.info("idle_timeout", idle_timeout=self.settings.idle_timeout)
        with trio.move_on_after(self.settings.handshake_timeout):
            await self.ws.aclose(code=NORMAL_CLOSURE, reason="idle timeout")

    @abc.abstractmethod
    async def next_message(self) -> str | bytes | None:
        """The next message; None once the connection should end (closed, idle)."""

    @abc.abstractmethod
    async def handle(self, message: str | bytes) -> None:
        """Act on one message; ConnectionGone ends the connection."""

    @abc.abstractmethod
    async def end_for_shutdown(self) -> None:
        """End what is running with the endpoint's shutdown error (bounded by the caller)."""

    @abc.abstractmethod
    def closing(self) -> None:
        """The read loop ended; the nursery is about to be cancelled."""
