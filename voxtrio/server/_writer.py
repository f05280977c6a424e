"""Serialised, untearable writes to one WebSocket connection."""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection


class ConnectionGone(Exception):
    """The peer closed the connection or stopped reading; nothing more can be sent."""


class FrameWriter:
    """One lock for all writers of a connection, each write shielded with a deadline.

    A cancelled request must not tear a half-sent frame (the next frame would be
    garbage to the client), so the send itself is shielded. It still has a named
    deadline, `write_timeout`: a client that stops reading cannot hold a request
    (and its replica) forever.
    """

    def __init__(self, ws: WebSocketConnection, *, write_timeout: float) -> None:
        self._ws = ws
        self._lock = trio.Lock()
        self.write_timeout = write_timeout
        self.broken: str | None = None
        self.frames_sent = 0
        self.bytes_sent = 0

    async def send(self, message: str | bytes) -> None:
        """Send one message; raise ConnectionGone if it cannot be delivered."""
        # Waiting for the lock is cancellable: a cancelled request sends nothing more.
        async with self._lock:
            if self.broken is not None:
                raise ConnectionGone(self.broken)
            deadline = trio.current_time() + self.write_timeout
            with trio.CancelScope(shield=True, deadline=deadline) as scope:
                try:
                    await self._ws.send_message(message)
                except ConnectionClosed as exc:
                    self.broken = f"connection closed ({exc.reason})"
                    raise ConnectionGone(self.broken) from None
            if scope.cancelled_caught:
                # Part of a frame may be on the wire: the connection is unusable now.
                self.broken = f"client did not read a frame within {self.write_timeout:g} s"
                raise ConnectionGone(self.broken)
            self.frames_sent += 1
            self.bytes_sent += len(message)
