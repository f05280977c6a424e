"""Words of a sentence (sans-IO), the native `words` message, DashScope's `sentence.words`."""

from __future__ import annotations

import json

import pytest

from voxtrio.protocol._dashscope import DashScopeTask
from voxtrio.protocol._dashscope_actions import SendEvent
from voxtrio.protocol._messages import Words, WordTime, dump_message
from voxtrio.protocol._words import TimedWord, Word, split_words

from .test_dashscope import continue_task, finish_task, run_task


@pytest.mark.parametrize(
    ("sentence", "words"),
    [
        ("Hello, world.", ["Hello,", "world."]),
        ("  spaced   out  ", ["spaced", "out"]),
        ("Wait — what?!", ["Wait —", "what?!"]),
        ("“Quoted” words", ["“Quoted”", "words"]),
        ("... and then", ["... and", "then"]),
        ("你好。世界", ["你", "好。", "世", "界"]),
        ("AI是未来", ["AI", "是", "未", "来"]),
        ("3.14 is pi", ["3.14", "is", "pi"]),
        ("!!!", []),
    ],
)
def test_words_keep_their_punctuation_and_cjk_characters_stand_alone(
    sentence: str, words: list[str]
) -> None:
    """Punctuation joins a word; every Han/kana character is a word of its own."""
    assert [w.text for w in split_words(sentence)] == words


def test_word_offsets_point_into_the_sentence_as_sent() -> None:
    """`sentence[begin:end]` is the word, so DashScope's indices come for free."""
    sentence = "Hi  there, 你好!"
    for word in split_words(sentence):
        assert sentence[word.begin : word.end] == word.text
    assert split_words(sentence)[0] == Word("Hi", 0, 2)


def test_words_message_is_the_agreed_wire_format() -> None:
    """type, request_id, sentence, words[{text, start, end}], estimated."""
    message = Words("req-1", 0, [WordTime("Hello", 0.0, 0.312)], estimated=False)
    assert json.loads(dump_message(message)) == {
        "type": "words",
        "request_id": "req-1",
        "sentence": 0,
        "words": [{"text": "Hello", "start": 0.0, "end": 0.312}],
        "estimated": False,
    }


def test_dashscope_sentence_end_carries_the_words_in_ms() -> None:
    """word_timestamp_enabled: sentence-end's `sentence.words` with indices and ms times."""
    task = DashScopeTask()
    actions = task.receive_text(run_task(word_timestamp_enabled=True))
    actions += task.receive_text(continue_task("Hello world."))
    actions += task.receive_text(finish_task())
    words = [TimedWord("Hello", 0, 5, 0.1004, 0.4), TimedWord("world.", 6, 12, 0.45, 0.9)]
    (end,) = task.sentence_audio_done(0, 48000, 48000, words)
    assert isinstance(end, SendEvent)
    sentence = json.loads(end.text)["payload"]["output"]["sentence"]
    assert sentence["words"] == [
        {"text": "Hello", "begin_index": 0, "end_index": 5, "begin_time": 100, "end_time": 400},
        {"text": "world.", "begin_index": 6, "end_index": 12, "begin_time": 450, "end_time": 900},
    ]


def test_dashscope_word_timestamp_enabled_must_be_a_boolean() -> None:
    """A string is refused by name rather than read as true."""
    (failed,) = DashScopeTask().receive_text(run_task(word_timestamp_enabled="yes"))
    header = json.loads(failed.text)["header"]
    assert header["event"] == "task-failed"
    assert "word_timestamp_enabled" in header["error_message"]
