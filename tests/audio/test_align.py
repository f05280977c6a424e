"""pocketsphinx forced alignment against speech whose word times are known (espeak-ng)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile

from voxtrio.audio._align import MAX_ALIGN_SECONDS, SphinxAligner

ESPEAK = shutil.which("espeak-ng")
# Under CI (.ci/run installs it) a missing espeak-ng fails the test instead of skipping it.
needs_espeak = pytest.mark.skipif(
    ESPEAK is None and os.environ.get("CI") != "true",
    reason="espeak-ng is not installed (apt-get install espeak-ng)",
)


@pytest.fixture(scope="module")
def aligner() -> SphinxAligner:
    return SphinxAligner()


def espeak_words(words: list[str], tmp: Path, gap: float = 0.12) -> tuple[np.ndarray, int, list]:
    """Each word spoken alone, trimmed, joined by `gap` s of silence: exact reference times."""
    assert ESPEAK is not None, "espeak-ng is needed (apt-get install espeak-ng)"
    pieces, reference, at, rate = [], [], 0.0, 22050
    for i, word in enumerate(words):
        path = tmp / f"w{i}.wav"
        subprocess.run([ESPEAK, "-v", "en-us", "-w", str(path), word], check=True)
        audio, rate = soundfile.read(path, dtype="float32")
        loud = np.flatnonzero(np.abs(audio) > 0.01)
        audio = audio[loud[0] : loud[-1] + 1]
        pieces += [audio, np.zeros(int(gap * rate), np.float32)]
        reference.append((at, at + len(audio) / rate))
        at += len(audio) / rate + gap
    return np.concatenate(pieces), rate, reference


@needs_espeak
def test_aligned_english_words_are_within_tens_of_ms(
    aligner: SphinxAligner, tmp_path: Path
) -> None:
    """Word boundaries of real speech: mean error under 40 ms, none over 150 ms."""
    words = "Please call Stella and ask her to bring these things with her from the store"
    words = words.split()
    audio, rate, reference = espeak_words(words, tmp_path)
    times = aligner.align(words, audio, rate)
    assert times is not None
    got = np.array(times)
    errors = np.abs(got - np.array(reference)).ravel()
    assert np.mean(errors) < 0.04
    assert max(errors) < 0.15


@needs_espeak
def test_a_word_outside_the_dictionary_gets_the_gap_between_its_neighbours(
    aligner: SphinxAligner, tmp_path: Path
) -> None:
    """A name the dictionary lacks spans the audio between the words around it."""
    words = ["Please", "call", "Zorbaxx", "and", "ask", "her"]
    audio, rate, reference = espeak_words(words, tmp_path, gap=0.05)
    times = aligner.align(words, audio, rate)
    assert times is not None
    start, end = times[2]
    assert start == pytest.approx(reference[2][0], abs=0.08)
    assert end == pytest.approx(reference[2][1], abs=0.08)
    known = np.array([t for i, t in enumerate(times) if i != 2])
    expected = np.array([t for i, t in enumerate(reference) if i != 2])
    assert np.abs(known - expected).mean() < 0.04


def test_numbers_are_spelled_out_and_unknown_words_are_not_covered(
    aligner: SphinxAligner,
) -> None:
    """Digits become dictionary words; a word outside the dictionary or English is None."""
    assert aligner.tokens(["42", "cats,"]) == [["forty", "two"], ["cats"]]
    assert aligner.tokens(["well-known"]) == [["well", "known"]]
    assert aligner.tokens(["hello", "Zorbaxx", "world"]) == [["hello"], [], ["world"]]
    assert aligner.tokens(["zqxjvv"]) is None  # mostly unknown: nothing to align on
    assert aligner.tokens(["café"]) is None
    assert aligner.tokens(["你好"]) is None


def test_audio_past_the_cost_bound_is_not_aligned(aligner: SphinxAligner) -> None:
    """More than MAX_ALIGN_SECONDS of audio returns None at once (the caller estimates)."""
    audio = np.zeros(int((MAX_ALIGN_SECONDS + 1) * 16000), np.float32)
    assert aligner.align(["hello"], audio, 16000) is None
