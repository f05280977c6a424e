"""The text a native request will speak: one text, or sentences cut from streamed deltas."""

from __future__ import annotations

import attrs
import trio

from voxtrio.protocol._sentences import SentenceSplitter, is_speakable, split_sentences
from voxtrio.speech._speak import Utterance

# The longest piece spoken as one generation: a few hundred tokens, far under any
# VoxCPM context (2048 text tokens on 1.x, 4096 on 2), and short enough not to drift.
SENTENCE_MAX_CHARS = 300


@attrs.define(eq=False)
class TextInput:
    """The text a request will speak: one text, or sentences cut from streamed deltas.

    Bounded twice: at most `max_pending` sentences queued and `max_buffered_chars`
    characters accepted but not yet spoken. A client that sends text faster than it
    can be spoken past those bounds gets its request ended, never unbounded memory.
    """

    send: trio.MemorySendChannel[Utterance]
    receive: trio.MemoryReceiveChannel[Utterance]
    splitter: SentenceSplitter | None = None
    max_buffered_chars: int = 20_000
    buffered_chars: int = 0
    next_index: int = 0

    @classmethod
    def single(cls, text: str) -> TextInput:
        """One whole text, cut as a text stream would be: every sentence is its own
        generation (no drift over a long text, no token limit on the whole), and a
        text with no break at all is cut at clauses, words, or at worst every
        `SENTENCE_MAX_CHARS`, so every text the protocol accepts can be spoken."""
        sentences = split_sentences(text, max_chars=SENTENCE_MAX_CHARS)
        send, receive = trio.open_memory_channel[Utterance](max(1, len(sentences)))
        text_input = cls(send, receive)
        for sentence in sentences:
            text_input._queue(sentence)
        send.close()
        return text_input

    @classmethod
    def streamed(cls, *, max_pending: int = 256, max_buffered_chars: int = 20_000) -> TextInput:
        send, receive = trio.open_memory_channel[Utterance](max_pending)
        splitter = SentenceSplitter(max_chars=SENTENCE_MAX_CHARS)
        return cls(send, receive, splitter, max_buffered_chars)

    def feed(self, text: str) -> None:
        """Take a delta; queue the sentences it completes. Raises OverflowError if full."""
        assert self.splitter is not None
        self.buffered_chars += len(text)
        if self.buffered_chars > self.max_buffered_chars:
            raise OverflowError(
                f"{self.buffered_chars} characters are waiting to be spoken, "
                f"more than {self.max_buffered_chars}"
            )
        for sentence in self.splitter.feed(text):
            self._queue(sentence)

    def flush(self) -> None:
        assert self.splitter is not None
        for sentence in self.splitter.flush():
            self._queue(sentence)

    def end(self) -> None:
        self.flush()
        self.send.close()

    def spoken(self, utterance: Utterance) -> None:
        self.buffered_chars -= len(utterance.text)

    def _queue(self, text: str) -> None:
        if not is_speakable(text):
            self.buffered_chars -= len(text)
            return
        try:
            self.send.send_nowait(Utterance(self.next_index, text.strip()))
        except trio.WouldBlock:
            raise OverflowError("too many sentences are waiting to be spoken") from None
        self.next_index += 1
