"""WebSocket keepalive: ping on a named interval, drop a peer that does not pong in time."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from voxtrio._config import Settings

log = structlog.get_logger("voxtrio.connection")


async def keepalive(
    ws: WebSocketConnection,
    settings: Settings,
    abort: Callable[[str], Awaitable[None]],
    connection_scope: trio.CancelScope,
) -> None:
    """Ping every `ping_interval`; no pong within `ping_timeout`: abort the connection."""
    while True:
        await trio.sleep(settings.ping_interval)
        with trio.move_on_after(settings.ping_timeout) as pong_wait:
            try:
                await ws.ping()
            except ConnectionClosed:
                return
        if pong_wait.cancelled_caught:
            log.info("ping_timeout", ping_timeout=settings.ping_timeout)
            await abort("ping timeout")
            connection_scope.cancel()
            return
