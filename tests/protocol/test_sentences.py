"""Spec for voxtrio.protocol._sentences: incremental sentence segmentation of streamed text."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voxtrio.protocol._sentences import SentenceSplitter, is_speakable, split_sentences

# --- boundaries ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello world. How are you?", ["Hello world.", " How are you?"]),
        ("Stop! Go.", ["Stop!", " Go."]),
        ("One; two.", ["One;", " two."]),
        ("Really?! Yes.", ["Really?!", " Yes."]),
        ("No!!! Stop.", ["No!!!", " Stop."]),
        ("Wait... what?", ["Wait...", " what?"]),
        ("Wait… what?", ["Wait…", " what?"]),
        ('He said "Hi." Then he left.', ['He said "Hi."', " Then he left."]),
        ("He said 'Hi!' Then", ["He said 'Hi!'", " Then"]),
        ("(See above.) Next.", ["(See above.)", " Next."]),
        ("Born in 1990. Then", ["Born in 1990.", " Then"]),
        ("I have 2. Then", ["I have 2.", " Then"]),
        ("It is example.com. Go", ["It is example.com.", " Go"]),
        ("Ends.\nNext", ["Ends.", "\nNext"]),
        ("Ends.\n\nNext", ["Ends.", "\n\nNext"]),
        ("Title\n\nBody text", ["Title", "\n\nBody text"]),
        ("Title \n \t\nBody", ["Title", " \n \t\nBody"]),
        ("Title\r\n\r\nBody", ["Title", "\r\n\r\nBody"]),
        ("Title\u2029Body", ["Title", "\u2029Body"]),
        ("A sentence. ", ["A sentence.", " "]),
        ("Done. 2. Next item.", ["Done.", " 2. Next item."]),
    ],
)
def test_english_boundaries(text: str, expected: list[str]) -> None:
    """Western terminators end a sentence before whitespace; blank lines always do."""
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Pi is 3.14 today",
        "It costs 1,000.50 dollars",
        "Version 2.0.1 is out",
        "Meet at 10:30 sharp",
        "Visit example.com now",
        "Mail a.b@c.de today",
        "See https://example.com/a.b?x=1 ok",
        "Hello.World joined",
        "Mr. Smith met Dr. Jones",
        "Mrs. Ms. Prof. and Sr. Jr. St. Co. Inc. Ltd. No. 5 vs. them",
        "apples etc. and pears",
        "fruit, e.g. apples, i.e. food",
        "at 5 a.m. or 6 p.m. today",
        "the U.S. economy",
        "J. R. R. Tolkien wrote it",
        "A single\nnewline joins lines",
        "1. First item",
        "Steps:\n1. mix\n2. bake",
    ],
)
def test_english_non_boundaries(text: str) -> None:
    """Decimals, versions, times, URLs, abbreviations, initials, list numbers: no split."""
    assert split_sentences(text + ".") == [text + "."]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("你好。世界", ["你好。", "世界"]),
        ("真的吗？是的！好", ["真的吗？", "是的！", "好"]),
        ("第一；第二", ["第一；", "第二"]),
        ("真的？！好", ["真的？！", "好"]),
        ("等等……好吧", ["等等……", "好吧"]),
        ("他说：“你好。”然后走了。", ["他说：“你好。”", "然后走了。"]),
        ("「はい。」そうです", ["「はい。」", "そうです"]),
        ("（完。）下一章", ["（完。）", "下一章"]),
        ("你好。 世界", ["你好。", " 世界"]),
        ("好的!我们走", ["好的!", "我们走"]),
        ("好吗?好", ["好吗?", "好"]),
        ("你好。Hello", ["你好。", "Hello"]),
        ("标题\n\n正文", ["标题", "\n\n正文"]),
    ],
)
def test_chinese_boundaries(text: str, expected: list[str]) -> None:
    """Full-width terminators end a sentence at once, after any closing quotes."""
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "圆周率是3.14左右",
        "价格是1,000.5元",
        "时间是10:30整",
        "访问example.com即可",
        "版本v2.0发布了",
        "我们，你们、他们：都来了",
        "美国U.S.经济",
        "第一行\n第二行",
    ],
)
def test_chinese_non_boundaries(text: str) -> None:
    """Numbers, URLs, clause marks and single newlines do not end a Chinese sentence."""
    assert split_sentences(text + "。") == [text + "。"]


# --- streaming ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fragments", "emitted"),
    [
        (["Hello world.", " How"], [[], ["Hello world."]]),
        (["Hello world. ", "How"], [["Hello world."], []]),
        (["Dr.", " Smith."], [[], []]),
        (["3.", "14 is pi. "], [[], ["3.14 is pi."]]),
        (["Wait..", ". Go"], [[], ["Wait..."]]),
        (["Really?", "! Yes"], [[], ["Really?!"]]),
        (['"Hi."', " Go"], [[], ['"Hi."']]),
        (["你好。", "世界"], [[], ["你好。"]]),
        (["你好。", "”", "他"], [[], [], ["你好。”"]]),
        (["等等…", "…好"], [[], ["等等……"]]),
        (["Title\n", "\nBody"], [[], ["Title"]]),
        (["I", " am. ", "OK"], [[], ["I am."], []]),
    ],
)
def test_emits_as_soon_as_known(fragments: list[str], emitted: list[list[str]]) -> None:
    """feed returns a sentence on the first fragment that settles it, never before."""
    splitter = SentenceSplitter()
    assert [splitter.feed(f) for f in fragments] == emitted


def test_pending_is_the_unemitted_text() -> None:
    """pending holds exactly what was fed and not yet returned."""
    splitter = SentenceSplitter()
    assert splitter.feed("One. Tw") == ["One."]
    assert splitter.pending == " Tw"


def test_flush_returns_the_rest_and_resets() -> None:
    """flush emits the tail, empties the buffer, and the splitter can be reused."""
    splitter = SentenceSplitter()
    splitter.feed("One. Two")
    assert splitter.flush() == [" Two"]
    assert splitter.pending == ""
    assert splitter.feed("1. Three. ") == ["1. Three."]


def test_flush_of_nothing_is_empty() -> None:
    """flush with nothing pending returns no pieces."""
    assert SentenceSplitter().flush() == []


def test_empty_fragment_is_a_no_op() -> None:
    """feeding "" emits nothing and changes nothing."""
    splitter = SentenceSplitter()
    assert splitter.feed("") == []
    assert splitter.pending == ""


def test_flush_ends_a_trailing_terminator() -> None:
    """At end of input a final "Dr." or "3." needs no following space."""
    assert split_sentences("Ask Dr.") == ["Ask Dr."]
    assert split_sentences("Go! Now 3.") == ["Go!", " Now 3."]


def test_flush_splits_an_overlong_rest() -> None:
    """flush applies max_chars to what feed held back, returning several pieces."""
    splitter = SentenceSplitter(max_chars=10)
    assert splitter.feed("ab, cd" + " " * 12) == []
    assert splitter.flush() == ["ab,", " cd", " " * 10, "  "]


def test_waits_on_whitespace_that_may_become_a_blank_line() -> None:
    """An overlong piece ending in whitespace is held: a blank line would change the cut."""
    held = "ab, cd" + " " * 20
    paragraph, no_paragraph = SentenceSplitter(max_chars=10), SentenceSplitter(max_chars=10)
    assert paragraph.feed(held) == no_paragraph.feed(held) == []
    assert paragraph.feed("\n\n")[0] == "ab, cd"
    assert no_paragraph.feed("x")[0] == "ab,"


# --- max_chars / min_chars ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "max_chars", "expected"),
    [
        ("one two, three four five", 15, ["one two,", " three four", " five"]),
        ("alpha beta gamma delta", 12, ["alpha beta", " gamma delta"]),
        ("12345 67890 12345", 8, ["12345", " 67890", " 12345"]),
        ("3.14159 2.71828", 10, ["3.14159", " 2.71828"]),
        ("first line\nsecond line here", 20, ["first line", "\nsecond line here"]),
        ("一二三，四五六七八九", 6, ["一二三，", "四五六七八九"]),
        ("一二、三四五六七", 5, ["一二、", "三四五六七"]),
        ("“好，”他说", 4, ["“好，”", "他说"]),
        ("word—another word", 14, ["word—", "another word"]),
    ],
)
def test_overlong_cut_prefers_clause_then_word(
    text: str, max_chars: int, expected: list[str]
) -> None:
    """Past max_chars the cut is at the last clause boundary, else the last word boundary."""
    assert split_sentences(text, max_chars=max_chars) == expected


def test_cjk_run_without_punctuation_is_cut_at_max_chars() -> None:
    """A 400-character Chinese run is cut at exactly max_chars: each character is a word."""
    assert [len(p) for p in split_sentences("中" * 400)] == [300, 100]


def test_single_huge_token_is_cut_at_max_chars_as_a_last_resort() -> None:
    """A token longer than max_chars is cut inside, at exactly max_chars."""
    url = "https://example.com/" + "a" * 400
    assert [len(p) for p in split_sentences(url)] == [300, 120]
    assert [len(p) for p in split_sentences("See " + url)] == [3, 300, 121]


def test_last_resort_cut_keeps_combining_marks_with_their_letter() -> None:
    """The last-resort cut moves back rather than separate an accent from its letter."""
    pieces = split_sentences("e\u0301" * 6, max_chars=5)
    assert pieces == ["e\u0301e\u0301"] * 3


def test_min_chars_merges_short_sentences() -> None:
    """Sentence ends that leave under min_chars non-space characters are skipped."""
    text = "Hi. How are you? Fine."
    assert split_sentences(text, max_chars=300) == ["Hi.", " How are you?", " Fine."]
    splitter = SentenceSplitter(min_chars=10)
    assert splitter.feed(text) == ["Hi. How are you?"]
    assert splitter.flush() == [" Fine."]


def test_overlong_cut_prefers_a_sentence_end_rejected_by_min_chars() -> None:
    """A cut forced by max_chars lands on a skipped sentence end before anything else."""
    pieces = split_sentences("Hi. Yo. Hey there you", max_chars=12, min_chars=12)
    assert pieces == ["Hi. Yo.", " Hey there", " you"]


@pytest.mark.parametrize(
    ("max_chars", "min_chars"),
    [(0, 1), (10, 0), (5, 6)],
)
def test_rejects_inconsistent_limits(max_chars: int, min_chars: int) -> None:
    """max_chars and min_chars must satisfy 1 <= min_chars <= max_chars."""
    with pytest.raises(ValueError, match=r"min_chars|max_chars"):
        SentenceSplitter(max_chars=max_chars, min_chars=min_chars)


# --- is_speakable -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "speakable"),
    [
        ("Hello.", True),
        (" 42 ", True),
        ("你好", True),
        ("はい", True),
        ("...", False),
        (" \n\n", False),
        ("", False),
        ("。”", False),
        ("?!", False),
        ("—", False),
    ],
)
def test_is_speakable(text: str, speakable: bool) -> None:
    """is_speakable is true iff there is a letter or digit (any script)."""
    assert is_speakable(text) is speakable


# --- properties ---------------------------------------------------------------------

_TOKENS = [
    *("Hello", "world", "the", "Tolkien", "I", "a", "iPhone"),
    *("3.14", "1,000.5", "10:30", "2.0.1", "42", "1990", "7"),
    *("Dr.", "Mr.", "e.g.", "U.S.", "etc.", "J.", "a.m.", "No."),
    *("example.com", "a.b@c.de", "https://x.io/a.b"),
    *("你好", "世界", "中文字符", "はい", "한국어"),
    *("。", "！", "？", "；", "……", "，", "、", "：", "…"),
    *(".", "!", "?", ";", "?!", "!!!", "...", ",", ":", "—"),
    *('"', "'", "”", "’", "」", "』", "）", ")", "]", "“", "(", "「"),
    *(" ", " ", " ", "  ", "\n", "\n\n", "\t", "\r\n", "\n \n", "\u2029"),
]
_texts = st.lists(
    st.one_of(st.sampled_from(_TOKENS), st.text(alphabet='ab1 .!?,，。中\n"”', max_size=4)),
    max_size=60,
).map("".join)
_max_chars = st.one_of(st.integers(1, 40), st.just(300))
_EXAMPLES = 300


def _chop(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


def _stream(fragments: list[str], max_chars: int, min_chars: int = 1) -> list[str]:
    splitter = SentenceSplitter(max_chars=max_chars, min_chars=min_chars)
    pieces = [p for f in fragments for p in splitter.feed(f)]
    return pieces + splitter.flush()


@settings(max_examples=_EXAMPLES, deadline=None)
@given(text=_texts, max_chars=_max_chars, data=st.data())
def test_chopping_never_changes_the_sentences(
    text: str, max_chars: int, data: st.DataObject
) -> None:
    """(a) Any fragmentation yields the same pieces as feeding the whole text."""
    min_chars = data.draw(st.integers(1, max_chars))
    cuts = data.draw(st.lists(st.integers(0, len(text)), max_size=len(text)))
    whole = split_sentences(text, max_chars=max_chars, min_chars=min_chars)
    assert _stream(_chop(text, cuts), max_chars, min_chars) == whole


@settings(max_examples=_EXAMPLES // 3, deadline=None)
@given(text=_texts, max_chars=_max_chars)
def test_one_character_at_a_time_changes_nothing(text: str, max_chars: int) -> None:
    """(a) Feeding one character at a time yields the same pieces as feeding it whole."""
    assert _stream(list(text), max_chars) == split_sentences(text, max_chars=max_chars)


@settings(max_examples=_EXAMPLES, deadline=None)
@given(text=_texts, max_chars=_max_chars)
def test_pieces_concatenate_to_the_input(text: str, max_chars: int) -> None:
    """(b) No character is lost, added or reordered, and no piece is empty."""
    pieces = split_sentences(text, max_chars=max_chars)
    assert "".join(pieces) == text
    assert all(pieces)


@settings(max_examples=_EXAMPLES, deadline=None)
@given(text=_texts, max_chars=_max_chars)
def test_whitespace_between_sentences_starts_the_next_piece(text: str, max_chars: int) -> None:
    """(b) Only a last-resort cut can leave a piece ending in whitespace."""
    pieces = split_sentences(text, max_chars=max_chars)
    for piece in pieces[:-1]:
        assert not piece[-1].isspace() or len(piece) == max_chars


@settings(max_examples=_EXAMPLES, deadline=None)
@given(text=_texts, max_chars=_max_chars)
def test_no_piece_exceeds_max_chars(text: str, max_chars: int) -> None:
    """(c) Every piece is at most max_chars long, without exception."""
    assert all(len(p) <= max_chars for p in split_sentences(text, max_chars=max_chars))


@settings(max_examples=_EXAMPLES, deadline=None)
@given(text=_texts, max_chars=_max_chars)
def test_words_are_split_only_when_one_fills_the_whole_window(text: str, max_chars: int) -> None:
    """(c) A cut between two letters/digits is a last resort: a full piece with no space."""
    pieces = split_sentences(text, max_chars=max_chars)
    for piece, after in itertools.pairwise(pieces):
        a, b = piece[-1], after[0]
        if a.isalnum() and b.isalnum() and not (_is_han_or_kana(a) or _is_han_or_kana(b)):
            assert len(piece) == max_chars
            assert not any(ch.isspace() for ch in piece.lstrip())


def _is_han_or_kana(c: str) -> bool:
    return "\u3040" <= c <= "\u30ff" or "\u4e00" <= c <= "\u9fff"


@settings(max_examples=_EXAMPLES, deadline=None)
@given(text=_texts, more=_texts, max_chars=_max_chars)
def test_feed_never_emits_what_more_text_could_change(text: str, more: str, max_chars: int) -> None:
    """(d) What feed returns for a prefix is a prefix of the pieces of any continuation."""
    splitter = SentenceSplitter(max_chars=max_chars)
    early = splitter.feed(text)
    assert split_sentences(text + more, max_chars=max_chars)[: len(early)] == early
    assert "".join(early) + splitter.pending == text


@settings(max_examples=_EXAMPLES, deadline=None)
@given(text=_texts)
def test_without_a_cap_every_cut_is_a_sentence_end(text: str) -> None:
    """With no length pressure, pieces end at a terminator (+ closers) or a blank line."""
    pieces = split_sentences(text, max_chars=10_000)
    closers = "\"'”’」』）)]"
    for piece, after in itertools.pairwise(pieces):
        ends_in_terminator = piece.rstrip(closers)[-1:] in set(".!?;…。！？；")
        leading_space = after[: len(after) - len(after.lstrip())]
        blank_line_follows = leading_space.count("\n") >= 2 or "\u2029" in leading_space
        assert ends_in_terminator or blank_line_follows


# --- cost ---------------------------------------------------------------------------

_PROSE = (
    "Mr. Smith paid $1,000.50 at 10:30 a.m., see example.com! Really?! "
    "他说：“你好。”然后走了……好吧。 J. R. R. Tolkien wrote it.\n\n"
)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param((_PROSE * 1600)[:200_000], id="prose"),
        pytest.param("x" * 100_000, id="one-huge-token"),
        pytest.param("中" * 100_000, id="cjk-no-punctuation"),
        pytest.param("a.b" * 30_000, id="dense-dots"),
        pytest.param("end\n" + " " * 100_000 + "x", id="long-whitespace"),
    ],
)
def test_work_is_linear_when_fed_one_character_at_a_time(text: str) -> None:
    """Each character is scanned once; look-back is bounded; copies are amortised O(1)."""
    splitter = SentenceSplitter()
    pieces = [p for ch in text for p in splitter.feed(ch)]
    work = splitter._st.work
    pieces += splitter.flush()
    assert "".join(pieces) == text
    # 40 = the look-back window at a "."; the rest is scanning, joining and slicing.
    assert work <= 8 * len(text) + 40 * text.count(".")
