"""English forced alignment of a sentence's words to its audio, with pocketsphinx.

pocketsphinx (BSD, CMU Sphinx) ships a US-English acoustic model and the CMU
pronouncing dictionary in its wheel: nothing to download. Its alignment mode builds
a grammar of exactly the sentence's words (optional silence and noise between them)
and finds the best path through the audio, on CPU at under 2 % of real time. It
covers English text (ASCII letters, numbers spelled out with `inflect`). A word
outside the dictionary (a name, a brand) is left out of the grammar and gets the gap
the aligner leaves between its neighbours; a sentence where that gap is too short,
or where most words are unknown, returns None, as does any other text, and the
caller falls back to the estimate. Accuracy and cost: docs/WORDS.md.

One decoder, used by one thread at a time (it is not thread-safe): `align` holds a
lock, and the caller bounds how many threads wait for it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import soxr

ALIGN_RATE = 16000  # the acoustic model's rate
MAX_ALIGN_SECONDS = 60.0  # longer audio is estimated: the cost stays bounded
MIN_UNKNOWN_SECONDS = 0.08  # a word outside the dictionary needs a gap this long
_FRAMES_PER_SECOND = 100
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)*")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
# The wide beams alignment needs on speech unlike the model's training data (the
# default beams drop the right path on synthetic voices and return nothing).
_DECODER_OPTIONS: dict[str, Any] = {
    "samprate": ALIGN_RATE,
    "lm": None,
    "bestpath": False,
    "loglevel": "FATAL",
    "beam": 1e-150,
    "pbeam": 1e-150,
    "wbeam": 1e-120,
}


def available() -> bool:
    """Whether pocketsphinx can be imported (it is a dependency; a broken install is not)."""
    try:
        import pocketsphinx  # noqa: F401
    except ImportError:
        return False
    return True


class SphinxAligner:
    """Aligns English words to audio; loads its model on first use (about 0.15 s)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._decoder: Any = None
        self._inflect: Any = None

    def tokens(self, words: Sequence[str]) -> list[list[str]] | None:
        """The dictionary words each word is spoken as ([] for a word outside the
        dictionary), or None when the text is not this model's English."""
        with self._lock:
            return self._tokens(words)

    def align(
        self, words: Sequence[str], audio: np.ndarray, sample_rate: int
    ) -> list[tuple[float, float]] | None:
        """(start, end) seconds of each word in `audio`, or None where it cannot align."""
        if not words or len(audio) > MAX_ALIGN_SECONDS * sample_rate:
            return None
        with self._lock:
            spoken = self._tokens(words)
            if spoken is None:
                return None
            decoded = self._decode([t for ts in spoken for t in ts], audio, sample_rate)
        if decoded is None:
            return None
        segments, span = decoded
        times: list[tuple[float, float] | None] = []
        at = 0
        for tokens in spoken:
            if not tokens:
                times.append(None)
                continue
            first, last = segments[at], segments[at + len(tokens) - 1]
            times.append((first[0], last[1]))
            at += len(tokens)
        return _fill_unknown(words, times, span)

    # -- on the lock ------------------------------------------------------------

    def _load(self) -> Any:
        if self._decoder is None:
            from pocketsphinx import Decoder

            self._decoder = Decoder(**_DECODER_OPTIONS)
        return self._decoder

    def _tokens(self, words: Sequence[str]) -> list[list[str]] | None:
        decoder = self._load()
        spoken: list[list[str]] = []
        for word in words:
            text = word.lower().replace("’", "'").replace("&", " and ")
            if _NUMBER.search(text):
                text = _NUMBER.sub(lambda m: " " + self._number(m.group()) + " ", text)
            if not text.isascii():
                return None  # accents, other scripts: not this model's English
            tokens = _TOKEN.findall(text)
            if not tokens or any(decoder.lookup_word(t) is None for t in tokens):
                tokens = []  # a name or word outside the dictionary: timed from the gap
            spoken.append(tokens)
        unknown = sum(1 for tokens in spoken if not tokens)
        if 2 * unknown > len(spoken):
            return None  # mostly words it does not know: not enough to align on
        return spoken

    def _number(self, digits: str) -> str:
        if self._inflect is None:
            import inflect

            self._inflect = inflect.engine()
        words: str = self._inflect.number_to_words(digits, andword="")
        return words.replace("-", " ").replace(",", " ")

    def _decode(
        self, tokens: list[str], audio: np.ndarray, sample_rate: int
    ) -> tuple[list[tuple[float, float]], tuple[float, float]] | None:
        """Each token's (start, end), and the span of the whole path (silences too)."""
        decoder = self._load()
        pcm = soxr.resample(audio.astype(np.float32), sample_rate, ALIGN_RATE)
        data = (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        try:
            decoder.set_align_text(" ".join(tokens))
            decoder.start_utt()
            decoder.process_raw(data, full_utt=True)
            decoder.end_utt()
        except RuntimeError:
            return None
        if decoder.hyp() is None:
            return None  # no path through the grammar within the beams
        path = [
            (s.word, s.start_frame / _FRAMES_PER_SECOND, (s.end_frame + 1) / _FRAMES_PER_SECOND)
            for s in decoder.seg()
        ]
        segments = [(start, end) for word, start, end in path if not word.startswith(("<", "["))]
        if not path or len(segments) != len(tokens):
            return None
        return segments, (path[0][1], path[-1][2])


def _fill_unknown(
    words: Sequence[str], times: list[tuple[float, float] | None], span: tuple[float, float]
) -> list[tuple[float, float]] | None:
    """Give each run of words outside the dictionary the gap the aligner left between
    its neighbours (the path's silence or noise there), shared by letters; None when
    the gap is too short to hold them (the aligner gave their audio to a neighbour)."""
    out: list[tuple[float, float]] = []
    k = 0
    while k < len(times):
        known = times[k]
        if known is not None:
            out.append(known)
            k += 1
            continue
        run_end = k
        while run_end < len(times) and times[run_end] is None:
            run_end += 1
        lo = out[-1][1] if out else span[0]
        following = times[run_end] if run_end < len(times) else None
        hi = following[0] if following is not None else span[1]
        if hi - lo < MIN_UNKNOWN_SECONDS * (run_end - k):
            return None
        weights = [max(1, sum(c.isalnum() for c in w)) for w in words[k:run_end]]
        total, at = sum(weights), lo
        for weight in weights:
            step = (hi - lo) * weight / total
            out.append((at, at + step))
            at += step
        k = run_end
    return out
