"""Three voxtrio instances on the tiny checkpoint behind HAProxy (deploy/haproxy.cfg)."""

from __future__ import annotations

import base64
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

import voxtrio.client

from ..support import speak
from ..voices.test_voices_server import prompt_wav, reply_to
from .harness import Cluster, cluster, requests_served

pytestmark = pytest.mark.cluster

SIZE = 3
STEPS = 12  # chunks per request: long enough to overlap, short on 2 cores
LONG_STEPS = 200  # still in flight when an instance is stopped (seconds on 2 cores)
# voxcpm caps a generation at ~6 steps per text token: long requests need long text.
LONG_TEXT = " ".join(["This sentence keeps the tiny model talking for a while."] * 6)
LIST = {"type": "voice_list", "request_id": "list"}
DELETE = {"type": "voice_delete", "request_id": "del", "voice_id": "shared"}


async def speak_through(url: str, request_id: str, steps: int = STEPS, **params: Any) -> str:
    """One request on its own connection; its terminal message type."""
    text = LONG_TEXT if steps > STEPS else "Hello there."
    outcome = await speak(url, request_id, text=text, seed=1, max_len=steps, **params)
    return str(outcome.terminal["type"])


async def load(url: str, count: int, concurrency: int, **params: Any) -> list[str]:
    """`count` requests, `concurrency` at a time; their terminal types in order."""
    results: list[str] = [""] * count
    limiter = trio.CapacityLimiter(concurrency)

    async def one(index: int) -> None:
        async with limiter:
            try:
                results[index] = await speak_through(url, f"r{index}", **params)
            except Exception as exc:  # a failure is a figure here, not a crash
                results[index] = f"failed: {type(exc).__name__}: {exc}"

    async with trio.open_nursery() as nursery:
        for index in range(count):
            nursery.start_soon(one, index)
    return results


async def seconds_until_down(
    c: Cluster, name: str, *, task_status: trio.TaskStatus[list[float]]
) -> None:
    """Report (into the list handed back at start) how long HAProxy took to mark `name` down."""
    elapsed: list[float] = []
    task_status.started(elapsed)
    elapsed.append(await c.until_states({name: "DOWN"}, timeout=30))


async def served(c: Cluster) -> dict[str, float]:
    return {i.name: await requests_served(i) for i in c.instances}


async def test_requests_spread_across_instances(
    tmp_path: Path, instance_flags: list[str], figures: dict[str, Any]
) -> None:
    """Under concurrent load every instance takes a share of the requests."""
    async with cluster(tmp_path, SIZE, instance_flags) as c:
        results = await load(c.url, count=24, concurrency=6)
        per_instance = await served(c)
    figures["spread"] = {"requests": len(results), "per_instance": per_instance}
    assert results == ["complete"] * 24
    assert sum(per_instance.values()) == 24
    assert min(per_instance.values()) >= 3, per_instance


async def test_sigterm_loses_no_request_and_new_ones_keep_succeeding(
    tmp_path: Path, instance_flags: list[str], figures: dict[str, Any]
) -> None:
    """SIGTERM drains one instance: its streams finish, new work goes to the others."""
    async with cluster(tmp_path, SIZE, instance_flags) as c:
        victim = c.instances[0]
        in_flight: list[str] = []
        after: list[str] = []
        async with trio.open_nursery() as nursery:

            async def long_one(index: int) -> None:
                in_flight.append(await speak_through(c.url, f"long{index}", LONG_STEPS))

            for index in range(6):
                nursery.start_soon(long_one, index)
            await trio.sleep(1.0)  # every stream has been routed and started
            finished_before_sigterm = len(in_flight)
            victim.process.send_signal(signal.SIGTERM)
            marked_down = await nursery.start(seconds_until_down, c, victim.name)
            after = await load(c.url, count=12, concurrency=3)
            figures["sigterm"] = {
                "streams_in_flight_at_sigterm": 6 - finished_before_sigterm,
                "new_requests_during_drain": len(after),
                "new_request_failures": sum(r != "complete" for r in after),
            }
        figures["sigterm"]["seconds_until_marked_down"] = round(marked_down[0], 2)
        with trio.fail_after(40):
            await victim.process.wait()
        figures["sigterm"]["in_flight_completed"] = in_flight.count("complete")
        figures["sigterm"]["victim_exit_code"] = victim.process.returncode
        assert finished_before_sigterm == 0
        assert in_flight == ["complete"] * 6
        assert after == ["complete"] * 12
        assert victim.process.returncode == 0
        assert await load(c.url, count=6, concurrency=3) == ["complete"] * 6


async def test_kill_9_ends_its_streams_cleanly_and_the_others_keep_serving(
    tmp_path: Path, instance_flags: list[str], figures: dict[str, Any]
) -> None:
    """A killed instance's clients get ConnectionLost at once; nothing else fails."""
    async with cluster(tmp_path, SIZE, instance_flags) as c:
        victim = c.instances[1]
        outcomes: dict[str, str] = {}
        ended_after: dict[str, float] = {}
        killed_at: list[float] = []

        async def stream(index: int) -> None:
            name = f"s{index}"
            try:
                async with (
                    voxtrio.client.connect(c.url) as client,
                    client.synthesize(LONG_TEXT, seed=1, max_len=LONG_STEPS) as audio,
                ):
                    async for _ in audio:
                        pass
                outcomes[name] = "complete"
            except voxtrio.client.ConnectionLost:
                outcomes[name] = "connection_lost"
                ended_after[name] = trio.current_time() - killed_at[0]

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for index in range(6):
                    nursery.start_soon(stream, index)
                await trio.sleep(1.0)
                os.kill(victim.process.pid, signal.SIGKILL)
                killed_at.append(trio.current_time())
                recovered = await nursery.start(seconds_until_down, c, victim.name)
            after = await load(c.url, count=9, concurrency=3)
        lost = [name for name, kind in outcomes.items() if kind == "connection_lost"]
        figures["kill_9"] = {
            "streams": len(outcomes),
            "lost_with_the_instance": len(lost),
            "max_seconds_to_connection_lost": round(max(ended_after.values(), default=0.0), 3),
            "seconds_until_marked_down": round(recovered[0], 2),
            "requests_after": len(after),
            "failures_after": sum(r != "complete" for r in after),
        }
        assert len(outcomes) == 6
        assert 1 <= len(lost) <= 3  # leastconn put two of six there; at most half
        assert max(ended_after.values()) < 5.0
        assert after == ["complete"] * 9


async def test_a_voice_registered_through_the_balancer_works_on_every_instance(
    tmp_path: Path, instance_flags: list[str], figures: dict[str, Any]
) -> None:
    """voice_register on one instance is usable and listed on the others; so is delete."""
    register = {
        "type": "voice_register", "request_id": "reg", "voice_id": "shared",
        "audio": base64.b64encode(prompt_wav()).decode(), "persist": True, "mode": "reference",
    }  # fmt: skip
    async with cluster(tmp_path, SIZE, instance_flags) as c:
        reply = await reply_to(c.url, register)
        assert reply["type"] == "voice_registered", reply
        direct = [
            await speak_through(i.url, f"direct-{i.name}", voice_id="shared") for i in c.instances
        ]
        through = await load(c.url, count=6, concurrency=6, voice_id="shared")
        listed = [await reply_to(i.url, LIST) for i in c.instances]
        deleted = await reply_to(c.instances[2].url, DELETE)
        gone = await speak(c.instances[0].url, "after-delete", text="Hi.", voice_id="shared")
        listed_after = [await reply_to(i.url, LIST) for i in c.instances]
        figures["shared_voices"] = {
            "instances_using_it_right_after_register": direct.count("complete"),
            "requests_through_the_balancer_using_it": through.count("complete"),
            "instances_listing_none_after_delete": sum(m["voices"] == [] for m in listed_after),
        }
    assert direct == ["complete"] * SIZE
    assert through == ["complete"] * 6
    assert [[v["voice_id"] for v in m["voices"]] for m in listed] == [["shared"]] * SIZE
    assert deleted["type"] == "voice_deleted", deleted
    assert gone.terminal["type"] == "error"
    assert "shared" in gone.terminal["error"]["message"]
    assert [m["voices"] for m in listed_after] == [[]] * SIZE
