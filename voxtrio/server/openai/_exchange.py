"""HTTP/1.1 requests and their responses on the shared port, over h11.

A connection serves requests one after another (keep-alive): after a response
the exchange starts h11's next cycle (`next_cycle`) when both sides finished
their message cleanly and the front allows another (`keep_alive`); otherwise
the response says `Connection: close`. The head is read first (`read_head`) so
the caller can decide on it alone (route, key, origin, media type, declared
size) before a byte of the body is read or `100 Continue` is sent; the body is
then read piece by piece against the route's limit (`read_body`), each piece
handed on as it comes. A response is either whole (`respond`) or streamed with
chunked transfer (`start` + `send` + `end`), each write under the write
deadline; a HEAD request gets the head of the GET response and no body. Every
response carries the request's `x-request-id`. A peer that stops reading or
goes away raises `ConnectionGone`, the same error the WebSocket writer raises.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import h11
import trio

from voxtrio.ops._http import HttpRequest, reason_phrase
from voxtrio.protocol._json import dump_json
from voxtrio.server._writer import ConnectionGone

_RECEIVE_SIZE = 16384
MAX_HEAD_BYTES = 16384
Headers = list[tuple[str, str]]
# What a client-sent x-request-id may be: bounded, and safe in a header and a log line.
_CLIENT_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9_.:/+=-]{1,128}")
# Bytes a pipelined next request may leave waiting while a response streams.
MAX_PIPELINED_BYTES: Final = 64 * 1024


def new_request_id() -> str:
    """A server-made request id, shaped like OpenAI's (`req_` + 32 hex digits)."""
    return f"req_{secrets.token_hex(16)}"


def client_request_id(request: HttpRequest) -> str | None:
    """The client's own `x-request-id` when it is sane (length, characters), else None."""
    value = request.header("x-request-id")
    if value is None or _CLIENT_REQUEST_ID.fullmatch(value) is None:
        return None
    return value


class BadRequest(Exception):
    """The request cannot be read; answer with `status` and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpExchange:
    def __init__(self, stream: trio.abc.Stream, *, write_timeout: float) -> None:
        self.stream = stream
        self.write_timeout = write_timeout
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.started = False
        self.head_only = False  # a HEAD request: the response goes without its body
        self.cors_origin: str | None = None  # an allowed foreign page's origin, echoed back
        self.request_id = new_request_id()
        # Whether this response may leave the connection open for another request:
        # the front sets it once a request is admitted (not draining, under the cap).
        self.keep_alive = False

    def next_cycle(self) -> bool:
        """Ready the connection for its next request; False when it must close instead."""
        reusable = (
            self.keep_alive
            and self.conn.our_state is h11.DONE
            and self.conn.their_state is h11.DONE
        )
        if not reusable:
            return False
        self.conn.start_next_cycle()
        self.started = self.head_only = self.keep_alive = False
        self.cors_origin = None
        self.request_id = new_request_id()
        return True

    @property
    def has_buffered_request(self) -> bool:
        """Bytes of a next (pipelined) request already received and waiting in h11."""
        return bool(self.conn.trailing_data[0])

    async def wait_for_request(self) -> bool:
        """Wait for the first bytes of the next request; False when the peer closed."""
        if self.has_buffered_request:
            return True
        if self.conn.trailing_data[1]:
            return False  # the client already sent its EOF
        try:
            data = await self.stream.receive_some(_RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        self.conn.receive_data(bytes(data))
        return bool(data)

    def buffer_pipelined(self, data: bytes) -> bool:
        """Keep bytes that arrived during a response for the next cycle; False past the cap."""
        self.conn.receive_data(data)
        return len(self.conn.trailing_data[0]) <= MAX_PIPELINED_BYTES

    async def read_head(self) -> HttpRequest | None:
        """The request's head (None: the peer closed first); raises BadRequest."""
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Request):
                target = event.target.decode("latin-1")
                self.head_only = event.method == b"HEAD"
                return HttpRequest(
                    method=event.method.decode("latin-1"),
                    target=target,
                    path=urlsplit(target).path or "/",
                    headers=tuple((bytes(k), bytes(v)) for k, v in event.headers),
                )
            if isinstance(event, h11.ConnectionClosed):
                return None

    def declared_length(self, request: HttpRequest) -> int | None:
        """The body's Content-Length (h11 has checked it), or None (chunked or none)."""
        value = request.header("content-length")
        return int(value) if value is not None else None

    async def read_body(self, limit: int, take: Callable[[bytes], None]) -> None:
        """Hand each piece of the body to `take`; 413 (BadRequest) past `limit` bytes.

        Only now, with the head accepted, does a client waiting for
        `100 Continue` get it.
        """
        received = 0
        while True:
            if self.conn.they_are_waiting_for_100_continue:
                # curl asks before a large upload; answering saves it a 1 s wait.
                await self._write(
                    self._send(h11.InformationalResponse(status_code=100, headers=[]))
                )
            event = await self._next_event()
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > limit:
                    raise BadRequest(413, f"request body over {limit} bytes")
                take(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise BadRequest(400, "the request body was cut short")

    async def _next_event(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                # h11 hints 501 for a Transfer-Encoding other than chunked; RFC 9112
                # §6.3 says 400 when chunked is not the final coding of a request.
                status = 400 if exc.error_status_hint == 501 else exc.error_status_hint
                raise BadRequest(status, f"malformed HTTP request: {exc}"[:200]) from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionGone(f"client gone: {type(exc).__name__}") from None
            self.conn.receive_data(bytes(data))

    @property
    def can_respond(self) -> bool:
        """No response has gone out yet (h11 also lets one follow a malformed request)."""
        return self.conn.our_state is h11.SEND_RESPONSE or (
            self.conn.our_state is h11.IDLE and self.conn.their_state is h11.ERROR
        )

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response with its Content-Length (for HEAD: the head alone)."""
        if not self.can_respond:
            return
        framing = [("content-length", str(len(body))), *self._connection()]
        head = [*headers, *self._common(), *framing]
        data = self._send(
            h11.Response(status_code=status, headers=head, reason=reason_phrase(status))
        )
        if body and not self.head_only:
            data += self._send(h11.Data(data=body))
        data += self._send(h11.EndOfMessage())
        await self._write(data)

    async def respond_json(self, status: int, payload: Any, *extra: tuple[str, str]) -> None:
        body = dump_json(payload).encode()  # lone surrogates escaped, like every reply
        await self.respond(status, [("content-type", "application/json"), *extra], body)

    async def start(self, status: int, headers: Headers) -> None:
        """Send the head of a streamed (chunked) response."""
        framing = [("transfer-encoding", "chunked"), *self._connection()]
        head = [*headers, *self._common(), *framing]
        self.started = True
        await self._write(
            self._send(h11.Response(status_code=status, headers=head, reason=reason_phrase(status)))
        )

    async def send(self, data: bytes) -> None:
        if data:
            await self._write(self._send(h11.Data(data=data)))

    async def end(self) -> None:
        await self._write(self._send(h11.EndOfMessage()))

    def _common(self) -> Headers:
        """What every response carries: its request id, and CORS for an allowed page."""
        common = [("x-request-id", self.request_id)]
        if self.cors_origin is not None:
            common += [("access-control-allow-origin", self.cors_origin), ("vary", "origin")]
        return common

    def _connection(self) -> Headers:
        """`Connection: close` unless the connection will serve another request.

        It can only when the request was read to its end (a refused request's body
        is never read) and the front allows another; h11 itself adds `close` when
        the client asked for it or speaks HTTP/1.0.
        """
        if self.keep_alive and self.conn.their_state is h11.DONE:
            return []
        return [("connection", "close")]

    def _send(self, event: h11.Event) -> bytes:
        return self.conn.send(event) or b""

    async def _write(self, data: bytes) -> None:
        await write_within(self.stream, data, self.write_timeout)

    async def linger(self) -> None:
        """Half-close, then read briefly, so the response is not lost to a reset."""
        await linger(self.stream)


async def write_within(stream: trio.abc.SendStream, data: bytes, deadline_s: float) -> None:
    """`send_all` under a deadline; ConnectionGone when the peer is gone or not reading."""
    with trio.move_on_after(deadline_s) as scope:
        try:
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionGone(f"client gone: {type(exc).__name__}") from None
    if scope.cancelled_caught:
        raise ConnectionGone(f"client did not read for {deadline_s:g} s")


async def linger(stream: trio.abc.Stream) -> None:
    """Half-close, then drain briefly (bounded), so the response is not lost to a reset."""
    try:
        if isinstance(stream, trio.abc.HalfCloseableStream):
            await stream.send_eof()
        with trio.move_on_after(1.0):
            for _ in range(64):
                if not await stream.receive_some(_RECEIVE_SIZE):
                    break
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def refuse_unread(
    stream: trio.abc.Stream, status: int, message: str, write_deadline_s: float
) -> None:
    """Answer a request h11 never saw (its head too large or not HTTP/1.x), then close."""
    body = dump_json(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": "bad_request",
            }
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason_phrase(status).decode()}\r\n"
        "content-type: application/json\r\n"
        f"x-request-id: {new_request_id()}\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    try:
        await write_within(stream, head.encode() + body, write_deadline_s)
    except ConnectionGone:
        return
    await linger(stream)
