"""HTTP attacks on the shared port beside a streaming bystander (issue 24): its audio
keeps its pace and the server's memory stays flat.

The server runs in its own process, with an API key; while a bystander streams a long
native request, attackers at once send keyless 14 MB bodies, trickle keyless requests
(110 slowloris connections that reconnect when answered) and post a keyed voice-upload
form of 160,000 tiny parts. Before the fix the form froze the loop ~7 s, the bodies were
buffered (+0.7 GB for 60 of them), and the tricklers locked legitimate requests out.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import trio

from ..support import serve_process
from .harness import record_figures, rss_bytes
from .test_floods import GAP_SLACK_S, bystander_gaps

pytestmark = pytest.mark.slow

KEY = "sk-stress-0123456789abcdef"
FLOODS = 30
TRICKLERS = 110
SPEECH = json.dumps({"input": "Hi.", "response_format": "pcm"}).encode()


def speech(port: int, length: int, *extra: bytes) -> bytes:
    return (
        f"POST /v1/audio/speech HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + b"".join(h + b"\r\n" for h in extra)
        + f"Content-Length: {length}\r\n\r\n".encode()
    )


async def answer(port: int, data: bytes, statuses: list[str]) -> None:
    """Send `data` (as far as the server reads it); record the status it answered."""
    received = b""
    with trio.move_on_after(30):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream, trio.open_nursery() as nursery:

            async def send() -> None:
                with contextlib.suppress(trio.BrokenResourceError):
                    await stream.send_all(data)

            nursery.start_soon(send)
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some(65536):
                    received += chunk
            nursery.cancel_scope.cancel()
    statuses.append(received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/") else "-")


async def trickle(port: int, stop: trio.Event, statuses: list[str]) -> None:
    while not stop.is_set():
        await answer(port, speech(port, 100) + b"{", statuses)


def tiny_parts(port: int) -> bytes:
    part = b"--a\r\nContent-Disposition: form-data; name=f; filename=x\r\n\r\nx\r\n"
    body = part * 160_000 + b"--a--\r\n"
    return (
        f"POST /v1/audio/voices HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
        + f"Authorization: Bearer {KEY}\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=a\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def test_http_attacks_leave_a_bystander_and_the_servers_memory_alone(
    tmp_path: Path,
) -> None:
    """Floods, trickling and a tiny-part form at once: gaps near a quiet run's, RSS flat,
    every attack refused on its head or its 17th part, legitimate requests served."""
    flags = ["--synthetic-rtf", "0.25", "--allow-voice-upload", "--voices-dir", str(tmp_path)]
    async with serve_process(tmp_path, *flags, env={"TTS_API_KEYS": KEY}) as served:
        port = int(served.url.rsplit(":", 1)[1].split("/")[0])
        url = f"{served.url}?api_key={KEY}"
        quiet = await bystander_gaps(url)
        rss_before = rss_bytes(served.process.pid)
        peak = [rss_before]
        floods: list[str] = []
        trickled: list[str] = []
        form: list[str] = []
        legit: list[str] = []
        stop = trio.Event()
        async with trio.open_nursery() as nursery:

            async def sample() -> None:
                while True:
                    peak[0] = max(peak[0], rss_bytes(served.process.pid))
                    await trio.sleep(0.05)

            nursery.start_soon(sample)
            for _ in range(TRICKLERS):
                nursery.start_soon(trickle, port, stop, trickled)
            flood = speech(port, 14_000_001) + b"a" * 14_000_000
            for _ in range(FLOODS):
                nursery.start_soon(answer, port, flood, floods)
            nursery.start_soon(answer, port, tiny_parts(port), form)
            await trio.sleep(0.5)  # the attacks are under way
            attacked: list[float] = []
            while not form or not attacked:  # the bystander listens until the form is answered
                attacked += await bystander_gaps(url)
            for _ in range(5):
                keyed = f"Authorization: Bearer {KEY}".encode()
                # `answer` reads until the server closes: no keep-alive for this one.
                request = speech(port, len(SPEECH), keyed, b"Connection: close") + SPEECH
                await answer(port, request, legit)
            with trio.move_on_after(60):
                while len(floods) < FLOODS:
                    await trio.sleep(0.1)
            stop.set()
            nursery.cancel_scope.cancel()
    figures = {
        "quiet_gap_max_ms": round(max(quiet) * 1000, 1),
        "attacked_gap_max_ms": round(max(attacked) * 1000, 1),
        "rss_growth_mb": round((peak[0] - rss_before) / 2**20, 1),
        "floods": sorted(set(floods)),
        "trickled": len(trickled),
        "form": form,
        "legit": legit,
    }
    record_figures("http_attacks", **figures)
    assert set(floods) == {"401"}, figures
    assert form == ["400"], figures
    assert legit == ["200"] * 5, figures
    assert peak[0] - rss_before < 200 * 2**20, figures
    assert max(attacked) <= max(quiet) + GAP_SLACK_S, figures
