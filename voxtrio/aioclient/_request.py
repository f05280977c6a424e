"""One request's state on the asyncio client: the protocol's checks, and its queue."""

from __future__ import annotations

import asyncio

import attrs

from voxtrio.aioclient._incoming import WordTimings
from voxtrio.protocol._client_errors import VoxtrioClientError
from voxtrio.protocol._client_incoming import AudioChunk
from voxtrio.protocol._client_requests import ClientRequest
from voxtrio.protocol._messages import Complete, Error


@attrs.frozen
class Failure:
    """The connection failed: what the request's reader raises."""

    error: VoxtrioClientError


Item = AudioChunk | WordTimings | Complete | Error | Failure


@attrs.define(eq=False, kw_only=True)
class RequestState(ClientRequest):
    """Shared by the reader task (writes) and the request's stream (reads)."""

    queue: asyncio.Queue[Item]
    # The stream stopped reading: whatever still arrives for it is dropped.
    closed: bool = False

    def wake(self, failure: Failure) -> None:
        """Put the failure in the queue even when it is full (the oldest item makes room)."""
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(failure)
