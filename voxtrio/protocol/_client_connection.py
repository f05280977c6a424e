"""One client connection's protocol state, sans-IO: what to send, and where each message goes.

A client's I/O layer owns the socket and its tasks; it asks this state for the text
of each message it sends, and hands it every message it receives, getting back
what to do with it (an event below, or None: nothing). What the state knows:
the active requests (a RequestTable), the one-off exchanges awaiting a reply
(voice_list, ping), and the connection's first failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, NoReturn

import attrs

from voxtrio.protocol._client_errors import (
    ConnectionLost,
    SynthesisError,
    VoxtrioClientError,
    clone_failure,
    synthesis_error,
)
from voxtrio.protocol._client_incoming import (
    AudioChunk,
    decode_audio_frame,
    decode_server_text,
)
from voxtrio.protocol._client_outgoing import (
    PingStamps,
    cancel_message,
    encode_message,
    opening_message,
    ping_message,
    timeout_message,
)
from voxtrio.protocol._client_requests import R, RequestTable
from voxtrio.protocol._errors import ErrorCode
from voxtrio.protocol._messages import (
    Complete,
    Error,
    Pong,
    Progress,
    ServerMessage,
    SynthesisResult,
    Words,
)
from voxtrio.protocol._voice_messages import VoiceDeleted, VoiceRegistered, Voices


@attrs.frozen
class AudioFor(Generic[R]):
    """A checked chunk of the request's audio, to hand to its reader."""

    request: R
    chunk: AudioChunk


@attrs.frozen
class WordsFor(Generic[R]):
    """A sentence's word times for the request, checked to run forward."""

    request: R
    words: Words


@attrs.frozen
class Ended(Generic[R]):
    """The request's terminal message: the table has let the request go."""

    request: R
    message: Complete | Error


@attrs.frozen
class Reply:
    """The answer to a one-off exchange: a pong by its timestamp, a voice reply by its id."""

    key: str | int
    value: Pong | Voices | VoiceRegistered | VoiceDeleted | SynthesisError


@attrs.frozen
class ServerNotice:
    """An `error` about no request: a message of ours the server could not place."""

    error: SynthesisError


TextEvent = WordsFor[R] | Ended[R] | Reply | ServerNotice | None


class ClientConnectionState(Generic[R]):
    """The protocol side of one connection (see the module docstring)."""

    def __init__(self, handled: Mapping[str, type[ServerMessage]]) -> None:
        self.requests = RequestTable[R]()
        # The first failure; every call after it raises a copy.
        self.failure: VoxtrioClientError | None = None
        # The request whose full buffer the reader is waiting on, if any.
        self.reader_blocked_on: str | None = None
        self._handled = handled
        self._ping_stamps = PingStamps()
        self._awaited: set[str] = set()

    @property
    def closed(self) -> bool:
        return self.failure is not None

    # -- sending --------------------------------------------------------------

    def open_request(self, request: R, kind: str, params: Mapping[str, Any]) -> str:
        """Register `request` (its id from `requests.reserve`); the text that opens it."""
        self.check_usable()
        self.requests.add(request)
        return encode_message(opening_message(kind, request.request_id, params))

    def cancel(self, request: R) -> str | None:
        """The cancel to send for `request`; None once one was sent, it ended, or all failed."""
        if self.failure is not None or not request.claim_cancel():
            return None
        return encode_message(cancel_message(request.request_id))

    def ping(self) -> tuple[int, str]:
        """A new ping's timestamp (the key its pong comes back under) and text."""
        timestamp = self._ping_stamps.next()
        return timestamp, encode_message(ping_message(timestamp))

    def await_reply(self, request_id: str) -> None:
        """A one-off message with this id went out: an `error` naming it is its answer."""
        self._awaited.add(request_id)

    def stop_awaiting(self, request_id: str) -> None:
        self._awaited.discard(request_id)

    # -- receiving ------------------------------------------------------------

    def text_received(self, text: str, *, now: float) -> TextEvent[R]:
        """Decode and check one text message; what the I/O layer must do about it.

        Raises ProtocolViolation for anything the protocol does not allow.
        """
        message = decode_server_text(text, self._handled)
        match message:
            case Pong(timestamp=timestamp):
                return Reply(timestamp, message)
            case Voices() | VoiceRegistered() | VoiceDeleted():
                return Reply(message.request_id, message)
            case Progress(request_id=rid):
                if request := self.requests.lookup(rid, "progress", now=now):
                    request.progress = message
            case Words(request_id=rid):
                if request := self.requests.lookup(rid, "words", now=now):
                    request.accept_words(message)
                    return WordsFor(request, message)
            case Complete(request_id=rid, result=result):
                if request := self.requests.lookup(rid, "complete", now=now, terminal=True):
                    if isinstance(result, SynthesisResult):
                        request.check_result(result)
                    self.requests.finish(request)
                    return Ended(request, message)
            case Error(request_id=None):
                return ServerNotice(synthesis_error(message))
            case Error(request_id=str(rid)) if rid in self._awaited:
                return Reply(rid, synthesis_error(message))
            case Error(request_id=str(rid), error=body) if body.code == ErrorCode.UNKNOWN_REQUEST:
                # Never a request's terminal: the answer to a cancel that crossed the
                # request's own terminal message on the wire. Nothing to do.
                pass
            case Error(request_id=str(rid)):
                if request := self.requests.lookup(rid, "error", now=now, terminal=True):
                    self.requests.finish(request)
                    return Ended(request, message)
        return None

    def frame_received(
        self, data: bytes | bytearray | memoryview, *, now: float
    ) -> AudioFor[R] | None:
        """Decode and check one audio frame; the chunk to hand on, if any."""
        audio = decode_audio_frame(data)
        request = self.requests.lookup(audio.metadata.request_id, "audio frame", now=now)
        if request is None:
            return None
        chunk = request.accept_audio(audio)
        return None if chunk is None else AudioFor(request, chunk)

    # -- failure --------------------------------------------------------------

    def fail(self, exc: VoxtrioClientError) -> list[R]:
        """The connection is unusable (the first failure wins); the requests to wake."""
        if self.failure is None:
            self.failure = exc
        self._awaited.clear()
        return self.requests.drain()

    def check_usable(self) -> None:
        if self.failure is not None:
            self.raise_failure()

    def raise_failure(self) -> NoReturn:
        """A copy of the first failure (or ConnectionLost when there was none)."""
        failure = self.failure or ConnectionLost("the request ended without a terminal message")
        raise clone_failure(failure)

    def timeout_message(self, request_id: str, timeout: float) -> str:
        return timeout_message(request_id, timeout, self.reader_blocked_on)
