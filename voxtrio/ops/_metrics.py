"""Prometheus metrics, on a registry of their own (several servers share a test process).

Counters and histograms are updated by the server as events happen. Gauges that
mirror live state (connections, queue, slots) are read at scrape time from
callables the server binds, so they cannot drift from the truth.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import structlog
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voxtrio import __version__
from voxtrio.protocol._errors import ErrorCode

log = structlog.get_logger("voxtrio.metrics")

Status = Literal["ok", "cancelled", "error", "disconnected"]
STATUSES: tuple[Status, ...] = ("ok", "cancelled", "error", "disconnected")
MODES = ("streaming", "non_streaming", "text_stream", "dashscope", "openai")
# Handshake refusals the server answers with, pre-created so rate() sees zeros.
REJECT_STATUSES = (400, 401, 403, 404, 429, 503)
HTTP_SHED_REASONS = ("evicted", "refused")
# Label values outside these sets are folded into "other": a misbehaving caller
# must not be able to create unbounded series.
OTHER = "other"
ERROR_CODES = frozenset(code.value for code in ErrorCode)

# Whole requests: a short sentence to several minutes of audio.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# Time to first audio: what a latency-sensitive client feels, 10 ms - 10 s.
FIRST_AUDIO_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    10.0,
)
# Waiting for a slot: zero when idle, up to the queue timeout (60 s default).
QUEUE_WAIT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Real-time factor (generation time / audio time): below 1 keeps up with playback.
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)

LiveValue = Callable[[], float]

BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
STEP_SECONDS_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)

_LIVE_GAUGES = {
    "active_connections": (
        "voxcpm_tts_active_connections",
        "Open WebSocket connections and HTTP requests being served",
    ),
    "queue_length": (
        "voxcpm_tts_queue_length",
        "Admitted requests waiting for a free generation slot",
    ),
    "running_tasks": (
        "voxcpm_tts_running_tasks",
        "Admitted requests holding a generation slot",
    ),
    "slots_busy": (
        "voxcpm_tts_slots_busy",
        "Generation slots holding a request (generating, or still stopping)",
    ),
    "slots": (
        "voxcpm_tts_slots",
        "Generation slots loaded: instances x rows each steps at once (--max-batch)",
    ),
    "instances": (
        "voxcpm_tts_instances",
        "Model instances loaded (--workers), each one step-loop thread",
    ),
    "ready": (
        "voxcpm_tts_ready",
        "1 while /ready answers 200 (loaded, warm, not draining), else 0",
    ),
}


class _LiveState(Collector):
    """Gauges read from the server's own state at scrape time."""

    def __init__(self) -> None:
        self.sources: dict[str, LiveValue] = {}

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(name, doc) for name, doc in _LIVE_GAUGES.values()]

    def collect(self) -> Iterator[Metric]:
        for key, (name, doc) in _LIVE_GAUGES.items():
            source = self.sources.get(key)
            if source is None:
                continue
            try:
                value = float(source())
            except Exception:
                # One broken source must not fail the whole scrape; the series
                # goes missing, which an `absent()` alert can catch.
                log.exception("metrics_source_failed", metric=name)
                continue
            yield GaugeMetricFamily(name, doc, value=value)


class Metrics:
    """Every metric the server exports, on its own `CollectorRegistry`."""

    def __init__(self, *, engine: str = "", model: str = "") -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "voxcpm_tts_requests", "Finished TTS requests", ["mode", "status"], registry=r
        )
        self.request_duration = Histogram(
            "voxcpm_tts_request_duration_seconds",
            "Time from the request message to its last reply",
            ["mode"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.first_audio = Histogram(
            "voxcpm_tts_first_audio_seconds",
            "Time from the request to its first audio chunk",
            ["mode"],
            buckets=FIRST_AUDIO_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "voxcpm_tts_queue_wait_seconds",
            "Time an admitted request waited for a free generation slot",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.audio_seconds = Counter(
            "voxcpm_tts_audio_seconds", "Seconds of audio generated and sent", registry=r
        )
        self.rtf = Histogram(
            "voxcpm_tts_rtf",
            "Real-time factor of finished generations (generation time / audio time)",
            buckets=RTF_BUCKETS,
            registry=r,
        )
        self.cancellations = Counter(
            "voxcpm_tts_cancellations", "Requests cancelled by the client", registry=r
        )
        self.errors = Counter(
            "voxcpm_tts_errors", "Error messages sent, by protocol error code", ["code"], registry=r
        )
        self.connections = Counter(
            "voxcpm_tts_connections", "WebSocket connections accepted", registry=r
        )
        self.http_connections_shed = Counter(
            "voxcpm_http_connections_shed",
            "Side-port connections dropped for lack of a slot (evicted: stalled, refused)",
            ["reason"],
            registry=r,
        )
        self.handshakes_rejected = Counter(
            "voxcpm_tts_handshakes_rejected",
            "WebSocket handshakes refused, by HTTP status",
            ["status"],
            registry=r,
        )
        # Per bucket: the padded batch size a step ran at (a compiled model has one
        # graph per bucket), so each bucket's step time is its own distribution.
        self.batch_size = Histogram(
            "voxcpm_tts_batch_size",
            "Rows one step advanced, by the batch-size bucket the step ran at",
            ["bucket"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "voxcpm_tts_step_seconds",
            "Time one step took (each row in it by one chunk), by batch-size bucket",
            ["bucket"],
            buckets=STEP_SECONDS_BUCKETS,
            registry=r,
        )
        self.prefill_seconds = Histogram(
            "voxcpm_tts_prefill_seconds",
            "Time one prefill group took (the stall running generations saw)",
            buckets=STEP_SECONDS_BUCKETS,
            registry=r,
        )
        self.build_info = Info("voxcpm_tts_build", "voxtrio build and runtime", registry=r)
        self.build_info.info(
            {
                "version": __version__,
                "python": platform.python_version(),
                "engine": engine,
                "model": model,
            }
        )
        self._live = _LiveState()
        r.register(self._live)
        # process_* (start time, memory, open fds vs LimitNOFILE) and python_info,
        # which only the default registry would otherwise have.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # Pre-create every bounded label combination: a series that only appears
        # on its first event makes rate() and alerts blind to that first event.
        for mode in MODES:
            self.request_duration.labels(mode)
            self.first_audio.labels(mode)
            for status in STATUSES:
                self.requests.labels(mode, status)
        for code in sorted(ERROR_CODES):
            self.errors.labels(code)
        for reject in REJECT_STATUSES:
            self.handshakes_rejected.labels(str(reject))
        for shed in HTTP_SHED_REASONS:
            self.http_connections_shed.labels(shed)

    def bind_live_state(
        self,
        *,
        active_connections: LiveValue | None = None,
        queue_length: LiveValue | None = None,
        running_tasks: LiveValue | None = None,
        slots_busy: LiveValue | None = None,
        slots: LiveValue | None = None,
        instances: LiveValue | None = None,
        ready: LiveValue | None = None,
    ) -> None:
        """Register the callables read at scrape time (a gauge is absent until bound)."""
        given = {
            "active_connections": active_connections,
            "queue_length": queue_length,
            "running_tasks": running_tasks,
            "slots_busy": slots_busy,
            "slots": slots,
            "instances": instances,
            "ready": ready,
        }
        self._live.sources.update({key: fn for key, fn in given.items() if fn is not None})

    def step_observed(self, rows: int, bucket: int, seconds: float) -> None:
        """A step loop's thread: one step (prometheus_client is thread-safe)."""
        self.batch_size.labels(str(bucket)).observe(rows)
        self.step_seconds.labels(str(bucket)).observe(seconds)

    def prefill_observed(self, rows: int, seconds: float) -> None:
        self.prefill_seconds.observe(seconds)

    def connection_opened(self) -> None:
        self.connections.inc()

    def http_connection_shed(self, reason: str) -> None:
        self.http_connections_shed.labels(reason if reason in HTTP_SHED_REASONS else OTHER).inc()

    def handshake_rejected(self, status: int) -> None:
        label = str(status) if status in REJECT_STATUSES else OTHER
        self.handshakes_rejected.labels(label).inc()

    def error_sent(self, code: str) -> None:
        """An error message not tied to a finished request (e.g. INVALID_JSON)."""
        self.errors.labels(code if code in ERROR_CODES else OTHER).inc()

    def request_finished(
        self,
        *,
        mode: str,
        status: str,
        duration_s: float,
        first_audio_s: float | None = None,
        queue_wait_s: float | None = None,
        audio_s: float = 0.0,
        rtf: float | None = None,
        error_code: str | None = None,
    ) -> None:
        """Record one request once its last message is sent (or its client is gone)."""
        mode = mode if mode in MODES else OTHER
        status = status if status in STATUSES else OTHER
        self.requests.labels(mode, status).inc()
        self.request_duration.labels(mode).observe(duration_s)
        if first_audio_s is not None:
            self.first_audio.labels(mode).observe(first_audio_s)
        if queue_wait_s is not None:
            self.queue_wait.observe(queue_wait_s)
        if audio_s > 0:
            self.audio_seconds.inc(audio_s)
        if rtf is not None:
            self.rtf.observe(rtf)
        if status == "cancelled":
            self.cancellations.inc()
        if error_code is not None:
            self.error_sent(error_code)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type (OpenMetrics if `accept` asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
