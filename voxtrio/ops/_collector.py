"""Python's cyclic garbage collector, set for a server that holds a model.

Each collection stops the event loop and the step threads together; its cost grows
with the objects it scans, and a stalled loop delays every stream's next chunk.

- A loaded model leaves hundreds of thousands of long-lived objects (torch, voxcpm,
  every imported module) that each full collection would scan again. Once the server
  is warm, everything alive is moved out of the collector's sight (`gc.freeze`:
  never scanned again, still freed by reference counting).
- The server itself makes next to no cyclic garbage (measured: 192 objects collected
  over 1,000 streams and 1,000 connections), so collections can be rare. The
  youngest generation is collected every `YOUNG_THRESHOLD` net allocations instead
  of 700, and a full collection waits for `OLD_THRESHOLD` middle ones instead of 10
  (a full one scans every live connection's and stream's objects: 50-200 ms at
  1,000 streams). Short-lived cycles (an exception and its traceback) still die in
  the young collections.
- A middle collection scans what the young ones promoted since the last one, and
  promotes what survives out of the young generations for good: each live object is
  scanned once by a middle collection however often they run, so running one after
  every young one (`MIDDLE_THRESHOLD` 1; CPython: 10) costs no more in all and keeps
  each pause shortest. Collector trace of a 1,000-stream level (1,000 requests within
  160 ms), two runs each: longest middle pause 11.7 and 27.9 ms against 32.9 and 52.5
  ms every 3 young ones (49-112 ms every 10), all collections 98 and 153 ms against
  140 and 199 ms.

Measured with 1,000 synthetic streams (docs/BENCHMARKS.md, issue 20).
"""

from __future__ import annotations

import gc

import structlog

log = structlog.get_logger("voxtrio.ops")

# Net allocations of tracked objects between two young collections (CPython: 700).
YOUNG_THRESHOLD = 10_000
# Young collections between two middle ones (CPython: 10).
MIDDLE_THRESHOLD = 1
# Middle collections between two full ones (CPython: 10).
OLD_THRESHOLD = 1_000


def settle_after_start() -> None:
    """After loading and warm-up: collect once, freeze what survives, collect less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    log.info("collector_settled", frozen=gc.get_freeze_count(), thresholds=gc.get_threshold())
