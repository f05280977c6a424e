"""Statistics of a benchmark level: percentiles, jitter, overhead and throughput ratios.

Pure functions on plain floats (seconds in, milliseconds out where named `_ms`), so
they are unit-tested without a server.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from typing import Any

#: The server-overhead target on time to first audio: max(5 ms, 5 % of the engine's).
TTFA_OVERHEAD_MS = 5.0
TTFA_OVERHEAD_RATIO = 0.05
#: The throughput target at concurrency 4: at least 95 % of the direct engine's.
THROUGHPUT_RATIO = 0.95
#: The synthetic-engine delivery target: inter-chunk jitter p99 under 20 ms.
JITTER_P99_MS = 20.0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear between closest ranks (numpy's default).

    None for no values: a level where every request failed has no latency.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"q must be within 0-100, got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50)


def summary_ms(seconds: Sequence[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, Any]:
    """{"n", "p50", "p95", "p99", "max"} of durations given in seconds, in milliseconds."""
    out: dict[str, Any] = {"n": len(seconds)}
    for q in qs:
        out[f"p{q:g}"] = _round(_scaled(percentile(seconds, q), 1000.0), 3)
    out["max"] = _round(_scaled(max(seconds) if seconds else None, 1000.0), 3)
    return out


def gaps(arrivals: Sequence[float]) -> list[float]:
    """Differences between consecutive arrival times."""
    return [later - earlier for earlier, later in itertools.pairwise(arrivals)]


def jitter(arrivals: Sequence[float], nominal: float) -> list[float]:
    """|gap - nominal| for each inter-chunk gap of one stream (seconds).

    The first chunk's own delay is time to first audio, not jitter, so only gaps
    between chunks count.
    """
    return [abs(gap - nominal) for gap in gaps(arrivals)]


def overhead(server: float | None, baseline: float | None) -> dict[str, float | None]:
    """Server minus direct engine, in ms, and as a ratio server / engine."""
    if server is None or baseline is None:
        return {"ms": None, "ratio": None}
    ratio = server / baseline if baseline > 0 else None
    return {"ms": _round((server - baseline) * 1000.0, 3), "ratio": _round(ratio, 4)}


def ttfa_overhead_allowed_ms(baseline: float) -> float:
    """The allowed first-audio overhead: 5 ms or 5 % of the engine's, whichever is larger."""
    return max(TTFA_OVERHEAD_MS, TTFA_OVERHEAD_RATIO * baseline * 1000.0)


def meets_ttfa_target(server: float | None, baseline: float | None) -> bool | None:
    """Whether the server's first audio (s) is within the allowed overhead of the engine's."""
    if server is None or baseline is None:
        return None
    return (server - baseline) * 1000.0 <= ttfa_overhead_allowed_ms(baseline)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return _round(numerator / denominator, 4)


def meets_throughput_target(server: float | None, baseline: float | None) -> bool | None:
    value = ratio(server, baseline)
    return None if value is None else value >= THROUGHPUT_RATIO


def meets_jitter_target(p99_ms: float | None, errors: int) -> bool:
    return p99_ms is not None and p99_ms < JITTER_P99_MS and errors == 0


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)
