"""A set of live items whose table shrinks again once most of them have gone.

A Python set never shrinks on removal: after 10,000 connections its table keeps room
for 40,000 (1 MB) until as many new ones have come and gone. The server's registry of
open connections is rebuilt at its current size when it falls to an eighth of its
peak, so a burst's table does not outlive the burst (docs/DEPLOY.md, "Memory").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

# Below this many items a table is a few KB: not worth rebuilding.
_SMALL = 256


class ShrinkingSet(Generic[T]):
    def __init__(self) -> None:
        self._items: set[T] = set()
        self._peak = 0
        self.rebuilds = 0  # for tests and reports

    def add(self, item: T) -> None:
        self._items.add(item)
        self._peak = max(self._peak, len(self._items))

    def discard(self, item: T) -> None:
        self._items.discard(item)
        if self._peak > _SMALL and len(self._items) * 8 <= self._peak:
            self._items = set(self._items)  # sized for what is left
            self._peak = len(self._items)
            self.rebuilds += 1

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items
