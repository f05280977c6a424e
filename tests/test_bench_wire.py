"""The bench's wire client and its jitter figures (bench/harness/_wire.py, _load.py)."""

from __future__ import annotations

import time

import pytest

from bench.harness._client import RequestTiming
from bench.harness._load import LevelRun, steady_jitter, stream_jitter
from bench.harness._texts import Job, stream_text
from bench.harness._wire import WireConnection, synthesize
from voxtrio.server._listener import ServerHandle


async def test_every_chunk_gets_its_kernel_receive_time(synthetic_server: ServerHandle) -> None:
    """A stream read on the wire client has one kernel time per chunk, in order, near
    the time it was read."""
    connection = await WireConnection.open(synthetic_server.url)
    try:
        timing = await synthesize(connection, Job(stream_text(4), 1, 4), sent=time.perf_counter())
    finally:
        await connection.aclose()
    assert timing.ok
    assert timing.chunks >= 4
    assert timing.wire_arrivals is not None
    assert timing.arrivals is not None
    assert len(timing.wire_arrivals) == len(timing.arrivals) == timing.chunks
    assert timing.wire_arrivals == sorted(timing.wire_arrivals)
    assert abs(timing.wire_arrivals[-1] - time.time()) < 30


def _stream(wire: list[float]) -> RequestTiming:
    # 7,680 samples at 48 kHz per chunk: a 160 ms period.
    return RequestTiming(
        sent=0.0,
        first_audio=wire[0],
        done=wire[-1],
        samples=7680 * len(wire),
        chunks=len(wire),
        sample_rate=48000,
        arrivals=wire,
        wire_arrivals=wire,
    )


def test_steady_jitter_counts_only_gaps_while_every_stream_plays() -> None:
    """A late gap before the last stream starts counts over all gaps, not in the steady part."""
    early = _stream([0.0, 0.3, 0.46, 0.62, 0.78])  # a 300 ms gap while the other starts
    late = _stream([0.40, 0.56, 0.72, 0.88])
    run = LevelRun([early, late], started=0.0)
    assert max(stream_jitter(run, rtf=1.0, clock="wire")) == pytest.approx(0.14)
    assert max(steady_jitter(run, rtf=1.0, clock="wire")) == pytest.approx(0.0, abs=1e-9)
