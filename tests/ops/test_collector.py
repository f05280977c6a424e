"""The garbage collector's settings after start-up (ops/_collector.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from voxtrio.ops._collector import (
    MIDDLE_THRESHOLD,
    OLD_THRESHOLD,
    YOUNG_THRESHOLD,
    settle_after_start,
)


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_settling_freezes_what_is_alive() -> None:
    """Objects alive at start-up are frozen: no collection scans them again."""
    survivor = [object() for _ in range(10)]
    settle_after_start()
    assert gc.get_freeze_count() >= len(survivor)


@pytest.mark.usefixtures("restored_collector")
def test_settling_makes_collections_rarer() -> None:
    """Young collections every YOUNG_THRESHOLD allocations, middle ones often, full rarely."""
    settle_after_start()
    young, middle, old = gc.get_threshold()
    assert (young, middle, old) == (YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)
    assert young > 700
    assert old > 10


@pytest.mark.usefixtures("restored_collector")
def test_cycles_are_still_collected_after_settling() -> None:
    """A reference cycle made after start-up is freed by the collector."""
    settle_after_start()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2
