"""One HTTP/1.1 request and its response on the shared port, over h11.

One request per connection (`Connection: close`), as on the side port. The
request (head and body) is read within a deadline and a size bound; a response
is either whole (`respond`) or streamed with chunked transfer (`start` + `send`
+ `end`), each write under the write deadline. A peer that stops reading or
goes away raises `ConnectionGone`, the same error the WebSocket writer raises.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import h11
import trio

from voxtrio.ops._http import HttpRequest, reason_phrase
from voxtrio.server._writer import ConnectionGone

_RECEIVE_SIZE = 16384
Headers = list[tuple[str, str]]


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
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
        self.started = False

    async def read_request(self, max_body_bytes: int) -> tuple[HttpRequest, bytes] | None:
        """The request and its body (None: the peer closed first); raises BadRequest."""
        request: HttpRequest | None = None
        body = bytearray()
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadRequest(exc.error_status_hint, "malformed HTTP request") from None
            if event is h11.NEED_DATA:
                if self.conn.they_are_waiting_for_100_continue:
                    # curl asks before a large upload; answering saves it a 1 s wait.
                    await self._write(
                        self._send(h11.InformationalResponse(status_code=100, headers=[]))
                    )
                self.conn.receive_data(bytes(await self.stream.receive_some(_RECEIVE_SIZE)))
            elif isinstance(event, h11.Request):
                target = event.target.decode("latin-1")
                request = HttpRequest(
                    method=event.method.decode("latin-1"),
                    target=target,
                    path=urlsplit(target).path or "/",
                    headers=tuple((bytes(k), bytes(v)) for k, v in event.headers),
                )
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > max_body_bytes:
                    raise BadRequest(413, f"request body over {max_body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                return request, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def respond(self, status: int, headers: Headers, body: bytes) -> None:
        """A whole response with its Content-Length."""
        if self.conn.our_state is not h11.SEND_RESPONSE:
            return
        head = [*headers, ("content-length", str(len(body))), ("connection", "close")]
        data = self._send(
            h11.Response(status_code=status, headers=head, reason=reason_phrase(status))
        )
        data += self._send(h11.Data(data=body)) if body else b""
        data += self._send(h11.EndOfMessage())
        await self._write(data)

    async def respond_json(self, status: int, payload: Any, *extra: tuple[str, str]) -> None:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        await self.respond(status, [("content-type", "application/json"), *extra], body)

    async def start(self, status: int, headers: Headers) -> None:
        """Send the head of a streamed (chunked) response."""
        head = [*headers, ("transfer-encoding", "chunked"), ("connection", "close")]
        self.started = True
        await self._write(
            self._send(h11.Response(status_code=status, headers=head, reason=reason_phrase(status)))
        )

    async def send(self, data: bytes) -> None:
        if data:
            await self._write(self._send(h11.Data(data=data)))

    async def end(self) -> None:
        await self._write(self._send(h11.EndOfMessage()))

    def _send(self, event: h11.Event) -> bytes:
        return self.conn.send(event) or b""

    async def _write(self, data: bytes) -> None:
        with trio.move_on_after(self.write_timeout) as scope:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionGone(f"client gone: {type(exc).__name__}") from None
        if scope.cancelled_caught:
            raise ConnectionGone(f"client did not read for {self.write_timeout:g} s")

    async def linger(self) -> None:
        """Half-close, then read briefly, so the response is not lost to a reset."""
        try:
            if isinstance(self.stream, trio.abc.HalfCloseableStream):
                await self.stream.send_eof()
            with trio.move_on_after(1.0):
                for _ in range(64):
                    if not await self.stream.receive_some(_RECEIVE_SIZE):
                        break
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
