"""Time to first audio: OpenAI-compatible HTTP vs the native WebSocket, side by side.

    python -m bench openai_ttfb [--model DIR | --engine synthetic] [--runs 20]

One `voxtrio serve` process (the tiny checkpoint, built if --model is not given, or
the synthetic engine); the same text over both paths, alternating, one request at a
time. HTTP: from sending `POST /v1/audio/speech` (pcm) on a fresh TCP connection to
the first body byte, then it hangs up. WebSocket: from opening a fresh connection and
sending `tts_request` (pcm16, 24 kHz) to the first audio frame, then it cancels.
Both include connecting (the WebSocket path its upgrade handshake too).

    python -m bench openai_ttfb --keepalive [--model DIR] [--runs 20]

HTTP keep-alive: `runs` sequential requests on one persistent connection vs the same
number each on a new connection, alternating the two series request by request.
Every response is read to its end (a kept-alive connection can only be reused
then); first audio is timed from sending the request (for a new connection: from
opening it) to the first body byte.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import h11
import trio
from trio_websocket import open_websocket_url

from ..harness import serving

TEXT = "Hello from voxtrio."
PAUSE_S = 0.3


async def websocket_ttfa(url: str) -> float:
    """Connect, send one tts_request, wait for the first audio frame, then cancel it."""
    started = time.perf_counter()
    first: float | None = None
    async with open_websocket_url(url) as ws:
        params = {"text": TEXT, "format": "pcm16", "sample_rate": 24000}
        await ws.send_message(
            json.dumps({"type": "tts_request", "request_id": "r", "params": params})
        )
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                if first is None:
                    first = time.perf_counter() - started
                    await ws.send_message(json.dumps({"type": "cancel", "request_id": "r"}))
            elif json.loads(message)["type"] in ("complete", "error"):
                break
    assert first is not None
    return first


async def http_ttfb(host: str, port: int) -> float:
    """Connect, POST /v1/audio/speech (pcm), wait for the first body byte, hang up."""
    body = json.dumps(
        {"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "pcm"}
    ).encode()
    started = time.perf_counter()
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(
            f"POST /v1/audio/speech HTTP/1.1\r\nHost: {host}:{port}\r\n".encode()
            + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        received = b""
        while True:
            data = await stream.receive_some(65536)
            assert data, received[:300]
            received += data
            head_end = received.find(b"\r\n\r\n")
            if head_end >= 0 and len(received) > head_end + 4:
                assert received.startswith(b"HTTP/1.1 200"), received[:300]
                return time.perf_counter() - started
    raise AssertionError("unreachable")


class KeptAlive:
    """An HTTP/1.1 client connection that sends requests one after another (h11)."""

    def __init__(self, stream: trio.SocketStream, authority: str) -> None:
        self.stream = stream
        self.authority = authority  # the Host header (a keyless server checks it)
        self.conn = h11.Connection(h11.CLIENT)

    async def speak(self, started: float) -> tuple[float, bool]:
        """POST one speech request, read its whole response; (first audio s, reusable)."""
        body = json.dumps(
            {"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "pcm"}
        ).encode()
        head = [("host", self.authority), ("content-type", "application/json")]
        head.append(("content-length", str(len(body))))
        out = self.conn.send(h11.Request(method="POST", target="/v1/audio/speech", headers=head))
        out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"")
        await self.stream.send_all(out + (self.conn.send(h11.EndOfMessage()) or b""))
        first: float | None = None
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                assert event.status_code == 200, event
            elif isinstance(event, h11.Data) and first is None:
                first = time.perf_counter() - started
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise AssertionError("closed before the response ended")
        assert first is not None
        reusable = self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE
        if reusable:
            self.conn.start_next_cycle()
        return first, reusable


async def measure_keepalive(url: str, runs: int) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reused, fresh = [], []
    authority = f"{host}:{port}"
    persistent = KeptAlive(await trio.open_tcp_stream(host, port), authority)
    await persistent.speak(time.perf_counter())  # warm the path (and the connection)
    for _ in range(runs):
        first, reusable = await persistent.speak(time.perf_counter())
        assert reusable, "the server closed a kept-alive connection"
        reused.append(first)
        await trio.sleep(PAUSE_S)
        started = time.perf_counter()
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            first, _ = await KeptAlive(stream, authority).speak(started)
        fresh.append(first)
        await trio.sleep(PAUSE_S)
    await persistent.stream.aclose()

    def ms(values: list[float], q: float) -> float:
        return round(sorted(values)[max(0, int(len(values) * q) - 1)] * 1000, 2)

    return {
        "runs": runs,
        "text": TEXT,
        "one_connection_first_audio_ms_median": round(statistics.median(reused) * 1000, 2),
        "new_connections_first_audio_ms_median": round(statistics.median(fresh) * 1000, 2),
        "one_connection_first_audio_ms_p90": ms(reused, 0.9),
        "new_connections_first_audio_ms_p90": ms(fresh, 0.9),
        "one_connection_first_audio_ms": [round(v * 1000, 2) for v in reused],
        "new_connections_first_audio_ms": [round(v * 1000, 2) for v in fresh],
    }


async def measure(url: str, runs: int) -> dict[str, object]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    await websocket_ttfa(url)  # warm both paths once
    await http_ttfb(host, port)
    ws_times, http_times = [], []
    for _ in range(runs):
        # Each request stops after its first audio (cancel / hang-up); the pause lets
        # the slot finish stopping, so neither path waits in the queue.
        ws_times.append(await websocket_ttfa(url))
        await trio.sleep(PAUSE_S)
        http_times.append(await http_ttfb(host, port))
        await trio.sleep(PAUSE_S)
    ws_ms = statistics.median(ws_times) * 1000
    http_ms = statistics.median(http_times) * 1000
    return {
        "runs": runs,
        "text": TEXT,
        "websocket_first_audio_ms_median": round(ws_ms, 2),
        "http_first_byte_ms_median": round(http_ms, 2),
        "http_minus_websocket_ms": round(http_ms - ws_ms, 2),
        "websocket_first_audio_ms_p90": round(sorted(ws_times)[int(runs * 0.9) - 1] * 1000, 2),
        "http_first_byte_ms_p90": round(sorted(http_times)[int(runs * 0.9) - 1] * 1000, 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--engine", choices=("voxcpm", "synthetic"), default="voxcpm")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument(
        "--keepalive",
        action="store_true",
        help="HTTP on one kept-alive connection vs a new connection per request",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None and args.engine == "voxcpm":
            from voxtrio.tools._tiny_model import build_checkpoint

            model = str(build_checkpoint(Path(tmp) / "tiny", arch="voxcpm2"))
        flags = ["--engine", args.engine]
        flags += ["--model", model] if model else []
        flags += ["--device", "cpu", "--log-level", "WARNING"]
        with serving(flags, workdir=Path(tmp), stop_grace=60) as server:
            run = measure_keepalive if args.keepalive else measure
            figures = trio.run(run, server.url, args.runs)
    figures["engine"] = args.engine
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    figures["command"] = " ".join(["python -m bench openai_ttfb", *argv])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "http-keepalive" if args.keepalive else "openai-ttfb"
    figures["load_average"] = [round(x, 2) for x in os.getloadavg()]
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    print(f"wrote {path}")
    return 0
