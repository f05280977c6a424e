"""Python's cyclic garbage collector, set for a server that holds a model.

A loaded model leaves hundreds of thousands of long-lived objects (torch, voxcpm,
every imported module) that a full collection scans again each time, with the event
loop and the step threads stopped; under load the collector ran every few seconds
and each run stalled every stream (measured with 1,000 synthetic streams: first
audio p50 1,035 -> 631 ms and loop CPU -22 % with the collector off;
docs/BENCHMARKS.md, issue 20). Once the server is warm, everything alive is moved
out of the collector's sight (`gc.freeze`: such objects are never scanned again,
and are freed normally by reference counting), and the youngest generation is
collected less often, so the short-lived objects of each chunk do not trigger a
collection every few hundred allocations. Cycles are still collected.
"""

from __future__ import annotations

import gc

import structlog

log = structlog.get_logger("voxtrio.ops")

# Allocations (net of frees) between two collections of the youngest generation.
YOUNG_THRESHOLD = 50_000


def settle_after_start() -> None:
    """After loading and warm-up: collect once, freeze what survives, collect less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    log.info("collector_settled", frozen=gc.get_freeze_count(), thresholds=gc.get_threshold())
