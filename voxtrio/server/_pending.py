"""Connections still reading their request: a bounded pool that evicts its oldest.

A connection is "pending" from its accept until its request (WebSocket handshake
head, or HTTP head and body) has been read. Pending connections do not count
against the server's capacity (`max_connections` counts connections that
serve something), so clients that trickle their request cannot lock out those
that send it at once. The pool has its own bound: when it is full, a newcomer
cancels the connection that has been reading the longest, the same rule the
side port uses (ops/_http.py). Each reader also has its own deadline, set by
its caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio


class PendingRequests:
    def __init__(self, limit: int, *, on_evict: Callable[[], None] | None = None) -> None:
        self.limit = limit
        self.evicted = 0
        self._on_evict = on_evict
        # Oldest first: dicts keep insertion order.
        self._readers: dict[trio.CancelScope, None] = {}

    def __len__(self) -> int:
        return len(self._readers)

    @contextmanager
    def reading(self) -> Iterator[trio.CancelScope]:
        """A scope for one connection's read; cancelled if a newcomer needs the room.

        The caller checks `scope.cancelled_caught` afterwards: an evicted
        connection is closed without an answer (it never finished asking).
        """
        while len(self._readers) >= self.limit:
            oldest = next(iter(self._readers))
            del self._readers[oldest]
            oldest.cancel()
            self.evicted += 1
            if self._on_evict is not None:
                self._on_evict()
        scope = trio.CancelScope()
        self._readers[scope] = None
        try:
            with scope:
                yield scope
        finally:
            self._readers.pop(scope, None)
