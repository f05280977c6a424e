"""A raw protocol client for server tests: no voxtrio.client, just frames and JSON."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from bench.harness import server_command
from voxtrio.protocol._frames import AudioFrame, FrameType, decode_frame

TERMINAL = ("complete", "error")


@attrs.define
class Outcome:
    """Everything one request produced, in arrival order."""

    messages: list[dict[str, Any]] = attrs.Factory(list)
    frames: list[AudioFrame] = attrs.Factory(list)
    order: list[str] = attrs.Factory(list)

    @property
    def terminal(self) -> dict[str, Any]:
        (last,) = [m for m in self.messages if m["type"] in TERMINAL]
        return last

    @property
    def audio(self) -> bytes:
        return b"".join(f.payload for f in self.frames)

    @property
    def progress(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == "progress"]


@attrs.define
class RawSession:
    ws: WebSocketConnection
    outcomes: dict[str, Outcome] = attrs.Factory(dict)
    unrouted: list[dict[str, Any]] = attrs.Factory(list)

    async def send(self, payload: dict[str, Any] | str | bytes) -> None:
        if isinstance(payload, dict):
            payload = json.dumps(payload)
        await self.ws.send_message(payload)

    async def request(self, request_id: str, **params: Any) -> None:
        await self.send({"type": "tts_request", "request_id": request_id, "params": params})

    async def cancel(self, request_id: str) -> None:
        await self.send({"type": "cancel", "request_id": request_id})

    async def receive_one(self) -> tuple[str | None, str]:
        """Read one message, file it under its request; return (request_id, kind)."""
        message = await self.ws.get_message()
        if isinstance(message, bytes):
            frame = decode_frame(message)
            rid = frame.metadata["request_id"]
            outcome = self.outcomes.setdefault(rid, Outcome())
            outcome.frames.append(frame)
            kind = "final" if frame.metadata.get("is_final") else f"frame{int(frame.type)}"
            outcome.order.append(kind)
            return rid, kind
        decoded = json.loads(message)
        rid = decoded.get("request_id")
        if rid is None:
            self.unrouted.append(decoded)
            return None, decoded["type"]
        outcome = self.outcomes.setdefault(rid, Outcome())
        outcome.messages.append(decoded)
        outcome.order.append(decoded["type"])
        return rid, decoded["type"]

    async def until_terminal(self, *request_ids: str, timeout: float = 30.0) -> None:
        """Read until each named request has its terminal message."""
        with trio.fail_after(timeout):
            while not all(self._finished(rid) for rid in request_ids):
                await self.receive_one()

    async def until(self, request_id: str, kind: str, timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            while True:
                rid, got = await self.receive_one()
                if rid == request_id and got == kind:
                    return

    async def next_unrouted(self, timeout: float = 10.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while not self.unrouted:
                await self.receive_one()
        return self.unrouted.pop(0)

    def _finished(self, rid: str) -> bool:
        outcome = self.outcomes.get(rid)
        return outcome is not None and any(m["type"] in TERMINAL for m in outcome.messages)


@asynccontextmanager
async def session(url: str) -> AsyncIterator[RawSession]:
    async with open_websocket_url(url) as ws:
        try:
            yield RawSession(ws)
        finally:
            stream = ws._stream
    # trio-websocket 0.12.2's client leaves its socket open when the server's close
    # frame crosses its own (aclose returns early once a close reason is set).
    await stream.aclose()


async def speak(url: str, request_id: str = "r", **params: Any) -> Outcome:
    """One request alone on its own connection."""
    async with session(url) as s:
        await s.request(request_id, **params)
        await s.until_terminal(request_id)
        return s.outcomes[request_id]


def audio_frames(outcome: Outcome) -> list[AudioFrame]:
    return [f for f in outcome.frames if f.payload or f.type is FrameType.NON_STREAMING]


async def handshake_status(host: str, port: int, path: str, headers: str = "") -> int:
    """Send a raw WebSocket upgrade request and return the HTTP status of the answer.

    (trio-websocket's client leaks its socket when a handshake is refused, so tests of
    refusals speak HTTP themselves.)
    """
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
    )
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(request.encode())
        data = b""
        with trio.fail_after(10):
            while b"\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    return int(data.split(b" ", 2)[1])


@attrs.frozen
class ServedProcess:
    process: trio.Process
    url: str
    metrics_url: str | None


@asynccontextmanager
async def serve_process(
    tmp_path: Path, *flags: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[ServedProcess]:
    """Run `voxtrio serve` (synthetic engine unless flags say otherwise) until the block ends."""
    ready = tmp_path / "ready"
    process = await trio.lowlevel.open_process(
        # The bench harness's command line: one way to start `voxtrio serve`.
        server_command(ready, ["--engine", "synthetic", *flags]),
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        with trio.fail_after(60):
            while not ready.exists():
                assert process.poll() is None, "voxtrio serve exited before it was ready"
                await trio.sleep(0.05)
        lines = ready.read_text().split()
        yield ServedProcess(process, lines[0], lines[1] if len(lines) > 1 else None)
    finally:
        if process.poll() is None:
            process.kill()
        await process.wait()


async def http_get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """A plain HTTP/1.1 GET over a trio stream: (status, body)."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, port = hostport.rsplit(":", 1)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\n{extra}Connection: close\r\n\r\n"
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(request.encode())
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def host_port(url: str) -> tuple[str, int]:
    """(host, port) of a ws://host:port/tts URL."""
    host, port = url.removeprefix("ws://").removesuffix("/tts").rsplit(":", 1)
    return host, int(port)
