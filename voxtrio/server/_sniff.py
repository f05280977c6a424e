"""Tell a WebSocket handshake from a plain HTTP request on the shared port.

The head is read with a size bound (the caller puts a deadline around it); the
bytes read are replayed to whichever side takes the connection, so neither the
WebSocket library nor the HTTP parser sees a stream that starts mid-request.

The head ends at its blank line, CRLF or bare LF (h11 reads both). A first line
that is not an HTTP/1.x request line (HTTP/0.9's `GET /`, binary noise) ends the
read at once: waiting for a blank line that will never come would hold the
connection for the whole head deadline.
"""

from __future__ import annotations

import re

import trio

_RECEIVE_SIZE = 4096
HEAD_END = b"\r\n\r\n"
_BLANK_LINE = re.compile(rb"\n\r?\n")
# method SP request-target SP HTTP-version (RFC 9112 §3); h11 checks the details.
_REQUEST_LINE = re.compile(rb"[!#-'*+.0-9A-Z^-z|~]+ \S+ HTTP/1\.[0-9]\r?")


class HeadTooLarge(Exception):
    """The request head outgrew the bound before its blank line arrived."""

    def __init__(self, max_bytes: int, *, request_line_whole: bool) -> None:
        super().__init__(f"request head over {max_bytes} bytes")
        # 414 (URI too long) when even the request line did not fit, else 431.
        self.status = 431 if request_line_whole else 414


async def read_head(stream: trio.abc.ReceiveStream, max_bytes: int) -> bytes:
    """Bytes up to and past the head's end (b"" if the peer closed first).

    The head ends at its blank line, or at a first line that is not an HTTP/1.x
    request line (the caller answers that with 400: see `malformed_request_line`).
    """
    buffered = bytearray()
    while not _head_complete(buffered):
        if len(buffered) > max_bytes:
            first_line_ends = buffered.find(b"\n")
            raise HeadTooLarge(max_bytes, request_line_whole=0 <= first_line_ends <= max_bytes)
        data = await stream.receive_some(_RECEIVE_SIZE)
        if not data:
            return bytes(buffered)
        buffered += data
    return bytes(buffered)


def _head_complete(buffered: bytearray) -> bool:
    return _BLANK_LINE.search(buffered) is not None or malformed_request_line(buffered)


def malformed_request_line(head: bytes | bytearray) -> bool:
    """True once the first line is whole and is not an HTTP/1.x request line."""
    end = head.find(b"\n")
    return end >= 0 and _REQUEST_LINE.fullmatch(head, 0, end) is None


def wants_websocket(head: bytes) -> bool:
    """True when the head asks to upgrade to WebSocket (RFC 6455 §4.1)."""
    for line in head.split(HEAD_END, 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False


class ReplayStream(trio.abc.HalfCloseableStream):
    """`stream`, with `prefix` handed out first by `receive_some`."""

    def __init__(self, stream: trio.SocketStream, prefix: bytes) -> None:
        self.stream = stream
        self._prefix = prefix

    def __repr__(self) -> str:
        # trio-websocket shows a stream it cannot see into by its repr (the `remote`).
        try:
            host, port, *_ = self.stream.socket.getpeername()
        except OSError:
            return "closed"
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self.stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()
