"""Prometheus metrics: names, labels, live gauges, isolation, exposition formats."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from voxtrio import __version__
from voxtrio.ops._metrics import MODES, STATUSES, Metrics


def scrape(metrics: Metrics) -> dict[str, Any]:
    """Sample name -> {frozenset(labels): value}, parsed from the rendered text."""
    body, _ = metrics.render()
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return samples


def value(metrics: Metrics, name: str, **labels: str) -> float:
    result: float = scrape(metrics)[name][frozenset(labels.items())]
    return result


def bucket(metrics: Metrics, name: str, le: str, **labels: str) -> float:
    return value(metrics, f"{name}_bucket", le=le, **labels)


def finish(metrics: Metrics, **overrides: Any) -> None:
    fields: dict[str, Any] = {"mode": "streaming", "status": "ok", "duration_s": 1.0}
    metrics.request_finished(**{**fields, **overrides})


def test_seed_metric_names_are_exported() -> None:
    """The seed's metric names (and types) are there from the first scrape."""
    metrics = Metrics()
    metrics.bind_live_state(
        active_connections=lambda: 0,
        queue_length=lambda: 0,
        running_tasks=lambda: 0,
        slots_busy=lambda: 0,
        slots=lambda: 16,
        instances=lambda: 1,
        ready=lambda: True,
    )
    types = {
        family.name: family.type
        for family in text_string_to_metric_families(metrics.render()[0].decode())
    }
    assert types["voxcpm_tts_requests"] == "counter"
    assert types["voxcpm_tts_request_duration_seconds"] == "histogram"
    for gauge in (
        "voxcpm_tts_active_connections",
        "voxcpm_tts_queue_length",
        "voxcpm_tts_running_tasks",
        "voxcpm_tts_slots_busy",
        "voxcpm_tts_slots",
        "voxcpm_tts_instances",
        "voxcpm_tts_ready",
    ):
        assert types[gauge] == "gauge"


def test_operator_metrics_are_exported() -> None:
    """The latency and volume metrics beyond the seed's are there too."""
    samples = scrape(Metrics())
    for name in (
        "voxcpm_tts_first_audio_seconds_bucket",
        "voxcpm_tts_queue_wait_seconds_bucket",
        "voxcpm_tts_audio_seconds_total",
        "voxcpm_tts_rtf_bucket",
        "voxcpm_tts_cancellations_total",
        "voxcpm_tts_errors_total",
        "voxcpm_tts_connections_total",
        "voxcpm_tts_handshakes_rejected_total",
        "voxcpm_tts_build_info",
    ):
        assert name in samples, name


def test_label_combinations_start_at_zero() -> None:
    """Every mode x status and every error code exists at 0 before any event."""
    samples = scrape(Metrics())
    requests = samples["voxcpm_tts_requests_total"]
    assert len(requests) == len(MODES) * len(STATUSES)
    assert set(requests.values()) == {0.0}
    errors = samples["voxcpm_tts_errors_total"]
    assert frozenset({("code", "RATE_LIMITED")}) in errors
    assert set(errors.values()) == {0.0}


def test_request_finished_counts_by_mode_and_status() -> None:
    """A finished request increments its mode/status series only."""
    metrics = Metrics()
    finish(metrics, mode="non_streaming", status="disconnected")
    assert value(metrics, "voxcpm_tts_requests_total", mode="non_streaming", status="disconnected")
    assert value(metrics, "voxcpm_tts_requests_total", mode="streaming", status="ok") == 0


def test_request_duration_is_observed_per_mode() -> None:
    """The duration lands in the mode's histogram."""
    metrics = Metrics()
    finish(metrics, duration_s=2.5)
    name = "voxcpm_tts_request_duration_seconds"
    assert value(metrics, f"{name}_sum", mode="streaming") == 2.5
    assert bucket(metrics, name, "2.0", mode="streaming") == 0
    assert bucket(metrics, name, "3.0", mode="streaming") == 1


def test_first_audio_buckets_resolve_tens_of_milliseconds() -> None:
    """Time to first audio has buckets from 10 ms up to 10 s."""
    metrics = Metrics()
    finish(metrics, first_audio_s=0.04)
    name = "voxcpm_tts_first_audio_seconds"
    assert bucket(metrics, name, "0.025", mode="streaming") == 0
    assert bucket(metrics, name, "0.05", mode="streaming") == 1
    les = {
        dict(labels)["le"]
        for labels in scrape(metrics)[f"{name}_bucket"]
        if ("mode", "streaming") in labels
    }
    assert {"0.01", "10.0", "+Inf"} <= les


def test_missing_latencies_are_not_observed() -> None:
    """A request that produced no audio adds nothing to first-audio, queue or RTF histograms."""
    metrics = Metrics()
    finish(metrics, status="error", error_code="GENERATION_FAILED")
    assert value(metrics, "voxcpm_tts_first_audio_seconds_count", mode="streaming") == 0
    assert value(metrics, "voxcpm_tts_queue_wait_seconds_count") == 0
    assert value(metrics, "voxcpm_tts_rtf_count") == 0


def test_queue_wait_audio_seconds_and_rtf_accumulate() -> None:
    """Queue wait, generated audio and RTF are recorded from each request."""
    metrics = Metrics()
    finish(metrics, queue_wait_s=0.3, audio_s=4.0, rtf=0.25)
    finish(metrics, queue_wait_s=0.0, audio_s=1.5, rtf=1.2)
    assert value(metrics, "voxcpm_tts_queue_wait_seconds_sum") == pytest.approx(0.3)
    assert value(metrics, "voxcpm_tts_audio_seconds_total") == 5.5
    assert bucket(metrics, "voxcpm_tts_rtf", "0.3") == 1
    assert bucket(metrics, "voxcpm_tts_rtf", "1.5") == 2


def test_rtf_buckets_span_one_hundredth_to_five() -> None:
    """RTF buckets run from 0.01 to 5."""
    les = {dict(labels)["le"] for labels in scrape(Metrics())["voxcpm_tts_rtf_bucket"]}
    assert min(float(le) for le in les) == 0.01
    assert max(float(le) for le in les if le != "+Inf") == 5.0


def test_cancelled_requests_count_as_cancellations() -> None:
    """status="cancelled" also increments the cancellations counter; others do not."""
    metrics = Metrics()
    finish(metrics, status="cancelled")
    finish(metrics, status="disconnected")
    assert value(metrics, "voxcpm_tts_cancellations_total") == 1


def test_errors_are_counted_by_code() -> None:
    """An error code is counted on its own series, from requests or on its own."""
    metrics = Metrics()
    finish(metrics, status="error", error_code="GENERATION_FAILED")
    metrics.error_sent("INVALID_JSON")
    assert value(metrics, "voxcpm_tts_errors_total", code="GENERATION_FAILED") == 1
    assert value(metrics, "voxcpm_tts_errors_total", code="INVALID_JSON") == 1


def test_unknown_label_values_are_folded_into_other() -> None:
    """Label values outside the known sets cannot create unbounded series."""
    metrics = Metrics()
    finish(metrics, mode="x" * 50, status="weird", error_code="NOT_A_CODE")
    metrics.handshake_rejected(418)
    assert value(metrics, "voxcpm_tts_requests_total", mode="other", status="other") == 1
    assert value(metrics, "voxcpm_tts_errors_total", code="other") == 1
    assert value(metrics, "voxcpm_tts_handshakes_rejected_total", status="other") == 1


def test_connections_and_rejected_handshakes_are_counted() -> None:
    """Accepted connections and refused handshakes (by status) are counted."""
    metrics = Metrics()
    metrics.connection_opened()
    metrics.connection_opened()
    metrics.handshake_rejected(401)
    assert value(metrics, "voxcpm_tts_connections_total") == 2
    assert value(metrics, "voxcpm_tts_handshakes_rejected_total", status="401") == 1
    assert value(metrics, "voxcpm_tts_handshakes_rejected_total", status="503") == 0


def test_live_gauges_are_read_at_scrape_time() -> None:
    """Bound gauges show the callable's value at each scrape, never a stale copy."""
    metrics = Metrics()
    state = {"connections": 3, "waiting": 1}
    metrics.bind_live_state(
        active_connections=lambda: state["connections"], queue_length=lambda: state["waiting"]
    )
    assert value(metrics, "voxcpm_tts_active_connections") == 3
    state.update(connections=0, waiting=4)
    assert value(metrics, "voxcpm_tts_active_connections") == 0
    assert value(metrics, "voxcpm_tts_queue_length") == 4


def test_unbound_live_gauges_are_absent() -> None:
    """A gauge with no source is left out rather than reported as a made-up 0."""
    assert "voxcpm_tts_slots_busy" not in scrape(Metrics())


def test_a_failing_live_source_drops_only_its_gauge() -> None:
    """A source that raises is logged and skipped; the rest of the scrape works."""
    metrics = Metrics()

    def broken() -> float:
        raise RuntimeError("boom")

    metrics.bind_live_state(slots_busy=broken, slots=lambda: 2)
    with capture_logs() as logs:
        samples = scrape(metrics)
    assert "voxcpm_tts_slots_busy" not in samples
    assert samples["voxcpm_tts_slots"][frozenset()] == 2
    assert [entry["event"] for entry in logs] == ["metrics_source_failed"]


def test_step_metrics_are_labelled_by_batch_size_bucket() -> None:
    """Batch size and step time are one distribution per bucket a step ran at."""
    metrics = Metrics()
    metrics.step_observed(3, 4, 0.02)
    metrics.step_observed(4, 4, 0.03)
    metrics.step_observed(1, 1, 0.01)
    samples = scrape(metrics)
    four, one = frozenset({("bucket", "4")}), frozenset({("bucket", "1")})
    assert samples["voxcpm_tts_batch_size_count"] == {four: 2, one: 1}
    assert samples["voxcpm_tts_batch_size_sum"] == {four: 7, one: 1}
    assert samples["voxcpm_tts_step_seconds_count"] == {four: 2, one: 1}


def test_build_info_carries_version_and_engine() -> None:
    """The build-info gauge is 1 with the version, engine and model as labels."""
    metrics = Metrics(engine="synthetic", model="openbmb/VoxCPM-0.5B")
    ((labels, one),) = scrape(metrics)["voxcpm_tts_build_info"].items()
    labels = dict(labels)
    assert one == 1
    assert labels["version"] == __version__
    assert labels["engine"] == "synthetic"
    assert labels["model"] == "openbmb/VoxCPM-0.5B"


def test_process_metrics_are_on_the_own_registry() -> None:
    """process_* and python_info are exported although the default registry is not used."""
    samples = scrape(Metrics())
    assert "python_info" in samples
    assert "process_open_fds" in samples
    assert "process_start_time_seconds" in samples


def test_two_instances_do_not_share_state() -> None:
    """Each Metrics has its own registry: several servers in one process do not collide."""
    first, second = Metrics(), Metrics()
    first.connection_opened()
    assert value(first, "voxcpm_tts_connections_total") == 1
    assert value(second, "voxcpm_tts_connections_total") == 0


def test_render_defaults_to_prometheus_text() -> None:
    """Without an Accept header the body is Prometheus text format 0.0.4."""
    _, content_type = Metrics().render()
    assert content_type.startswith("text/plain; version=0.0.4")


def test_render_negotiates_openmetrics() -> None:
    """An OpenMetrics Accept header gets OpenMetrics text that parses as such."""
    metrics = Metrics()
    metrics.connection_opened()
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    names = {family.name for family in openmetrics_families(body.decode())}
    assert "voxcpm_tts_connections" in names
