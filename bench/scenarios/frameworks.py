"""Pipecat and LiveKit: the voxtrio plugins vs each framework's OpenAI TTS, same server.

    python -m bench frameworks [--model DIR] [--turns 20]

One `voxtrio serve` (the tiny checkpoint on CPU, built if --model is not given). Each
turn is one LLM reply pushed token by token (20 ms apart, as an LLM streams), then an
interruption once audio is flowing and the reply is fully sent:

- first audio: from the first token entering the framework to the first audio frame
  the framework emits (Pipecat: a TTSAudioRawFrame leaving the TTS service;
  LiveKit: a SynthesizedAudio out of the TTS stream).
- interruption -> last audio frame: Pipecat, from queueing an InterruptionFrame to the
  last audio frame that still left the service (0 if none did); LiveKit, from calling
  the stream's aclose() to its return (no frame can follow it).
- interruption -> slot free: to the server's metrics showing no busy slot and no
  queue (polled every 20 ms), i.e. until generation really stopped.

The OpenAI services go through `POST /v1/audio/speech` on the same port (Pipecat:
OpenAITTSService, sentence aggregation, 24 kHz; LiveKit: openai.TTS wrapped in the
StreamAdapter an AgentSession would use). Services alternate turn by turn. Needs
pipecat-ai, livekit-agents and livekit-plugins-openai (not in any extra).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..harness import serving

TOKENS = ["Hel", "lo", " there", ".", " How", " are", " you", " to", "day", "?"]
TOKEN_GAP_S = 0.02
RATE = 24000


def server_idle(metrics_url: str) -> bool:
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    busy = 0.0
    for line in text.splitlines():
        if line.startswith(("voxcpm_tts_slots_busy ", "voxcpm_tts_queue_length ")):
            busy += float(line.rsplit(" ", 1)[1])
    return busy == 0


async def wait_idle(metrics_url: str, within_s: float = 30.0) -> float:
    """When the server had nothing running (perf_counter), polling every 20 ms."""
    deadline = time.perf_counter() + within_s
    while time.perf_counter() < deadline:
        if await asyncio.to_thread(server_idle, metrics_url):
            return time.perf_counter()
        await asyncio.sleep(0.02)
    raise TimeoutError("the server stayed busy")


# ---------------------------------------------------------------- Pipecat


async def pipecat_run(make_tts: Callable[[], Any], turns: int, metrics_url: str) -> list[dict]:
    from pipecat.frames.frames import (
        EndFrame,
        Frame,
        InterruptionFrame,
        LLMFullResponseEndFrame,
        LLMFullResponseStartFrame,
        LLMTextFrame,
        TTSAudioRawFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.workers.runner import WorkerRunner

    audio_times: list[float] = []
    new_audio = asyncio.Event()

    class Sink(FrameProcessor):
        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            if isinstance(frame, TTSAudioRawFrame):
                audio_times.append(time.perf_counter())
                new_audio.set()
            await self.push_frame(frame, direction)

    worker = PipelineWorker(
        Pipeline([make_tts(), Sink()]),
        params=PipelineParams(audio_out_sample_rate=RATE),
        cancel_on_idle_timeout=False,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    await asyncio.sleep(1.0)  # StartFrame through, connection opened

    async def llm() -> None:
        await worker.queue_frame(LLMFullResponseStartFrame())
        for token in TOKENS:
            await worker.queue_frame(LLMTextFrame(token))
            await asyncio.sleep(TOKEN_GAP_S)
        await worker.queue_frame(LLMFullResponseEndFrame())

    results = []
    for _ in range(turns):
        audio_times.clear()
        new_audio.clear()
        started = time.perf_counter()
        sender = asyncio.create_task(llm())
        async with asyncio.timeout(60):
            await new_audio.wait()
        first = audio_times[0] - started
        await sender
        interrupted = time.perf_counter()
        await worker.queue_frame(InterruptionFrame())
        idle = await wait_idle(metrics_url)
        await asyncio.sleep(max(0.0, interrupted + 1.0 - time.perf_counter()))
        late = [t for t in audio_times if t > interrupted]
        results.append(
            {
                "first_audio_s": first,
                "interrupt_to_last_audio_s": (late[-1] - interrupted) if late else 0.0,
                "frames_after_interrupt": len(late),
                "interrupt_to_slot_free_s": idle - interrupted,
            }
        )
    await worker.queue_frame(EndFrame())
    async with asyncio.timeout(30):
        await running
    return results


# ---------------------------------------------------------------- LiveKit


async def livekit_run(make_tts: Callable[[], Any], turns: int, metrics_url: str) -> list[dict]:
    tts = make_tts()
    results = []
    try:
        for _ in range(turns):
            stream = tts.stream()
            started = time.perf_counter()

            async def llm(stream: Any = stream) -> None:
                for token in TOKENS:
                    stream.push_text(token)
                    await asyncio.sleep(TOKEN_GAP_S)
                stream.end_input()

            sender = asyncio.create_task(llm())
            async with asyncio.timeout(60):
                await anext(aiter(stream))
            first = time.perf_counter() - started
            await sender
            interrupted = time.perf_counter()
            await stream.aclose()
            closed = time.perf_counter()
            idle = await wait_idle(metrics_url)
            results.append(
                {
                    "first_audio_s": first,
                    "interrupt_to_last_audio_s": closed - interrupted,
                    "interrupt_to_slot_free_s": idle - interrupted,
                }
            )
            await asyncio.sleep(0.2)
    finally:
        await tts.aclose()
    return results


# ---------------------------------------------------------------- driver


def summary(rows: list[dict]) -> dict[str, dict[str, float]]:
    out = {}
    for key in rows[0]:
        values = sorted(float(row[key]) for row in rows)
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        out[key] = {"p50": statistics.median(values), "p95": p95, "max": values[-1]}
    return out


async def measure(
    ws_url: str, http_base: str, metrics_url: str, turns: int, only: str = ""
) -> dict:
    from livekit.agents.tts import StreamAdapter
    from livekit.plugins import openai as lk_openai
    from pipecat.services.openai.tts import OpenAITTSService

    from voxtrio.integrations import livekit as voxtrio_livekit
    from voxtrio.integrations.pipecat import VoxtrioTTSService

    services: dict[str, tuple[Callable[..., Any], Callable[[], Any]]] = {
        "pipecat voxtrio plugin": (
            pipecat_run,
            lambda: VoxtrioTTSService(url=ws_url, sample_rate=RATE),
        ),
        "pipecat OpenAITTSService": (
            pipecat_run,
            lambda: OpenAITTSService(base_url=http_base, api_key="unused", sample_rate=RATE),
        ),
        "livekit voxtrio plugin": (
            livekit_run,
            lambda: voxtrio_livekit.TTS(url=ws_url, sample_rate=RATE),
        ),
        "livekit openai.TTS (StreamAdapter)": (
            livekit_run,
            lambda: StreamAdapter(
                tts=lk_openai.TTS(
                    base_url=http_base, api_key="unused", model="tts-1", response_format="pcm"
                )
            ),
        ),
    }
    figures = {}
    for name, (run, make) in services.items():
        if only not in name:
            continue
        print(f"{name}: {turns} turns", file=sys.stderr)
        rows = await run(make, turns, metrics_url)
        figures[name] = {"summary": summary(rows), "turns": rows}
    return figures


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--only", default="", help="run the services whose name contains this")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from voxtrio.tools._tiny_model import build_checkpoint

            model = str(build_checkpoint(Path(tmp) / "tiny", arch="voxcpm2"))
        flags = ["--model", model, "--device", "cpu", "--log-level", "WARNING"]
        with serving(flags, workdir=Path(tmp), stop_grace=60) as server:
            ws_url, metrics_base = server.url, server.side_url
            http_base = server.http_base + "/v1"
            load_before = os.getloadavg()
            figures = asyncio.run(
                measure(ws_url, http_base, metrics_base + "/metrics", args.turns, args.only)
            )
            load_after = os.getloadavg()
    report = {
        "figures": figures,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": load_after,
        },
        "command": " ".join(["python -m bench frameworks", *argv]),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"frameworks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    for name, data in figures.items():
        row = " | ".join(
            f"{v['p50'] * 1000:.0f} / {v['p95'] * 1000:.0f}" for v in data["summary"].values()
        )
        print(f"| {name} | {row} |")
    print(f"wrote {path}")
    return 0
