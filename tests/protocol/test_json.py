"""The one JSON codec of both endpoints: bounded decoding, replies that always encode."""

from __future__ import annotations

import json

import pytest

from voxtrio.protocol._json import (
    MAX_SEPARATORS,
    JsonRefused,
    dump_json,
    load_json,
    lone_surrogate_problem,
    shown,
)


def test_valid_json_decodes_as_the_json_module_does() -> None:
    """An ordinary message decodes unchanged, escapes and surrogate pairs included."""
    text = '{"a":[1,2.5,null,true],"b":"caf\\u00e9 \\ud83d\\ude00"}'
    assert load_json(text) == json.loads(text) == {"a": [1, 2.5, None, True], "b": "café 😀"}


def test_too_many_keys_are_refused_before_decoding() -> None:
    """More ',' and ':' than the budget: refused with the count, nothing is built."""
    keys = ",".join(f'"n{i}":0' for i in range(MAX_SEPARATORS // 2 + 1))
    with pytest.raises(JsonRefused, match=r"\d+ ',' and ':' characters, at most 65536"):
        load_json("{" + keys + "}")


def test_the_budget_leaves_room_for_the_longest_texts() -> None:
    """A 20,000-character text of nothing but commas and colons still decodes."""
    text = json.dumps({"text": ",:" * 10_000, "more": ",:" * 10_000})
    assert load_json(text)["text"] == ",:" * 10_000


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "not valid JSON: Expecting property name"),
        ("[" * 100_000, "nested too deeply"),
        ("9" * 5000, "JSON not accepted: Exceeds the limit"),
    ],
)
def test_broken_json_is_refused_with_a_reason(text: str, words: str) -> None:
    """Malformed, deeply nested or over-long numbers: JsonRefused saying which."""
    with pytest.raises(JsonRefused, match=words):
        load_json(text)


def test_lone_surrogates_are_escaped_in_replies() -> None:
    """A lone surrogate echoed in a reply goes out as its JSON escape: valid UTF-8."""
    text = dump_json({"request_id": "a\ud800b", "details": {"x.\udfff": "é 中 😀"}})
    assert text == '{"request_id":"a\\ud800b","details":{"x.\\udfff":"é 中 😀"}}'
    text.encode("utf-8")
    assert json.loads(text) == {"request_id": "a\ud800b", "details": {"x.\udfff": "é 中 😀"}}


def test_replies_are_compact_and_keep_unicode_as_is() -> None:
    """No spaces, no \\u escapes for real characters."""
    assert dump_json({"a": [1, "中"]}) == '{"a":[1,"中"]}'


@pytest.mark.parametrize("text", ["plain", "café", "中文", "😀", ""])
def test_valid_text_has_no_surrogate_problem(text: str) -> None:
    """Valid Unicode text passes, astral characters included."""
    assert lone_surrogate_problem(text) is None


def test_a_lone_surrogate_is_named_with_its_position() -> None:
    """The problem names the code point and where it is."""
    problem = lone_surrogate_problem("ab\udc00")
    assert problem is not None
    assert problem.startswith("contains a lone surrogate (U+DC00 at character 2)")


def test_shown_escapes_and_shortens() -> None:
    """A quoted key is at most 64 characters and always encodes as UTF-8."""
    assert shown("a\ud800") == "a\\ud800"
    assert shown("k" * 100) == "k" * 64 + "..."
