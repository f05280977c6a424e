"""The server alone: the synthetic engine paces chunks in real time, no model runs.

- Streams: N requests at once (starts spread at random over one chunk period), each
  N chunks of 160 ms delivered one per 160 ms at RTF 1.0; jitter is |gap - 160 ms|
  between consecutive chunk arrivals. Arrival is when the kernel received the frame
  (`SO_TIMESTAMPNS`, bench/harness/_wire.py): on one 2-core machine the client's own
  scheduling would otherwise add its backlog to the server's; the time the client
  read each frame is reported beside it. `steady` counts only the gaps after every
  stream has started and before any has ended (the starts are an admission storm of
  N streams in 160 ms). The sweep finds the largest N with jitter p99 (all gaps)
  under 20 ms and no errors.
- Idle connections: open K connections that only complete the handshake; the
  server's RSS before and after gives memory per connection; while they are held,
  a streams level checks delivery still meets the jitter bound.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import psutil
import trio

from ..harness import _stats
from ..harness._load import (
    idle_connections,
    level_figures,
    steady_jitter,
    stream_jitter,
    wait_for_quiet,
    wire_open_loop,
)
from ..harness._procs import ServerProcess
from ..harness._texts import Job, staggered_arrivals, stream_text

CHUNK_SAMPLES = 7680
SAMPLE_RATE = 48000


@attrs.frozen(kw_only=True)
class SyntheticOptions:
    streams: Sequence[int] = (32, 64, 128, 256, 384, 512)
    stream_chunks: int = 50
    rtf: float = 1.0
    idle_connections: int = 1000
    idle_streams: int = 256
    request_timeout: float = 600.0
    server_args: Sequence[str] = ()
    server_launcher: Sequence[str] = (sys.executable, "-m", "voxtrio")
    quiet_below: float = 0.25
    quiet_patience: float = 10.0
    batched: bool = True
    # After the idle connections close, wait this long before reading RSS again.
    settle_seconds: float = 12.0
    # py-spy each level's server (collapsed stacks per thread) into this folder.
    profile_dir: str | None = None

    @property
    def chunk_seconds(self) -> float:
        return CHUNK_SAMPLES / SAMPLE_RATE * self.rtf


def server_arguments(options: SyntheticOptions) -> list[str]:
    peak = max([*options.streams, options.idle_streams])
    return [
        "--engine",
        "synthetic",
        "--synthetic-rtf",
        str(options.rtf),
        # One step-loop thread paces every stream (batched); without batching, one
        # instance with one slot per stream, each its own thread.
        *(("--workers", "1", "--max-batch", str(peak)) if options.batched else ()),
        *(("--workers", str(peak), "--max-batch", "1") if not options.batched else ()),
        "--max-concurrent",
        str(peak),
        "--max-connections",
        str(options.idle_connections + peak + 64),
        *options.server_args,
    ]


async def streams_level(
    url: str, count: int, options: SyntheticOptions, *, server_pid: int | None, seed: int = 0
) -> dict[str, Any]:
    """`count` concurrent real-time streams; figures plus jitter."""
    text = stream_text(options.stream_chunks)
    jobs = [Job(text, seed + i, options.stream_chunks) for i in range(count)]
    arrivals = staggered_arrivals(count, options.chunk_seconds, seed=seed)
    async with trio.open_nursery() as nursery:
        if options.profile_dir and server_pid is not None:
            # The streams' steady part: from the last start to the first end.
            seconds = max(1.0, (options.stream_chunks - 2) * options.chunk_seconds)
            out = f"{options.profile_dir}/server-{count}-streams.txt"
            nursery.start_soon(profile_server, server_pid, seconds, out)
        run = await wire_open_loop(
            url,
            jobs,
            arrivals,
            pids={"server": server_pid},
            request_timeout=options.request_timeout,
        )
    figures = level_figures(run)
    jitter = stream_jitter(run, rtf=options.rtf, clock="wire")
    figures["jitter_read_ms"] = _stats.summary_ms(
        stream_jitter(run, rtf=options.rtf, clock="read"), (50, 99, 99.9)
    )
    figures["jitter_steady_ms"] = _stats.summary_ms(
        steady_jitter(run, rtf=options.rtf, clock="wire"), (50, 99, 99.9)
    )
    figures["streams"] = count
    # The event loop's CPU per frame sent (chunks plus each stream's final frame), all in:
    # handshakes, requests and progress messages are spread over the chunks.
    loop_cpu = figures["usage"].get("server", {}).get("main_thread_cpu_seconds", 0.0)
    frames = count * (options.stream_chunks + 1)
    figures["loop_us_per_chunk"] = round(loop_cpu / frames * 1e6, 1)
    figures["jitter_ms"] = _stats.summary_ms(jitter, (50, 99, 99.9))
    figures["meets_jitter"] = _stats.meets_jitter_target(
        figures["jitter_ms"]["p99"], figures["errors"]
    )
    return figures


async def profile_server(pid: int, seconds: float, out: str) -> None:
    """py-spy the server for `seconds` (after one chunk period) into `out`, collapsed stacks."""
    await trio.sleep(CHUNK_SAMPLES / SAMPLE_RATE)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).parent / "py-spy"  # the venv's, when it has one
    command = [
        str(beside) if beside.exists() else "py-spy",
        "record",
        "--pid",
        str(pid),
        "--threads",
        "--gil",
        "--rate",
        "250",
    ]
    command += ["--duration", str(round(seconds)), "--format", "raw", "--output", out]
    done = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0:
        print(f"  py-spy failed: {done.stderr.decode(errors='replace')[-300:]}", file=sys.stderr)


def _rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


# Set in the bench's environment (the server inherits it): a server memory report
# (voxtrio/ops/_memory_report.py) at every point RSS is read.
MEMORY_REPORTS = "VOXTRIO_MEMORY_REPORTS"


async def memory_point(pid: int) -> float:
    """The server's RSS now; first a memory report when the environment asks for them."""
    directory = os.environ.get(MEMORY_REPORTS)
    if directory:
        count = _reports_written(directory, pid)
        os.kill(pid, signal.SIGUSR2)
        with trio.move_on_after(120):
            # Another process writes it: poll the folder.
            while _reports_written(directory, pid) <= count:  # noqa: ASYNC110
                await trio.sleep(0.2)
    return _rss_mb(pid)


def _reports_written(directory: str, pid: int) -> int:
    return len(list(Path(directory).glob(f"memory-{pid}-*.txt")))


async def synthetic(options: SyntheticOptions) -> dict[str, Any]:
    async with trio.open_nursery() as nursery:
        server = await ServerProcess.start(
            nursery,
            server_arguments(options),
            torch_threads=None,
            launcher=options.server_launcher,
        )
        try:
            result = await _run(server, options)
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()
    result["server_log"] = str(server.log_path)
    return result


def _print_level(prefix: str, figures: dict[str, Any]) -> None:
    usage = figures["usage"]
    print(
        f"  {prefix} {figures['streams']:>4} streams: jitter p50 {figures['jitter_ms']['p50']} "
        f"p99 {figures['jitter_ms']['p99']} ms (steady p99 "
        f"{figures['jitter_steady_ms']['p99']}, read p99 {figures['jitter_read_ms']['p99']}), "
        f"{figures['errors']} errors, server CPU "
        f"{usage['server']['cpu_cores']} (loop {figures.get('loop_us_per_chunk')} us/chunk), "
        f"client CPU {usage['client']['cpu_cores']}",
        flush=True,
    )


async def _run(server: ServerProcess, options: SyntheticOptions) -> dict[str, Any]:
    started = await memory_point(server.pid)  # before any request
    await streams_level(server.url, 8, options, server_pid=None, seed=10**6)  # warm-up

    idle: dict[str, Any] | None = None
    if options.idle_connections:
        # First, on a fresh server: later levels leave freed memory the allocator reuses.
        await wait_for_quiet(
            [server.pid], below=options.quiet_below, patience=options.quiet_patience
        )
        before = await memory_point(server.pid)
        async with idle_connections(server.url, options.idle_connections) as held:
            await trio.sleep(1.0)  # let the server settle every handshake
            during = await memory_point(server.pid)
            streams = await streams_level(
                server.url, options.idle_streams, options, server_pid=server.pid
            )
            _print_level(f"with {held.opened} idle:", streams)
            print(f"  server RSS: fresh {before:.0f} MB, held {during:.0f} MB", flush=True)
        await trio.sleep(1.0)
        after = _rss_mb(server.pid)
        # The server hands freed heap back on its memory-trim tick (10 s by default).
        settling = []
        for _ in range(max(1, round(options.settle_seconds / 3))):
            await trio.sleep(3.0)
            settling.append(round(_rss_mb(server.pid), 1))
        settled = await memory_point(server.pid)
        print(
            f"  server RSS: at start {started:.0f} MB, after close {after:.0f} MB, "
            f"settling {settling} MB, settled {settled:.0f} MB "
            f"({(settled / before - 1) * 100:+.0f} % over fresh)",
            flush=True,
        )
        idle = {
            "server_rss_start_mb": round(started, 2),
            "server_rss_settling_mb": settling,
            "requested": held.requested,
            "opened": held.opened,
            "failures": held.failures,
            "open_seconds": round(held.seconds, 3),
            "server_rss_before_mb": round(before, 2),
            "server_rss_held_mb": round(during, 2),
            "server_rss_after_close_mb": round(after, 2),
            "server_rss_settled_mb": round(settled, 2),
            "settle_seconds": options.settle_seconds,
            "per_connection_kb": round((during - before) * 1024 / max(held.opened, 1), 2),
            "streams_while_held": streams,
        }

    levels = []
    for count in options.streams:
        gate = await wait_for_quiet(
            [server.pid], below=options.quiet_below, patience=options.quiet_patience
        )
        figures = await streams_level(server.url, count, options, server_pid=server.pid)
        figures["quiet_gate"] = gate
        _print_level("", figures)
        levels.append(figures)
    return {"levels": levels, "idle": idle}


def targets(result: dict[str, Any], options: SyntheticOptions) -> list[dict[str, Any]]:
    passing = [lv["streams"] for lv in result["levels"] if lv["meets_jitter"]]
    best = max(passing, default=0)
    out = [
        {
            "name": "synthetic: 256 concurrent real-time streams, jitter p99 < 20 ms",
            "met": best >= 256,
            "detail": f"highest level meeting the bound: {best} streams "
            f"(levels tried: {', '.join(map(str, options.streams))})",
        }
    ]
    idle = result.get("idle")
    if idle:
        held = idle["streams_while_held"]
        out.append(
            {
                "name": "synthetic: 1,000 idle connections held, jitter bound kept",
                "met": idle["opened"] >= 1000 and held["meets_jitter"],
                "detail": f"{idle['opened']} held, {idle['per_connection_kb']} KB each; "
                f"{held['streams']} streams alongside: jitter p99 {held['jitter_ms']['p99']} ms",
            }
        )
    return out
