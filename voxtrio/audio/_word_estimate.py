"""Word times without an aligner: character-weighted within the speech, pauses from the audio.

Any language, about 1 ms of CPU per second of audio. The sentence's speech is what
lies above a level 35 dB under its loudest 10 ms frame; silences of 80 ms or more
inside it are pauses, which belong to no word. Each word then gets a share of the
speech time proportional to `word_weight` (its letters), laid over the speech
frames in order, so a word never starts or ends inside a pause. Its error is in
docs/WORDS.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

FRAME_SECONDS = 0.01
SPEECH_FLOOR_DB = -35.0  # below the loudest frame: silence
MIN_PAUSE_SECONDS = 0.08  # shorter gaps are closures inside words (stops), not pauses


def word_weight(word: str) -> float:
    """A word's share of the speech: its letters, a digit as 3 (a digit is a spoken
    word), a Han/kana character as 3 (a syllable); at least 1. Measured against
    syllable counts on espeak-ng speech, letters were the better weight (docs/WORDS.md)."""
    weight = 0.0
    for ch in word:
        if ch.isdigit() or _is_cjk(ch):
            weight += 3
        elif ch.isalnum():
            weight += 1
    return max(1.0, weight)


def speech_mask(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """One bool per 10 ms frame: speech, with pauses shorter than MIN_PAUSE filled in."""
    hop = max(1, round(sample_rate * FRAME_SECONDS))
    frames = len(audio) // hop
    if frames == 0:
        return np.zeros(0, bool)
    power = np.mean(np.square(audio[: frames * hop].astype(np.float64).reshape(frames, hop)), 1)
    level = 10 * np.log10(power + 1e-12)
    mask: np.ndarray = level > max(level.max() + SPEECH_FLOOR_DB, -80.0)
    # Fill short gaps between speech frames.
    speech = np.flatnonzero(mask)
    min_gap = round(MIN_PAUSE_SECONDS / FRAME_SECONDS)
    for a, b in itertools.pairwise(speech):
        if 1 < b - a <= min_gap:
            mask[a:b] = True
    return mask


def estimate_word_times(
    words: Sequence[str], audio: np.ndarray, sample_rate: int
) -> list[tuple[float, float]]:
    """(start, end) in seconds from the start of `audio` for each word, in order."""
    if not words:
        return []
    mask = speech_mask(audio, sample_rate)
    speech = np.flatnonzero(mask)
    if len(speech) == 0:  # nothing audible: spread the words over the whole audio
        speech = np.arange(max(1, len(mask)))
    weights = np.array([word_weight(w) for w in words])
    total = len(speech)
    bounds = np.concatenate([[0.0], np.cumsum(weights) / weights.sum() * total])
    times = []
    for k in range(len(words)):
        times.append((_start_at(speech, bounds[k]), _end_at(speech, bounds[k + 1])))
    return [(float(s) * FRAME_SECONDS, float(max(s, e)) * FRAME_SECONDS) for s, e in times]


def _start_at(speech: np.ndarray, x: float) -> float:
    """Where `x` frames of speech have passed, counting a pause before the next frame."""
    n = min(int(np.floor(x)), len(speech) - 1)
    return float(speech[n]) + min(1.0, x - n)


def _end_at(speech: np.ndarray, x: float) -> float:
    """Where `x` frames of speech have passed, stopping before any pause that follows."""
    n = max(0, int(np.ceil(x)) - 1)
    return float(speech[n]) + min(1.0, x - n)


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF
