"""The word-time estimate: character-weighted over the speech, never inside a pause."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from voxtrio.audio._word_estimate import estimate_word_times, speech_mask, word_weight

RATE = 16000


def bursts(*spans: tuple[float, float], total: float) -> np.ndarray:
    """A 200 Hz tone during each (start, end) span, silence elsewhere."""
    audio = np.zeros(int(total * RATE), np.float32)
    for start, end in spans:
        t = np.arange(int(start * RATE), int(end * RATE))
        audio[t] = 0.3 * np.sin(2 * np.pi * 200 * t / RATE)
    return audio


@pytest.mark.parametrize(
    ("word", "weight"),
    [("cat", 3), ("banana,", 6), ("“Ja”", 2), ("1999", 12), ("好。", 3), ("—", 1)],
)
def test_weight_counts_letters_digits_and_cjk(word: str, weight: float) -> None:
    """Letters 1, digits and Han characters 3, punctuation nothing; at least 1."""
    assert word_weight(word) == weight


def test_words_split_at_a_pause_start_and_end_on_its_edges() -> None:
    """Two equal words around a 300 ms pause: one ends where it starts, the next begins after."""
    audio = bursts((0.2, 0.7), (1.0, 1.5), total=1.8)
    (a, b) = estimate_word_times(["hello", "there"], audio, RATE)
    assert a == pytest.approx((0.2, 0.7), abs=0.02)
    assert b == pytest.approx((1.0, 1.5), abs=0.02)


def test_weights_share_out_continuous_speech() -> None:
    """Three letters then nine over one second of speech: a quarter and three quarters."""
    audio = bursts((0.0, 1.0), total=1.0)
    (a, b) = estimate_word_times(["cat", "wonderful"], audio, RATE)
    assert a[1] == pytest.approx(0.25, abs=0.02)
    assert b == pytest.approx((0.25, 1.0), abs=0.02)


def test_short_gaps_are_not_pauses() -> None:
    """A 40 ms closure (a stop consonant) stays inside the speech."""
    mask = speech_mask(bursts((0.0, 0.3), (0.34, 0.6), total=0.6), RATE)
    assert mask.all()


def test_silence_spreads_words_evenly_and_in_order() -> None:
    """Nothing audible: the words still get ordered, non-overlapping times."""
    times = estimate_word_times(["a", "b", "c"], np.zeros(RATE, np.float32), RATE)
    assert [s for s, _ in times] == sorted(s for s, _ in times)
    assert all(e1 <= s2 for (_, e1), (s2, _) in itertools.pairwise(times))
