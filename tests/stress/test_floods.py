"""Key floods beside a streaming bystander (issue 15 #3): the bystander's audio keeps its pace.

The server runs in its own process (its event loop is what a flood could stall); three
attackers each send nearly 1 MiB messages of distinct unknown keys, one after the other,
while a bystander streams a long request. Its inter-chunk gaps are compared with a run of
the same request alone, on the same server.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from ..support import serve_process
from .harness import record_figures

pytestmark = pytest.mark.slow

ATTACKERS = 3
TEXT = "A sentence long enough to take many chunks to speak. " * 6  # 81 chunks
# Slack on top of the quiet run's worst gap: scheduling noise on a loaded machine, far
# below what a flood did before the fix (0.2-0.6 s per message, gaps of seconds).
GAP_SLACK_S = 0.5


def flood(request_id: str) -> str:
    keys = ",".join(f'"n{i}":0' for i in range(90_000))  # ~0.98 MB, under the 1 MiB cap
    return f'{{"type":"tts_request","request_id":"{request_id}","params":{{{keys}}}}}'


async def bystander_gaps(url: str) -> list[float]:
    """Seconds between the audio frames of one streamed request."""
    gaps: list[float] = []
    async with open_websocket_url(url) as ws:
        request = {"type": "tts_request", "request_id": "b", "params": {"text": TEXT}}
        await ws.send_message(json.dumps(request))
        last: float | None = None
        with trio.fail_after(120):
            while True:
                message = await ws.get_message()
                now = time.perf_counter()
                if isinstance(message, bytes):
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                elif json.loads(message)["type"] in ("complete", "error"):
                    assert json.loads(message)["type"] == "complete", message
                    return gaps


async def attacker(url: str, stop: trio.Event, sizes: list[int]) -> None:
    message = flood("f")
    async with open_websocket_url(url, max_message_size=64 * 1024 * 1024) as ws:
        while not stop.is_set():
            await ws.send_message(message)
            sizes.append(len(await ws.get_message()))


async def test_key_floods_leave_a_bystanders_chunk_gaps_alone(tmp_path: Path) -> None:
    """Under three flooding connections the bystander's worst gap stays near a quiet run's,
    and every flood is answered in a few hundred bytes."""
    async with serve_process(tmp_path, "--synthetic-rtf", "0.25") as served:
        quiet = await bystander_gaps(served.url)
        sizes: list[int] = []
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(ATTACKERS):
                nursery.start_soon(attacker, served.url, stop, sizes)
            await trio.sleep(0.5)  # the floods are under way
            attacked = await bystander_gaps(served.url)
            stop.set()
    figures = {
        "quiet_gap_ms": {"p50": _ms(statistics.median(quiet)), "max": _ms(max(quiet))},
        "attacked_gap_ms": {"p50": _ms(statistics.median(attacked)), "max": _ms(max(attacked))},
        "floods": len(sizes),
        "largest_answer_bytes": max(sizes),
    }
    record_figures("key_floods", **figures)
    assert len(sizes) >= ATTACKERS, figures
    assert max(sizes) < 1000, figures
    assert max(attacked) <= max(quiet) + GAP_SLACK_S, figures


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
