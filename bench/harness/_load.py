"""The load generator: closed-loop users, open-loop arrivals, idle connections.

Every connection is the generator's own (no state shared with the server); the
server is only a URL. While a level runs, `monitored` samples the CPU and RSS of
the processes it is given (the server's pid, this process) and the lag of this
process's event loop, so a report can show the client was not the bottleneck.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from time import perf_counter
from typing import Any

import attrs
import trio
from trio_websocket import WebSocketConnection
from wsproto.utilities import LocalProtocolError

from . import _stats, _wire
from ._client import CONNECTION_ERRORS, RequestTiming, connect, failed, synthesize
from ._texts import Job

try:
    import psutil
except ImportError:  # `nox -s tests` installs no psutil: levels then carry no CPU/RSS figures
    psutil = None

# ---------------------------------------------------------------- resource usage


@attrs.define
class Usage:
    """One process over one level: CPU seconds used and resident memory."""

    cpu_seconds: float
    wall: float
    rss_peak: int
    rss_mean: float
    threads: int
    # The process's main thread alone (the server's event loop).
    main_thread_cpu_seconds: float = 0.0

    @property
    def cores(self) -> float:
        """CPU seconds per wall second (1.0 = one core busy all the time)."""
        return self.cpu_seconds / self.wall if self.wall > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "cpu_cores": round(self.cores, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "rss_peak_mb": round(self.rss_peak / 2**20, 2),
            "rss_mean_mb": round(self.rss_mean / 2**20, 2),
            "threads": self.threads,
            "main_thread_cpu_seconds": round(self.main_thread_cpu_seconds, 3),
        }


class _Probe:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        times = self.process.cpu_times()
        self.cpu0 = times.user + times.system
        self.main0 = self._main_thread_cpu()
        self.rss: list[int] = []
        self.sample()

    def sample(self) -> None:
        # The process may have gone; the level reports its errors.
        with contextlib.suppress(psutil.Error):
            self.rss.append(self.process.memory_info().rss)

    def _main_thread_cpu(self) -> float:
        """CPU seconds of the thread whose id is the pid (Linux: the main thread)."""
        with contextlib.suppress(psutil.Error):
            for thread in self.process.threads():
                if thread.id == self.process.pid:
                    return float(thread.user_time + thread.system_time)
        return 0.0

    def finish(self, wall: float) -> Usage:
        self.sample()
        try:
            times = self.process.cpu_times()
            cpu = times.user + times.system - self.cpu0
            threads = self.process.num_threads()
        except psutil.Error:
            cpu, threads = 0.0, 0
        main = max(0.0, self._main_thread_cpu() - self.main0)
        rss = self.rss or [0]
        return Usage(cpu, wall, max(rss), sum(rss) / len(rss), threads, main)


def _busy_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot."""
    if psutil is None:
        return 0.0, 0.0
    times = psutil.cpu_times()
    fields = times._asdict()
    # guest time is already counted in user time.
    total = sum(v for k, v in fields.items() if k not in {"guest", "guest_nice"})
    idle = fields.get("idle", 0.0) + fields.get("iowait", 0.0)
    return total - idle, fields.get("steal", 0.0)


@attrs.define
class Measurement:
    """What `monitored` saw during one level."""

    usage: dict[str, Usage] = attrs.Factory(dict)
    wall: float = 0.0
    machine_busy_cores: float = 0.0
    machine_steal_cores: float = 0.0
    loop_lag: list[float] = attrs.Factory(list)

    @property
    def other_cores(self) -> float:
        """CPU the rest of the machine used meanwhile: a shared machine's noise."""
        ours = sum(usage.cores for usage in self.usage.values())
        return max(0.0, self.machine_busy_cores - ours)

    def as_dict(self) -> dict[str, Any]:
        return {
            **{name: usage.as_dict() for name, usage in self.usage.items()},
            "machine_busy_cores": round(self.machine_busy_cores, 3),
            "other_processes_cores": round(self.other_cores, 3),
            "machine_steal_cores": round(self.machine_steal_cores, 3),
            "client_loop_lag_ms": _stats.summary_ms(self.loop_lag, (50, 99)),
        }


def merge_measurements(parts: Sequence[Measurement]) -> Measurement:
    """One measurement from several disjoint intervals (paired runs): CPU and wall add up."""
    merged = Measurement()
    merged.wall = sum(part.wall for part in parts)
    if merged.wall <= 0:
        return merged
    merged.machine_busy_cores = sum(p.machine_busy_cores * p.wall for p in parts) / merged.wall
    merged.machine_steal_cores = sum(p.machine_steal_cores * p.wall for p in parts) / merged.wall
    merged.loop_lag = [lag for part in parts for lag in part.loop_lag]
    names = {name for part in parts for name in part.usage}
    for name in sorted(names):
        usages = [part.usage[name] for part in parts if name in part.usage]
        cpu = sum(u.cpu_seconds for u in usages)
        wall = sum(u.wall for u in usages)
        mean = sum(u.rss_mean * u.wall for u in usages) / wall if wall > 0 else 0.0
        peak = max(u.rss_peak for u in usages)
        main = sum(u.main_thread_cpu_seconds for u in usages)
        threads = max(u.threads for u in usages)
        merged.usage[name] = Usage(cpu, wall, peak, mean, threads, main)
    return merged


@asynccontextmanager
async def monitored(
    pids: Mapping[str, int | None], *, interval: float = 0.1
) -> AsyncIterator[Measurement]:
    """Sample `pids` (name -> pid; this process is always "client") until the block ends."""
    probes: dict[str, _Probe] = {}
    if psutil is not None:
        probes = {name: _Probe(pid) for name, pid in pids.items() if pid is not None}
        probes.setdefault("client", _Probe(os.getpid()))
    measurement = Measurement()
    busy0, steal0 = _busy_seconds()
    started = perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_sample_rss, probes, interval)
        nursery.start_soon(_watch_loop_lag, measurement.loop_lag)
        try:
            yield measurement
        finally:
            nursery.cancel_scope.cancel()
    measurement.wall = perf_counter() - started
    busy1, steal1 = _busy_seconds()
    measurement.machine_busy_cores = (busy1 - busy0) / measurement.wall
    measurement.machine_steal_cores = (steal1 - steal0) / measurement.wall
    measurement.usage = {name: probe.finish(measurement.wall) for name, probe in probes.items()}


async def _sample_rss(probes: Mapping[str, _Probe], interval: float) -> None:
    while True:
        await trio.sleep(interval)
        for probe in probes.values():
            probe.sample()


async def _watch_loop_lag(out: list[float], period: float = 0.01) -> None:
    """How late this event loop wakes a 10 ms sleeper: the client's own queueing delay."""
    while True:
        before = perf_counter()
        await trio.sleep(period)
        out.append(max(0.0, perf_counter() - before - period))


async def wait_for_quiet(
    pids: Sequence[int | None], *, below: float, patience: float, window: float = 0.5
) -> dict[str, float]:
    """Wait (at most `patience` s) until processes other than `pids` and this one use
    less than `below` cores over a `window`: on a shared machine, measure in the lulls.

    Returns how long it waited and the other processes' load in the last window.
    """
    if psutil is None or patience <= 0:
        return {"waited_s": 0.0, "other_cores": 0.0}
    processes = [psutil.Process(pid) for pid in {*pids, os.getpid()} if pid is not None]

    def own_cpu() -> float:
        total = 0.0
        for process in processes:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
        return total

    started = perf_counter()
    while True:
        busy0, _ = _busy_seconds()
        own0, t0 = own_cpu(), perf_counter()
        await trio.sleep(window)
        busy1, _ = _busy_seconds()
        elapsed = perf_counter() - t0
        others = max(0.0, (busy1 - busy0 - (own_cpu() - own0)) / elapsed)
        waited = perf_counter() - started
        if others < below or waited >= patience:
            return {"waited_s": round(waited, 2), "other_cores": round(others, 3)}


# ---------------------------------------------------------------- connections


class Connections:
    """Every connection a level opens, so that each one is closed at the end."""

    def __init__(self, nursery: trio.Nursery, url: str) -> None:
        self._nursery = nursery
        self.url = url
        self.open_now: set[WebSocketConnection] = set()
        self.failures: Counter[str] = Counter()

    async def open(self) -> WebSocketConnection:
        ws = await connect(self._nursery, self.url)
        self.open_now.add(ws)
        return ws

    async def open_many(self, count: int, *, parallel: int = 64) -> list[WebSocketConnection]:
        """Open up to `count` connections, `parallel` handshakes at a time; count failures."""
        opened: list[WebSocketConnection] = []
        limiter = trio.CapacityLimiter(parallel)

        async def one() -> None:
            async with limiter:
                try:
                    opened.append(await self.open())
                except CONNECTION_ERRORS as exc:
                    self.failures[type(exc).__name__] += 1

        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)
        return opened

    async def discard(self, ws: WebSocketConnection) -> None:
        self.open_now.discard(ws)
        with trio.move_on_after(2.0):
            await ws.aclose()

    async def aclose(self, *, parallel: int = 64) -> None:
        limiter = trio.CapacityLimiter(parallel)

        async def close(ws: WebSocketConnection) -> None:
            async with limiter:
                await self.discard(ws)

        async with trio.open_nursery() as nursery:
            for ws in list(self.open_now):
                nursery.start_soon(close, ws)


@asynccontextmanager
async def connections(url: str) -> AsyncIterator[Connections]:
    try:
        async with trio.open_nursery() as nursery:
            pool = Connections(nursery, url)
            try:
                yield pool
            finally:
                with trio.CancelScope(shield=True):
                    await pool.aclose()
    except* LocalProtocolError:
        # trio-websocket's reader answers a server ping that crosses our close with a
        # pong wsproto refuses (python-trio/trio-websocket#184): harmless at teardown.
        pass


# ---------------------------------------------------------------- levels


@attrs.define
class LevelRun:
    """The raw outcome of one level against one target (server or baseline)."""

    timings: list[RequestTiming]
    started: float
    measurement: Measurement | None = None
    #: Set for runs stitched together from separate intervals (see `concatenate`).
    wall_override: float | None = None

    @property
    def wall(self) -> float:
        if self.wall_override is not None:
            return self.wall_override
        ends = [t.done for t in self.timings if t.done is not None]
        return max(ends) - self.started if ends else 0.0


def concatenate(runs: Sequence[LevelRun]) -> LevelRun:
    """Runs done one after another with gaps between them, as one: their walls add up."""
    measurements = [run.measurement for run in runs if run.measurement is not None]
    return LevelRun(
        [timing for run in runs for timing in run.timings],
        started=0.0,
        measurement=merge_measurements(measurements) if measurements else None,
        wall_override=sum(run.wall for run in runs),
    )


async def request(
    pool: Connections,
    ws: WebSocketConnection | None,
    job: Job,
    *,
    sent: float,
    request_timeout: float,
    keep_arrivals: bool = False,
) -> tuple[RequestTiming, WebSocketConnection | None]:
    """One request; returns the connection if it is still usable for the next one."""
    try:
        with trio.fail_after(request_timeout):
            if ws is None:
                ws = await pool.open()
            timing = await synthesize(ws, job, sent=sent, keep_arrivals=keep_arrivals)
    except trio.TooSlowError:
        # Frames of the abandoned request may still arrive: the connection is spent.
        if ws is not None:
            await pool.discard(ws)
        return failed(sent, "timeout"), None
    except CONNECTION_ERRORS as exc:
        if ws is not None:
            await pool.discard(ws)
        return failed(sent, exc), None
    return timing, ws


async def closed_loop(
    url: str,
    jobs: Sequence[Job],
    concurrency: int,
    *,
    pids: Mapping[str, int | None] | None = None,
    request_timeout: float = 300.0,
    keep_arrivals: bool = False,
) -> LevelRun:
    """`concurrency` users, each on its own connection, each sending its next request
    as soon as the previous one completes, until `jobs` are all done."""
    results: list[RequestTiming] = []
    pending: Iterator[Job] = iter(jobs)

    async def user(ws: WebSocketConnection | None) -> None:
        for job in pending:
            timing, ws = await request(
                pool,
                ws,
                job,
                sent=perf_counter(),
                request_timeout=request_timeout,
                keep_arrivals=keep_arrivals,
            )
            results.append(timing)

    async with connections(url) as pool:
        opened = await pool.open_many(concurrency)
        users: list[WebSocketConnection | None] = [*opened]
        users += [None] * (concurrency - len(opened))  # retry their handshake per request
        async with monitored(pids or {}) as measurement:
            started = perf_counter()
            async with trio.open_nursery() as nursery:
                for ws in users:
                    nursery.start_soon(user, ws)
    return LevelRun(results, started, measurement)


async def open_loop(
    url: str,
    jobs: Sequence[Job],
    arrivals: Sequence[float],
    *,
    pool_size: int,
    pids: Mapping[str, int | None] | None = None,
    request_timeout: float = 300.0,
    keep_arrivals: bool = False,
) -> LevelRun:
    """Send job i at offset `arrivals[i]` whatever is still running (open loop).

    A request's clock starts at its scheduled arrival, so a late send or a handshake
    on a fresh connection (when the `pool_size` pre-opened ones are busy) counts
    against it, as it would for a real caller.
    """
    if len(arrivals) != len(jobs):
        raise ValueError("one arrival offset per job")
    results: list[RequestTiming] = []

    async with connections(url) as pool:
        idle = await pool.open_many(pool_size)

        async def one(job: Job, sent: float) -> None:
            ws = idle.pop() if idle else None
            timing, ws = await request(
                pool,
                ws,
                job,
                sent=sent,
                request_timeout=request_timeout,
                keep_arrivals=keep_arrivals,
            )
            results.append(timing)
            if ws is not None:
                idle.append(ws)

        async with monitored(pids or {}) as measurement:
            started = perf_counter()
            async with trio.open_nursery() as nursery:
                for job, offset in zip(jobs, arrivals, strict=True):
                    due = started + offset
                    await trio.sleep(max(0.0, due - perf_counter()))
                    nursery.start_soon(one, job, due)
    return LevelRun(results, started, measurement)


async def wire_open_loop(
    url: str,
    jobs: Sequence[Job],
    arrivals: Sequence[float],
    *,
    pids: Mapping[str, int | None] | None = None,
    request_timeout: float = 300.0,
) -> LevelRun:
    """`open_loop` over `_wire` connections (one per job, opened first): every chunk
    keeps its read time and its kernel receive time."""
    if len(arrivals) != len(jobs):
        raise ValueError("one arrival offset per job")
    results: list[RequestTiming] = []
    opened: list[_wire.WireConnection] = []
    try:
        limit = trio.CapacityLimiter(64)  # the server's accept backlog is finite
        async with trio.open_nursery() as nursery:
            for _ in jobs:
                nursery.start_soon(_open_wire, url, opened, limit)
        if len(opened) < len(jobs):
            raise RuntimeError(f"opened {len(opened)} of {len(jobs)} connections")

        async def one(connection: _wire.WireConnection, job: Job, sent: float) -> None:
            try:
                with trio.fail_after(request_timeout):
                    results.append(await _wire.synthesize(connection, job, sent=sent))
            except (trio.TooSlowError, _wire.WireError, *CONNECTION_ERRORS) as exc:
                results.append(failed(sent, exc))

        async with monitored(pids or {}) as measurement:
            started = perf_counter()
            async with trio.open_nursery() as nursery:
                for connection, job, offset in zip(opened, jobs, arrivals, strict=True):
                    due = started + offset
                    await trio.sleep(max(0.0, due - perf_counter()))
                    nursery.start_soon(one, connection, job, due)
    finally:
        with trio.CancelScope(shield=True):
            for connection in opened:
                await connection.aclose()
    return LevelRun(results, started, measurement)


async def _open_wire(
    url: str, into: list[_wire.WireConnection], limit: trio.CapacityLimiter
) -> None:
    async with limit:
        with contextlib.suppress(OSError, _wire.WireError):
            into.append(await _wire.WireConnection.open(url))


@attrs.define
class IdleConnections:
    """Connections opened only to be held (handshake done, nothing sent)."""

    requested: int
    opened: int = 0
    seconds: float = 0.0
    failures: dict[str, int] = attrs.Factory(dict)


@asynccontextmanager
async def idle_connections(url: str, count: int) -> AsyncIterator[IdleConnections]:
    """Open `count` connections and hold them for the block; they are closed after it."""
    held = IdleConnections(count)
    async with connections(url) as pool:
        started = perf_counter()
        opened = await pool.open_many(count)
        held.seconds = perf_counter() - started
        held.opened = len(opened)
        held.failures = dict(pool.failures)
        yield held


# ---------------------------------------------------------------- figures


def level_figures(run: LevelRun) -> dict[str, Any]:
    """The per-level figures of the issue, from the raw timings."""
    ok = [t for t in run.timings if t.ok]
    wall = run.wall
    audio = sum(t.audio_seconds for t in ok)
    ttfa = [t.ttfa for t in ok if t.ttfa is not None]
    rtf = [t.rtf for t in ok if t.rtf is not None]
    latency = [t.done - t.sent for t in ok if t.done is not None]
    errors = Counter(t.error or "no_audio" for t in run.timings if not t.ok)
    p50, p95 = _stats.percentile(rtf, 50), _stats.percentile(rtf, 95)
    figures: dict[str, Any] = {
        "requests": len(run.timings),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "wall_s": round(wall, 3),
        "ttfa_ms": _stats.summary_ms(ttfa),
        "latency_ms": _stats.summary_ms(latency, (50, 95)),
        "rtf": {
            "p50": None if p50 is None else round(p50, 4),
            "p95": None if p95 is None else round(p95, 4),
        },
        "audio_seconds": round(audio, 3),
        "audio_s_per_s": round(audio / wall, 4) if wall > 0 else None,
        "requests_per_s": round(len(ok) / wall, 4) if wall > 0 else None,
    }
    if run.measurement is not None:
        figures["usage"] = run.measurement.as_dict()
    return figures


def _stream_times(run: LevelRun, clock: str) -> list[tuple[list[float], float]]:
    """Each complete stream's chunk times on `clock` with its nominal gap at rtf 1."""
    out = []
    for timing in run.timings:
        times = timing.wire_arrivals if clock == "wire" else timing.arrivals
        if timing.ok and times and timing.chunks:
            out.append((times, timing.samples / timing.chunks / timing.sample_rate))
    return out


def steady_jitter(run: LevelRun, *, rtf: float, clock: str = "wire") -> list[float]:
    """`stream_jitter` over the level's steady part only: gaps that begin after every
    stream has had its first chunk and end before any stream has had its last."""
    streams = _stream_times(run, clock)
    if not streams:
        return []
    begin = max(times[0] for times, _ in streams)
    end = min(times[-1] for times, _ in streams)
    out: list[float] = []
    for times, period in streams:
        inside = [t for t in times if begin <= t <= end]
        out.extend(_stats.jitter(inside, period * rtf))
    return out


def stream_jitter(run: LevelRun, *, rtf: float, clock: str = "read") -> list[float]:
    """Inter-chunk jitter (s) of every stream in a level, against the paced period.

    The nominal gap is one chunk's duration times the engine's real-time factor
    (160 ms for 7680 samples at 48 kHz and rtf 1.0). `clock`: "read" (when the client
    read each chunk) or "wire" (when the kernel received it; `wire_open_loop` runs).
    """
    out: list[float] = []
    for times, period in _stream_times(run, clock):
        out.extend(_stats.jitter(times, period * rtf))
    return out
