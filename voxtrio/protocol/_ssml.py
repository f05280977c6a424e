"""The SSML subset of the DashScope endpoint, parsed into sentences and silences (sans-IO).

Supported, and nothing else (any other element is an error that names it):

* ``<speak>``: the root. ``version`` and ``xml:lang`` are accepted (W3C SSML, no effect:
  the model picks the language from the text). CosyVoice's own ``<speak>`` attributes
  (``voice``, ``rate``, ``pitch``, ``volume``, ``effect``, ``bgm``...) are refused by
  name rather than ignored, since each would change the audio.
* ``<break time="500ms"/>`` / ``time="1.5s"``: that much real silence, at most
  :attr:`SsmlLimits.max_break_ms`. ``strength`` (W3C names) is accepted and maps to
  :data:`BREAK_STRENGTH_MS`; ``time`` wins when both are given; a bare ``<break/>`` is
  ``medium``. A break also ends the sentence it sits in (the model speaks sentences
  one by one, so silence can only go between them).
* ``<s>`` and ``<p>``: a sentence / paragraph boundary at both ends. Long content is
  still cut by the sentence splitter.
* ``<sub alias="...">text</sub>``: the alias is spoken instead of the text.

Elements may carry the W3C SSML namespace (``xmlns="http://www.w3.org/2001/10/synthesis"``)
or none. Parsing uses defusedxml with DTDs forbidden, so entity expansion (billion laughs)
and external entities (XXE) never happen: any ``<!DOCTYPE`` is refused before anything
is expanded. Malformed XML is an :class:`SsmlError` carrying its line and column.

Text outside ``<s>``/``<p>`` runs through :class:`~voxtrio.protocol._sentences.SentenceSplitter`
exactly as plain text does, so every :class:`Sentence` is a piece of the splitter (or a
whole ``<s>``) and the pieces concatenate to the spoken text; pieces with nothing to say
(whitespace between tags) are returned too, so the caller can count characters, and
:func:`~voxtrio.protocol._sentences.is_speakable` tells which to synthesise.
"""

from __future__ import annotations

import decimal
import re
import xml.etree.ElementTree as ET
from typing import Final

import attrs
import defusedxml.ElementTree as DET
from defusedxml import DefusedXmlException, DTDForbidden, EntitiesForbidden

from voxtrio.protocol._sentences import SentenceSplitter

__all__ = [
    "BREAK_STRENGTH_MS",
    "Segment",
    "Sentence",
    "Silence",
    "SsmlError",
    "SsmlLimits",
    "looks_like_ssml",
    "parse_ssml",
]

SSML_NAMESPACE: Final = "http://www.w3.org/2001/10/synthesis"
_XML_NAMESPACE: Final = "http://www.w3.org/XML/1998/namespace"

# W3C SSML 1.1 §3.2.3 leaves the lengths to the processor; these follow common engines
# (Azure: medium 500 ms, x-strong 1 s), a little shorter in the middle for speech pace.
BREAK_STRENGTH_MS: Final[dict[str, int]] = {
    "none": 0,
    "x-weak": 100,
    "weak": 200,
    "medium": 400,
    "strong": 700,
    "x-strong": 1000,
}

# "500ms", "1s", "1.5s", " 2 S " (case and surrounding spaces tolerated, as W3C parsers do).
_TIME_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)\s*", re.IGNORECASE)

_XSI_NAMESPACE: Final = "http://www.w3.org/2001/XMLSchema-instance"
# What W3C examples put on <speak>; none changes the audio.
_SPEAK_ATTRIBUTES: Final = frozenset(
    {"version", f"{{{_XML_NAMESPACE}}}lang", f"{{{_XSI_NAMESPACE}}}schemaLocation"}
)
_BOUNDARY_ATTRIBUTES: Final = frozenset({f"{{{_XML_NAMESPACE}}}lang"})


@attrs.frozen
class Sentence:
    """A piece of text to speak (may be only whitespace/punctuation: check is_speakable)."""

    text: str


@attrs.frozen
class Silence:
    """This many milliseconds of silence."""

    ms: int


Segment = Sentence | Silence


@attrs.frozen
class SsmlLimits:
    """Bounds on one SSML document; exceeding any is an SsmlError, never a truncation."""

    max_chars: int = 20_000  # DashScope's cap on one continue-task text
    max_depth: int = 16
    max_elements: int = 2_000
    max_breaks: int = 200
    max_break_ms: int = 10_000
    max_total_silence_ms: int = 120_000
    max_sentence_chars: int = 300  # SentenceSplitter.max_chars for the text


class SsmlError(ValueError):
    """The document is refused; `message` says why (and where, for malformed XML)."""

    def __init__(self, message: str, *, position: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.position = position


_SPEAK_ROOT = re.compile(r"\s*(?:<\?xml[^>]*\?>\s*)?<speak[\s>]")


def is_speak_document(text: str) -> bool:
    """Whether `text` opens with a `<speak>` root: SSML even without enable_ssml.

    Relays detect `<speak>` themselves and send it as PlainText; reading the markup
    aloud is never what they mean, and a `<speak` root is unambiguous.
    """
    return _SPEAK_ROOT.match(text) is not None


def looks_like_ssml(text: str) -> bool:
    """Whether `text` is meant as an SSML document: its first non-blank character is `<`.

    With `enable_ssml` on, such a text must be a whole, valid document; anything else
    is plain text (the SDK's `call()` always turns `enable_ssml` on, for plain text too).
    """
    return text.lstrip().startswith("<")


def parse_ssml(text: str, limits: SsmlLimits | None = None) -> list[Segment]:
    """Parse one SSML document into sentences and silences, or raise SsmlError."""
    limits = limits or SsmlLimits()
    if len(text) > limits.max_chars:
        raise SsmlError(
            f"SSML document too long: {len(text)} characters, at most {limits.max_chars}"
        )
    root = _parse_xml(text)
    walker = _Walker(limits)
    walker.walk_root(root)
    return walker.finish()


def _parse_xml(text: str) -> ET.Element:
    try:
        # forbid_dtd: no <!DOCTYPE> at all, so no entity can be declared, expanded
        # (billion laughs) or fetched (XXE); the other two are defusedxml's defaults.
        root: ET.Element = DET.fromstring(
            text, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except DTDForbidden:
        raise SsmlError("SSML must not contain a DOCTYPE (DTDs and entities are refused)") from None
    except EntitiesForbidden:
        raise SsmlError("SSML must not declare entities") from None
    except DefusedXmlException as exc:
        raise SsmlError(f"SSML refused: {type(exc).__name__}") from None
    except ET.ParseError as exc:
        line, column = exc.position
        # expat's message already ends in "line L, column C"; column is 0-based there.
        reason = str(exc).split(":", 1)[0]
        raise SsmlError(
            f"malformed SSML: {reason} at line {line}, column {column + 1}",
            position=(line, column + 1),
        ) from None
    return root


def _local_name(element: ET.Element) -> str:
    """The tag without the SSML namespace; a foreign namespace stays in the name."""
    tag = element.tag
    if not isinstance(tag, str):  # comments/PIs are not kept by fromstring; be safe
        raise SsmlError("unsupported SSML node")
    prefix = f"{{{SSML_NAMESPACE}}}"
    return tag[len(prefix) :] if tag.startswith(prefix) else tag


def _display(name: str) -> str:
    return f"<{name}>"


def parse_break_time(value: str, max_ms: int) -> int:
    """`"500ms"` / `"1.5s"` -> whole milliseconds (rounded), within 0..max_ms."""
    match = _TIME_RE.fullmatch(value)
    if match is None:
        raise SsmlError(f'<break time="{value[:40]}">: expected a duration like "500ms" or "1.5s"')
    # Decimal, not float: "9" * 400 is a valid number that float() turns into inf.
    number, unit = decimal.Decimal(match.group(1)), match.group(2).lower()
    ms = number * (1000 if unit == "s" else 1)
    if ms > max_ms:
        raise SsmlError(f'<break time="{value[:40]}">: at most {max_ms} ms')
    return int(ms.to_integral_value(decimal.ROUND_HALF_EVEN))


@attrs.define
class _Walker:
    """Depth-first walk that turns the element tree into segments."""

    limits: SsmlLimits
    segments: list[Segment] = attrs.Factory(list)
    splitter: SentenceSplitter = attrs.field(init=False)
    elements: int = 0
    breaks: int = 0
    silence_ms: int = 0

    def __attrs_post_init__(self) -> None:
        self.splitter = SentenceSplitter(max_chars=self.limits.max_sentence_chars)

    def walk_root(self, root: ET.Element) -> None:
        name = _local_name(root)
        if name != "speak":
            raise SsmlError(f"the SSML root element must be <speak>, not {_display(name)}")
        self._check_attributes(root, "speak", _SPEAK_ATTRIBUTES)
        self._walk_children(root, depth=1)

    def finish(self) -> list[Segment]:
        self._boundary()
        return self.segments

    def _text(self, text: str | None) -> None:
        if text:
            self.segments.extend(Sentence(piece) for piece in self.splitter.feed(text))

    def _boundary(self) -> None:
        self.segments.extend(Sentence(piece) for piece in self.splitter.flush())

    def _walk_children(self, element: ET.Element, depth: int) -> None:
        self._text(element.text)
        for child in element:
            self._element(child, depth + 1)
            self._text(child.tail)

    def _element(self, element: ET.Element, depth: int) -> None:
        self.elements += 1
        if self.elements > self.limits.max_elements:
            raise SsmlError(f"too many SSML elements: at most {self.limits.max_elements}")
        if depth > self.limits.max_depth:
            raise SsmlError(f"SSML nested too deeply: at most {self.limits.max_depth} levels")
        name = _local_name(element)
        if name in ("s", "p"):
            self._check_attributes(element, name, _BOUNDARY_ATTRIBUTES)
            self._boundary()
            self._walk_children(element, depth)
            self._boundary()
        elif name == "break":
            self._break(element)
        elif name == "sub":
            self._sub(element)
        elif name == "speak":
            raise SsmlError("<speak> may only be the root element")
        else:
            raise SsmlError(
                f"unsupported SSML element {_display(name)}: "
                "this server supports <speak>, <break>, <s>, <p> and <sub>"
            )

    def _break(self, element: ET.Element) -> None:
        self._check_attributes(element, "break", frozenset({"time", "strength"}))
        if len(element) or (element.text or "").strip():
            raise SsmlError("<break> must be empty")
        time = element.get("time")
        strength = element.get("strength")
        if strength is not None and strength not in BREAK_STRENGTH_MS:
            names = ", ".join(BREAK_STRENGTH_MS)
            raise SsmlError(f'<break strength="{strength[:40]}">: expected one of {names}')
        if time is not None:
            ms = parse_break_time(time, self.limits.max_break_ms)
        else:
            ms = BREAK_STRENGTH_MS[strength or "medium"]
        self.breaks += 1
        if self.breaks > self.limits.max_breaks:
            raise SsmlError(f"too many <break> elements: at most {self.limits.max_breaks}")
        self.silence_ms += ms
        if self.silence_ms > self.limits.max_total_silence_ms:
            raise SsmlError(
                f"too much <break> silence: at most {self.limits.max_total_silence_ms} ms in all"
            )
        self._boundary()
        if ms:
            self.segments.append(Silence(ms))

    def _sub(self, element: ET.Element) -> None:
        self._check_attributes(element, "sub", frozenset({"alias"}))
        alias = element.get("alias")
        if alias is None:
            raise SsmlError('<sub> needs an alias attribute: <sub alias="spoken">written</sub>')
        if len(element):
            raise SsmlError(f"<sub> may contain only text, not {_display(_local_name(element[0]))}")
        self._text(alias)

    def _check_attributes(self, element: ET.Element, name: str, allowed: frozenset[str]) -> None:
        for attribute in element.attrib:
            if attribute not in allowed:
                shown = attribute.replace(f"{{{_XML_NAMESPACE}}}", "xml:")
                raise SsmlError(f"attribute {shown!r} of <{name}> is not supported")
