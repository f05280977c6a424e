"""Give freed memory back to the system once a load has gone.

A burst of connections or streams leaves both allocators holding free memory
(docs/DEPLOY.md, "Memory"):

- Python's small-object allocator (pymalloc) returns a 1 MiB arena only when every
  object in it is gone, and the interpreter's free lists (up to 2,000 spare tuples of
  each size, 80 dicts, lists, ...) keep the last objects a load freed, scattered over
  its arenas: a few hundred of them pinned 300 MB after 10,000 connections closed. A
  full collection (`gc.collect()`) empties those lists (and any cyclic garbage), so
  the arenas go back. It runs on the event loop and walks every live object, so it
  runs only once the load has mostly gone: Trio's count of living tasks, sampled
  every second, at most half the most seen since the last collection and at most
  `QUIET_TASKS` (a busier server's own allocations soon trigger CPython's full
  collections, which empty the same lists). What was alive
  when serving began is frozen out of collections (`ops/_collector.py`), so a
  collection walks only what the remaining load holds.
- glibc returns only the top of an arena to the system by itself; `malloc_trim(0)`
  walks every arena and hands back their free pages. It runs on a worker thread,
  without the GIL, so the event loop goes on meanwhile. Off where the C library has
  no `malloc_trim` (musl, macOS).

Both run every `interval` seconds while resident memory is more than a tenth (at
least 8 MB) above what it was when serving began, and only while at most
`QUIET_TASKS` tasks live (not under load).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable

import structlog
import trio

log = structlog.get_logger("voxtrio.memory")

_PAGE = 4096
# Growth over the starting resident set below which no trim is tried.
_MIN_GROWTH = 8 * 2**20


def _load_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
    trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


_malloc_trim = _load_trim()


def resident_bytes() -> int:
    """This process's resident set (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def trim_now() -> bool:
    """Trim every arena (any thread; no GIL held meanwhile); False if unsupported."""
    if _malloc_trim is None:
        return False
    _malloc_trim(0)
    return True


def living_tasks() -> int:
    """Trio's count of living tasks: a cheap measure of the load (a few per connection)."""
    return trio.lowlevel.current_statistics().tasks_living


# A collection walks what the living tasks hold: ~35 us per task measured (10,000 idle
# connections closing: 521 ms), so at most this many keeps the loop's pause to tens of ms.
QUIET_TASKS = 1000


class LoadWatch:
    """The most tasks seen since the last collection; says when the load has halved."""

    def __init__(self, tasks: int) -> None:
        self.peak = tasks

    def see(self, tasks: int) -> None:
        self.peak = max(self.peak, tasks)

    def collect_now(self, tasks: int) -> bool:
        """True once (then the peak starts again from here) when the load has mostly gone:
        tasks at most half the peak and few enough for a short pause."""
        self.see(tasks)
        if tasks * 2 > self.peak or tasks > QUIET_TASKS:
            return False
        self.peak = tasks
        return True


async def trim_after_load(interval: float) -> None:
    """Forever: free what a load left while resident memory is well over the start's."""
    if interval <= 0:
        return
    floor = resident_bytes()
    threshold = max(_MIN_GROWTH, floor // 10)
    watch = LoadWatch(living_tasks())
    while True:
        for _ in range(max(1, round(interval))):  # sample the load about every second
            await trio.sleep(interval / max(1, round(interval)))
            watch.see(living_tasks())
        before = resident_bytes()
        tasks = living_tasks()
        if before - floor < threshold or tasks > QUIET_TASKS:
            # Under load the freed memory is soon taken again, and a trim holds each
            # malloc arena's lock while it walks it: the event loop's and the step
            # threads' allocations wait (1,000 streams' jitter p99 measured 22-24 ms
            # with trims every 10 s, 18 ms without; docs/BENCHMARKS.md, issue 20).
            continue
        collect_ms = None
        if watch.collect_now(tasks):
            started = time.perf_counter()
            gc.collect()  # empties the free lists that pin pymalloc's arenas
            collect_ms = round((time.perf_counter() - started) * 1000, 1)
        if _malloc_trim is not None:
            await trio.to_thread.run_sync(trim_now)
        after = resident_bytes()
        if before - after < threshold // 4:
            continue  # in use, not free: nothing worth a log line
        log.info(
            "memory_trimmed",
            rss_before_mb=round(before / 2**20, 1),
            rss_after_mb=round(after / 2**20, 1),
            collect_ms=collect_ms,  # the event loop's pause for the collection, if one ran
        )
