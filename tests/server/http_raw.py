"""Raw HTTP/1.1 over a real socket, for requests no well-behaved client library sends."""

from __future__ import annotations

import json
from typing import Any

import attrs
import trio

LOCAL = b"Host: 127.0.0.1\r\n"


@attrs.frozen
class Reply:
    status: int | None  # None: closed or reset without a status line
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def parse(raw: bytes) -> Reply:
    """The last final response in `raw` (an interim 100 is skipped), chunked body decoded."""
    while raw.startswith(b"HTTP/1.1 1"):
        raw = raw.split(b"\r\n\r\n", 1)[1]
    head, _, body = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Reply(None, head, body)
    reply = Reply(status, head, body)
    if (reply.header("transfer-encoding") or "").lower() == "chunked":
        reply = attrs.evolve(reply, body=dechunk(body))
    return reply


def dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


async def read_all(stream: trio.SocketStream, limit_s: float = 5.0) -> bytes:
    """Everything until the server closes (a reset ends it too)."""
    received = bytearray()
    with trio.fail_after(limit_s):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            received += data
    return bytes(received)


async def request(
    port: int, data: bytes, *, half_close: bool = False, limit_s: float = 5.0
) -> Reply:
    """Send `data` on a fresh connection; read the answer until it is whole or the server closes.

    (A kept-alive connection stays open after a whole response.)
    """
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        if half_close:
            await stream.send_eof()
        return parse(await read_response(stream, limit_s, head_only=data.startswith(b"HEAD ")))


async def read_response(
    stream: trio.SocketStream, limit_s: float = 5.0, *, head_only: bool = False
) -> bytes:
    """Bytes until one final response is complete, or until the server closes."""
    received = bytearray()
    with trio.fail_after(limit_s):
        while not is_complete(bytes(received), head_only=head_only):
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            received += data
    return bytes(received)


def is_complete(raw: bytes, *, head_only: bool = False) -> bool:
    """Whether `raw` holds a whole final response (by Content-Length or the last chunk)."""
    while raw.startswith(b"HTTP/1.1 1") and b"\r\n\r\n" in raw:
        raw = raw.split(b"\r\n\r\n", 1)[1]
    if b"\r\n\r\n" not in raw or raw.startswith(b"HTTP/1.1 1"):
        return False
    reply = parse(raw)
    if head_only:
        return True
    if (reply.header("transfer-encoding") or "").lower() == "chunked":
        return raw.endswith(b"\r\n0\r\n\r\n")
    length = reply.header("content-length")
    return length is not None and len(raw.partition(b"\r\n\r\n")[2]) >= int(length)


def post(
    path: str, body: bytes, *headers: bytes, content_type: bytes = b"application/json"
) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\n".encode()
        + LOCAL
        + b"Content-Type: "
        + content_type
        + b"\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
