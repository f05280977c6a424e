"""WordTimer: the aligner when it can, the estimate otherwise, on the client's clock."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from voxtrio.audio._align import SphinxAligner
from voxtrio.speech._output import OutputSpec
from voxtrio.speech._words import ALIGN_WAIT_SECONDS, WordTimer, playback_scale

RATE = 16000
AUDIO = np.zeros(RATE, np.float32)
AUDIO[4000:12000] = 0.3 * np.sin(np.arange(8000) * 0.08)


class BrokenAligner(SphinxAligner):
    def align(self, *args: object) -> None:
        raise RuntimeError("the decoder fell over")


async def test_offset_and_scale_put_words_on_the_request_clock() -> None:
    """Sentence-local times move by the offset and scale by 1/rate."""
    timer = WordTimer(aligner=None)
    plain = await timer.time_sentence(0, "one two", AUDIO, RATE, offset=0.0, scale=1.0)
    later = await timer.time_sentence(3, "one two", AUDIO, RATE, offset=2.0, scale=0.5)
    assert later.index == 3
    assert later.estimated
    assert plain.estimated
    for a, b in zip(plain.words, later.words, strict=True):
        assert b.start == pytest.approx(2.0 + a.start / 2, abs=1e-3)
        assert b.end == pytest.approx(2.0 + a.end / 2, abs=1e-3)


def test_playback_scale_follows_the_tempo() -> None:
    """rate 2.0: the client hears each model second in half a second."""
    assert playback_scale(OutputSpec(rate=2.0)) == 0.5
    assert playback_scale(OutputSpec()) == 1.0


async def test_a_failing_aligner_falls_back_to_the_estimate() -> None:
    """An aligner exception costs accuracy (estimated), never the request."""
    timer = WordTimer(aligner=BrokenAligner())
    words = await timer.time_sentence(0, "hello world", AUDIO, RATE, offset=0.0, scale=1.0)
    assert words.estimated
    assert [w.text for w in words.words] == ["hello", "world"]


async def test_a_busy_aligner_is_not_waited_for_past_the_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    """With the aligner held elsewhere, the sentence is estimated after the deadline."""
    timer = WordTimer(aligner=SphinxAligner())
    held, release = trio.Event(), trio.Event()

    async def hold() -> None:
        async with timer.limiter:
            held.set()
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold)
        await held.wait()
        started = trio.current_time()
        words = await timer.time_sentence(0, "hello", AUDIO, RATE, offset=0.0, scale=1.0)
        assert words.estimated
        assert trio.current_time() - started == pytest.approx(ALIGN_WAIT_SECONDS)
        release.set()
