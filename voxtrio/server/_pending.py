"""Connections still reading their request: a bounded pool that evicts its oldest.

A connection is "pending" from its accept until its request (WebSocket handshake
head, or HTTP head and body) has been read. Pending connections do not count
against the server's capacity (`max_connections` counts connections that
serve something), so clients that trickle their request cannot lock out those
that send it at once. The pool has its own bound: when it is full, a newcomer
cancels the connection that has been reading the longest, the rule the side
port uses (ops/_http.py). A reader younger than `grace_s` is not evicted unless
the pool has reached its hard bound (`hard_factor` times the limit): in a burst
of honest clients, every one gets the moment it needs to send its head. Each
reader also has its own deadline, set by its caller.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


class PendingRequests:
    def __init__(self, limit: int, *, grace_s: float = 1.0, hard_factor: int = 4) -> None:
        self.limit = limit
        self.hard_limit = limit * hard_factor
        self.grace_s = grace_s
        self.evicted = 0
        # Oldest first (dicts keep insertion order): scope -> when it began reading.
        self._readers: dict[trio.CancelScope, float] = {}

    def __len__(self) -> int:
        return len(self._readers)

    @contextmanager
    def reading(self) -> Iterator[trio.CancelScope]:
        """A scope for one connection's read; cancelled if a newcomer needs the room.

        The caller checks `scope.cancelled_caught` afterwards: an evicted
        connection is closed without an answer (it never finished asking).
        """
        now = trio.current_time()
        while len(self._readers) >= self.limit:
            oldest, since = next(iter(self._readers.items()))
            if now - since < self.grace_s and len(self._readers) < self.hard_limit:
                break  # a burst, not a siege: let the newcomer in too
            del self._readers[oldest]
            oldest.cancel()
            self.evicted += 1
        scope = trio.CancelScope()
        self._readers[scope] = now
        try:
            with scope:
                yield scope
        finally:
            self._readers.pop(scope, None)
