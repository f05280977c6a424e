"""A native request's setup turn (server/_request.py `SetupTurn`)."""

from __future__ import annotations

import trio
import trio.testing

from voxtrio.server._request import SetupTurn


async def test_a_turn_given_back_twice_frees_one_turn() -> None:
    """Giving a turn back is idempotent: the second call frees nobody else's."""
    turns = trio.CapacityLimiter(2)
    first, second = SetupTurn(turns), SetupTurn(turns)
    await first.take()
    await second.take()
    first.give_back()
    first.give_back()
    assert turns.borrowed_tokens == 1


async def test_a_request_waits_for_a_turn_while_all_are_taken() -> None:
    """With every turn taken, the next request sets up only once one is given back."""
    turns = trio.CapacityLimiter(1)
    holder, waiter = SetupTurn(turns), SetupTurn(turns)
    await holder.take()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter.take)
        await trio.testing.wait_all_tasks_blocked()
        assert not waiter.held
        holder.give_back()
    assert waiter.held


async def test_without_a_limiter_every_request_goes_at_once() -> None:
    """No limiter (tests, other callers): taking a turn never waits."""
    turn = SetupTurn(None)
    await turn.take()
    turn.give_back()
    assert not turn.held
