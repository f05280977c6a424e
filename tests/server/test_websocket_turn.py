"""WriteTurn: a connection's write lock, first come first served, that any task may release."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from voxtrio.server._websocket import WriteTurn


async def test_waiters_get_the_turn_in_the_order_they_asked() -> None:
    """Released with writers waiting, the turn goes to the longest waiter, then the next."""
    turn = WriteTurn()
    turn.acquire_nowait()
    order: list[int] = []

    async def write(index: int) -> None:
        async with turn:
            order.append(index)
            await trio.lowlevel.checkpoint()  # others run meanwhile; none takes the turn

    async with trio.open_nursery() as nursery:
        for index in range(4):
            nursery.start_soon(write, index)
            await trio.testing.wait_all_tasks_blocked()  # parked before the next one asks
        turn.release()
    assert order == [0, 1, 2, 3]
    assert not turn.locked()


async def test_a_released_turn_passes_to_a_waiter_without_a_gap() -> None:
    """While a waiter is handed the turn it stays held: nobody may take it in between."""
    turn = WriteTurn()
    turn.acquire_nowait()
    async with trio.open_nursery() as nursery:

        async def wait_for_turn() -> None:
            async with turn:
                pass

        nursery.start_soon(wait_for_turn)
        await trio.testing.wait_all_tasks_blocked()
        turn.release()
        assert turn.locked()
        with pytest.raises(trio.WouldBlock):
            turn.acquire_nowait()
    assert not turn.locked()


async def test_another_task_may_release_the_turn() -> None:
    """A write begun by one task and finished by another frees the turn from that other task."""
    turn = WriteTurn()
    turn.acquire_nowait()  # this task begins the write
    async with trio.open_nursery() as nursery:

        async def finish_the_write() -> None:
            turn.release()

        nursery.start_soon(finish_the_write)
    assert not turn.locked()
    with trio.fail_after(1):
        async with turn:
            assert turn.locked()


async def test_releasing_a_free_turn_is_an_error() -> None:
    """A release nobody holds is a bug, reported at once rather than freeing a stranger's turn."""
    turn = WriteTurn()
    with pytest.raises(RuntimeError, match="nobody holds"):
        turn.release()


async def test_a_cancelled_waiter_never_takes_the_turn() -> None:
    """A writer cancelled while waiting leaves the queue; the turn goes to the next one."""
    turn = WriteTurn()
    turn.acquire_nowait()
    got: list[str] = []
    gives_up = trio.CancelScope()

    async def write(name: str, scope: trio.CancelScope) -> None:
        with scope:
            async with turn:
                got.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, "cancelled", gives_up)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(write, "next", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        gives_up.cancel()
        await trio.testing.wait_all_tasks_blocked()
        turn.release()
    assert got == ["next"]
    assert not turn.locked()
