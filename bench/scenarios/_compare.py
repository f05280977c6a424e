"""voxtrio vs the engine it wraps, side by side: one server process, one baseline process.

For each worker count W, a round replays every level on both, one right after the
other (the order alternates between rounds so slow drift on a shared machine hits
both alike). Each level sends the same jobs (texts, seeds, max_len) to both.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from time import perf_counter
from typing import Any, Literal

import attrs
import trio

from ..harness import _stats
from ..harness._client import RequestTiming
from ..harness._load import (
    LevelRun,
    closed_loop,
    concatenate,
    connections,
    level_figures,
    monitored,
    open_loop,
    request,
    wait_for_quiet,
)
from ..harness._procs import BaselineProcess, ServerProcess
from ..harness._texts import Job, make_jobs, poisson_arrivals

#: Open-loop "auto" rate: this fraction of the engine's measured capacity.
AUTO_RATE_LOAD = 0.7


@attrs.frozen(kw_only=True)
class CompareOptions:
    model_dir: str
    device: str = "auto"
    workers: Sequence[int] = (1,)
    concurrency: Sequence[int] = (1, 4, 16)
    rates: Sequence[float | Literal["auto"]] = ("auto",)
    requests_per_level: int = 12
    repeat: int = 3
    max_len: int = 24
    text_set: str = "short"
    seed: int = 0
    torch_threads: int | None = None
    request_timeout: float = 600.0
    server_args: Sequence[str] = ()
    server_launcher: Sequence[str] = (sys.executable, "-m", "voxtrio")
    #: Before each level and round, wait up to `quiet_patience` s for other processes
    #: to use less than `quiet_below` cores (0 patience: do not wait).
    quiet_below: float = 0.25
    quiet_patience: float = 10.0


@attrs.frozen
class Level:
    mode: Literal["closed", "open"]
    concurrency: int | None = None
    rate: float | None = None

    @property
    def label(self) -> str:
        if self.mode == "closed":
            return f"c={self.concurrency}"
        return f"open {self.rate:.3g}/s"

    def requests(self, per_level: int) -> int:
        # A closed level needs a few requests per user to reach a steady state.
        return max(per_level, 2 * (self.concurrency or 0))


async def compare(options: CompareOptions) -> dict[str, Any]:
    """Every worker count in turn; returns the JSON-ready figures."""
    runs = []
    hello: dict[str, Any] = {}
    for workers in options.workers:
        run, hello = await _compare_workers(options, workers)
        runs.append(run)
    return {
        "runs": runs,
        "torch_threads": hello.get("torch_threads"),
        "device": hello.get("device"),
        "gpu": hello.get("gpu"),
        "sample_rate": hello.get("sample_rate"),
    }


def server_arguments(options: CompareOptions, workers: int) -> list[str]:
    peak = max([*options.concurrency, workers, 16])
    return [
        "--engine",
        "voxcpm",
        "--model",
        options.model_dir,
        "--device",
        options.device,
        "--workers",
        str(workers),
        # Admission must not refuse what the bench deliberately queues: at
        # concurrency N every request may wait for a slot.
        "--max-concurrent",
        str(peak * 2),
        "--max-connections",
        str(peak * 2 + 64),
        "--queue-timeout",
        str(options.request_timeout),
        *options.server_args,
    ]


async def _compare_workers(
    options: CompareOptions, workers: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    async with trio.open_nursery() as nursery:
        baseline = await BaselineProcess.start(
            nursery,
            model=options.model_dir,
            device=options.device,
            workers=workers,
            torch_threads=options.torch_threads,
        )
        server: ServerProcess | None = None
        try:
            server = await ServerProcess.start(
                nursery,
                server_arguments(options, workers),
                # The baseline reports what torch chose; the server gets the same.
                torch_threads=options.torch_threads or baseline.hello["torch_threads"],
                launcher=options.server_launcher,
            )
            result = await _rounds(options, workers, server, baseline)
        finally:
            with trio.CancelScope(shield=True):
                if server is not None:
                    await server.stop()
                await baseline.stop()
    result["server_log"] = str(server.log_path)
    return result, baseline.hello


async def _rounds(
    options: CompareOptions, workers: int, server: ServerProcess, baseline: BaselineProcess
) -> dict[str, Any]:
    # Warm both sides (first-call allocations, caches) with W at once.
    warm = make_jobs(options.text_set, 2 * workers, max_len=options.max_len, seed=10**6)
    await closed_loop(server.url, warm, workers, request_timeout=options.request_timeout)
    warm_run = await baseline.run(warm, concurrency=workers)
    capacity_rps = len(warm) / warm_run.wall if warm_run.wall > 0 else 1.0

    levels = [Level("closed", concurrency=c) for c in options.concurrency]
    for rate in options.rates:
        value = AUTO_RATE_LOAD * capacity_rps if rate == "auto" else float(rate)
        levels.append(Level("open", rate=round(value, 3)))

    raw: dict[Level, dict[str, list[LevelRun]]] = {
        level: {"server": [], "baseline": [], "pairs": []} for level in levels
    }
    quiet: dict[Level, list[dict[str, float]]] = {level: [] for level in levels}
    for round_index in range(options.repeat):
        for level in levels:
            quiet[level].append(
                await wait_for_quiet(
                    [server.pid, baseline.pid],
                    below=options.quiet_below,
                    patience=options.quiet_patience,
                )
            )
            count = level.requests(options.requests_per_level)
            jobs = make_jobs(options.text_set, count, max_len=options.max_len, seed=options.seed)
            if level.concurrency == 1:
                runs = await _paired(options, server, baseline, jobs, round_index)
            else:
                runs = await _side_by_side(options, server, baseline, level, jobs, round_index)
            for side, run in runs.items():
                raw[level][side].append(run)
                if side == "pairs":
                    continue
                figures = level_figures(run)
                print(
                    f"  W={workers} round {round_index + 1} {level.label:>12} {side:>8}: "
                    f"TTFA p50 {figures['ttfa_ms']['p50']} ms, "
                    f"{figures['audio_s_per_s']} audio s/s, {figures['errors']} errors",
                    flush=True,
                )
    return {
        "workers": workers,
        "engine_capacity_rps_warmup": round(capacity_rps, 4),
        "levels": [
            {**_level_result(level, raw[level]), "quiet_gate": quiet[level]} for level in levels
        ],
    }


async def _side_by_side(
    options: CompareOptions,
    server: ServerProcess,
    baseline: BaselineProcess,
    level: Level,
    jobs: Sequence[Job],
    round_index: int,
) -> dict[str, LevelRun]:
    """The whole level on one side, then on the other (the order alternates by round)."""
    runs: dict[str, LevelRun] = {}
    sides = ("baseline", "server") if round_index % 2 == 0 else ("server", "baseline")
    arrivals = None
    if level.mode == "open":
        assert level.rate is not None
        arrivals = poisson_arrivals(level.rate, len(jobs), seed=options.seed + round_index)
    for side in sides:
        if side == "baseline":
            if arrivals is None:
                runs[side] = await baseline.run(jobs, concurrency=level.concurrency)
            else:
                runs[side] = await baseline.run(jobs, arrivals=arrivals)
        elif arrivals is None:
            assert level.concurrency is not None
            runs[side] = await closed_loop(
                server.url,
                jobs,
                level.concurrency,
                pids={"server": server.pid},
                request_timeout=options.request_timeout,
            )
        else:
            runs[side] = await open_loop(
                server.url,
                jobs,
                arrivals,
                pool_size=min(len(jobs), 16),
                pids={"server": server.pid},
                request_timeout=options.request_timeout,
            )
    return runs


async def _paired(
    options: CompareOptions,
    server: ServerProcess,
    baseline: BaselineProcess,
    jobs: Sequence[Job],
    round_index: int,
) -> dict[str, LevelRun]:
    """Concurrency 1, request by request: job i on the engine, then on the server (or the
    other way round), so a burst of load from elsewhere on a shared machine hits both
    sides of a pair alike. `pairs` holds each pair's TTFA difference."""
    server_runs: list[LevelRun] = []
    baseline_runs: list[LevelRun] = []
    differences: list[RequestTiming] = []
    async with connections(server.url) as pool:
        opened = await pool.open_many(1)
        ws = opened[0] if opened else None
        for index, job in enumerate(jobs):
            baseline_first = (index + round_index) % 2 == 0
            if baseline_first:
                baseline_runs.append(await baseline.run([job], concurrency=1))
            async with monitored({"server": server.pid}) as measurement:
                sent = perf_counter()
                timing, ws = await request(
                    pool, ws, job, sent=sent, request_timeout=options.request_timeout
                )
            server_runs.append(LevelRun([timing], sent, measurement))
            if not baseline_first:
                baseline_runs.append(await baseline.run([job], concurrency=1))
            engine = baseline_runs[-1].timings[0]
            if timing.ok and engine.ok:
                assert timing.done is not None
                assert engine.done is not None
                # Stored as timings whose "ttfa" / "done" are the differences in TTFA and
                # in total time, to reuse the summaries.
                differences.append(
                    RequestTiming(
                        sent=0.0,
                        first_audio=(timing.first_audio or 0) - timing.sent - (engine.ttfa or 0),
                        done=(timing.done - timing.sent) - (engine.done - engine.sent),
                    )
                )
    return {
        "server": concatenate(server_runs),
        "baseline": concatenate(baseline_runs),
        "pairs": LevelRun(differences, started=0.0),
    }


def combine(runs: Sequence[LevelRun]) -> dict[str, Any]:
    """Figures over rounds: latency percentiles of all requests pooled, rates as medians."""
    rounds = [level_figures(run) for run in runs]
    pooled = level_figures(LevelRun([t for run in runs for t in run.timings], started=0.0))
    out = {
        key: pooled[key]
        for key in ("requests", "errors", "error_kinds", "ttfa_ms", "latency_ms", "rtf")
    }
    for key in ("audio_s_per_s", "requests_per_s"):
        values = [r[key] for r in rounds if r[key] is not None]
        out[key] = _stats.median(values)
    usage: dict[str, Any] = {}
    for name in ("server", "baseline", "client"):
        per_round = [r["usage"][name] for r in rounds if name in r.get("usage", {})]
        if per_round:
            usage[name] = {
                "cpu_cores": _stats.median([u["cpu_cores"] for u in per_round]),
                "rss_peak_mb": max(u["rss_peak_mb"] for u in per_round),
                "threads": max(u["threads"] for u in per_round),
            }
    for key in ("machine_busy_cores", "other_processes_cores"):
        values = [r["usage"][key] for r in rounds if "usage" in r]
        if values:
            usage[key] = _stats.median(values)
    out["usage"] = usage
    out["rounds"] = rounds
    return out


def _level_result(level: Level, raw: dict[str, list[LevelRun]]) -> dict[str, Any]:
    server, baseline = combine(raw["server"]), combine(raw["baseline"])
    per_round = [
        (s["ttfa_ms"]["p50"], b["ttfa_ms"]["p50"], s["audio_s_per_s"], b["audio_s_per_s"])
        for s, b in zip(server["rounds"], baseline["rounds"], strict=True)
    ]
    round_ms = [s - b for s, b, _, _ in per_round if s is not None and b is not None]
    tput = [s / b for _, _, s, b in per_round if s is not None and b]
    pairs = [t.ttfa for run in raw["pairs"] for t in run.timings if t.ttfa is not None]
    pairs_total = [t.done for run in raw["pairs"] for t in run.timings if t.done is not None]
    engine_p50 = baseline["ttfa_ms"]["p50"]
    if pairs:
        # Paired requests: the median of per-pair differences resists load bursts.
        method = "median of per-request differences (paired, alternating order)"
        extra_ms = _stats.median([d * 1000 for d in pairs])
    else:
        method = "median over rounds of (server p50 - engine p50)"
        extra_ms = _stats.median(round_ms)
    return {
        "label": level.label,
        "mode": level.mode,
        "concurrency": level.concurrency,
        "rate": level.rate,
        "server": server,
        "baseline": baseline,
        "ttfa_overhead": {
            "ms": _round(extra_ms, 3),
            "ratio": _round(
                None if extra_ms is None or not engine_p50 else 1 + extra_ms / engine_p50, 4
            ),
            "method": method,
            "pairs_ms": _stats.summary_ms(pairs, (5, 50, 95)) if pairs else None,
            # Paired difference in a request's total time (server - engine): the cost
            # per request that a throughput ratio at concurrency 1 reflects.
            "pairs_total_ms": _stats.summary_ms(pairs_total, (5, 50, 95)) if pairs else None,
            "per_round_p50_ms": [round(x, 3) for x in round_ms],
        },
        "throughput_ratio": _round(_stats.median(tput), 4),
        "throughput_ratio_per_round": [round(x, 4) for x in tput],
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, judged on the first worker count's run."""
    out: list[dict[str, Any]] = []
    for run in result["runs"]:
        levels = {lv["label"]: lv for lv in run["levels"]}
        if (c1 := levels.get("c=1")) is not None:
            engine_p50 = c1["baseline"]["ttfa_ms"]["p50"]
            extra = c1["ttfa_overhead"]["ms"]
            allowed = _stats.ttfa_overhead_allowed_ms(engine_p50 / 1000) if engine_p50 else None
            met = None if extra is None or allowed is None else extra <= allowed
            out.append(
                {
                    "name": f"W={run['workers']}: first-audio overhead at concurrency 1",
                    "met": met,
                    "detail": (
                        f"{extra:+.2f} ms over the engine's {engine_p50:.1f} ms p50; "
                        f"allowed {allowed:.2f} ms"
                        if extra is not None and engine_p50 and allowed is not None
                        else "no paired data"
                    ),
                }
            )
        if (c4 := levels.get("c=4")) is not None:
            value = c4["throughput_ratio"]
            met = None if value is None else value >= _stats.THROUGHPUT_RATIO
            out.append(
                {
                    "name": f"W={run['workers']}: throughput at concurrency 4",
                    "met": met,
                    "detail": f"{value} of the engine's capacity; at least "
                    f"{_stats.THROUGHPUT_RATIO} needed",
                }
            )
    return out
