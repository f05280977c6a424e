"""Whole scenarios, sized by the caller: the short suite and `nox -s stress` share them."""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from voxtrio.server._listener import ServerHandle
from voxtrio.server._writer import STALLED
from voxtrio.speech._synthetic import SyntheticEngine

from ..support import http_get
from . import chaos, fuzzing
from .harness import (
    LeakCheck,
    Ledger,
    LogEvent,
    ServerThread,
    connect,
    dashscope_url,
    record_figures,
    server_errors,
    settle_deadline,
    watch_logs,
)

# One sentence (a text is spoken sentence by sentence): 159 chars, 40 chunks as one generation.
BYSTANDER_TEXT = "A sentence long enough to take many chunks to speak, " * 3
BYSTANDER_CHUNKS = 40


def fuzz_settings(examples: int, *, derandomize: bool) -> settings:
    """Hypothesis settings for a fuzz run (no example database: nothing written to disk)."""
    return settings(
        max_examples=examples,
        derandomize=derandomize,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------- fuzzing


class FuzzServer:
    """A server in a thread, its engines, the threads before it, and its logs."""

    def __init__(
        self,
        server: ServerThread,
        engines: list[SyntheticEngine],
        logs: list[LogEvent],
        threads_before: frozenset[Any],
    ) -> None:
        self.server = server
        self.engines = engines
        self.logs = logs
        self.threads_before = threads_before

    def audit(self) -> dict[str, Any]:
        """Every leak (and server error) found once the fuzzing clients are gone."""
        assert self.server.handle is not None
        leak = LeakCheck(self.server.handle, self.engines, self.threads_before)
        deadline = settle_deadline(self.server.settings)
        leaks: dict[str, Any] = trio.run(
            partial(leak.audit, deadline, extra_threads=[self.server.thread])
        )
        errors = server_errors(self.logs)
        if errors:
            leaks["server_errors"] = errors
        return leaks


@contextmanager
def fuzz_server() -> Iterator[FuzzServer]:
    """One server for every Hypothesis example: it must survive all of them in a row."""
    engines: list[SyntheticEngine] = []

    def engine() -> SyntheticEngine:
        made = SyntheticEngine(rtf=0.005)
        engines.append(made)
        return made

    with watch_logs() as logs:
        threads = LeakCheck.before_start()
        server = ServerThread(engine, workers=2, max_message_bytes=fuzzing.MAX_MESSAGE_BYTES)
        with server:
            yield FuzzServer(server, engines, logs, threads)


async def _bystander(url: str, ledger: Ledger, outcomes: list[str]) -> None:
    outcome = await fuzzing.bystander(url, ledger, BYSTANDER_TEXT, expect_chunks=BYSTANDER_CHUNKS)
    outcomes.append(outcome)


def fuzz_native(fuzz: FuzzServer, run_settings: settings, name: str) -> dict[str, Any]:
    """Native examples, each beside a bystander request on another connection."""
    total = fuzzing.FuzzStats()
    requests: list[int] = []
    bystanders: list[str] = []
    url = fuzz.server.url

    @run_settings
    @given(cases=fuzzing.native_examples())
    def example(cases: list[fuzzing.Case]) -> None:
        ledger = Ledger()  # one per example: a failure is reported by the example causing it

        async def both() -> fuzzing.FuzzStats:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_bystander, url, ledger, bystanders)
                stats = await fuzzing.run_native_example(url, cases, ledger)
            return stats

        stats = trio.run(both)
        total.merge(stats)
        requests.append(len(ledger.records))
        assert not stats.failures, stats.failures
        assert not ledger.check(), ledger.check()

    example()
    leaks = fuzz.audit()
    figures = {
        "inputs": sum(total.inputs.values()),
        "by_kind": dict(sorted(total.inputs.items())),
        "answers": dict(sorted(total.answers.items())),
        "connections": total.connections + len(bystanders),
        "requests": sum(requests),
        "bystanders": dict(sorted((o, bystanders.count(o)) for o in set(bystanders))),
        "failures": len(total.failures),
        "leaks": leaks,
    }
    record_figures(name, **figures)
    return figures


def fuzz_dashscope(fuzz: FuzzServer, run_settings: settings, name: str) -> dict[str, Any]:
    """DashScope examples: mistakes drawn against the task running at that moment."""
    total = fuzzing.FuzzStats()
    url = fuzz.server.dashscope_url

    @run_settings
    @given(data=st.data(), count=st.integers(1, 6))
    def example(data: st.DataObject, count: int) -> None:
        def draw(ids: fuzzing.Ids, running: str | None) -> fuzzing.DashCase:
            case: fuzzing.DashCase = data.draw(fuzzing.dash_case(ids, running))
            return case

        stats = fuzzing.FuzzStats()
        trio.run(fuzzing.run_dash_example, url, draw, count, stats)
        total.merge(stats)
        assert not stats.failures, stats.failures

    example()
    leaks = fuzz.audit()
    figures = {
        "inputs": sum(total.inputs.values()),
        "by_kind": dict(sorted(total.inputs.items())),
        "answers": dict(sorted(total.answers.items())),
        "connections": total.connections,
        "requests": total.tasks,
        "failures": len(total.failures),
        "leaks": leaks,
    }
    record_figures(name, **figures)
    return figures


def broken_frames(fuzz: FuzzServer, *, endpoint: str, utf8: bool, times: int) -> list[str]:
    """Invalid UTF-8 / oversized frames, each beside a bystander: the failures found."""
    url = fuzz.server.url
    stats = fuzzing.FuzzStats()
    outcomes: list[str] = []

    async def run() -> None:
        for _ in range(times):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_bystander, url, Ledger(), outcomes)
                if endpoint == "dashscope":
                    await fuzzing.dash_wire_case(dashscope_url(url), stats, utf8=utf8)
                else:
                    await fuzzing.native_wire_case(url, stats, utf8=utf8)

    trio.run(run)
    return stats.failures + [f"bystander: {o}" for o in outcomes if o != "ok"]


# ---------------------------------------------------------------- misbehaving clients


# The full rounds (tests/stress): the server's own timeouts, as users run it. Its
# deadlines then sit far above the stalls of a loaded 2-core machine (the server's loop
# was seen late by 4.8 s at load 16): with 2 s deadlines such a stall, not the client,
# decided who was cut. Clients that stop reading are cut after --write-timeout (30 s).
CHAOS_SETTINGS: dict[str, Any] = {
    "workers": 2,
    "max_connections": 1000,
    "max_concurrent": 64,
}
# The short rounds of the default test run (40 clients): short deadlines, so a round
# takes seconds; their load is small enough for them.
CHAOS_SETTINGS_SHORT: dict[str, Any] = {
    **CHAOS_SETTINGS,
    "queue_timeout": 5.0,
    "write_timeout": 2.0,
    "stop_timeout": 2.0,
    "handshake_timeout": 2.0,
    "ping_interval": 1.0,
    "ping_timeout": 2.0,
}


# Rounds of misbehaving clients before the memory levels are taken (see chaos_rounds).
WARMUP_ROUNDS = 3
# What the server logs when it gives up on a client: the cut and the connection's port.
CUT_EVENTS = ("connection_opened", "ping_timeout", "request_finished", "connection_lost")
ROOT = Path(__file__).resolve().parents[2]


async def chaos_rounds(
    start_server: Callable[..., Any],
    *,
    rounds: int,
    clients: int,
    name: str,
    settings: dict[str, Any] = CHAOS_SETTINGS,
) -> dict[str, Any]:
    """Rounds of misbehaving clients against one server, audited after each round.

    The server runs in this process, alone on its event loop, so the audit can see its
    pool, connections, generators and Python heap; each round's clients run in a
    process of their own (`python -m tests.stress.chaos`), as users' clients do. (With
    300 clients on the server's own loop, a client that reads was starved by the process
    it shared with the server, and cut as stalled.) The server's log then says whom it
    cut: a client that reads (chaos.READING) must never be cut as stalled or silent.

    The first WARMUP_ROUNDS rounds warm the server up: the RSS and the Python heap after
    them are the levels later rounds must come back to (within 10 % and 5 %). One round is
    not enough: the allocator's high-water mark rises by about 15 % over the next one or
    two mixes of clients while the Python heap stays flat, then stays there (8 rounds:
    122.9, 141.4, 141.2, 142.3, 144.3, 143.5 MiB; heap blocks within 1 %). The last round
    repeats the first one's clients, so a leak shows as growth between identical rounds
    rather than the noise of another mix.
    """
    engines: list[SyntheticEngine] = []

    def engine() -> SyntheticEngine:
        made = SyntheticEngine(rtf=0.005)
        engines.append(made)
        return made

    threads = LeakCheck.before_start()
    with watch_logs(also=CUT_EVENTS) as logs:
        handle: ServerHandle = await start_server(engine, **settings)
        leak = LeakCheck(handle, engines, threads)
        deadline = settle_deadline(handle.server.settings)
        # Long enough past the write timeout that the server has surely given up (its
        # loop can be seconds late on a loaded machine): reading earlier is reading again.
        hold = handle.server.settings.write_timeout * 1.5 + 2.0
        results: list[dict[str, Any]] = []
        warmup = max(1, min(WARMUP_ROUNDS, rounds - 1))  # leave at least one round audited
        for number in range(rounds):
            seed = 0 if number in (0, rounds - 1) else number
            first_event = len(logs)
            server_lag = [0.0]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(chaos.loop_lag, server_lag)
                summary = await client_round(handle.url, clients=clients, seed=seed, hold=hold)
                nursery.cancel_scope.cancel()
            if number < warmup:
                await leak.settle(deadline)
                leak.warm()
            summary["leaks"] = await leak.audit(deadline)
            summary["cuts"] = server_cuts(logs[first_event:], summary["ports"])
            summary["server_loop_lag_s"] = round(server_lag[0], 3)
            results.append(summary)
        errors = server_errors(logs)
    cuts = [cut for r in results for cut in r["cuts"]]
    figures = {
        "rounds": rounds,
        "clients": sum(r["clients"] for r in results),
        "requests": sum(r["requests"] for r in results),
        "behaviours": add_counts(r["behaviours"] for r in results),
        "native_outcomes": add_counts(r["native_outcomes"] for r in results),
        "dashscope_outcomes": add_counts(r["dashscope_outcomes"] for r in results),
        "events": add_counts(r["events"] for r in results),
        "violations": [v for r in results for v in r["violations"]],
        "unanswered_cancels": [c for r in results for c in r["unanswered_cancels"]],
        "leaks": [r["leaks"] for r in results if r["leaks"]],
        "server_errors": errors,
        "server_cuts": add_counts([Counter(f"{c['behaviour']}: {c['why']}" for c in cuts)]),
        "reading_clients_cut": [
            f"{c['behaviour']} (port {c['port']}): {c['why']}"
            for c in cuts
            if c["behaviour"] in chaos.READING
        ],
        "timeouts": {
            key: getattr(handle.server.settings, key)
            for key in ("write_timeout", "ping_interval", "ping_timeout", "stop_timeout")
        },
        "client_loop_lag_max_s": max(r["client_loop_lag_s"] for r in results),
        "server_loop_lag_max_s": max(r["server_loop_lag_s"] for r in results),
        "rss_warm_mb": round((leak.rss_warm or 0) / 2**20, 1),
        "rss_after_rounds_mb": [round(rss / 2**20, 1) for rss in leak.rss_history],
        "warmup_rounds": warmup,
        "heap_warm_blocks": leak.heap_warm,
        "heap_after_rounds_blocks": leak.heap_history,
    }
    record_figures(name, **figures)
    return figures


async def client_round(url: str, *, clients: int, seed: int, hold: float) -> dict[str, Any]:
    """One round of `clients` misbehaving clients, run in a process of their own."""
    command = [
        sys.executable,
        "-m",
        "tests.stress.chaos",
        "--url",
        url,
        "--dashscope-url",
        dashscope_url(url),
        "--clients",
        str(clients),
        "--seed",
        str(seed),
        "--hold",
        str(hold),
    ]
    with trio.fail_after(chaos.CLIENT_DEADLINE + 60):
        done = await trio.run_process(command, cwd=ROOT, capture_stdout=True)
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def server_cuts(events: list[LogEvent], ports: dict[str, str]) -> list[dict[str, str]]:
    """Every client the server gave up on (ping timeout, write timeout), by behaviour."""
    port_of: dict[str, str] = {}
    why: dict[str, str] = {}
    for event in events:
        connection = event.details.get("connection_id", "")
        if event.event == "connection_opened":
            port_of[connection] = event.details.get("remote", "").rpartition(":")[2]
        elif event.event == "ping_timeout":
            why.setdefault(connection, "ping timeout")
        elif event.details.get("reason", "").startswith(STALLED):
            why.setdefault(connection, "write timeout")
    return [
        {
            "behaviour": ports.get(port_of.get(c, ""), "unknown"),
            "port": port_of.get(c, "?"),
            "why": reason,
        }
        for c, reason in why.items()
    ]


def add_counts(counters: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counter in counters:
        for key, value in counter.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))


def chaos_problems(figures: dict[str, Any]) -> list[str]:
    """Violations, leaks, server errors, cancels that got no answer, reading clients cut."""
    lag = (
        f" (worst loop lag: clients {figures['client_loop_lag_max_s']} s,"
        f" server {figures['server_loop_lag_max_s']} s)"
    )
    return [
        *(f"the server cut a client that reads: {c}{lag}" for c in figures["reading_clients_cut"]),
        *figures["violations"],
        *map(str, figures["leaks"]),
        *figures["server_errors"],
        *(f"unanswered cancel {c}" for c in figures["unanswered_cancels"]),
    ]


# ---------------------------------------------------------------- small helpers


async def speak_all(url: str, requests: dict[str, dict[str, Any]], timeout: float = 30) -> Ledger:
    """Send every request on one connection; read until each has its terminal message."""
    ledger = Ledger()
    conn = ledger.connection()
    async with connect(url) as ws:
        for rid, params in requests.items():
            ledger.started(conn, rid)
            body = {"type": "tts_request", "request_id": rid, "params": params}
            await ws.send_message(json.dumps(body))
        with trio.fail_after(timeout):
            while ledger.pending(conn):
                ledger.observe(conn, await ws.get_message())
    assert ledger.check() == []
    return ledger


async def until_health(url: str, status: int, timeout: float) -> dict[str, Any]:
    """Poll /health until it answers `status`; return its body."""
    with trio.fail_after(timeout):
        while True:
            got, body = await http_get(url)
            if got == status:
                verdict: dict[str, Any] = json.loads(body)
                return verdict
            await trio.sleep(0.05)


async def wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.02)


async def scrape(port: int) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
    """Every sample of a server's /metrics, by name and labels."""
    status, body = await http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    samples: dict[str, dict[frozenset[tuple[str, str]], float]] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples
