"""The SSML subset (voxtrio.protocol._ssml): segments out, hostile or unsupported input refused."""

from __future__ import annotations

import pytest

from voxtrio.protocol._sentences import is_speakable
from voxtrio.protocol._ssml import (
    BREAK_STRENGTH_MS,
    Sentence,
    Silence,
    SsmlError,
    SsmlLimits,
    looks_like_ssml,
    parse_ssml,
)


def spoken(doc: str, limits: SsmlLimits | None = None) -> list[Sentence | Silence]:
    """The segments, without the whitespace-only pieces, texts stripped."""
    out: list[Sentence | Silence] = []
    for segment in parse_ssml(doc, limits):
        if isinstance(segment, Silence):
            out.append(segment)
        elif is_speakable(segment.text):
            out.append(Sentence(segment.text.strip()))
    return out


def test_plain_speak_is_split_into_sentences() -> None:
    assert spoken("<speak>Hello there. How are you? Fine</speak>") == [
        Sentence("Hello there."),
        Sentence("How are you?"),
        Sentence("Fine"),
    ]


def test_pieces_keep_every_character() -> None:
    doc = "<speak>  One.  Two.\n</speak>"
    pieces = parse_ssml(doc)
    assert all(isinstance(p, Sentence) for p in pieces)
    assert "".join(p.text for p in pieces if isinstance(p, Sentence)) == "  One.  Two.\n"


@pytest.mark.parametrize(
    ("time", "ms"),
    [
        ("500ms", 500),
        ("1s", 1000),
        ("1.5s", 1500),
        ("0.25s", 250),
        (" 2 S ", 2000),
        ("10s", 10000),
        ("2.6ms", 3),
        (f"0.{'9' * 400}s", 1000),
    ],
)
def test_break_time(time: str, ms: int) -> None:
    assert spoken(f'<speak>A<break time="{time}"/>B</speak>') == [
        Sentence("A"),
        Silence(ms),
        Sentence("B"),
    ]


def test_break_ends_the_sentence_it_sits_in() -> None:
    assert spoken('<speak>Before the pause <break time="300ms"/>and after.</speak>') == [
        Sentence("Before the pause"),
        Silence(300),
        Sentence("and after."),
    ]


@pytest.mark.parametrize(("strength", "ms"), list(BREAK_STRENGTH_MS.items()))
def test_break_strength(strength: str, ms: int) -> None:
    segments = spoken(f'<speak>A<break strength="{strength}"/>B</speak>')
    expected = [Sentence("A"), Silence(ms), Sentence("B")] if ms else [Sentence("A"), Sentence("B")]
    assert segments == expected


def test_bare_break_is_medium_and_time_wins_over_strength() -> None:
    assert Silence(BREAK_STRENGTH_MS["medium"]) in spoken("<speak>A<break/>B</speak>")
    assert Silence(50) in spoken('<speak>A<break strength="x-strong" time="50ms"/>B</speak>')


@pytest.mark.parametrize(
    ("attrs", "words"),
    [
        ('time="11s"', "at most 10000 ms"),
        (f'time="{"9" * 400}s"', "at most 10000 ms"),  # float() would give inf
        (f'time="{"9" * 400}.{"9" * 400}ms"', "at most 10000 ms"),
        ('time="-1s"', "expected a duration"),
        ('time="fast"', "expected a duration"),
        ('time="1 h"', "expected a duration"),
        ('strength="huge"', "expected one of none"),
        ('duration="1s"', "attribute 'duration' of <break>"),
    ],
)
def test_bad_breaks(attrs: str, words: str) -> None:
    with pytest.raises(SsmlError, match=words):
        parse_ssml(f"<speak>A<break {attrs}/>B</speak>")


def test_break_must_be_empty() -> None:
    with pytest.raises(SsmlError, match="must be empty"):
        parse_ssml('<speak><break time="1s">text</break></speak>')


def test_s_and_p_are_boundaries() -> None:
    # No terminator anywhere, yet <s>/<p> end sentences.
    assert spoken("<speak><p><s>first part</s><s>second part</s></p><p>third</p>tail</speak>") == [
        Sentence("first part"),
        Sentence("second part"),
        Sentence("third"),
        Sentence("tail"),
    ]


def test_text_inside_s_is_still_split() -> None:
    assert spoken("<speak><s>One. Two.</s></speak>") == [Sentence("One."), Sentence("Two.")]


def test_sub_speaks_the_alias_inline() -> None:
    assert spoken('<speak>Visit the <sub alias="World Wide Web">WWW</sub> today.</speak>') == [
        Sentence("Visit the World Wide Web today.")
    ]


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ("<speak><sub>WWW</sub></speak>", "needs an alias"),
        ('<speak><sub alias="a"><s>x</s></sub></speak>', "only text, not <s>"),
        ('<speak><sub alias="a" lang="x">b</sub></speak>', "attribute 'lang' of <sub>"),
    ],
)
def test_bad_sub(doc: str, words: str) -> None:
    with pytest.raises(SsmlError, match=words):
        parse_ssml(doc)


def test_entities_and_character_references_are_decoded() -> None:
    assert spoken("<speak>Fish &amp; chips &#x41;&lt;B.</speak>") == [Sentence("Fish & chips A<B.")]


def test_w3c_namespace_and_attributes_are_accepted() -> None:
    doc = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.w3.org/2001/10/synthesis synthesis.xsd" '
        'xml:lang="en-US"><s xml:lang="en-US">Hello</s><break time="1s"/></speak>'
    )
    assert spoken(doc) == [Sentence("Hello"), Silence(1000)]


def test_comments_are_dropped() -> None:
    assert spoken("<speak>Hi<!-- not spoken --> there.</speak>") == [Sentence("Hi there.")]


@pytest.mark.parametrize(
    ("doc", "name"),
    [
        ("<speak><prosody rate='fast'>x</prosody></speak>", "<prosody>"),
        ("<speak><say-as interpret-as='digits'>12</say-as></speak>", "<say-as>"),
        ("<speak><p><emphasis>x</emphasis></p></speak>", "<emphasis>"),
        ("<speak><audio src='http://x/a.wav'/></speak>", "<audio>"),
        ('<speak><x:foo xmlns:x="urn:evil">y</x:foo></speak>', "<{urn:evil}foo>"),
        ("<speak><speak>x</speak></speak>", "<speak> may only be the root"),
    ],
)
def test_unsupported_elements_are_named(doc: str, name: str) -> None:
    with pytest.raises(SsmlError) as info:
        parse_ssml(doc)
    assert name in info.value.message


def test_root_must_be_speak() -> None:
    with pytest.raises(SsmlError, match="root element must be <speak>, not <p>"):
        parse_ssml("<p>hello</p>")


@pytest.mark.parametrize("attribute", ["voice", "rate", "pitch", "volume", "effect", "bgm"])
def test_cosyvoice_speak_attributes_are_refused_not_ignored(attribute: str) -> None:
    with pytest.raises(SsmlError, match=f"attribute '{attribute}' of <speak>"):
        parse_ssml(f'<speak {attribute}="x">hi</speak>')


@pytest.mark.parametrize(
    ("doc", "position"),
    [
        ("<speak>unclosed", (1, 16)),
        ("<speak>\n  <s>a</p>\n</speak>", (2, 9)),
        ("<speak>&nbsp;</speak>", (1, 8)),
        ("", (1, 1)),
        ("<speak>a</speak>trailing", (1, 17)),
    ],
)
def test_malformed_xml_reports_position(doc: str, position: tuple[int, int]) -> None:
    with pytest.raises(SsmlError, match="malformed SSML") as info:
        parse_ssml(doc)
    assert info.value.position == position
    assert f"line {position[0]}, column {position[1]}" in info.value.message


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<speak>&lol9;</speak>"""

XXE_FILE = """<?xml version="1.0"?>
<!DOCTYPE speak [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<speak>&xxe;</speak>"""

XXE_PARAMETER = """<?xml version="1.0"?>
<!DOCTYPE speak [<!ENTITY % remote SYSTEM "http://127.0.0.1:1/evil.dtd"> %remote;]>
<speak>hi</speak>"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE speak SYSTEM "http://127.0.0.1:1/evil.dtd">
<speak>hi</speak>"""


@pytest.mark.parametrize(
    "doc", [BILLION_LAUGHS, XXE_FILE, XXE_PARAMETER, EXTERNAL_DTD], ids=["lol", "xxe", "pe", "dtd"]
)
def test_hostile_xml_is_refused_before_expansion(doc: str) -> None:
    with pytest.raises(SsmlError, match="must not contain a DOCTYPE") as info:
        parse_ssml(doc)
    assert "lol" not in info.value.message
    assert "root:" not in info.value.message


def test_size_limits() -> None:
    with pytest.raises(SsmlError, match="too long"):
        parse_ssml("<speak>" + "a" * 100 + "</speak>", SsmlLimits(max_chars=50))
    deep = "<speak>" + "<s>" * 20 + "x" + "</s>" * 20 + "</speak>"
    with pytest.raises(SsmlError, match="nested too deeply"):
        parse_ssml(deep)
    assert spoken(deep, SsmlLimits(max_depth=21)) == [Sentence("x")]
    breaks = "<speak>" + '<break time="1ms"/>' * 5 + "</speak>"
    with pytest.raises(SsmlError, match="too many <break>"):
        parse_ssml(breaks, SsmlLimits(max_breaks=4))
    long_silence = "<speak>" + '<break time="10s"/>' * 3 + "</speak>"
    with pytest.raises(SsmlError, match="too much <break> silence"):
        parse_ssml(long_silence, SsmlLimits(max_total_silence_ms=25_000))
    many = "<speak>" + "<s>x</s>" * 30 + "</speak>"
    with pytest.raises(SsmlError, match="too many SSML elements"):
        parse_ssml(many, SsmlLimits(max_elements=20))


def test_deep_nesting_inside_the_size_limit_is_refused_not_a_crash() -> None:
    doc = "<speak>" + "<p>" * 2000 + "x" + "</p>" * 2000 + "</speak>"
    with pytest.raises(SsmlError, match="nested too deeply"):
        parse_ssml(doc)


def test_long_text_is_cut_at_max_sentence_chars() -> None:
    doc = "<speak>" + "word " * 40 + "</speak>"
    pieces = [s for s in spoken(doc, SsmlLimits(max_sentence_chars=30)) if isinstance(s, Sentence)]
    assert len(pieces) > 1
    assert all(len(p.text) <= 30 for p in pieces)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("<speak>x</speak>", True), ("  \n<speak>", True), ("<3 you", True), ("Hi <b>", False)],
)
def test_looks_like_ssml(text: str, expected: bool) -> None:
    assert looks_like_ssml(text) is expected
