"""Serialised, untearable writes to one WebSocket connection."""

from __future__ import annotations

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from voxtrio.server._activity import PeerActivity

# How a write timeout is reported (logs, close reason): the client read nothing.
STALLED = "client read nothing"


class ConnectionGone(Exception):
    """The peer closed the connection or stopped reading; nothing more can be sent."""


class FrameWriter:
    """One lock for all writers of a connection, each write shielded with a deadline.

    A cancelled request must not tear a half-sent frame (the next frame would be
    garbage to the client), so the send itself is shielded. It still has a named
    deadline, `write_timeout`: a client that stops reading cannot hold a request
    (and its replica) forever. The deadline counts from the last bytes the client
    accepted (`activity`), so a large message to a client that reads slowly but
    steadily is delivered.
    """

    def __init__(
        self, ws: WebSocketConnection, *, write_timeout: float, activity: PeerActivity
    ) -> None:
        self._ws = ws
        self._activity = activity
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
            with self._activity.write_deadline(self.write_timeout) as scope:
                try:
                    await self._ws.send_message(message)
                except ConnectionClosed as exc:
                    self.broken = f"connection closed ({exc.reason})"
                    raise ConnectionGone(self.broken) from None
            if scope.cancelled_caught:
                # Part of a frame may be on the wire: the connection is unusable now.
                self.broken = f"{STALLED} for {self.write_timeout:g} s"
                raise ConnectionGone(self.broken)
            self.frames_sent += 1
            self.bytes_sent += len(message)
