"""Word-time error and cost of the aligner (pocketsphinx) and the estimate, on real speech.

    python -m bench word_alignment [--rates 140 175 220] [--json out.json]

Reference: espeak-ng (a formant synthesizer, `apt-get install espeak-ng`) driven
through its C library, which reports where each word starts in the audio it makes
(WORD events, ms) and where clauses end (END events). That is connected speech with
word times known by construction, not a hand alignment; its voice is far from a
neural TTS voice, so the figures are an honest lower bound for the aligner on clean
speech, not a promise for every voice.

Boundaries compared: every word's start, and every word's end that touches the next
word (no clause pause between them: there the end is the next word's start). Per
method: mean, median, p90 and max absolute error in ms, the share of sentences it
covered (the aligner falls back to the estimate otherwise), and CPU time per second
of audio (the aligner's includes resampling to 16 kHz).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from typing import Any

import numpy as np

from voxtrio.audio._align import SphinxAligner
from voxtrio.audio._word_estimate import estimate_word_times
from voxtrio.protocol._words import split_words

ENGLISH = [
    "The quick brown fox jumps over the lazy dog, and then it runs away.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Your order of 42 items will arrive on Tuesday between nine and eleven.",
    "I am sorry, I did not catch that; could you say it once more?",
    "The meeting has been moved to the third floor conference room.",
    "Turn left at the next light, then keep going for about two miles.",
    "She sells sea shells by the sea shore every summer afternoon.",
    "Thanks for waiting. Your call is important to us, so please stay on the line.",
    "Can you hear me clearly now, or should I move closer to the microphone?",
    "We found three problems in the report and fixed all of them yesterday.",
    "The weather tomorrow will be cloudy with a chance of light rain.",
    "My flight leaves at seven fifteen, so I need to leave the house by five.",
]
# Names and brands outside the dictionary: the aligner times them from the gap.
ENGLISH_NAMES = [
    "Please call Zorbaxx and ask her to bring these things.",
    "The Voxtrio server answers in about forty milliseconds.",
    "Tell Quenbryl that the meeting moved to Tuesday.",
    "We shipped Plonkify yesterday, and it works.",
    "Your driver Mbeko will arrive in five minutes.",
    "Open the Fizzlr app and tap the green button.",
]
GERMAN = [
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Bitte rufen Sie mich morgen früh noch einmal an, wenn Sie Zeit haben.",
    "Das Wetter wird morgen bewölkt, mit etwas Regen am Nachmittag.",
    "Ich habe drei Fehler im Bericht gefunden und alle gestern behoben.",
]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)
_WORD, _END = 1, 5
_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1


class Espeak:
    """espeak-ng's library: audio plus the word and clause events it reports."""

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libespeak-ng.so.1")
        self.rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, None, 0)
        if self.rate <= 0:
            raise RuntimeError("espeak-ng did not initialise")
        self._chunks: list[np.ndarray] = []
        self._events: list[tuple[int, int, int]] = []
        self._callback = _CALLBACK(self._on_synth)  # kept alive while the library holds it
        self.lib.espeak_SetSynthCallback(self._callback)

    def _on_synth(self, wav: Any, count: int, events: Any) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, (count,)).astype(np.float32) / 32768)
        i = 0
        while events[i].type != 0:
            e = events[i]
            self._events.append((e.type, e.text_position, e.audio_position))
            i += 1
        return 0

    def say(self, text: str, voice: str, words_per_minute: int) -> tuple[np.ndarray, list]:
        """Audio, and per word of `split_words(text)` its reference (start, end) in
        seconds; None where espeak reported no word starting exactly there (it reads
        "42" as two words), an end of None where a clause pause follows the word."""
        self._chunks, self._events = [], []
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {voice!r}")
        self.lib.espeak_SetParameter(1, words_per_minute, 0)  # espeakRATE
        data = text.encode()
        assert data.isascii() or voice != "en-us"
        self.lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
        self.lib.espeak_Synchronize()
        audio = np.concatenate(self._chunks)
        # text_position counts characters from 1.
        starts = {pos - 1: ms / 1000 for kind, pos, ms in self._events if kind == _WORD}
        pauses = sorted(pos - 1 for kind, pos, _ in self._events if kind == _END)
        words = split_words(text)
        reference: list[tuple[float, float | None] | None] = []
        for k, word in enumerate(words):
            start = starts.get(word.begin)
            if start is None:
                reference.append(None)
                continue
            end = None
            if k + 1 < len(words):
                following = words[k + 1].begin
                paused = any(word.begin < p < following for p in pauses)
                end = None if paused else starts.get(following)
            reference.append((start, end))
        return audio, reference


def measure(
    espeak: Espeak, aligner: SphinxAligner, sentences: list[str], voice: str, wpm: int
) -> dict[str, Any]:
    errors: dict[str, list[float]] = {"aligner": [], "estimate": []}
    cost: dict[str, float] = {"aligner": 0.0, "estimate": 0.0}
    covered = audio_seconds = 0.0
    for text in sentences:
        audio, reference = espeak.say(text, voice, wpm)
        words = [w.text for w in split_words(text)]
        audio_seconds += len(audio) / espeak.rate
        t = time.process_time()
        aligned = aligner.align(words, audio, espeak.rate)
        cost["aligner"] += time.process_time() - t
        t = time.process_time()
        estimated = estimate_word_times(words, audio, espeak.rate)
        cost["estimate"] += time.process_time() - t
        if aligned is not None:
            covered += 1
        for name, times in (("aligner", aligned), ("estimate", estimated)):
            if times is None:
                continue
            for (start, end), ref in zip(times, reference, strict=True):
                if ref is None:
                    continue
                ref_start, ref_end = ref
                errors[name].append(abs(start - ref_start))
                if ref_end is not None:
                    errors[name].append(abs(end - ref_end))
    return {
        "voice": voice,
        "words_per_minute": wpm,
        "sentences": len(sentences),
        "aligner_covered": covered / len(sentences),
        "audio_seconds": round(audio_seconds, 2),
        **{name: _summary(values, cost[name], audio_seconds) for name, values in errors.items()},
    }


def _summary(errors: list[float], cpu: float, audio_seconds: float) -> dict[str, Any]:
    if not errors:
        return {"boundaries": 0}
    ms = sorted(1000 * e for e in errors)
    return {
        "boundaries": len(ms),
        "mean_ms": round(statistics.fmean(ms), 1),
        "median_ms": round(statistics.median(ms), 1),
        "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 1),
        "max_ms": round(ms[-1], 1),
        "cpu_ms_per_audio_s": round(1000 * cpu / audio_seconds, 2),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=int, nargs="+", default=[140, 175, 220])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    espeak, aligner = Espeak(), SphinxAligner()
    aligner.tokens(["warm", "42"])  # load the model and inflect outside the timings
    rows = [measure(espeak, aligner, ENGLISH, "en-us", wpm) for wpm in args.rates]
    rows.append(measure(espeak, aligner, ENGLISH, "en", 175))  # British English
    rows.append(measure(espeak, aligner, ENGLISH_NAMES, "en-us", 175))
    rows.append(measure(espeak, aligner, GERMAN, "de", 175))
    for row in rows:
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "command": " ".join(["python -m bench word_alignment", *argv]),
                    "rows": rows,
                },
                out,
                indent=2,
            )
    return 0
