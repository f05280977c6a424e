"""The benchmark suite's statistics, and its load generator against an in-process server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
import pytest

from bench.harness import _stats
from bench.harness._client import BadFrame, RequestTiming, frame_payload_samples, frame_sample_rate
from bench.harness._load import (
    LevelRun,
    Measurement,
    Usage,
    closed_loop,
    concatenate,
    idle_connections,
    level_figures,
    open_loop,
    stream_jitter,
)
from bench.harness._texts import (
    Job,
    make_jobs,
    poisson_arrivals,
    staggered_arrivals,
    stream_text,
)
from bench.scenarios._compare import Level, combine
from voxtrio.protocol._frames import FrameType, encode_frame
from voxtrio.speech._synthetic import SyntheticEngine

# ---------------------------------------------------------------- statistics


@pytest.mark.parametrize("q", [0, 1, 5, 25, 50, 75, 95, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = [0.3, 0.01, 7.0, 2.5, 2.5, 1.0, 0.2, 9.9, 4.4]
    assert _stats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert _stats.percentile([], 50) is None
    assert _stats.percentile([4.0], 99) == 4.0
    assert _stats.median([1.0, 3.0]) == 2.0
    with pytest.raises(ValueError, match="0-100"):
        _stats.percentile([1.0], 101)


def test_summary_is_in_milliseconds() -> None:
    summary = _stats.summary_ms([0.010, 0.020, 0.030])
    assert summary == {"n": 3, "p50": 20.0, "p95": 29.0, "p99": 29.8, "max": 30.0}
    assert _stats.summary_ms([]) == {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}


def test_jitter_is_distance_of_each_gap_from_the_period() -> None:
    arrivals = [1.000, 1.160, 1.330, 1.480, 1.640]
    assert _stats.gaps(arrivals) == pytest.approx([0.160, 0.170, 0.150, 0.160])
    assert _stats.jitter(arrivals, 0.160) == pytest.approx([0.0, 0.010, 0.010, 0.0])
    assert _stats.jitter([5.0], 0.160) == []  # one chunk: no gap, no jitter


def test_overhead_in_ms_and_as_a_ratio() -> None:
    assert _stats.overhead(0.012, 0.010) == {"ms": 2.0, "ratio": 1.2}
    assert _stats.overhead(None, 0.010) == {"ms": None, "ratio": None}


@pytest.mark.parametrize(
    ("server", "engine", "met"),
    [
        (0.0149, 0.010, True),  # 4.9 ms over a 10 ms engine: within 5 ms
        (0.0151, 0.010, False),
        (0.2095, 0.200, True),  # 9.5 ms over 200 ms: within 5 % (10 ms)
        (0.2105, 0.200, False),
        (0.009, 0.010, True),  # faster than the engine (noise): met
    ],
)
def test_ttfa_target_is_5_ms_or_5_percent(server: float, engine: float, met: bool) -> None:
    assert _stats.meets_ttfa_target(server, engine) is met


def test_throughput_and_jitter_targets() -> None:
    assert _stats.ratio(9.5, 10.0) == 0.95
    assert _stats.ratio(1.0, 0.0) is None
    assert _stats.meets_throughput_target(9.5, 10.0) is True
    assert _stats.meets_throughput_target(9.4, 10.0) is False
    assert _stats.meets_throughput_target(None, 10.0) is None
    assert _stats.meets_jitter_target(19.9, errors=0)
    assert not _stats.meets_jitter_target(20.0, errors=0)
    assert not _stats.meets_jitter_target(1.0, errors=1)
    assert not _stats.meets_jitter_target(None, errors=0)


# ---------------------------------------------------------------- inputs


def test_jobs_cycle_texts_with_consecutive_seeds() -> None:
    jobs = make_jobs("short", 10, max_len=24, seed=100)
    assert [j.seed for j in jobs] == list(range(100, 110))
    assert jobs[0].text == jobs[8].text != jobs[1].text
    assert jobs[0].params() == {"text": jobs[0].text, "seed": 100, "max_len": 24, "format": "pcm16"}


def test_arrivals_are_seeded() -> None:
    arrivals = poisson_arrivals(4.0, 2000, seed=1)
    assert arrivals == poisson_arrivals(4.0, 2000, seed=1)
    assert arrivals[0] == 0.0
    assert arrivals == sorted(arrivals)
    assert len(arrivals) / arrivals[-1] == pytest.approx(4.0, rel=0.1)
    spread = staggered_arrivals(50, 0.16, seed=2)
    assert spread == sorted(spread)
    assert all(0 <= x <= 0.16 for x in spread)


def test_stream_text_gives_the_synthetic_engine_that_many_chunks() -> None:
    from voxtrio.speech._engine import SynthesisSpec

    text = stream_text(50)
    assert SyntheticEngine().max_steps(SynthesisSpec(text=text, max_len=4096)) == 50


def test_frame_header_parsing_matches_the_server_encoder() -> None:
    pcm = np.arange(7680, dtype="<i2").tobytes()
    frame = encode_frame(
        FrameType.STREAMING_CHUNK,
        {"request_id": "r", "sequence": 0, "sample_rate": 48000, "is_final": False},
        pcm,
    )
    meta_len, samples = frame_payload_samples(frame)
    assert samples == 7680
    assert frame_sample_rate(frame, meta_len) == 48000
    final = encode_frame(FrameType.STREAMING_CHUNK, {"request_id": "r", "is_final": True}, b"")
    assert frame_payload_samples(final)[1] == 0
    with pytest.raises(BadFrame):
        frame_payload_samples(b"\x00\x00" + frame[2:])


# ---------------------------------------------------------------- figures


def _timing(sent: float, first: float, done: float, chunks: int = 10) -> RequestTiming:
    return RequestTiming(
        sent=sent, first_audio=first, done=done, samples=chunks * 7680, chunks=chunks,
        sample_rate=48000,
    )  # fmt: skip


def test_level_figures() -> None:
    # Two requests of 1.6 s of audio each, over 2 s of wall time.
    run = LevelRun(
        [_timing(0.0, 0.05, 0.85), _timing(1.0, 1.10, 2.0), RequestTiming(0.5, error="x")],
        started=0.0,
    )
    figures = level_figures(run)
    assert figures["requests"] == 3
    assert (figures["errors"], figures["error_kinds"]) == (1, {"x": 1})
    assert figures["ttfa_ms"]["p50"] == pytest.approx(75.0)
    assert figures["rtf"]["p50"] == pytest.approx((0.8 / 1.6 + 0.9 / 1.6) / 2, abs=1e-4)
    assert figures["audio_s_per_s"] == pytest.approx(3.2 / 2.0)
    assert figures["requests_per_s"] == pytest.approx(1.0)


def test_concatenated_runs_add_their_walls_and_cpu() -> None:
    def measured(cpu: float, wall: float, rss: int) -> Measurement:
        m = Measurement(wall=wall, machine_busy_cores=1.0)
        m.usage["server"] = Usage(cpu, wall, rss, rss, 3)
        return m

    runs = [
        LevelRun([_timing(10.0, 10.1, 11.0)], 10.0, measured(0.5, 1.0, 100)),
        LevelRun([_timing(50.0, 50.1, 53.0)], 50.0, measured(2.5, 3.0, 300)),
    ]
    joined = concatenate(runs)
    assert joined.wall == pytest.approx(4.0)
    assert joined.measurement is not None
    usage = joined.measurement.usage["server"]
    assert (usage.cores, usage.rss_peak) == (pytest.approx(0.75), 300)
    assert joined.measurement.other_cores == pytest.approx(0.25)


def test_combine_pools_latency_and_takes_the_median_rate() -> None:
    rounds = [
        LevelRun([_timing(0, 0.010, 1.0), _timing(0, 0.020, 1.0)], 0.0),
        LevelRun([_timing(0, 0.030, 2.0), _timing(0, 0.040, 2.0)], 0.0),
    ]
    out = combine(rounds)
    assert out["ttfa_ms"]["p50"] == pytest.approx(25.0)
    assert out["audio_s_per_s"] == pytest.approx((3.2 + 1.6) / 2)
    assert Level("closed", concurrency=4).label == "c=4"
    assert Level("closed", concurrency=16).requests(24) == 32


# ---------------------------------------------------------------- the load generator


async def test_load_generator_against_an_in_process_server(
    start_server: Callable[..., Any],
) -> None:
    """Closed loop, open loop with jitter, and idle connections, at tiny scale."""
    handle = await start_server(
        partial(SyntheticEngine, rtf=0.1), workers=4, max_concurrent=8, max_connections=32
    )
    jobs = [Job("abcd" * 5, seed=i, max_len=5) for i in range(6)]  # 5 chunks of 160 ms

    closed = await closed_loop(handle.url, jobs, 2, pids={}, request_timeout=10)
    figures = level_figures(closed)
    assert figures["errors"] == 0
    assert figures["requests"] == 6
    assert figures["audio_seconds"] == pytest.approx(6 * 5 * 0.16)
    assert figures["ttfa_ms"]["p50"] > 0
    assert figures["usage"]["client_loop_lag_ms"]["n"] > 0

    arrivals = staggered_arrivals(4, 0.016)
    streams = await open_loop(
        handle.url, jobs[:4], arrivals, pool_size=4, request_timeout=10, keep_arrivals=True
    )
    assert level_figures(streams)["errors"] == 0
    jitter = stream_jitter(streams, rtf=0.1)
    assert len(jitter) == 4 * 4  # four gaps per five-chunk stream
    assert _stats.percentile(jitter, 50) is not None

    async with idle_connections(handle.url, 10) as held:
        assert (held.opened, held.failures) == (10, {})


async def test_openai_ttfb_bench_measures_both_paths(synthetic_server: Any) -> None:
    """The openai_ttfb scenario times HTTP first byte and WebSocket first audio on one server."""
    from bench.scenarios.openai_ttfb import measure

    figures = await measure(synthetic_server.url, 2)
    assert figures["runs"] == 2
    for key in ("websocket_first_audio_ms_median", "http_first_byte_ms_median"):
        assert isinstance(figures[key], float)
        assert 0 < figures[key] < 5000


@pytest.mark.skipif(
    shutil.which("espeak-ng") is None and os.environ.get("CI") != "true",
    reason="espeak-ng is not installed (.ci/run installs it)",
)
def test_word_alignment_bench_scores_both_methods_on_espeak_speech() -> None:
    """The word_alignment scenario: espeak-ng's word events against the aligner and the estimate."""
    from bench.scenarios.word_alignment import ENGLISH, Espeak, measure
    from voxtrio.audio._align import SphinxAligner

    row = measure(Espeak(), SphinxAligner(), ENGLISH[:2], "en-us", 175)
    assert row["aligner_covered"] == 1.0
    assert row["aligner"]["boundaries"] == row["estimate"]["boundaries"] > 20
    assert row["aligner"]["mean_ms"] < row["estimate"]["mean_ms"]
    assert row["aligner"]["mean_ms"] < 60


async def test_openai_ttfb_keepalive_mode_reuses_one_connection(synthetic_server: Any) -> None:
    """openai_ttfb --keepalive times requests on one connection and on new ones."""
    from bench.scenarios.openai_ttfb import measure_keepalive

    figures = await measure_keepalive(synthetic_server.url, 2)
    assert figures["runs"] == 2
    for key in ("one_connection_first_audio_ms", "new_connections_first_audio_ms"):
        values = figures[key]
        assert isinstance(values, list)
        assert len(values) == 2
        assert all(0 < value < 5000 for value in values)
