"""A `voxtrio serve` process for asyncio tests: start, kill, restart on the same port.

The asyncio clients and framework plugins run under `asyncio.run` in plain test
functions (pytest-trio owns the async ones), so the server is a subprocess here,
driven synchronously, with its metrics read over HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from bench.harness import server_command

STARTUP_TIMEOUT = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServedProcess:
    """`voxtrio serve` on a fixed port (so a restarted server has the same URL)."""

    def __init__(self, workdir: Path, *flags: str) -> None:
        self.workdir = workdir
        self.flags = flags
        self.port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.url = f"ws://127.0.0.1:{self.port}/tts"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self) -> None:
        ready = self.workdir / "ready"
        ready.unlink(missing_ok=True)
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 (the child owns it)
        self.process = subprocess.Popen(
            # The bench harness's command line: one way to start `voxtrio serve`.
            server_command(ready, self.flags, port=self.port, side_port=self.metrics_port),
            stdout=log,
            stderr=log,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not ready.exists():
            if self.process.poll() is not None:
                tail = (self.workdir / "server.log").read_text()[-2000:]
                raise RuntimeError(f"voxtrio serve exited before it was ready:\n{tail}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"voxtrio serve not ready within {STARTUP_TIMEOUT} s")
            time.sleep(0.05)

    def kill(self) -> None:
        """A crash: SIGKILL, no close frames, every connection drops."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics(self) -> dict[str, float]:
        """The server's Prometheus samples, `name{labels}` -> value."""
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def cancelled(self, mode: str = "text_stream") -> float:
        return self.metrics()[f'voxcpm_tts_requests_total{{mode="{mode}",status="cancelled"}}']

    def wait_idle(self, timeout: float = 20.0) -> dict[str, float]:
        """Wait until no replica is busy and nothing is queued; the metrics then."""
        deadline = time.monotonic() + timeout
        while True:
            samples = self.metrics()
            busy = samples["voxcpm_tts_slots_busy"] + samples["voxcpm_tts_queue_length"]
            if busy == 0 or time.monotonic() > deadline:
                return samples
            time.sleep(0.05)


def tiny_flags(model_dir: Path, voices_dir: Path) -> tuple[str, ...]:
    """The tiny checkpoint on CPU, voice uploads allowed (loopback only, as in the tests)."""
    return (
        "--model",
        str(model_dir),
        "--device",
        "cpu",
        "--allow-voice-upload",
        "--voices-dir",
        str(voices_dir),
    )


def prompt_wav(seconds: float = 2.0, rate: int = 16000) -> bytes:
    """A voiced-sounding prompt (a 140 Hz tone with harmonics, a syllable rhythm) as WAV."""
    import io
    import math
    import wave

    frames = bytearray()
    for i in range(int(seconds * rate)):
        t = i / rate
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 4 * t)
        tone = sum(math.sin(2 * math.pi * 140 * k * t) / k for k in (1, 2, 3, 5))
        frames += int(6000 * envelope * tone).to_bytes(2, "little", signed=True)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return buffer.getvalue()
