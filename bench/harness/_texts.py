"""The requests a level sends: texts, seeds and max_len, identical for server and baseline."""

from __future__ import annotations

import random

import attrs

TEXT_SETS: dict[str, tuple[str, ...]] = {
    # One sentence each: the shape of a voice assistant's reply.
    "short": (
        "Hello from voxtrio, a streaming speech server on Trio.",
        "The weather today is sunny with a light breeze from the west.",
        "Your order has shipped and should arrive on Thursday afternoon.",
        "Please hold while I connect you to the next available agent.",
        "Turn left at the second light, then continue for half a mile.",
        "The meeting has been moved to three o'clock in room twelve.",
        "Streaming speech lets the listener start before the sentence ends.",
        "This is a benchmark sentence with an ordinary length and rhythm.",
    ),
    # A paragraph each: narration, long-form reading.
    "long": (
        "Once upon a time, in a small village at the edge of a great forest, there lived "
        "an old clockmaker who could mend anything that ticked. Every morning he opened "
        "his shutters, set out his tools, and waited for the day's first broken watch.",
        "Speech synthesis turns written text into audio. A streaming server sends the "
        "first piece of sound as soon as it exists, so a listener hears the beginning of "
        "a long answer while the rest of it is still being generated.",
        "The quarterly report shows steady growth in every region. Revenue rose by eight "
        "percent, costs fell slightly, and the board expects the new product line to "
        "reach customers before the end of the year.",
    ),
    "chinese": (
        "你好，欢迎使用流式语音合成服务。",
        "今天天气很好，我们一起去公园散步吧。",
        "语音合成技术可以把文字变成自然流畅的声音。",
    ),
}


@attrs.frozen
class Job:
    """One synthesis request: the same triple goes to the server and to the baseline."""

    text: str
    seed: int
    max_len: int

    def params(self) -> dict[str, object]:
        """The `params` of the tts_request (everything else at the protocol's defaults)."""
        return {"text": self.text, "seed": self.seed, "max_len": self.max_len, "format": "pcm16"}


def make_jobs(text_set: str, count: int, *, max_len: int, seed: int = 0) -> list[Job]:
    """`count` jobs cycling through the text set; job i has seed `seed + i`."""
    texts = TEXT_SETS[text_set]
    return [Job(texts[i % len(texts)], seed + i, max_len) for i in range(count)]


def stream_text(chunks: int, chars_per_step: int = 4) -> str:
    """A text the synthetic engine turns into exactly `chunks` chunks (one per 4 characters)."""
    base = " ".join(TEXT_SETS["long"])
    needed = chunks * chars_per_step
    return (base * (needed // len(base) + 1))[:needed]


def poisson_arrivals(rate: float, count: int, *, seed: int = 0) -> list[float]:
    """Arrival offsets (s) of an open-loop Poisson process at `rate` requests per second.

    Seeded, so the server and the baseline see the same schedule.
    """
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    rng = random.Random(seed)
    offsets: list[float] = []
    now = 0.0
    for _ in range(count):
        offsets.append(now)
        now += rng.expovariate(rate)
    return offsets


def staggered_arrivals(count: int, window: float, *, seed: int = 0) -> list[float]:
    """`count` start offsets spread at random over `window` seconds (sorted).

    Streams that all start at once would deliver their chunks in lock-step bursts;
    real clients arrive at random phases of the 160 ms chunk period.
    """
    rng = random.Random(seed)
    return sorted(rng.uniform(0.0, window) for _ in range(count))
