"""Freed heap goes back to the system: malloc_trim after a load."""

from __future__ import annotations

import pytest
import trio

from voxtrio.ops import _memory
from voxtrio.ops._memory import resident_bytes, trim_after_load, trim_now

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
