"""One request's state on the Trio client: the protocol's checks, and its memory channel."""

from __future__ import annotations

import attrs
import trio

from voxtrio.protocol._client_incoming import AudioChunk
from voxtrio.protocol._client_requests import ClientRequest
from voxtrio.protocol._messages import Complete, Error, Words

Item = AudioChunk | Complete | Error


@attrs.define(eq=False, kw_only=True)
class RequestState(ClientRequest):
    """Shared by the reader task (writes) and the request's stream (reads)."""

    send: trio.MemorySendChannel[Item]
    receive: trio.MemoryReceiveChannel[Item]
    # Word times (params.word_timestamps), one message per sentence, in order; bounded
    # by the request's text (at most one per sentence).
    words: list[Words] = attrs.Factory(list)
