"""What every reliability suite shares: the terminal ledger, clients, leak checks, faults.

- `Ledger` counts, client side, the terminal messages of every request the server has
  seen, per connection and request id, and the answers to cancels.
- `connect` (trio-websocket) and `RawWebSocket` (wsproto on a bare socket, for clients
  that break the protocol on purpose) are the clients.
- `ServerThread` runs a real server on its own Trio loop in a thread, so synchronous
  tests (Hypothesis `@given`) can drive it across many examples.
- `LeakCheck` is the after-run audit: connections, replicas, admissions, open
  generators, threads, RSS and the live /metrics gauges.
- `FaultyEngine` wraps an engine and raises, hangs or returns NaN on a schedule.
"""

from __future__ import annotations

import ctypes
import gc
import itertools
import json
import os
import re
import struct
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Callable,
    Collection,
    Generator,
    Iterable,
    Iterator,
)
from contextlib import asynccontextmanager, contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, Literal

import attrs
import numpy as np
import structlog
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import WebSocketConnection, wrap_client_stream
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError

from voxtrio._app import run_server
from voxtrio._config import Settings
from voxtrio.protocol._frames import decode_frame
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._engine import Engine, EngineFactory, StepCallback, SynthesisSpec

from ..support import http_get

# The live gauges that must read 0 once every client is gone.
LIVE_GAUGES = (
    "voxcpm_tts_active_connections",
    "voxcpm_tts_running_tasks",
    "voxcpm_tts_queue_length",
    "voxcpm_tts_slots_busy",
)
# Idle workers of trio's thread cache: they exit after trio's own IDLE_TIMEOUT (10 s)
# and are reused meanwhile, so they are allowed to outlive a run. A worker that is
# running something carries the job's name instead, and counts as a leak.
IDLE_TRIO_WORKER = re.compile(r"Trio thread \d+")
# RSS after a run may exceed the warmed-up level by this fraction at most.
RSS_TOLERANCE = 0.10
# Python's own heap (allocated blocks, after gc) may exceed its warmed-up count by this
# fraction at most: allocator-independent, so it is the leak check for Python objects.
HEAP_TOLERANCE = 0.05
# Client messages that must be this big to carry audio: trio-websocket's default is 1 MiB.
CLIENT_MAX_MESSAGE = 64 * 1024 * 1024


# ---------------------------------------------------------------- server logs


@attrs.frozen
class LogEvent:
    level: str
    event: str
    error: str | None  # "Type: message" of the exception being logged, if any
    # For the events asked for by name: their connection id, remote and reason.
    details: dict[str, str] = attrs.field(factory=dict, eq=False)


# What a kept event's details are drawn from.
DETAIL_KEYS = ("connection_id", "remote", "reason")


@contextmanager
def watch_logs(also: Collection[str] = ()) -> Iterator[list[LogEvent]]:
    """Keep the server's warnings and errors (with their exception), drop everything else.

    Events named in `also` are kept at any level, with their `DETAIL_KEYS`. Replaces
    structlog's processors for the block, so an in-process server under heavy load
    neither prints nor buffers its info lines.
    """
    kept: list[LogEvent] = []
    wanted = frozenset(also)

    def keep(logger: object, method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        name = str(event_dict.get("event"))
        if method in ("warning", "error", "exception", "critical") or name in wanted:
            error = None
            exc = sys.exc_info()[1] if event_dict.get("exc_info") else None
            if exc is not None:
                error = describe_exception(exc)
            details = {k: str(event_dict[k]) for k in DETAIL_KEYS if k in event_dict}
            kept.append(LogEvent(method, name, error, details))
        raise structlog.DropEvent

    was_configured = structlog.is_configured()
    old = structlog.get_config()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, keep],
        cache_logger_on_first_use=False,
    )
    try:
        yield kept
    finally:
        if was_configured:
            structlog.configure(**old)
        else:
            structlog.reset_defaults()


def describe_exception(exc: BaseException) -> str:
    """`Type: message (at the innermost voxtrio frame)`, groups flattened to their leaves."""
    if isinstance(exc, BaseExceptionGroup):
        return " + ".join(describe_exception(e) for e in exc.exceptions)
    frames = [
        f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
        for frame in traceback.extract_tb(exc.__traceback__)
        if "/voxtrio/" in frame.filename
    ]
    where = f" (at {' < '.join(reversed(frames[-3:]))})" if frames else ""
    return f"{type(exc).__name__}: {exc}"[:300] + where


def server_errors(events: Iterable[LogEvent]) -> list[str]:
    """The error-level log events: a client's misbehaviour must never log one."""
    return [
        f"{event.event}: {event.error}" if event.error else event.event
        for event in events
        if event.level in ("error", "exception", "critical")
    ]


# ---------------------------------------------------------------- figures


FIGURES: dict[str, dict[str, Any]] = {}


def record_figures(name: str, **values: Any) -> None:
    """Keep one suite's figures (inputs, clients, requests, failures, leaks) for the report."""
    FIGURES.setdefault(name, {}).update(values)


def write_figures(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {}
    if path.exists():
        with suppress(ValueError):
            merged = json.loads(path.read_text())
    merged.update(FIGURES)
    path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- the terminal ledger


@attrs.define
class RequestRecord:
    """One request as its client saw it."""

    connection: int
    request_id: str
    sent_at: float
    active: bool = True
    terminals: int = 0
    outcome: str | None = None  # "ok", "cancelled" or the error code
    first_audio_at: float | None = None
    cancels: int = 0
    cancel_answered: bool = False
    audio_after_terminal: int = 0


@attrs.define
class Ledger:
    """Exactly one terminal message per request, unless its connection vanished.

    Request ids may be reused on a connection once their request has ended, so each
    record is keyed by (connection, request id, generation).
    """

    records: list[RequestRecord] = attrs.Factory(list)
    current: dict[tuple[int, str], RequestRecord] = attrs.Factory(dict)
    vanished: set[int] = attrs.Factory(set)
    problems: list[str] = attrs.Factory(list)
    server_messages: int = 0
    _ids: Iterator[int] = attrs.Factory(itertools.count)

    def connection(self) -> int:
        """A fresh connection number."""
        return next(self._ids)

    def started(self, connection: int, request_id: str) -> RequestRecord | None:
        """A start message went out; None when it reuses an id still active (a duplicate)."""
        key = (connection, request_id)
        if key in self.current:
            return None
        record = RequestRecord(connection, request_id, time.perf_counter())
        self.records.append(record)
        self.current[key] = record
        return record

    def forget(self, connection: int, request_id: str) -> None:
        """A start message the server refused before reading its id: no request after all."""
        record = self.current.pop((connection, request_id))
        self.records.remove(record)

    def cancel_sent(self, connection: int, request_id: str) -> None:
        record = self.current.get((connection, request_id))
        if record is not None:
            record.cancels += 1

    def vanish(self, connection: int) -> None:
        """The connection ended: its requests without a terminal message are lost, not wrong."""
        self.vanished.add(connection)
        for key in [key for key in self.current if key[0] == connection]:
            del self.current[key]

    def pending(self, connection: int) -> list[str]:
        return [rid for (conn, rid) in self.current if conn == connection]

    def observe(self, connection: int, message: str | bytes) -> dict[str, Any] | None:
        """File one server message; return it decoded (None for audio frames)."""
        self.server_messages += 1
        if isinstance(message, bytes):
            frame = decode_frame(message)
            rid = frame.metadata["request_id"]
            record = self.current.get((connection, rid))
            if record is None:
                self._after_terminal(connection, rid, "audio frame")
            elif record.first_audio_at is None and frame.payload:
                record.first_audio_at = time.perf_counter()
            return None
        decoded: dict[str, Any] = json.loads(message)
        kind = decoded.get("type")
        rid = decoded.get("request_id")
        if kind not in ("progress", "complete", "error", "pong") and kind not in VOICE_REPLIES:
            self.problems.append(f"unknown server message type {kind!r}")
        if kind == "error" and decoded["error"]["code"] == "INTERNAL_ERROR":
            self.problems.append(f"INTERNAL_ERROR: {decoded['error']['message']}")
        if not isinstance(rid, str):
            return decoded
        record = self.current.get((connection, rid))
        terminal = kind == "complete" or (kind == "error" and decoded.get("terminal") is True)
        if terminal:
            if record is None:
                self.problems.append(f"terminal message for inactive request {rid!r}: {decoded}")
                return decoded
            record.terminals += 1
            record.active = False
            result = decoded.get("result") or {}
            record.outcome = (
                "cancelled"
                if kind == "complete" and result.get("cancelled")
                else "ok"
                if kind == "complete"
                else decoded["error"]["code"]
            )
            if record.cancels and record.outcome == "cancelled":
                record.cancel_answered = True
            del self.current[(connection, rid)]
        elif kind == "progress" and record is None:
            self._after_terminal(connection, rid, "progress")
        elif kind == "error" and decoded["error"]["code"] == "UNKNOWN_REQUEST":
            # A cancel that crossed its request's terminal message.
            for old in reversed(self.records):
                if (old.connection, old.request_id) == (connection, rid) and old.cancels:
                    old.cancel_answered = True
                    break
        return decoded

    def _after_terminal(self, connection: int, rid: str, what: str) -> None:
        for old in reversed(self.records):
            if (old.connection, old.request_id) == (connection, rid):
                old.audio_after_terminal += 1
                self.problems.append(f"{what} for {rid!r} after its terminal message")
                return
        self.problems.append(f"{what} for a request never sent: {rid!r}")

    def check(self) -> list[str]:
        """Every violation: two terminals, none on a live connection, audio after the end."""
        found = list(self.problems)
        for record in self.records:
            where = f"connection {record.connection} request {record.request_id!r}"
            if record.terminals > 1:
                found.append(f"{where}: {record.terminals} terminal messages")
            if record.terminals == 0 and record.connection not in self.vanished:
                found.append(f"{where}: no terminal message on a connection still open")
        return found

    def unanswered_cancels(self) -> list[RequestRecord]:
        """Cancels that got neither complete {cancelled} nor a later UNKNOWN_REQUEST."""
        return [
            r
            for r in self.records
            if r.cancels
            and not r.cancel_answered
            and r.terminals == 1
            and r.connection not in self.vanished
        ]

    def outcomes(self) -> Counter[str]:
        return Counter(
            r.outcome or ("lost" if r.connection in self.vanished else "none") for r in self.records
        )


# Replies of the voice messages some servers add to the native protocol.
VOICE_REPLIES = ("voice_registered", "voice_list", "voice_deleted")


# ---------------------------------------------------------------- clients


# A client gives up on a WebSocket upgrade not answered within this (websockets' default).
HANDSHAKE_DEADLINE = 10.0


class HandshakeTimeout(trio.TooSlowError):
    """The server did not answer the upgrade within HANDSHAKE_DEADLINE: the client gave up."""


@contextmanager
def handshake_deadline() -> Iterator[None]:
    try:
        with trio.fail_after(HANDSHAKE_DEADLINE):
            yield
    except trio.TooSlowError:
        raise HandshakeTimeout(f"no answer to the upgrade in {HANDSHAKE_DEADLINE:g} s") from None


@asynccontextmanager
async def connect(
    url: str, *, max_message_size: int = CLIENT_MAX_MESSAGE
) -> AsyncIterator[WebSocketConnection]:
    """trio-websocket's client on a socket this opens and always closes.

    (`open_websocket_url` leaks its socket when the handshake fails, and when the two
    close frames cross; here the stream is ours.) Handshake and close are bounded.
    """
    host, port, path = split_url(url)
    stream = await trio.open_tcp_stream(host, port)
    try:
        async with trio.open_nursery() as nursery:
            with handshake_deadline():
                ws = await wrap_client_stream(
                    nursery, stream, host, path, max_message_size=max_message_size
                )
            try:
                yield ws
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The client's own reader task answers a server ping after our close frame went
        # out: trio-websocket raises LocalProtocolError (python-trio/trio-websocket#184).
        rest = group.split(LocalProtocolError)[1]
        if rest is None:
            return
        leaves = list(_leaves(rest))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise
    finally:
        await trio.aclose_forcefully(stream)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for sub in exc.exceptions:
            yield from _leaves(sub)
    else:
        yield exc


def split_url(url: str) -> tuple[str, int, str]:
    rest = url.removeprefix("ws://")
    hostport, _, path = rest.partition("/")
    host, port = hostport.rsplit(":", 1)
    return host, int(port), "/" + path


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked client frame, built by hand (so it may carry what wsproto would refuse)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    mask = os.urandom(4)
    masked = (
        np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
    ).tobytes()
    return head + mask + masked


# Framing violations and the close code RFC 6455 asks the server to answer with.
FRAMING_VIOLATIONS: dict[str, tuple[bytes, int]] = {
    "rsv_bits": (bytes([0xC1]) + client_frame(0x1, b"hi")[1:], 1002),
    "reserved_opcode": (client_frame(0x3, b"hi"), 1002),
    "unmasked_frame": (bytes([0x81, 0x02]) + b"hi", 1002),
    "oversized_ping": (client_frame(0x9, b"x" * 126), 1002),
    "bad_close_code": (client_frame(0x8, struct.pack(">H", 999)), 1002),
    "bad_utf8": (client_frame(0x1, b"\xff\xfe"), 1007),
}


class Refused(Exception):
    """The server refused the handshake with this HTTP status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"handshake refused: HTTP {status}")
        self.status = status


class RawWebSocket:
    """A WebSocket client on a bare socket (wsproto), able to misbehave at any byte."""

    def __init__(self, stream: trio.SocketStream, host: str) -> None:
        self.stream = stream
        self.host = host
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.closed: CloseConnection | None = None
        self._send_lock = trio.Lock()  # a reader answering pings may send beside a writer
        self._text: list[str] = []
        self._bytes: list[bytes] = []
        # A slow reader: at most `receive_size` bytes per read, `read_delay` s before each.
        self.receive_size = 1 << 20
        self.read_delay = 0.0

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, *, handshake: bool = True) -> AsyncIterator[RawWebSocket]:
        host, port, path = split_url(url)
        stream = await trio.open_tcp_stream(host, port)
        raw = cls(stream, host)
        try:
            if handshake:
                await raw.handshake(path)
            yield raw
        finally:
            await trio.aclose_forcefully(stream)

    def handshake_bytes(self, path: str) -> bytes:
        return self.ws.send(Request(host=self.host, target=path))

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def handshake(self, path: str, *, then: bytes = b"") -> None:
        """The upgrade; `then` goes in the same TCP write (RFC 6455 says wait for the 101)."""
        await self._send(self.handshake_bytes(path) + then)
        with handshake_deadline():
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise trio.BrokenResourceError("closed during the handshake")
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, AcceptConnection):
                        return
                    if isinstance(event, RejectConnection):
                        raise Refused(event.status_code)

    async def send_text(self, text: str) -> None:
        await self._send(self.ws.send(Message(data=text)))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(self.ws.send(Message(data=data)))

    async def send_raw(self, data: bytes) -> None:
        await self._send(data)

    async def ping(self, payload: bytes = b"") -> None:
        await self._send(self.ws.send(Ping(payload)))

    async def abort(self) -> None:
        """Vanish without a close frame (RST where the platform allows it)."""
        with suppress(OSError):
            self.stream.setsockopt(
                trio.socket.SOL_SOCKET, trio.socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        await trio.aclose_forcefully(self.stream)

    async def receive(self) -> str | bytes | None:
        """The next whole message (answering pings), or None once the server closed."""
        while True:
            for event in self.ws.events():
                if isinstance(event, Ping):
                    with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                        await self._send(self.ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self.closed = event
                elif isinstance(event, TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        text, self._text = "".join(self._text), []
                        return text
                elif isinstance(event, BytesMessage):
                    self._bytes.append(bytes(event.data))
                    if event.message_finished:
                        data, self._bytes = b"".join(self._bytes), []
                        return data
            if self.closed is not None:
                return None
            try:
                await trio.sleep(self.read_delay)
                data = await self.stream.receive_some(self.receive_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self.ws.receive_data(None)
                self.closed = self.closed or CloseConnection(1006, "connection lost")
                return None
            self.ws.receive_data(data)


# ---------------------------------------------------------------- a server in a thread


class ServerThread:
    """A real server on its own Trio loop in a thread: for synchronous (Hypothesis) tests."""

    def __init__(self, engine_factory: EngineFactory, **overrides: Any) -> None:
        self.settings = Settings(
            **{"port": 0, "metrics_port": 0, "engine": "synthetic", **overrides}
        )
        self.engine_factory = engine_factory
        self.handle: ServerHandle | None = None
        self.thread = threading.Thread(target=self._main, name="voxtrio-stress-server", daemon=True)
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> ServerThread:
        self.thread.start()
        if not self._ready.wait(60) or self.handle is None:
            raise RuntimeError(f"the server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None and self._scope is not None:
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self.thread.join(30)

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        with trio.CancelScope() as scope:
            self._scope = scope
            async with trio.open_nursery() as nursery:
                self.handle = await nursery.start(
                    partial(run_server, self.settings, engine_factory=self.engine_factory)
                )
                self._ready.set()

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the server's loop (a consistent read of its state)."""
        assert self._token is not None
        return trio.from_thread.run_sync(fn, trio_token=self._token)

    @property
    def url(self) -> str:
        assert self.handle is not None
        return self.handle.url

    @property
    def dashscope_url(self) -> str:
        return dashscope_url(self.url)


def dashscope_url(url: str) -> str:
    return url.removesuffix("/tts") + "/api-ws/v1/inference"


# ---------------------------------------------------------------- leak checks


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (this one by default), from /proc or psutil."""
    pid = os.getpid() if pid is None else pid
    statm = Path(f"/proc/{pid}/statm")
    if statm.exists():
        return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import psutil  # not Linux: psutil is then needed

    return int(psutil.Process(pid).memory_info().rss)


def release_memory() -> None:
    """Collect garbage and hand free heap pages back (glibc), so RSS shows what is held.

    Without malloc_trim, RSS after a burst keeps pages malloc has freed but not returned,
    which reads like a leak that is not one.
    """
    gc.collect()
    with suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


async def scrape_gauges(metrics_port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """The live gauges of a server's /metrics, parsed with prometheus_client's parser."""
    status, body = await http_get(f"http://{host}:{metrics_port}/metrics")
    assert status == 200, body[:200]
    return {
        family.name: family.samples[0].value
        for family in text_string_to_metric_families(body.decode())
        if family.name in LIVE_GAUGES
    }


def thread_leaks(
    before: Iterable[threading.Thread], allowed: Iterable[threading.Thread]
) -> list[str]:
    """Threads started since `before` that are neither allowed nor idle trio workers."""
    known = set(before) | set(allowed)
    return [
        t.name
        for t in threading.enumerate()
        if t not in known and not IDLE_TRIO_WORKER.fullmatch(t.name)
    ]


@attrs.define
class LeakCheck:
    """The after-run audit of one server: everything back to where it started."""

    handle: ServerHandle
    engines: list[Any]  # engines with an `open_generations` count (SyntheticEngine, FaultyEngine)
    threads_before: frozenset[threading.Thread]
    pid: int | None = None  # None: the server runs in this process
    rss_warm: int | None = None
    rss_history: list[int] = attrs.Factory(list)
    heap_warm: int | None = None  # in-process only: sys.getallocatedblocks()
    heap_history: list[int] = attrs.Factory(list)

    @classmethod
    def before_start(cls) -> frozenset[threading.Thread]:
        return frozenset(threading.enumerate())

    def state(self) -> dict[str, int]:
        pool = self.handle.server.pool
        return {
            "connections": len(self.handle.server.connections),
            "slots_busy": pool.slots_busy,
            "admitted": pool.admitted,
            "waiting": pool.waiting,
            "open_generations": sum(e.open_generations for e in self.engines),
        }

    async def settle(self, deadline: float) -> dict[str, int]:
        """Wait (at most `deadline` s) for the server to notice every client is gone."""
        with trio.move_on_after(deadline):
            while any(self.state().values()):
                await trio.sleep(0.05)
        return self.state()

    def warm(self) -> int:
        release_memory()
        self.rss_warm = rss_bytes(self.pid)
        if self.pid is None:
            self.heap_warm = sys.getallocatedblocks()
        return self.rss_warm

    async def audit(
        self, deadline: float, *, extra_threads: Iterable[threading.Thread] = ()
    ) -> dict[str, Any]:
        """Every leak found after `settle`: {} when the server is back to its start."""
        leaks: dict[str, Any] = {}
        state = await self.settle(deadline)
        if any(state.values()):
            leaks["state"] = state
        replicas = [i.thread for i in self.handle.server.pool.instances]
        if not all(t.is_alive() for t in replicas):
            leaks["replica_threads_dead"] = [t.name for t in replicas if not t.is_alive()]
        extra = thread_leaks(self.threads_before, [*replicas, *extra_threads])
        if extra:
            leaks["threads"] = extra
        assert self.handle.metrics_port is not None
        gauges = await scrape_gauges(self.handle.metrics_port)
        if any(gauges.get(name, -1.0) != 0.0 for name in LIVE_GAUGES):
            leaks["gauges"] = gauges
        release_memory()
        rss = rss_bytes(self.pid)
        self.rss_history.append(rss)
        if self.rss_warm is not None and rss > self.rss_warm * (1 + RSS_TOLERANCE):
            leaks["rss"] = {"warm": self.rss_warm, "now": rss}
        if self.pid is None:
            heap = sys.getallocatedblocks()
            self.heap_history.append(heap)
            if self.heap_warm is not None and heap > self.heap_warm * (1 + HEAP_TOLERANCE):
                leaks["python_heap"] = {"warm": self.heap_warm, "now": heap}
        return leaks


def settle_deadline(settings: Settings) -> float:
    """How long a server may take to notice that every client has gone.

    A client that stopped reading costs a write timeout, its requests a stop timeout;
    a half-open handshake costs the handshake timeout.
    """
    return settings.write_timeout + settings.stop_timeout + settings.handshake_timeout + 5.0


# ---------------------------------------------------------------- engine faults


FaultKind = Literal["raise", "nan", "hang"]


@attrs.frozen
class Fault:
    """Act up at step `at_step` (1-based) of one generation."""

    kind: FaultKind
    at_step: int = 1


class InjectedFault(RuntimeError):
    """Raised by FaultyEngine on a `raise` fault."""


FaultPlan = Callable[[SynthesisSpec, int], Fault | None]


def by_marker(spec: SynthesisSpec, generation: int) -> Fault | None:
    """Faults named in the text: "FAULT:raise@2", "FAULT:nan@1", "FAULT:hang@1"."""
    match = re.search(r"FAULT:(raise|nan|hang)@(\d+)", spec.text)
    if match is None:
        return None
    kind: FaultKind = match.group(1)  # type: ignore[assignment]
    return Fault(kind, int(match.group(2)))


@attrs.define(eq=False)
class FaultyEngine:
    """Wraps an engine: raises, hangs (past any deadline) or returns NaN on a schedule.

    A hang blocks the replica thread inside the step callback (so the job makes no
    progress) until `release` is set or `max_hang` passes: the test never leaves a
    thread stuck behind it.
    """

    inner: Engine
    plan: FaultPlan = by_marker
    max_hang: float = 60.0
    release: threading.Event = attrs.Factory(threading.Event)
    hanging: threading.Event = attrs.Factory(threading.Event)
    generations: int = 0
    open_generations: int = 0
    faults: Counter[str] = attrs.Factory(Counter)

    @property
    def sample_rate(self) -> int:
        return self.inner.sample_rate

    def max_steps(self, spec: SynthesisSpec) -> int:
        return self.inner.max_steps(spec)

    def warm_up(self) -> None:
        self.inner.warm_up()

    def close(self) -> None:
        self.inner.close()

    def generate(
        self, spec: SynthesisSpec, on_step: StepCallback
    ) -> Generator[np.ndarray, None, None]:
        self.generations += 1
        self.open_generations += 1
        fault = self.plan(spec, self.generations)
        poison = False

        def step(steps: int) -> None:
            nonlocal poison
            on_step(steps)
            if fault is None or steps != fault.at_step:
                return
            self.faults[fault.kind] += 1
            if fault.kind == "raise":
                raise InjectedFault(f"injected failure at step {steps}")
            if fault.kind == "nan":
                poison = True
            else:
                self.hanging.set()
                self.release.wait(self.max_hang)
                self.hanging.clear()

        chunks = self.inner.generate(spec, step)
        try:
            for chunk in chunks:
                if poison:
                    chunk = chunk.copy()
                    chunk[len(chunk) // 2] = np.nan
                    poison = False
                yield chunk
        finally:
            chunks.close()
            self.open_generations -= 1


@contextmanager
def released(engine: FaultyEngine) -> Iterator[FaultyEngine]:
    """Release every hang of `engine` when the block ends, whatever happens in it."""
    try:
        yield engine
    finally:
        engine.release.set()
