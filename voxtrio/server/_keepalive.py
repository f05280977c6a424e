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
# How often a pending pong's wait looks at the send queue to the peer, s.
_LOOK_EVERY = 0.25


async def keepalive(
    ws: WebSocketConnection,
    activity: PeerActivity,
    settings: Settings,
    abort: Callable[[str], Awaitable[None]],
    connection_scope: trio.CancelScope,
) -> None:
    """Ping every `ping_interval`; abort once the peer gave no sign for `ping_timeout`.

    Signs (`PeerActivity.last_sign`): the pong, any frame read after the ping (a peer
    sending a burst has its pong queued behind it, which a busy server reads late),
    the kernel's send queue to the peer draining (a client reading megabytes of
    audio at its own pace sees the ping only after them), and, at the deadline, bytes
    from the peer still unread (the server's own stall, not the peer's silence).
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

    look_every = min(_LOOK_EVERY, ping_timeout / 4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ping)
        sent_at = trio.current_time()
        activity.look_at_send_queue()
        while not done.is_set():
            silent_until = max(sent_at, activity.last_sign) + ping_timeout
            if trio.current_time() >= silent_until:
                if not activity.unread_bytes_waiting():
                    break
                # Its bytes wait for a server that stalled (load, GC): not silence.
                activity.heard()
                continue
            with trio.move_on_at(min(silent_until, trio.current_time() + look_every)):
                await done.wait()
            activity.look_at_send_queue()
        nursery.cancel_scope.cancel()
    return answer[0] if answer else "silent"
