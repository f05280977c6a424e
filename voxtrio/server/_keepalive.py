"""WebSocket keepalive: ping on a named interval, drop a peer that has gone silent."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Literal

import structlog
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from voxtrio._config import Settings
from voxtrio.server._activity import PeerActivity

log = structlog.get_logger("voxtrio.connection")


async def keepalive(
    ws: WebSocketConnection,
    activity: PeerActivity,
    settings: Settings,
    abort: Callable[[str], Awaitable[None]],
    connection_scope: trio.CancelScope,
) -> None:
    """Ping every `ping_interval`; abort once neither the pong nor any frame came for
    `ping_timeout` after it.

    Frames the server reads after the ping count as signs of life: a peer sending a
    burst of messages has its pong queued behind them, and the server reading them
    late (because it is busy) is no fault of the peer's.
    """
    while True:
        await trio.sleep(settings.ping_interval)
        answer = await _ping(ws, activity, settings.ping_timeout)
        if answer == "closed":
            return
        if answer == "silent":
            log.info("ping_timeout", ping_timeout=settings.ping_timeout)
            await abort("ping timeout")
            connection_scope.cancel()
            return


async def _ping(
    ws: WebSocketConnection, activity: PeerActivity, ping_timeout: float
) -> Literal["pong", "silent", "closed"]:
    """One ping: its pong, silence (nothing heard for `ping_timeout`), or a closed connection."""
    answer: list[Literal["pong", "closed"]] = []
    done = trio.Event()

    async def ping() -> None:
        try:
            await ws.ping()
            answer.append("pong")
        except ConnectionClosed:
            answer.append("closed")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ping)
        sent_at = trio.current_time()
        while not done.is_set():
            silent_until = max(sent_at, activity.heard_at) + ping_timeout
            if trio.current_time() >= silent_until:
                break
            with trio.move_on_at(silent_until):
                await done.wait()
        nursery.cancel_scope.cancel()
    return answer[0] if answer else "silent"
