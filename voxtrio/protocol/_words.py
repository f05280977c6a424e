"""Words of a sentence and their times: what every API's word timestamps are made of (sans-IO).

A word is a run of non-space characters with something to say in it (a letter or
digit), its punctuation attached (``"world."``, ``"(yes),"``); a run with nothing to
say (``"—"``, ``"..."``) joins the word before it (or, at the start, the one after).
Scripts written without spaces (Han, kana) make every character a word. Offsets are
kept, so DashScope's ``begin_index``/``end_index`` and the native ``text`` both come
from the text exactly as the client sent it.
"""

from __future__ import annotations

import attrs

from voxtrio.protocol._sentences import is_speakable

__all__ = ["TimedWord", "Word", "split_words"]


@attrs.frozen
class Word:
    """One word of a sentence: its text and where it sits (``text == sentence[begin:end]``)."""

    text: str
    begin: int
    end: int


@attrs.frozen
class TimedWord:
    """A word with its time in seconds from the start of the request's audio."""

    text: str
    begin_index: int
    end_index: int
    start: float
    end: float


def _is_cjk(c: str) -> bool:
    o = ord(c)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3040 <= o <= 0x30FF
        or 0x3400 <= o <= 0x4DBF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x3FFFF
    )


def _tokens(sentence: str) -> list[tuple[int, int]]:
    """Whitespace-separated runs, each CJK character cut out on its own."""
    spans: list[tuple[int, int]] = []
    start = -1
    for i, c in enumerate(sentence):
        if c.isspace():
            if start >= 0:
                spans.append((start, i))
                start = -1
        elif _is_cjk(c):
            if start >= 0:
                spans.append((start, i))
            spans.append((i, i + 1))
            start = -1
        elif start < 0:
            start = i
    if start >= 0:
        spans.append((start, len(sentence)))
    return spans


def split_words(sentence: str) -> list[Word]:
    """The sentence's words, in order, punctuation attached (see the module docstring)."""
    merged: list[list[int]] = []
    pending: int | None = None  # the start of leading punctuation, waiting for a word
    for begin, end in _tokens(sentence):
        if is_speakable(sentence[begin:end]):
            merged.append([pending if pending is not None else begin, end])
            pending = None
        elif merged:
            merged[-1][1] = end  # "—", "……", "。" after a CJK character
        elif pending is None:
            pending = begin
    return [Word(sentence[b:e], b, e) for b, e in merged]
