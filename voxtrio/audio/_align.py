"""English forced alignment of a sentence's words to its audio, with pocketsphinx.

pocketsphinx (BSD, CMU Sphinx) ships a US-English acoustic model and the CMU
pronouncing dictionary in its wheel: nothing to download. Its alignment mode builds
a grammar of exactly the sentence's words (optional silence and noise between them)
and finds the best path through the audio, on CPU at about 1 % of real time. It
covers English text whose every word is in the dictionary after normalisation
(numbers spelled out with `inflect`); anything else returns None and the caller
falls back to the estimate. Accuracy and cost are measured in docs/WORDS.md.

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
    "beam": 1e-80,
    "pbeam": 1e-80,
    "wbeam": 1e-60,
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
        """The dictionary words each word is spoken as, or None if any is not covered."""
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
            segments = self._decode([t for ts in spoken for t in ts], audio, sample_rate)
        if segments is None:
            return None
        times: list[tuple[float, float]] = []
        at = 0
        for tokens in spoken:
            first, last = segments[at], segments[at + len(tokens) - 1]
            times.append((first[0], last[1]))
            at += len(tokens)
        return times

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
                return None
            spoken.append(tokens)
        return spoken

    def _number(self, digits: str) -> str:
        if self._inflect is None:
            import inflect

            self._inflect = inflect.engine()
        words: str = self._inflect.number_to_words(digits, andword="")
        return words.replace("-", " ").replace(",", " ")

    def _decode(
        self, tokens: list[str], audio: np.ndarray, sample_rate: int
    ) -> list[tuple[float, float]] | None:
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
        segments = [
            (s.start_frame / _FRAMES_PER_SECOND, (s.end_frame + 1) / _FRAMES_PER_SECOND)
            for s in decoder.seg()
            if not s.word.startswith(("<", "["))
        ]
        return segments if len(segments) == len(tokens) else None
