"""HTTP attack families on the shared port (issue 24): answers, RSS, a bystander's gaps.

    python -m bench http_attacks [--flood-connections 60]

Starts two `voxtrio serve` subprocesses on 127.0.0.1 (synthetic engine, voice upload
on): one with an API key, one without (the loopback default). A bystander process
streams native /tts audio from each without pause and logs the gap between its
audio frames. Per attack family, one row: the statuses the attack got, what a
legitimate client got meanwhile, the server's RSS growth (peak during the attack
minus before), the bystander's worst gap between two audio frames, and the ERROR
lines the server logged. Every connection of the attack is a real socket.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from trio_websocket import open_websocket_url

from ..harness import RunningServer, serving

KEY = "sk-bench-0123456789abcdef"
SPEECH = json.dumps({"input": "Hi there.", "response_format": "pcm"}).encode()
BYSTANDER_TEXT = "The bystander keeps listening while the attack goes on. " * 6


# --- raw HTTP ---------------------------------------------------------------------------


def speech_request(host: bytes, *headers: bytes, body: bytes = SPEECH) -> bytes:
    return (
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: " + host + b"\r\n"
        b"Content-Type: application/json\r\n"
        + b"".join(h + b"\r\n" for h in headers)
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


async def exchange(
    port: int, data: bytes, *, limit_s: float = 15.0, half_close: bool = False
) -> tuple[str, bytes]:
    """Send `data`; the status ("-": no status line, "timeout") and all bytes received."""
    received = bytearray()
    try:
        with trio.fail_after(limit_s):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream, trio.open_nursery() as nursery:

                async def send() -> None:
                    with contextlib.suppress(trio.BrokenResourceError, OSError):
                        await stream.send_all(data)
                        if half_close:
                            await stream.send_eof()

                nursery.start_soon(send)
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    while chunk := await stream.receive_some(1 << 16):
                        received += chunk
                nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        status = _status(bytes(received))
        return ("timeout" if status == "-" else f"{status} (held open)"), bytes(received)
    except OSError:
        return "refused", bytes(received)
    return _status(bytes(received)), bytes(received)


def _status(raw: bytes) -> str:
    while raw.startswith(b"HTTP/1.1 100 "):
        raw = raw.split(b"\r\n\r\n", 1)[1]
    parts = raw.split(b" ", 2)
    return parts[1].decode() if len(parts) > 1 and raw.startswith(b"HTTP/") else "-"


def _body(raw: bytes) -> bytes:
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"chunked" not in head.lower():
        return body
    out = bytearray()
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line or b"0", 16)
        if size == 0:
            break
        out += body[:size]
        body = body[size + 2 :]
    return bytes(out)


def counted(statuses: list[str]) -> str:
    return " ".join(f"{s}x{n}" for s, n in sorted(collections.Counter(statuses).items()))


# --- the attacks ---------------------------------------------------------------------------


class Target:
    def __init__(self, port: int, keyed: bool, log: Path) -> None:
        self.port = port
        self.keyed = keyed
        self.log = log
        self.host = f"127.0.0.1:{port}".encode()
        self.auth = (f"Authorization: Bearer {KEY}".encode(),) if keyed else ()

    async def legit(self) -> str:
        # Connection: close, since `exchange` reads until the server closes (keep-alive).
        request = speech_request(self.host, *self.auth, b"Connection: close")
        status, _ = await exchange(self.port, request)
        return status


async def body_flood(target: Target, connections: int) -> tuple[str, str]:
    """Keyless connections each sending 14 MB of a larger declared speech body."""
    flood = (
        speech_request(target.host, body=b"").replace(
            b"Content-Length: 0", b"Content-Length: 14000001"
        )
        + b"a" * 14_000_000
    )
    statuses: list[str] = []
    legit: list[str] = []

    async def one() -> None:
        statuses.append((await exchange(target.port, flood, limit_s=20))[0])

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)
        await trio.sleep(1.0)
        legit.append(await target.legit())
    return counted(statuses), counted(legit)


async def slowloris(target: Target, seconds: float = 8.0) -> tuple[str, str]:
    """110 connections: a head and `{` of a 100-byte body; reconnect when answered."""
    statuses: list[str] = []
    legit: list[str] = []
    slow = speech_request(target.host, body=b"").replace(
        b"Content-Length: 0", b"Content-Length: 100"
    )

    async def trickler() -> None:
        while True:
            status, _ = await exchange(target.port, slow + b"{", limit_s=30)
            statuses.append(status)

    async with trio.open_nursery() as nursery:
        for _ in range(110):
            nursery.start_soon(trickler)
        await trio.sleep(1.0)
        deadline = trio.current_time() + seconds
        while trio.current_time() < deadline:
            legit.append(await target.legit())
            await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    return counted(statuses) or "(none answered)", counted(legit)


async def tiny_parts(target: Target, parts: int = 160_000) -> tuple[str, str]:
    """One upload form of `parts` tiny file parts (~10 MB, under the upload cap)."""
    part = b"--a\r\nContent-Disposition: form-data; name=f; filename=x\r\n\r\nx\r\n"
    body = part * parts + b"--a--\r\n"
    head = (
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: " + target.host + b"\r\n"
        b"Content-Type: multipart/form-data; boundary=a\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    status, raw = await exchange(target.port, head + body, limit_s=60)
    return f"{status} ({_body(raw)[:60].decode(errors='replace')})", counted([await target.legit()])


async def heads(target: Target, count: int = 1000) -> tuple[str, str]:
    """HEAD / and HEAD /v1/models, 20 at a time."""
    statuses: list[str] = []
    limiter = trio.CapacityLimiter(20)

    async def one(path: bytes) -> None:
        async with limiter:
            req = b"HEAD " + path + b" HTTP/1.1\r\nHost: " + target.host + b"\r\n\r\n"
            statuses.append((await exchange(target.port, req, limit_s=10))[0])

    async with trio.open_nursery() as nursery:
        for n in range(count):
            nursery.start_soon(one, b"/" if n % 2 else b"/v1/models")
    return counted(statuses), counted([await target.legit()])


async def stalled_reader(target: Target) -> tuple[str, str]:
    """A speech client that never reads (to be freed at the server's 2 s write timeout)."""
    import socket

    body = json.dumps({"input": "Long text. " * 400, "response_format": "pcm"}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
    await stream.socket.connect(("127.0.0.1", target.port))
    async with stream:
        offset = len(target.log.read_text(errors="replace"))
        await stream.send_all(speech_request(target.host, *target.auth, body=body))
        freed = "not freed in 30 s"
        with trio.move_on_after(30):  # never reading; until the server lets it go
            while True:
                log = target.log.read_text(errors="replace")[offset:]
                if '"http_client_gone"' in log or '"http_request_failed"' in log:
                    break
                await trio.sleep(0.1)
            freed = "freed; " + ("http_client_gone" if "http_client_gone" in log else "ERROR 500")
    return freed, counted([await target.legit()])


MALFORMED: dict[str, bytes] = {
    "no Host": b"GET /v1/models HTTP/1.1\r\n\r\n",
    "2 CL": b"POST /v1/audio/speech HTTP/1.1\r\nHost: h\r\n"
    + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n",
    "CL -1": b"POST /v1/audio/speech HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    "CL 10^30": b"POST /v1/audio/speech HTTP/1.1\r\nHost: h\r\nContent-Length: 1"
    + b"0" * 30
    + b"\r\n\r\n",
    "NUL": b"GET /v1/models HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n",
    "CR": b"GET /v1/models HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
    "space in target": b"GET /v1/mo dels HTTP/1.1\r\nHost: h\r\n\r\n",
    "xchunked": b"POST /v1/audio/speech HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "100 KB URL": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
    "10k headers": b"GET /v1/models HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * 10_000 + b"\r\n",
    "bare LF": b"GET /v1/models HTTP/1.1\nHost: 127.0.0.1\n\n",
    "HTTP/0.9": b"GET /\r\n",
}


async def malformed(target: Target) -> tuple[str, str]:
    """Each malformed head once: its status and how long the answer took."""
    results = []
    slowest = 0.0
    for name, data in MALFORMED.items():
        started = time.monotonic()
        status, _ = await exchange(target.port, data, limit_s=15)
        slowest = max(slowest, time.monotonic() - started)
        results.append(f"{name} {status}")
    return "; ".join(results) + f" (slowest {slowest:.1f} s)", counted([await target.legit()])


async def cross_site(target: Target) -> tuple[str, str]:
    """A foreign page's form upload, text/plain JSON, rebound Host, and WebSocket."""
    wav = _wav()
    form = (
        b'--b\r\nContent-Disposition: form-data; name="name"\r\n\r\nstolen\r\n'
        b'--b\r\nContent-Disposition: form-data; name="persist"\r\n\r\nfalse\r\n'
        b'--b\r\nContent-Disposition: form-data; name="audio_sample"; filename="a.wav"\r\n\r\n'
        + wav
        + b"\r\n--b--\r\n"
    )
    upload = (
        b"POST /v1/audio/voices HTTP/1.1\r\nHost: " + target.host + b"\r\n"
        b"Origin: http://evil.example\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        + f"Content-Length: {len(form)}\r\n\r\n".encode()
        + form
    )
    text_plain = speech_request(target.host, body=SPEECH).replace(
        b"application/json", b"text/plain"
    )
    rebound = f"GET /v1/audio/voices HTTP/1.1\r\nHost: evil.example:{target.port}\r\n\r\n"
    ws = (
        f"GET /tts HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nOrigin: http://evil.example\r\n\r\n"
    )
    rows = [
        ("form upload", (await exchange(target.port, upload))[0]),
        ("text/plain", (await exchange(target.port, text_plain))[0]),
        ("Host rebound", (await exchange(target.port, rebound.encode()))[0]),
        ("WS Origin", (await exchange(target.port, ws.encode(), limit_s=3))[0]),
    ]
    listed = await exchange(
        target.port,
        f"GET /v1/audio/voices HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n\r\n".encode(),
    )
    rows.append(("voice registered", "yes" if b"stolen" in listed[1] else "no"))
    return "; ".join(f"{k} {v}" for k, v in rows), counted([await target.legit()])


async def smaller(target: Target) -> tuple[str, str]:
    """Half-close after the request; whitespace-only input."""
    body = json.dumps({"input": "Hello from the OpenAI route.", "response_format": "pcm"}).encode()
    _, raw = await exchange(target.port, speech_request(target.host, body=body))
    half, raw_half = await exchange(
        target.port, speech_request(target.host, body=body), half_close=True
    )
    blank = json.dumps({"input": " \n "}).encode()
    blank_status, _ = await exchange(target.port, speech_request(target.host, body=blank))
    return (
        f"half-close {half} {len(_body(raw_half))}/{len(_body(raw))} B; blank input {blank_status}",
        counted([await target.legit()]),
    )


def _wav() -> bytes:
    """Two seconds of quiet noise: a prompt the voice library accepts."""
    import io
    import wave

    import numpy as np

    noise = 3000 * np.random.default_rng(3).standard_normal(32000)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(noise.astype("<i2").tobytes())
    return buffer.getvalue()


# --- measuring ---------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def error_lines(log: Path) -> int:
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            if json.loads(line).get("level") in ("error", "critical"):
                count += 1
    return count


def worst_gap_ms(log: Path, start: float, end: float) -> float:
    worst = 0.0
    for line in log.read_text().splitlines():
        stamp, gap = (float(x) for x in line.split())
        if stamp >= start and stamp - gap <= end:
            worst = max(worst, gap)
    return worst * 1000


async def bystander(url: str, log: Path) -> None:
    """Stream /tts audio back to back until killed; log each frame's gap since the last."""
    async with open_websocket_url(url) as ws:
        last = time.time()
        with log.open("a") as out:
            for n in range(1_000_000):
                request = {
                    "type": "tts_request",
                    "request_id": f"b{n}",
                    "params": {"text": BYSTANDER_TEXT},
                }
                await ws.send_message(json.dumps(request))
                while True:
                    message = await ws.get_message()
                    if isinstance(message, bytes):
                        now = time.time()
                        out.write(f"{now} {now - last}\n")
                        out.flush()
                        last = now
                    elif json.loads(message).get("type") in ("complete", "error"):
                        break


Attack = Callable[[Target], Awaitable[tuple[str, str]]]


async def run_attacks(servers: dict[str, tuple[Target, int, Path, Path]], flood: int) -> None:
    attacks: list[tuple[str, str, Attack]] = [
        ("1 body flood (keyless, 14 MB each)", "keyed", lambda t: body_flood(t, flood)),
        ("2 slowloris x110 (keyless)", "open", slowloris),
        ("2 slowloris x110 (keyed)", "keyed", slowloris),
        ("3 form of 160k tiny parts", "open", tiny_parts),
        ("4 HEAD x1000", "open", heads),
        ("5 reader that stops reading", "open", stalled_reader),
        ("6 malformed heads", "open", malformed),
        ("7 cross-site page", "open", cross_site),
        ("8 half-close, blank input", "open", smaller),
    ]
    print(
        "| attack | answers | legitimate request | RSS growth | bystander worst gap | ERROR lines |"
    )
    print("|---|---|---|---|---|---|")
    for label, which, attack in attacks:
        target, pid, gaps, server_log = servers[which]
        await trio.sleep(1.0)
        errors_before = error_lines(server_log)
        rss_before = rss_mb(pid)
        peak = [rss_before]
        start = time.time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_sample_rss, pid, peak)
            answers, legit = await attack(target)
            nursery.cancel_scope.cancel()
        end = time.time()
        await trio.sleep(0.5)  # the frame that ends the longest gap may come after
        errors = error_lines(server_log) - errors_before
        print(
            f"| {label} | {answers} | {legit} | {peak[0] - rss_before:+.0f} MB | "
            f"{worst_gap_ms(gaps, start, end):.0f} ms | {errors} |",
            flush=True,
        )


async def _sample_rss(pid: int, peak: list[float]) -> None:
    while True:
        peak[0] = max(peak[0], rss_mb(pid))
        await trio.sleep(0.05)


def start_server(stack: contextlib.ExitStack, tmp: Path, name: str, keyed: bool) -> RunningServer:
    flags = ["--engine", "synthetic", "--synthetic-rtf", "0.5"]
    flags += ["--allow-voice-upload", "--voices-dir", str(tmp / f"{name}-voices")]
    flags += ["--write-timeout", "2"]
    # An operator's TTS_API_KEYS must not lock the open server.
    env = {"TTS_API_KEYS": KEY if keyed else None}
    return stack.enter_context(serving(flags, env=env, workdir=tmp, name=name))


def _killed(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flood-connections", type=int, default=60)
    parser.add_argument("--bystander", nargs=2, metavar=("URL", "LOG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bystander:
        trio.run(bystander, args.bystander[0], Path(args.bystander[1]))
        return
    with tempfile.TemporaryDirectory() as tmp_name, contextlib.ExitStack() as stack:
        tmp = Path(tmp_name)
        servers: dict[str, tuple[Target, int, Path, Path]] = {}
        for name, keyed in (("open", False), ("keyed", True)):
            server = start_server(stack, tmp, name, keyed)
            gaps = tmp / f"{name}.gaps"
            # The bystander runs in its own process: the attacker's work is not its gap.
            ws_url = server.url + (f"?api_key={KEY}" if keyed else "")
            bystander_process = subprocess.Popen(
                [sys.executable, "-m", "bench", "http_attacks", "--bystander", ws_url, str(gaps)]
            )
            stack.callback(_killed, bystander_process)
            servers[name] = (
                Target(server.port, keyed, server.log_path),
                server.pid,
                gaps,
                server.log_path,
            )
        time.sleep(2.0)
        for name, (_, _, gaps, _) in servers.items():
            baseline = worst_gap_ms(gaps, 0, time.time())
            print(f"bystander baseline worst gap ({name} server): {baseline:.0f} ms")
        trio.run(run_attacks, servers, args.flood_connections)
