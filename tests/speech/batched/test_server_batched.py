"""The server on a batched instance: many requests, one step loop, real sockets."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from voxtrio.speech._synthetic import SyntheticEngine
from voxtrio.speech.batched._loop import ModelInstance

from ...support import speak


async def test_concurrent_requests_share_the_steps_of_one_instance(
    start_server: Callable[..., Any],
) -> None:
    """Eight requests on one instance all complete, alone-identical, most steps carrying several."""
    handle = await start_server(lambda: SyntheticEngine(rtf=0.05), workers=1, max_batch=8)
    alone = (await speak(handle.url, text="a" * 80, seed=5)).audio
    outcomes: dict[int, Any] = {}

    async def one(i: int) -> None:
        outcomes[i] = await speak(handle.url, request_id=f"r{i}", text="a" * 80, seed=5 + i)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(one, i)
    assert all(o.terminal["type"] == "complete" for o in outcomes.values())
    assert outcomes[0].audio == alone
    (instance,) = handle.server.pool.instances
    assert isinstance(instance, ModelInstance)
    assert instance.stats.rows_stepped >= 2 * instance.stats.steps  # rows shared the steps
    assert handle.server.pool.slots_busy == 0


async def test_batch_size_and_step_time_reach_the_metrics(
    start_server: Callable[..., Any],
) -> None:
    """/metrics carries the step loop's batch-size and step-time histograms, per bucket."""
    handle = await start_server(lambda: SyntheticEngine(rtf=0.0), workers=1, max_batch=4)
    await speak(handle.url, text="a" * 40)
    body, _ = handle.server.metrics.render()
    text = body.decode()
    assert 'voxcpm_tts_batch_size_count{bucket="1"} 10.0' in text  # ten steps of one row
    assert 'voxcpm_tts_step_seconds_count{bucket="1"} 10.0' in text
