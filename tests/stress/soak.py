"""Soak: mixed load on a real `voxtrio serve` process for a set time; figures and a PNG.

    python -m tests.stress.soak --duration 120 --out bench/results --doc docs/RELIABILITY.md

The server runs the tiny random-weight checkpoint (`voxtrio.tools._tiny_model.build_checkpoint`)
through real voxcpm on the CPU, or the synthetic engine (`--engine synthetic`). A few
client loops mix streaming, non-streaming and text-stream requests, cancels, clients
that vanish mid-stream, DashScope tasks, malformed messages and pings. Every second
the driver samples the server's RSS, thread count and /metrics gauges. At the end it
waits for the gauges to read zero, checks RSS against its level after the warm-up
phase, counts error lines in the server's log, stops the server with SIGTERM (a
graceful drain must exit 0) and writes `<date>-soak.json` + `.png` under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import attrs
import trio
from trio_websocket import ConnectionClosed, HandshakeError

from .fuzzing import continue_task, dumps, finish_task, run_task
from .harness import (
    LIVE_GAUGES,
    RSS_TOLERANCE,
    connect,
    dashscope_url,
    rss_bytes,
    scrape_gauges,
)

ROOT = Path(__file__).resolve().parents[2]
TEXTS = (
    "Hello there.",
    "The quick brown fox jumps over the lazy dog.",
    "Streaming speech, one chunk at a time.",
    "Numbers such as 12 and 345 are spoken too.",
)
GARBAGE = ("{oops", "[1, 2]", '{"type": "sing"}', '{"type": "cancel", "request_id": "nobody"}')
# Outcomes the load asks for on purpose; anything else is an unexpected error.
EXPECTED = frozenset(
    {
        "ok",
        "cancelled",
        "vanished",
        "task-finished",
        "pong",
        "INVALID_JSON",
        "UNKNOWN_MESSAGE_TYPE",
        "UNKNOWN_REQUEST",
        "RATE_LIMITED",
    }
)
ACTIONS = {
    "streaming": 5,
    "non_streaming": 2,
    "text_stream": 2,
    "cancel": 2,
    "vanish": 1,
    "dashscope": 2,
    "garbage": 1,
    "ping": 1,
}
SAMPLE_EVERY = 1.0
SETTLE_DEADLINE = 30.0  # for the server to notice that every client has gone


@attrs.frozen
class SoakConfig:
    duration: float = 120.0
    clients: int = 4
    workers: int = 2
    engine: Literal["tiny", "synthetic"] = "tiny"
    model_dir: Path | None = None
    warmup: float | None = None  # default: a quarter of the run, at most 20 s
    seed: int = 0

    @property
    def warmup_s(self) -> float:
        return self.warmup if self.warmup is not None else min(20.0, self.duration / 4)


@attrs.define
class Record:
    at: float  # seconds since the load started
    action: str
    outcome: str
    first_audio_s: float | None = None


@attrs.define
class Sample:
    at: float
    rss: int
    threads: int
    gauges: dict[str, float]


@attrs.define
class Soak:
    config: SoakConfig
    url: str
    metrics_url: str
    pid: int
    started: float = attrs.field(factory=time.perf_counter)
    records: list[Record] = attrs.Factory(list)
    samples: list[Sample] = attrs.Factory(list)

    def now(self) -> float:
        return time.perf_counter() - self.started

    def record(self, action: str, outcome: str, first_audio_s: float | None = None) -> None:
        self.records.append(Record(round(self.now(), 3), action, outcome, first_audio_s))


# ---------------------------------------------------------------- the server process


def thread_names(pid: int) -> Counter[str]:
    """The OS names of a process's threads, but trio's idle thread-cache workers."""
    names: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = task.joinpath("comm").read_text().strip()
            if not name.startswith("Trio thread"):
                names[name] += 1
    return names


def process_threads(pid: int) -> int:
    """Threads of a process, but trio's idle thread-cache workers (they time out)."""
    return sum(thread_names(pid).values())


def server_command(config: SoakConfig, model_dir: Path | None, ready: Path) -> list[str]:
    engine = ["--engine", "synthetic", "--synthetic-rtf", "0.1"]
    if config.engine == "tiny":
        assert model_dir is not None
        engine = ["--engine", "voxcpm", "--model", str(model_dir), "--device", "cpu"]
    return [
        sys.executable,
        "-m",
        "voxtrio",
        "serve",
        *engine,
        "--workers",
        str(config.workers),
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--ready-file",
        str(ready),
        "--log-format",
        "json",
        "--max-concurrent",
        "8",
        "--queue-timeout",
        "10",
        "--write-timeout",
        "5",
        "--stop-timeout",
        "5",
        "--handshake-timeout",
        "5",
        "--stall-timeout",
        "30",
    ]


def server_errors(log: Path) -> list[str]:
    """The error lines of the server's JSON log."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "critical"):
            last = str(entry.get("exception", "")).strip().splitlines()[-1:]
            found.append(f"{entry.get('event')}: {last[0] if last else ''}")
    return found


# ---------------------------------------------------------------- the load


def request_body(rid: str, rng: random.Random, config: SoakConfig, **params: Any) -> str:
    body: dict[str, Any] = {"text": rng.choice(TEXTS), **params}
    if config.engine == "tiny":
        # The tiny checkpoint never stops by itself: cap its length.
        body.setdefault("max_len", rng.randint(4, 10))
    if rng.random() < 0.25:
        body["format"] = rng.choice(["wav", "mp3", "opus"])
    return dumps({"type": "tts_request", "request_id": rid, "params": body})


async def native_action(soak: Soak, action: str, rng: random.Random, n: int) -> None:
    """One native action on its own connection."""
    rid = f"r{n}"
    sent = time.perf_counter()
    first: float | None = None
    async with connect(soak.url) as ws:
        if action == "garbage":
            await ws.send_message(rng.choice(GARBAGE))
            reply = json.loads(await ws.get_message())
            soak.record(
                action, reply["error"]["code"] if reply["type"] == "error" else reply["type"]
            )
            return
        if action == "ping":
            await ws.send_message(dumps({"type": "ping", "timestamp": n}))
            soak.record(action, json.loads(await ws.get_message())["type"])
            return
        if action == "text_stream":
            params: dict[str, Any] = {"max_len": 4} if soak.config.engine == "tiny" else {}
            start = {"type": "text_stream_start", "request_id": rid, "params": params}
            await ws.send_message(dumps(start))
            for word in rng.choice(TEXTS).split():
                delta = {"type": "text_delta", "request_id": rid, "text": word + " "}
                await ws.send_message(dumps(delta))
            await ws.send_message(dumps({"type": "text_stream_end", "request_id": rid}))
        else:
            extra: dict[str, Any] = {}
            if action == "non_streaming":
                extra["mode"] = "non_streaming"
            if action in ("cancel", "vanish") and soak.config.engine == "tiny":
                extra["max_len"] = 30
            await ws.send_message(request_body(rid, rng, soak.config, **extra))
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                if first is None and len(message) > 100:
                    first = time.perf_counter() - sent
                    if action == "cancel":
                        await ws.send_message(dumps({"type": "cancel", "request_id": rid}))
                    elif action == "vanish":
                        soak.record(action, "vanished", first)
                        await trio.aclose_forcefully(ws._stream)
                        return
                continue
            decoded = json.loads(message)
            if decoded.get("request_id") != rid or decoded["type"] not in ("complete", "error"):
                continue
            if decoded["type"] == "complete":
                cancelled = decoded["result"].get("cancelled")
                soak.record(action, "cancelled" if cancelled else "ok", first)
            else:
                soak.record(action, decoded["error"]["code"], first)
            return


async def dashscope_action(soak: Soak, rng: random.Random, n: int) -> None:
    """One DashScope task: run-task, one or two sentences, finish-task."""
    task = f"d{n}"
    sent = time.perf_counter()
    first: float | None = None
    async with connect(dashscope_url(soak.url)) as ws:
        await ws.send_message(dumps(run_task(task, format=rng.choice(["pcm", "mp3"]))))
        await ws.send_message(dumps(continue_task(task, rng.choice(TEXTS[:1]))))
        await ws.send_message(dumps(finish_task(task)))
        while True:
            message = await ws.get_message()
            if isinstance(message, bytes):
                if first is None:
                    first = time.perf_counter() - sent
                continue
            head = json.loads(message)["header"]
            if head["event"] == "task-finished":
                soak.record("dashscope", "task-finished", first)
                return
            if head["event"] == "task-failed":
                soak.record("dashscope", f"task-failed {head['error_code']}", first)
                return


async def client_loop(soak: Soak, index: int, until: float) -> None:
    rng = random.Random(f"{soak.config.seed}-{index}-{until}")
    names = list(ACTIONS)
    weights = [ACTIONS[name] for name in names]
    n = int(soak.now() * 1000)  # request ids stay unique across phases
    while soak.now() < until:
        n += 1
        action = rng.choices(names, weights)[0]
        try:
            with trio.fail_after(60):
                if action == "dashscope":
                    await dashscope_action(soak, rng, n)
                else:
                    await native_action(soak, action, rng, n)
        except trio.TooSlowError:
            soak.record(action, "client stuck 60 s")
        except ConnectionClosed as exc:
            soak.record(action, f"closed {exc.reason.code if exc.reason else None}")
        except (HandshakeError, OSError, trio.BrokenResourceError) as exc:
            soak.record(action, f"{type(exc).__name__}")


async def sampler(soak: Soak, until: float) -> None:
    port = int(soak.metrics_url.rsplit(":", 1)[1])
    while soak.now() < until:
        gauges = await scrape_gauges(port)
        soak.samples.append(
            Sample(round(soak.now(), 3), rss_bytes(soak.pid), process_threads(soak.pid), gauges)
        )
        await trio.sleep(SAMPLE_EVERY)


# ---------------------------------------------------------------- a whole run


async def run_soak(config: SoakConfig, workdir: Path) -> dict[str, Any]:
    """Start the server, load it for `duration` s, settle, audit, stop it; the figures."""
    model_dir = config.model_dir
    if config.engine == "tiny" and model_dir is None:
        from voxtrio.tools._tiny_model import build_checkpoint

        model_dir = build_checkpoint(workdir / "tiny-voxcpm2", arch="voxcpm2", force=True)
    ready = workdir / "ready"
    log = workdir / "server.log"
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with log.open("wb") as log_file:
        process = await trio.lowlevel.open_process(
            server_command(config, model_dir, ready), stderr=log_file, stdout=log_file, env=env
        )
        try:
            with trio.fail_after(300):
                while not ready.exists():
                    if process.poll() is not None:
                        raise RuntimeError(f"voxtrio serve exited: {log.read_text()[-2000:]}")
                    await trio.sleep(0.1)
            url, metrics_url = ready.read_text().split()[:2]
            soak = Soak(config, url, metrics_url, process.pid)
            summary = await _load_and_audit(soak)
            process.send_signal(signal.SIGTERM)
            with trio.move_on_after(60):
                await process.wait()
            summary["exit_code"] = process.returncode
        finally:
            if process.poll() is None:
                process.kill()
                await process.wait()
    summary["server_errors"] = server_errors(log)
    summary["leaks"] = _leaks(summary)
    return summary


async def _load_and_audit(soak: Soak) -> dict[str, Any]:
    """Warm-up load, a pause to measure the idle server, the main load, the same measure.

    Both measures are taken with no client left (the gauges at zero), so the end of the
    run is compared with the warmed-up server in the same state: RSS within 10 %, and
    no more threads than then.
    """
    config = soak.config
    port = int(soak.metrics_url.rsplit(":", 1)[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler, soak, config.duration)
        await _load(soak, until=config.warmup_s)
        await _settle(port)
        warm = {"rss": rss_bytes(soak.pid), "threads": thread_names(soak.pid)}
        await _load(soak, until=config.duration)
    gauges = await _settle(port)
    end = {"rss": rss_bytes(soak.pid), "threads": thread_names(soak.pid)}
    return summarise(soak, warm, end, gauges)


async def _load(soak: Soak, *, until: float) -> None:
    async with trio.open_nursery() as nursery:
        for index in range(soak.config.clients):
            nursery.start_soon(client_loop, soak, index, until)


async def _settle(port: int) -> dict[str, float]:
    """Wait (at most SETTLE_DEADLINE) for the live gauges to read zero; return them."""
    gauges = await scrape_gauges(port)
    with trio.move_on_after(SETTLE_DEADLINE):
        while any(gauges.get(name, -1.0) != 0.0 for name in LIVE_GAUGES):
            await trio.sleep(0.2)
            gauges = await scrape_gauges(port)
    return gauges


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99)}


def summarise(
    soak: Soak, warm: dict[str, Any], end: dict[str, Any], gauges: dict[str, float]
) -> dict[str, Any]:
    """The figures of a run: requests, errors by kind, latency over time, RSS over time."""
    config = soak.config
    outcomes = Counter(r.outcome for r in soak.records)
    unexpected = {k: v for k, v in outcomes.items() if k not in EXPECTED}
    window = max(5.0, config.duration / 12)
    windows = []
    start = 0.0
    while start < config.duration:
        inside = [r for r in soak.records if start <= r.at < start + window]
        firsts = [r.first_audio_s for r in inside if r.first_audio_s is not None]
        windows.append(
            {
                "start_s": round(start, 1),
                "requests": len(inside),
                "errors": sum(1 for r in inside if r.outcome not in EXPECTED),
                **percentiles(firsts),
            }
        )
        start += window
    firsts = [r.first_audio_s for r in soak.records if r.first_audio_s is not None]
    return {
        "config": {**attrs.asdict(config), "model_dir": None, "warmup_s": config.warmup_s},
        "requests": len(soak.records),
        "by_action": dict(Counter(r.action for r in soak.records)),
        "outcomes": dict(sorted(outcomes.items())),
        "unexpected": unexpected,
        "first_audio_ms": percentiles(firsts),
        "windows": windows,
        "rss_mb": [(s.at, round(s.rss / 2**20, 1)) for s in soak.samples],
        "threads": [(s.at, s.threads) for s in soak.samples],
        "rss_warm_mb": round(warm["rss"] / 2**20, 1),
        "rss_end_mb": round(end["rss"] / 2**20, 1),
        "threads_warm": sum(warm["threads"].values()),
        "threads_end": sum(end["threads"].values()),
        "thread_names_warm": dict(warm["threads"]),
        "thread_names_end": dict(end["threads"]),
        "gauges_end": gauges,
    }


def _leaks(summary: dict[str, Any]) -> dict[str, Any]:
    leaks: dict[str, Any] = {}
    if any(summary["gauges_end"].get(name, -1.0) != 0.0 for name in LIVE_GAUGES):
        leaks["gauges"] = summary["gauges_end"]
    if summary["rss_end_mb"] > summary["rss_warm_mb"] * (1 + RSS_TOLERANCE):
        leaks["rss"] = [summary["rss_warm_mb"], summary["rss_end_mb"]]
    if summary["threads_end"] > summary["threads_warm"]:
        leaks["threads"] = [summary["threads_warm"], summary["threads_end"]]
    return leaks


def failures(summary: dict[str, Any]) -> list[str]:
    """What makes a soak fail: unexpected outcomes, leaks, server errors, a bad exit."""
    found = [f"unexpected outcome {k}: {v}" for k, v in summary["unexpected"].items()]
    found += [f"leak: {k} {v}" for k, v in summary["leaks"].items()]
    found += [f"server error: {e}" for e in summary["server_errors"]]
    if summary.get("exit_code") != 0:
        found.append(f"SIGTERM drain exited {summary.get('exit_code')}")
    if not summary["requests"]:
        found.append("no request completed")
    return found


# ---------------------------------------------------------------- output


def plot(summary: dict[str, Any], path: Path) -> bool:
    """First-audio percentiles and requests per window, RSS over time; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    windows = summary["windows"]
    fig, (lat, rss, load) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    starts = [w["start_s"] for w in windows]
    for key in ("p50", "p95", "p99"):
        lat.plot(starts, [w[key] for w in windows], marker="o", label=key)
    lat.set_ylabel("first audio (ms)")
    lat.legend()
    lat.set_title(
        f"soak: {summary['config']['engine']} engine, {summary['config']['clients']} client loops, "
        f"{summary['requests']} requests"
    )
    times, mbs = zip(*summary["rss_mb"], strict=True) if summary["rss_mb"] else ((), ())
    rss.plot(times, mbs, color="tab:purple")
    rss.axhline(summary["rss_warm_mb"], color="grey", linestyle="--", label="after warm-up")
    rss.axhline(
        summary["rss_warm_mb"] * (1 + RSS_TOLERANCE), color="red", linestyle=":", label="+10 %"
    )
    rss.set_ylabel("server RSS (MiB)")
    rss.legend()
    width = (starts[1] - starts[0]) * 0.8 if len(starts) > 1 else 1.0
    load.bar(starts, [w["requests"] for w in windows], width=width, align="edge", label="requests")
    load.bar(
        starts,
        [w["errors"] for w in windows],
        width=width,
        align="edge",
        color="red",
        label="unexpected",
    )
    load.set_ylabel("per window")
    load.set_xlabel("seconds")
    load.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.stress.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds of load (120)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client loops (4)")
    parser.add_argument("--workers", type=int, default=2, help="model instances (2)")
    parser.add_argument("--engine", choices=["tiny", "synthetic"], default="tiny")
    parser.add_argument("--model", type=Path, help="a tiny checkpoint directory (built if absent)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--figures", type=Path, help="the stress suites' figures JSON, for --doc")
    parser.add_argument("--doc", type=Path, help="write docs/RELIABILITY.md here")
    args = parser.parse_args(argv)
    config = SoakConfig(
        duration=args.duration,
        clients=args.clients,
        workers=args.workers,
        engine=args.engine,
        model_dir=args.model,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="voxtrio-soak-") as tmp:
        summary = trio.run(run_soak, config, Path(tmp))
    stamp = datetime.date.today().isoformat()
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"{stamp}-soak.json"
    png_path = args.out / f"{stamp}-soak.png"
    # Paths inside the checkout as the docs name them (nox passes absolute ones).
    args = [_repo_relative(arg) for arg in (argv or sys.argv[1:])]
    summary["command"] = "python -m tests.stress.soak " + " ".join(args)
    json_path.write_text(json.dumps(summary, indent=2) + "\n")
    plotted = plot(summary, png_path)
    problems = failures(summary)
    print(json.dumps({k: summary[k] for k in ("requests", "outcomes", "first_audio_ms", "leaks")}))
    print(f"wrote {json_path}" + (f" and {png_path}" if plotted else " (no matplotlib: no PNG)"))
    if args.doc is not None:
        from .report import write_report

        figures = (
            json.loads(args.figures.read_text()) if args.figures and args.figures.exists() else {}
        )
        write_report(args.doc, figures, summary, png_path if plotted else None)
        print(f"wrote {args.doc}")
    for problem in problems:
        print(f"FAIL {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())


def _repo_relative(arg: str) -> str:
    root = Path(__file__).resolve().parents[2]
    path = Path(arg)
    if path.is_absolute() and path.is_relative_to(root):
        return str(path.relative_to(root))
    return arg
