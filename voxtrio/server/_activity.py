"""When a peer last showed it is alive, and write deadlines that count its progress.

Two deadlines judge a peer, and both must judge the peer rather than the server:

- the write timeout drops a client that *stopped reading*: a send is cut once the
  peer has accepted no bytes for `write_timeout`, however long the whole message
  takes to deliver (a client on a slow link reading a large non-streaming message
  is reading; nginx's `send_timeout` has the same meaning);
- the keepalive drops a peer that *went silent*: no pong and no frame from it for
  `ping_timeout`. A pong queued behind the peer's own messages, which the server
  has not read yet because it is busy, is the server's delay, not the peer's.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class PeerActivity:
    """Timestamps (trio clock) of the last frame heard and the last bytes accepted."""

    def __init__(self) -> None:
        self.heard_at = trio.current_time()
        self.accepted_at = self.heard_at
        self._write_scope: trio.CancelScope | None = None
        self._write_timeout = 0.0

    def heard(self) -> None:
        """A frame (message, ping, pong, close) from the peer was read."""
        self.heard_at = trio.current_time()

    def accepted(self) -> None:
        """The transport took more bytes: the peer is reading; a guarded write goes on."""
        now = trio.current_time()
        self.accepted_at = now
        if self._write_scope is not None:
            self._write_scope.deadline = now + self._write_timeout

    @contextmanager
    def write_deadline(self, timeout: float) -> Iterator[trio.CancelScope]:
        """A shielded scope, cancelled once the peer has accepted no bytes for `timeout`.

        Shielded so a cancelled request cannot tear a frame half-way; the deadline
        moves forward each time the transport takes bytes (`accepted`).
        """
        with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout) as scope:
            self._write_scope, self._write_timeout = scope, timeout
            try:
                yield scope
            finally:
                self._write_scope = None
