"""The open-connection registry gives its table back once a burst has gone."""

from __future__ import annotations

import sys

from voxtrio.server._registry import ShrinkingSet


def _table_bytes(registry: ShrinkingSet[int]) -> int:
    return sys.getsizeof(registry._items)


def test_the_table_shrinks_when_a_burst_of_items_has_gone() -> None:
    """10,000 items in, all but 100 out: the table is sized for 100, not for 10,000."""
    registry: ShrinkingSet[int] = ShrinkingSet()
    small: ShrinkingSet[int] = ShrinkingSet()
    for i in range(100):
        small.add(i)
    for i in range(10_000):
        registry.add(i)
    burst = _table_bytes(registry)
    for i in range(100, 10_000):
        registry.discard(i)
    assert sorted(registry) == list(range(100))
    assert registry.rebuilds >= 1
    assert _table_bytes(registry) <= 2 * _table_bytes(small) < burst // 16


def test_a_small_registry_is_never_rebuilt() -> None:
    """Coming and going below a few hundred items costs no rebuild."""
    registry: ShrinkingSet[str] = ShrinkingSet()
    for _ in range(50):
        for i in range(200):
            registry.add(str(i))
        for i in range(200):
            registry.discard(str(i))
    assert registry.rebuilds == 0
    assert len(registry) == 0
    assert "1" not in registry
