"""The pool of connections still reading their request: oldest out, but not in a burst."""

from __future__ import annotations

import contextlib

import trio

from voxtrio.server._pending import PendingRequests


async def test_a_full_pool_evicts_the_reader_that_has_waited_longest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past the grace period, a newcomer cancels the oldest reader, not another one."""
    pool = PendingRequests(2, grace_s=1.0)
    with pool.reading() as first, pool.reading() as second:
        await trio.sleep(2)
        with pool.reading():
            assert first.cancel_called
            assert not second.cancel_called
    assert pool.evicted == 1
    assert len(pool) == 0


async def test_a_burst_of_new_readers_is_let_in_up_to_the_hard_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Readers younger than the grace period stay; past 4x the limit the oldest goes."""
    pool = PendingRequests(2, grace_s=1.0, hard_factor=4)
    scopes = []
    with contextlib.ExitStack() as stack:
        for _ in range(8):
            scopes.append(stack.enter_context(pool.reading()))
        assert not any(scope.cancel_called for scope in scopes)
        stack.enter_context(pool.reading())
        assert scopes[0].cancel_called
        assert not scopes[1].cancel_called
