"""DashScope server events, built exactly as the SDK reads them, and character billing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from voxtrio.protocol._json import dump_json
from voxtrio.protocol._words import TimedWord


def _header(task_id: str, event: str, **extra: Any) -> dict[str, Any]:
    return {"task_id": task_id, "event": event, **extra, "attributes": {}}


def task_started(task_id: str) -> dict[str, Any]:
    return {"header": _header(task_id, "task-started"), "payload": {}}


def result_generated(
    task_id: str,
    output_type: str,
    index: int,
    *,
    text: str | None = None,
    begin_time: int | None = None,
    end_time: int | None = None,
    characters: int | None = None,
    words: Sequence[TimedWord] = (),
) -> dict[str, Any]:
    """A result-generated event: sentence-begin, sentence-synthesis or sentence-end.

    `text` goes out twice: as `output.original_text` (DashScope's current docs) and as
    `sentence.text` (older CosyVoice events), so clients of either kind find it.
    """
    sentence: dict[str, Any] = {"index": index, "words": [dashscope_word(w) for w in words]}
    if text is not None:
        sentence["text"] = text
    if begin_time is not None:
        sentence["begin_time"] = begin_time
    if end_time is not None:
        sentence["end_time"] = end_time
    output: dict[str, Any] = {"sentence": sentence, "type": output_type}
    if text is not None:
        output["original_text"] = text
    payload: dict[str, Any] = {"output": output}
    if characters is not None:
        payload["usage"] = {"characters": characters}
    return {"header": _header(task_id, "result-generated"), "payload": payload}


def dashscope_word(word: TimedWord) -> dict[str, Any]:
    """One `sentence.words` entry: character offsets in the sentence, ms on the task's audio."""
    return {
        "text": word.text,
        "begin_index": word.begin_index,
        "end_index": word.end_index,
        "begin_time": round(word.start * 1000),
        "end_time": round(word.end * 1000),
    }


def task_finished(task_id: str, characters: int) -> dict[str, Any]:
    return {
        "header": _header(task_id, "task-finished"),
        "payload": {"output": {"sentence": {"words": []}}, "usage": {"characters": characters}},
    }


def task_failed(task_id: str, code: str, message: str) -> dict[str, Any]:
    header = _header(task_id, "task-failed", error_code=str(code), error_message=message)
    return {"header": header, "payload": {}}


def dump_event(event: dict[str, Any]) -> str:
    return dump_json(event)


def count_characters(text: str) -> int:
    """Characters as DashScope bills them: Han ideographs count 2, everything else 1."""
    return len(text) + sum(1 for ch in text if _is_han(ch))


def _is_han(ch: str) -> bool:
    o = ord(ch)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3400 <= o <= 0x4DBF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x3FFFF  # extensions B-H and compatibility supplement
    )
