"""Misbehaving clients, hundreds at once: each picks a behaviour and runs it, bounded in time.

Behaviours: polite requests; vanishing mid-handshake, mid-frame and mid-stream (close
frame, FIN or RST); clients that stop reading; reconnect storms; cancel storms; pings
without end; garbage; and the same on the DashScope endpoint. Every client files what
it sees in one `Ledger` (native) or its own `DashLedger` (DashScope), so a round ends
with: exactly one terminal message per request on every connection that stayed.

A round runs in a process of its own, apart from the server's, as users' clients do:

    python -m tests.stress.chaos --url ws://127.0.0.1:PORT/tts --clients 300 --seed 0 --hold 4

prints the round's summary as JSON, with the local port of every connection and its
behaviour (so the server's log can be matched to the client it judged) and the worst
lag of the clients' own event loop.
"""

from __future__ import annotations

import argparse
import json
import random
import struct
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from functools import partial
from typing import Any

import attrs
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection
from wsproto.utilities import LocalProtocolError

from .fuzzing import DashLedger, continue_task, dumps, finish_task, run_task
from .harness import (
    FRAMING_VIOLATIONS,
    HandshakeTimeout,
    Ledger,
    RawWebSocket,
    Refused,
    client_frame,
    connect,
    split_url,
)

TEXTS = (
    "Hello there.",
    "This is a short sentence for the stress test.",
    "Numbers like 42 and dates like 2024-05-01 are fine too.",
    "A longer text, long enough to take a good number of chunks to speak out loud. " * 3,
)
GARBAGE: tuple[str | bytes, ...] = (
    "{not json",
    "[]",
    '{"type": 7}',
    '{"type": "dance"}',
    '{"type": "tts_request", "request_id": "g1", "params": {"text": ""}}',
    '{"type": "tts_request", "request_id": "g2", "params": {"text": "hi", "cfg_value": "x"}}',
    '{"type": "cancel", "request_id": "nobody"}',
    '{"type": "text_delta", "request_id": "nobody", "text": "hi"}',
    b"\x00\x01\x02",
    "[" * 5000 + "]" * 5000,
)
# A client's whole life must fit in this, or it counts as stuck.
CLIENT_DEADLINE = 90.0
# How long a cancel storm waits for the answers to its last cancels.
CANCEL_ANSWER_DEADLINE = 10.0
# Behaviours that read everything the server sends, as fast as they can, until the
# end: the server must never cut one of them as stalled or silent.
READING = frozenset(
    {"polite", "garbage", "cancel_storm", "dashscope_polite", "ping_flood", "early_frame"}
)
# The behaviour of the client task running now (each client task sets its own).
_BEHAVIOUR: ContextVar[str] = ContextVar("behaviour", default="?")


@attrs.define
class Chaos:
    """One round's shared state: where to connect, what was seen."""

    url: str
    dashscope_url: str
    ledger: Ledger
    hold_unread: float  # how long a client that stopped reading holds on
    behaviours: Counter[str] = attrs.Factory(Counter)
    events: Counter[str] = attrs.Factory(Counter)
    problems: list[str] = attrs.Factory(list)
    dash_ledgers: list[DashLedger] = attrs.Factory(list)
    requests: int = 0
    ports: dict[int, str] = attrs.Factory(dict)  # local port -> behaviour

    def note(self, event: str) -> None:
        self.events[event] += 1

    @asynccontextmanager
    async def connect(self, url: str) -> AsyncIterator[WebSocketConnection]:
        """trio-websocket's client, its local port filed under the running behaviour."""
        async with connect(url) as ws:
            self.ports[ws.local.port] = _BEHAVIOUR.get()
            yield ws

    @asynccontextmanager
    async def open_raw(self, url: str, *, handshake: bool = True) -> AsyncIterator[RawWebSocket]:
        """A raw client, its local port filed under the running behaviour."""
        async with RawWebSocket.open(url, handshake=handshake) as raw:
            self.ports[raw.stream.socket.getsockname()[1]] = _BEHAVIOUR.get()
            yield raw


Behaviour = Callable[[Chaos, random.Random], Awaitable[None]]


def request_message(rid: str, rng: random.Random, **extra: Any) -> str:
    params: dict[str, Any] = {"text": rng.choice(TEXTS), **extra}
    if rng.random() < 0.3:
        params["mode"] = "non_streaming"
    if rng.random() < 0.3:
        params["format"] = rng.choice(["wav", "mp3", "opus", "flac"])
    if rng.random() < 0.3:
        params["sample_rate"] = rng.choice([16000, 24000])
    return dumps({"type": "tts_request", "request_id": rid, "params": params})


async def _read_all(ws: Any, chaos: Chaos, conn: int, *, until: Callable[[], bool]) -> None:
    while not until():
        chaos.ledger.observe(conn, await ws.get_message())


async def polite(chaos: Chaos, rng: random.Random) -> None:
    """A few requests (some at once), read to the end, close."""
    conn = chaos.ledger.connection()
    async with chaos.connect(chaos.url) as ws:
        for n in range(rng.randint(1, 3)):
            rid = f"p{n}"
            chaos.ledger.started(conn, rid)
            chaos.requests += 1
            await ws.send_message(request_message(rid, rng))
        await _read_all(ws, chaos, conn, until=lambda: not chaos.ledger.pending(conn))


async def vanish_mid_handshake(chaos: Chaos, rng: random.Random) -> None:
    """Send part of (or all of) the HTTP upgrade, then close or reset."""
    async with chaos.open_raw(chaos.url, handshake=False) as raw:
        request = raw.handshake_bytes(split_url(chaos.url)[2])
        await raw.send_raw(request[: rng.randint(0, len(request))])
        await trio.sleep(rng.random() * 0.05)
        if rng.random() < 0.5:
            await raw.abort()


async def vanish_mid_frame(chaos: Chaos, rng: random.Random) -> None:
    """Handshake, then part of a frame (header or payload), then gone."""
    conn = chaos.ledger.connection()
    try:
        async with chaos.open_raw(chaos.url) as raw:
            frame = client_frame(0x1, request_message("f", rng).encode())
            await raw.send_raw(frame[: rng.randint(1, len(frame) - 1)])
            await trio.sleep(rng.random() * 0.05)
            if rng.random() < 0.5:
                await raw.abort()
    except Refused as exc:
        chaos.note(f"refused {exc.status}")
    chaos.ledger.vanish(conn)


async def vanish_mid_stream(chaos: Chaos, rng: random.Random) -> None:
    """Start requests, read a little, then vanish: close frame, FIN or RST."""
    conn = chaos.ledger.connection()
    how = rng.choice(["close", "fin", "rst"])
    async with chaos.open_raw(chaos.url) as raw:
        for n in range(rng.randint(1, 3)):
            chaos.ledger.started(conn, f"v{n}")
            chaos.requests += 1
            await raw.send_text(request_message(f"v{n}", rng))
        with trio.move_on_after(rng.random()):
            for _ in range(rng.randint(0, 12)):
                message = await raw.receive()
                if message is None:
                    break
                chaos.ledger.observe(conn, message)
        chaos.ledger.vanish(conn)
        chaos.note(f"vanished ({how})")
        if how == "close":
            await raw.send_raw(client_frame(0x8, struct.pack(">H", 1000)))
        elif how == "rst":
            await raw.abort()


async def text_stream_vanish(chaos: Chaos, rng: random.Random) -> None:
    """A text stream fed a few deltas, abandoned before its end."""
    conn = chaos.ledger.connection()
    async with chaos.open_raw(chaos.url) as raw:
        chaos.ledger.started(conn, "ts")
        chaos.requests += 1
        await raw.send_text(dumps({"type": "text_stream_start", "request_id": "ts"}))
        for word in rng.choice(TEXTS).split()[: rng.randint(1, 12)]:
            await raw.send_text(
                dumps({"type": "text_delta", "request_id": "ts", "text": word + " "})
            )
            await trio.sleep(rng.random() * 0.01)
        chaos.ledger.vanish(conn)
        if rng.random() < 0.5:
            await raw.abort()


async def stop_reading(chaos: Chaos, rng: random.Random) -> None:
    """Ask for a lot of audio and never read it: the server must drop this client."""
    conn = chaos.ledger.connection()
    async with chaos.open_raw(chaos.url) as raw:
        for n in range(rng.randint(1, 2)):
            chaos.ledger.started(conn, f"s{n}")
            chaos.requests += 1
            text = "Never read, never spoken to the end. " * 130  # 19 MB of audio
            body = {"type": "tts_request", "request_id": f"s{n}", "params": {"text": text}}
            await raw.send_text(dumps(body))
        await trio.sleep(chaos.hold_unread)
        # Whatever the kernel buffered, then the server's close (it gave up on us).
        with trio.move_on_after(10):
            while chaos.ledger.pending(conn):
                message = await raw.receive()
                if message is None:
                    break
                chaos.ledger.observe(conn, message)
        if raw.closed is not None:
            chaos.ledger.vanish(conn)
            chaos.note(f"unread client closed ({raw.closed.code})")
        elif chaos.ledger.pending(conn):
            chaos.problems.append("a client that stopped reading was neither served nor dropped")
        else:
            chaos.note("unread client served from the socket buffers")


async def reconnect_storm(chaos: Chaos, rng: random.Random) -> None:
    """Connect and drop, again and again; some send a request first."""
    for _ in range(rng.randint(5, 15)):
        conn = chaos.ledger.connection()
        try:
            async with chaos.open_raw(chaos.url) as raw:
                if rng.random() < 0.5:
                    chaos.ledger.started(conn, "x")
                    chaos.requests += 1
                    await raw.send_text(request_message("x", rng))
                if rng.random() < 0.5:
                    await raw.abort()
        except Refused as exc:
            chaos.note(f"refused {exc.status}")
        chaos.ledger.vanish(conn)
        chaos.note("storm connection")


async def cancel_storm(chaos: Chaos, rng: random.Random) -> None:
    """Requests cancelled at once, later, twice, or after their end; unknown ids too."""
    conn = chaos.ledger.connection()
    async with chaos.connect(chaos.url) as ws:
        reader_done = trio.Event()

        async def reader() -> None:
            try:
                while True:
                    chaos.ledger.observe(conn, await ws.get_message())
            except ConnectionClosed:
                pass
            finally:
                reader_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            for n in range(rng.randint(4, 12)):
                rid = f"c{n}"
                while len(chaos.ledger.pending(conn)) >= 3:
                    await trio.sleep(0.005)
                chaos.ledger.started(conn, rid)
                chaos.requests += 1
                await ws.send_message(request_message(rid, rng))
                await trio.sleep(rng.choice([0, 0, 0.001, 0.01, 0.05]))
                for _ in range(rng.choice([1, 1, 1, 2, 3])):
                    chaos.ledger.cancel_sent(conn, rid)
                    await ws.send_message(dumps({"type": "cancel", "request_id": rid}))
                if rng.random() < 0.2:
                    await ws.send_message(dumps({"type": "cancel", "request_id": f"ghost{n}"}))
            with trio.fail_after(30):
                while chaos.ledger.pending(conn) and not reader_done.is_set():
                    await trio.sleep(0.01)
            # Late answers to the last cancels (a cancel that crossed a terminal message
            # gets UNKNOWN_REQUEST): waited for, not guessed, since the server may be late.
            with trio.move_on_after(CANCEL_ANSWER_DEADLINE):
                while not reader_done.is_set() and _unanswered(chaos.ledger, conn):
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()


def _unanswered(ledger: Ledger, conn: int) -> bool:
    return any(r.connection == conn and r.cancels and not r.cancel_answered for r in ledger.records)


async def ping_flood(chaos: Chaos, rng: random.Random) -> None:
    """Pings without end (application and WebSocket) while reading: every one is answered."""
    conn = chaos.ledger.connection()
    count = rng.randint(50, 300)
    pongs = 0
    async with chaos.open_raw(chaos.url) as raw:

        async def read() -> None:
            nonlocal pongs
            while pongs < count:
                message = await raw.receive()
                if message is None:
                    why = raw.closed.code if raw.closed else None
                    reason = raw.closed.reason if raw.closed else ""
                    chaos.problems.append(
                        f"ping flood: closed ({why} {reason}) after {pongs} of {count} pongs"
                    )
                    return
                decoded = chaos.ledger.observe(conn, message)
                if decoded is not None and decoded.get("type") == "pong":
                    pongs += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for n in range(count):
                    if raw.closed is not None:
                        break  # the reader records why the server closed
                    try:
                        await raw.send_text(dumps({"type": "ping", "timestamp": n}))
                        if n % 3 == 0:
                            await raw.ping(str(n).encode())
                    except LocalProtocolError:
                        break  # the server's close frame arrived: the reader records it
        chaos.note("pongs")
        chaos.events["pongs received"] += pongs


async def garbage(chaos: Chaos, rng: random.Random) -> None:
    """Bad messages mixed with a real request: errors for each, the request completes."""
    conn = chaos.ledger.connection()
    async with chaos.connect(chaos.url) as ws:
        chaos.ledger.started(conn, "real")
        chaos.requests += 1
        await ws.send_message(request_message("real", rng))
        sent = rng.sample(GARBAGE, k=rng.randint(1, len(GARBAGE)))
        for item in sent:
            if isinstance(item, str) and item.startswith('{"type": "tts_request"'):
                chaos.ledger.started(conn, json.loads(item)["request_id"])
            await ws.send_message(item)
        await _read_all(ws, chaos, conn, until=lambda: not chaos.ledger.pending(conn))


async def early_frame(chaos: Chaos, rng: random.Random) -> None:
    """A request in the same TCP write as the handshake: answered like any other."""
    conn = chaos.ledger.connection()
    async with chaos.open_raw(chaos.url, handshake=False) as raw:
        chaos.ledger.started(conn, "early")
        chaos.requests += 1
        frame = client_frame(0x1, request_message("early", rng).encode())
        await raw.handshake(split_url(chaos.url)[2], then=frame)
        while chaos.ledger.pending(conn):
            message = await raw.receive()
            if message is None:
                code = raw.closed.code if raw.closed else None
                chaos.problems.append(f"early frame: closed ({code}) before the terminal")
                return
            chaos.ledger.observe(conn, message)


async def framing_violation(chaos: Chaos, rng: random.Random) -> None:
    """A frame RFC 6455 forbids: the server answers with the close code it calls for."""
    name = rng.choice(sorted(FRAMING_VIOLATIONS))
    frame, expected = FRAMING_VIOLATIONS[name]
    async with chaos.open_raw(chaos.url) as raw:
        await raw.send_raw(frame)
        while await raw.receive() is not None:
            pass
    code = raw.closed.code if raw.closed else None
    if code != expected:
        chaos.problems.append(f"framing violation {name}: closed with {code}, not {expected}")
    chaos.note(f"closed {code}")


async def dashscope_polite(chaos: Chaos, rng: random.Random) -> None:
    """A whole DashScope task: run, a few continue-tasks, finish, task-finished."""
    ledger = DashLedger()
    chaos.dash_ledgers.append(ledger)
    async with chaos.connect(chaos.dashscope_url) as ws:
        for n in range(rng.randint(1, 2)):
            task = f"d{n}"
            chaos.requests += 1
            await ws.send_message(dumps(run_task(task, format=rng.choice(["pcm", "mp3", "wav"]))))
            for text in rng.sample(TEXTS[:3], k=rng.randint(1, 3)):
                await ws.send_message(dumps(continue_task(task, text)))
            if rng.random() < 0.3:
                await ws.send_message(dumps(finish_task(task, "cancel")))
            else:
                await ws.send_message(dumps(finish_task(task)))
            while ledger.terminals[task] == 0:
                ledger.observe(await ws.get_message())


async def dashscope_vanish(chaos: Chaos, rng: random.Random) -> None:
    """A DashScope task abandoned mid-synthesis (or never read)."""
    ledger = DashLedger()
    async with chaos.open_raw(chaos.dashscope_url) as raw:
        chaos.requests += 1
        await raw.send_text(dumps(run_task("gone")))
        await raw.send_text(dumps(continue_task("gone", TEXTS[3])))
        await raw.send_text(dumps(finish_task("gone")))
        if rng.random() < 0.3:
            await trio.sleep(chaos.hold_unread)
            chaos.note("dashscope unread")
        else:
            with trio.move_on_after(rng.random()):
                for _ in range(rng.randint(0, 10)):
                    message = await raw.receive()
                    if message is None:
                        break
                    ledger.observe(message)
        if rng.random() < 0.5:
            await raw.abort()
    chaos.problems.extend(f"dashscope: {p}" for p in ledger.problems)


NATIVE: dict[str, tuple[Behaviour, int]] = {
    "polite": (polite, 6),
    "vanish_mid_handshake": (vanish_mid_handshake, 2),
    "vanish_mid_frame": (vanish_mid_frame, 2),
    "vanish_mid_stream": (vanish_mid_stream, 4),
    "text_stream_vanish": (text_stream_vanish, 2),
    "stop_reading": (stop_reading, 1),
    "reconnect_storm": (reconnect_storm, 1),
    "cancel_storm": (cancel_storm, 3),
    "ping_flood": (ping_flood, 1),
    "garbage": (garbage, 2),
    "early_frame": (early_frame, 1),
    "framing_violation": (framing_violation, 1),
    "dashscope_polite": (dashscope_polite, 3),
    "dashscope_vanish": (dashscope_vanish, 2),
}


async def run_client(chaos: Chaos, name: str, rng: random.Random) -> None:
    behaviour, _ = NATIVE[name]
    chaos.behaviours[name] += 1
    _BEHAVIOUR.set(name)  # this task's own context: its connections are filed under it
    await trio.sleep(rng.random() * 0.5)  # arrivals spread over half a second
    try:
        with trio.fail_after(CLIENT_DEADLINE):
            await behaviour(chaos, rng)
    except HandshakeTimeout:
        # The client's own deadline, as real clients have one: an overloaded server
        # answers upgrades late. Counted (figures), not a fault of the protocol.
        chaos.note("gave up on a slow handshake")
    except trio.TooSlowError:
        chaos.problems.append(f"{name}: client stuck for {CLIENT_DEADLINE:g} s")
    except Refused as exc:
        chaos.note(f"refused {exc.status}")
    except HandshakeError as exc:
        chaos.note(f"handshake failed: {type(exc).__name__}")
    except ConnectionClosed as exc:
        # The server ended a client that misbehaved on purpose; a polite one must not be.
        code = exc.reason.code if exc.reason else None
        if name in READING:
            chaos.problems.append(f"{name}: connection closed by the server ({code})")
        chaos.note(f"closed {code}")
    except LocalProtocolError:
        # Our own wsproto refuses to send once the server's close frame has arrived.
        chaos.note("sent after the server closed")
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        if name in READING:
            chaos.problems.append(f"{name}: {type(exc).__name__}: {exc}")
        chaos.note(f"socket error {type(exc).__name__}")


async def run_round(chaos: Chaos, clients: int, seed: int) -> None:
    """`clients` clients at once, each with its own behaviour and random stream."""
    rng = random.Random(seed)
    names = list(NATIVE)
    weights = [NATIVE[name][1] for name in names]
    async with trio.open_nursery() as nursery:
        for n in range(clients):
            name = rng.choices(names, weights)[0]
            nursery.start_soon(run_client, chaos, name, random.Random(seed * 100_003 + n))


def summary(chaos: Chaos) -> dict[str, Any]:
    """The figures of a round: clients by behaviour, requests, outcomes, problems."""
    dash: Counter[str] = Counter()
    for ledger in chaos.dash_ledgers:
        for task_id in ledger.started:
            if ledger.terminals[task_id] != 1:
                count = ledger.terminals[task_id]
                chaos.problems.append(f"dashscope task {task_id!r}: {count} terminal events")
        dash.update(ledger.outcomes.values())
        chaos.problems.extend(f"dashscope: {p}" for p in ledger.problems)
    return {
        "clients": sum(chaos.behaviours.values()),
        "behaviours": dict(chaos.behaviours),
        "requests": chaos.requests,
        "native_outcomes": dict(chaos.ledger.outcomes()),
        "dashscope_outcomes": dict(dash),
        "events": dict(chaos.events),
        "unanswered_cancels": [
            f"{r.request_id}: {r.outcome} after {r.cancels} cancel(s)"
            for r in chaos.ledger.unanswered_cancels()
        ],
        "violations": chaos.ledger.check() + chaos.problems,
    }


# ---------------------------------------------------------------- a round in its own process


async def loop_lag(worst: list[float], every: float = 0.05) -> None:
    """Keep the worst lateness of this event loop's wake-ups in `worst[0]`."""
    while True:
        asked = trio.current_time() + every
        await trio.sleep_until(asked)
        worst[0] = max(worst[0], trio.current_time() - asked)


async def round_in_this_process(
    url: str, dashscope: str, *, clients: int, seed: int, hold_unread: float
) -> dict[str, Any]:
    """One round: its summary, the connections' ports and the clients' worst loop lag."""
    state = Chaos(url, dashscope, Ledger(), hold_unread=hold_unread)
    worst = [0.0]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(loop_lag, worst)
        await run_round(state, clients, seed)
        nursery.cancel_scope.cancel()
    return {
        **summary(state),
        "ports": {str(port): name for port, name in state.ports.items()},
        "client_loop_lag_s": round(worst[0], 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One round of misbehaving clients (JSON out).")
    parser.add_argument("--url", required=True, help="the native endpoint, ws://HOST:PORT/tts")
    parser.add_argument("--dashscope-url", required=True, help="the DashScope endpoint")
    parser.add_argument("--clients", type=int, default=300, help="clients at once")
    parser.add_argument("--seed", type=int, default=0, help="picks behaviours and their draws")
    parser.add_argument("--hold", type=float, required=True, help="unread clients hold on, s")
    args = parser.parse_args(argv)
    result = trio.run(
        partial(
            round_in_this_process,
            args.url,
            args.dashscope_url,
            clients=args.clients,
            seed=args.seed,
            hold_unread=args.hold,
        )
    )
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
