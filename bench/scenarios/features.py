"""Feature latencies on a real `voxtrio serve` process (the closing notes' figures).

    python -m bench features [--model DIR] [--runs 15] [--out bench/results]

Measures, side by side in one run, against one server on the tiny checkpoint (built
if --model is not given): time to first audio and RTF of plain requests; time from
the text fragment that completes a sentence to that sentence's first audio (native
text stream and DashScope); time to first audio with a cached voice, zero-shot, and
on a voice's first (uncached) use; and one /metrics scrape taken while 4 requests
run. Times are measured by this client (send -> first audio frame received).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from ..harness import serving

TEXT = "Hello from voxtrio."


def prompt_wav(seed: int) -> str:
    rng = np.random.default_rng(seed)
    t = np.arange(32000) / 16000
    samples = (0.2 * (0.5 + 0.5 * np.sin(8 * np.pi * t)) * rng.standard_normal(t.size)).astype(
        np.float32
    )
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, 16000, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode()


async def first_audio(ws: WebSocketConnection, request_id: str) -> tuple[float, dict[str, Any]]:
    """Wait for the request's first audio frame, then its terminal; (seconds, result)."""
    started = time.perf_counter()
    first: float | None = None
    while True:
        message = await ws.get_message()
        if isinstance(message, bytes):
            if first is None:
                first = time.perf_counter() - started
            continue
        decoded = json.loads(message)
        if decoded.get("request_id") == request_id and decoded["type"] in ("complete", "error"):
            assert decoded["type"] == "complete", decoded
            assert first is not None
            return first, decoded["result"]


async def request(url: str, rid: str, **params: Any) -> tuple[float, dict[str, Any]]:
    async with open_websocket_url(url) as ws:
        await ws.send_message(
            json.dumps({"type": "tts_request", "request_id": rid, "params": params})
        )
        return await first_audio(ws, rid)


async def text_stream_latency(url: str, seed: int) -> float:
    """From the fragment completing the second sentence to that sentence's first audio."""
    async with open_websocket_url(url) as ws:
        send = ws.send_message
        await send(
            json.dumps({"type": "text_stream_start", "request_id": "s", "params": {"seed": seed}})
        )
        await send(json.dumps({"type": "text_delta", "request_id": "s", "text": "One. Second one"}))
        # Let the first sentence finish (its audio drained) before timing the second.
        with trio.move_on_after(2.0):
            while True:
                await ws.get_message()
        started = time.perf_counter()
        await send(json.dumps({"type": "text_delta", "request_id": "s", "text": " ends. "}))
        while not isinstance(await ws.get_message(), bytes):
            pass
        latency = time.perf_counter() - started
        await send(json.dumps({"type": "text_stream_end", "request_id": "s"}))
        await first_audio(ws, "s")
        return latency


async def dashscope_latency(url: str) -> float:
    """DashScope: from the continue-task completing a sentence to its first audio."""
    head = {"task_id": "t", "streaming": "duplex"}
    params = {"voice": "default", "format": "pcm", "sample_rate": 48000}
    payload = {"model": "m", "task_group": "audio", "task": "tts", "function": "SpeechSynthesizer"}
    async with open_websocket_url(url.replace("/tts", "/api-ws/v1/inference")) as ws:
        run = {
            "header": {**head, "action": "run-task"},
            "payload": {**payload, "input": {}, "parameters": params},
        }
        await ws.send_message(json.dumps(run))
        await ws.get_message()  # task-started
        cont = {"header": {**head, "action": "continue-task"}}
        await ws.send_message(json.dumps({**cont, "payload": {"input": {"text": "Hello from"}}}))
        await trio.sleep(0.05)
        started = time.perf_counter()
        await ws.send_message(json.dumps({**cont, "payload": {"input": {"text": " voxtrio. "}}}))
        while not isinstance(await ws.get_message(), bytes):
            pass
        latency = time.perf_counter() - started
        await ws.send_message(
            json.dumps({"header": {**head, "action": "finish-task"}, "payload": {"input": {}}})
        )
        while True:
            message = await ws.get_message()
            if (
                isinstance(message, str)
                and json.loads(message)["header"]["event"] == "task-finished"
            ):
                return latency


async def voice_register(url: str, voice_id: str, seed: int) -> None:
    async with open_websocket_url(url) as ws:
        await ws.send_message(
            json.dumps(
                {
                    "type": "voice_register",
                    "request_id": voice_id,
                    "voice_id": voice_id,
                    "audio": prompt_wav(seed),
                    "mode": "reference",
                    "persist": False,
                }
            )
        )
        reply = json.loads(await ws.get_message())
        assert reply["type"] == "voice_registered", reply


async def scrape(metrics_url: str) -> str:
    host, port = metrics_url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2].decode()


def stage(name: str) -> None:
    print(f"bench.features: {name}", file=sys.stderr, flush=True)


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 2)


async def measure(url: str, metrics_url: str, runs: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    stage("plain requests")
    for rid in range(3):  # warm the path
        await request(url, f"w{rid}", text=TEXT, seed=rid)
    plain = [await request(url, f"p{i}", text=TEXT, seed=i) for i in range(runs)]
    figures["plain_first_audio_ms_p50"] = median_ms([p[0] for p in plain])
    figures["plain_rtf_p50"] = statistics.median(p[1]["timings"]["rtf"] for p in plain)
    figures["plain_audio_seconds"] = plain[0][1]["duration"]
    stage("text streams")
    figures["text_stream_fragment_to_audio_ms_p50"] = median_ms(
        [await text_stream_latency(url, i) for i in range(runs)]
    )
    stage("dashscope")
    figures["dashscope_fragment_to_audio_ms_p50"] = median_ms(
        [await dashscope_latency(url) for _ in range(runs)]
    )
    stage("voices")
    await voice_register(url, "cached", 0)
    await request(url, "prime", text=TEXT, voice_id="cached")  # build its prompt once
    zero, cached, uncached = [], [], []
    for i in range(runs):  # interleaved, so drift hits all three alike
        zero.append((await request(url, f"z{i}", text=TEXT, seed=i))[0])
        cached.append((await request(url, f"c{i}", text=TEXT, seed=i, voice_id="cached"))[0])
        await voice_register(url, f"fresh{i}", i + 1)
        uncached.append((await request(url, f"u{i}", text=TEXT, seed=i, voice_id=f"fresh{i}"))[0])
    figures["voice_zero_shot_first_audio_ms_p50"] = median_ms(zero)
    figures["voice_cached_first_audio_ms_p50"] = median_ms(cached)
    figures["voice_uncached_first_use_ms_p50"] = median_ms(uncached)
    figures["voice_cached_over_zero_shot"] = round(
        statistics.median(cached) / statistics.median(zero), 3
    )
    stage("metrics")
    long_text = "A longer sentence keeps these requests running while we scrape. " * 2
    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(lambda i=i: request(url, f"m{i}", text=long_text, seed=i))
        await trio.sleep(1.0)
        figures["metrics_scrape_during_4_requests"] = await scrape(metrics_url)
        nursery.cancel_scope.cancel()  # the clients leave; the server frees their slots
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from voxtrio.tools._tiny_model import build_checkpoint

            model = str(build_checkpoint(Path(tmp) / "tiny", arch="voxcpm2"))
        flags = ["--model", model, "--device", "cpu", "--allow-voice-upload"]
        flags += ["--max-requests-per-connection", "8", "--log-level", "WARNING"]
        with serving(flags, workdir=Path(tmp), stop_grace=60) as server:
            figures = trio.run(measure, server.url, server.side_url, args.runs)
    figures["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    figures["command"] = " ".join(["python -m bench features", *argv])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"features-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(figures, indent=2) + "\n")
    scrape_text = figures.pop("metrics_scrape_during_4_requests")
    print(json.dumps(figures, indent=2))
    print("\n# /metrics during 4 concurrent requests (voxcpm_tts_* lines)")
    print(
        "\n".join(
            line
            for line in scrape_text.splitlines()
            if line.startswith("voxcpm_tts_") and " 0.0" not in line[-4:]
        )
    )
    print(f"\nwrote {path}")
    return 0
