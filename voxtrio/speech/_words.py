"""Word times of each spoken sentence, for every API's word timestamps.

Sentence boundaries are exact: each sentence is one generation, and its place in the
request's audio is the encoder's own count of what came before. Inside a sentence
the words are aligned with pocketsphinx where it covers the text (English), else
estimated from the audio (`voxtrio.audio._word_estimate`), marked `estimated`. Both
run on a worker thread, never on the event loop; the aligner is one decoder behind a
limiter of one, and a sentence that cannot get it within `ALIGN_WAIT_SECONDS` is
estimated instead, so a burst of requests costs at most the estimate's 1 ms per
second of audio each, never a queue.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import structlog
import trio

from voxtrio.audio._align import SphinxAligner, available
from voxtrio.audio._word_estimate import estimate_word_times
from voxtrio.protocol._words import TimedWord, Word, split_words
from voxtrio.speech._output import OutputSpec

log = structlog.get_logger("voxtrio.words")

# To get the aligner; past it the sentence is estimated. The sentence's last audio
# piece waits meanwhile, so this bounds the pause a busy aligner can add.
ALIGN_WAIT_SECONDS = 0.25


@attrs.frozen
class SentenceWords:
    """One sentence's words, timed in seconds of the client's audio from the request start."""

    index: int
    words: list[TimedWord]
    estimated: bool


def playback_scale(output: OutputSpec) -> float:
    """Seconds the client hears per second the model made.

    The ONE place a tempo change reaches word times: the native and OpenAI `speed` and
    DashScope's `rate` are the output's one `rate` (2.0: times halve).
    """
    return 1.0 / output.rate


@attrs.define(eq=False)
class WordTimer:
    """Times sentences' words; one per process (the aligner's model is loaded once)."""

    aligner: SphinxAligner | None
    limiter: trio.CapacityLimiter = attrs.field(factory=lambda: trio.CapacityLimiter(1))

    async def time_sentence(
        self,
        index: int,
        text: str,
        audio: np.ndarray,
        sample_rate: int,
        *,
        offset: float,
        scale: float,
        not_before: float = 0.0,
    ) -> SentenceWords:
        """Time `text`'s words in `audio` (model rate); `offset`: seconds of request audio
        before the sentence; `scale`: `playback_scale` of the output; `not_before`: the
        previous sentence's last word end (times never go back across sentences)."""
        words = split_words(text)
        texts = [w.text for w in words]
        times: list[tuple[float, float]] | None = None
        if self.aligner is not None and words:
            times = await self._align(texts, audio, sample_rate)
        estimated = times is None
        if times is None:
            times = await trio.to_thread.run_sync(estimate_word_times, texts, audio, sample_rate)
        duration = len(audio) / sample_rate
        return SentenceWords(
            index,
            _timed(words, times, duration, offset=offset, scale=scale, not_before=not_before),
            estimated,
        )

    async def _align(
        self, texts: list[str], audio: np.ndarray, sample_rate: int
    ) -> list[tuple[float, float]] | None:
        """The aligner's times, or None: not covered, busy past the deadline, or broken."""
        assert self.aligner is not None
        acquired = False
        with trio.move_on_after(ALIGN_WAIT_SECONDS):
            await self.limiter.acquire()
            acquired = True
        if not acquired:
            log.debug("word_aligner_busy", words=len(texts))
            return None
        try:
            return await trio.to_thread.run_sync(self.aligner.align, texts, audio, sample_rate)
        except Exception as exc:  # a broken aligner costs accuracy, never the request
            log.warning("word_alignment_failed", error=repr(exc)[:300])
            return None
        finally:
            self.limiter.release()


def _timed(
    words: Sequence[Word],
    times: Sequence[tuple[float, float]],
    duration: float,
    *,
    offset: float,
    scale: float,
    not_before: float,
) -> list[TimedWord]:
    """Sentence-local model seconds -> request seconds the client hears, non-decreasing."""
    out: list[TimedWord] = []
    floor = 0.0
    for word, (start, end) in zip(words, times, strict=True):
        start = min(max(start, floor), duration)
        end = min(max(end, start), duration)
        floor = end
        at = max(round(offset + start * scale, 3), not_before)
        until = max(round(offset + end * scale, 3), at)
        out.append(TimedWord(word.text, word.begin, word.end, at, until))
    return out


_shared: WordTimer | None = None


def shared_word_timer() -> WordTimer:
    """The process's word timer (built on first use: word timestamps cost nothing unasked)."""
    global _shared
    if _shared is None:
        aligner = SphinxAligner() if available() else None
        if aligner is None:
            log.warning("word_aligner_unavailable", reason="pocketsphinx cannot be imported")
        _shared = WordTimer(aligner)
    return _shared
