"""Freed memory goes back to the system after a load: a full collection, then malloc_trim."""

from __future__ import annotations

import random

import pytest
import trio

from voxtrio.ops import _memory
from voxtrio.ops._memory import (
    QUIET_TASKS,
    LoadWatch,
    resident_bytes,
    trim_after_load,
    trim_now,
)

needs_trim = pytest.mark.skipif(_memory._malloc_trim is None, reason="no malloc_trim (not glibc)")


@needs_trim
def test_trim_hands_back_free_pages_between_live_blocks() -> None:
    """Blocks freed around survivors stay resident until a trim returns their pages."""
    blocks = [b"x" * 60_000 for _ in range(1500)]  # ~90 MB, below the mmap threshold
    survivors = blocks[::25]  # pin the heap: glibc cannot shrink it from the top
    del blocks
    before = resident_bytes()
    assert trim_now()
    after = resident_bytes()
    assert before - after > 40 * 2**20
    assert len(survivors) == 60


async def test_an_interval_of_zero_never_trims() -> None:
    """memory_trim_interval 0 turns the trimmer off: the task returns at once."""
    with trio.fail_after(1):
        await trim_after_load(0.0)


def test_the_load_watch_says_collect_once_the_load_has_mostly_gone() -> None:
    """No collection while the load is up or still large; one when it has fallen to half
    its peak and to few tasks (a short pause), then not again until the next load."""
    watch = LoadWatch(10)
    watch.see(30_000)
    assert not watch.collect_now(20_000)
    assert not watch.collect_now(QUIET_TASKS + 1)  # halved, but a long pause
    assert watch.collect_now(QUIET_TASKS)
    assert not watch.collect_now(QUIET_TASKS // 2 + 1)  # the peak starts again from here
    assert watch.collect_now(12)


def _burst_of_small_objects() -> None:
    """~130 MB of tuples, strings and dicts, freed in random order (as connections close)."""
    items: list[object] = []
    for i in range(400_000):
        items.append((i, str(i)))
        items.append({"k": i})
    random.Random(1).shuffle(items)
    del items


async def test_the_trimmer_hands_back_the_arenas_a_gone_load_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a burst, the interpreter's free lists pin pymalloc arenas (malloc_trim cannot
    reach them) until the trimmer's full collection, run once the load's tasks have gone."""
    load = trio.CancelScope()

    async def hold_load() -> None:  # tasks that hold connections
        with load:
            async with trio.open_nursery() as tasks:
                for _ in range(400):
                    tasks.start_soon(trio.sleep_forever)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold_load)
        nursery.start_soon(trim_after_load, 10.0)
        await trio.sleep(15)  # a tick with the load on and nothing to free
        start = resident_bytes()
        _burst_of_small_objects()
        assert resident_bytes() - start > 80 * 2**20  # held by the free lists
        load.cancel()
        await trio.sleep(10)
        assert resident_bytes() - start < 30 * 2**20
        nursery.cancel_scope.cancel()


async def test_under_load_the_trimmer_neither_collects_nor_trims(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more than QUIET_TASKS tasks alive and memory well over the start's, no tick
    collects or trims: a trim would stall the loop's allocations for memory in use."""
    calls: list[str] = []
    resident = iter([100 * 2**20] + [900 * 2**20] * 100)  # the start, then far above it
    monkeypatch.setattr(_memory, "resident_bytes", lambda: next(resident))
    monkeypatch.setattr(_memory, "living_tasks", lambda: QUIET_TASKS + 1)
    monkeypatch.setattr(_memory, "trim_now", lambda: calls.append("trim") or True)
    monkeypatch.setattr(_memory.gc, "collect", lambda *a: calls.append("collect") or 0)
    with trio.move_on_after(55):
        await trim_after_load(10.0)
    assert calls == []
