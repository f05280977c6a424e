"""Incremental sentence segmentation for text that arrives in fragments (sans-IO).

An LLM streams tokens into the server; :class:`SentenceSplitter` hands each sentence
to the synthesizer as soon as no later fragment could change it, so speech starts
early. Nothing is dropped or rewritten: the emitted pieces concatenate back to the
input exactly. Whitespace between sentences always starts the *next* piece, which is
what lets ``"Hi."`` go out the moment the following space arrives.

Rules, in the order the scanner applies them:

* A run of terminators (``. ! ? ; … ⋯`` and full-width ``。 ！ ？ ； ｡ ．``), then any
  closing quotes/brackets, ends a sentence when the next character is
  - anything at all, if the run contains a full-width terminator;
  - whitespace (Western run), except a lone ``.`` after an abbreviation, a single
    capital initial, or a list number opening a line or following a sentence
    (``Dr.``, ``J.``, ``\\n2.``, ``Done. 2.``);
  - a CJK character (Western run other than a lone ``.``: ``好的!我们``).
  A terminator followed by anything else (``3.14``, ``example.com``, ``v1.2``) is not
  an ending, and the whole run (``?!``, ``!!!``, ``……``) stays together.
* A blank line (two newlines, possibly with other whitespace between) is a boundary;
  a single newline is ordinary whitespace.
* A piece never exceeds ``max_chars``. Past it, the piece is cut at the rightmost of,
  in order of preference: a sentence ending that ``min_chars`` rejected, a clause
  boundary (``,`` or ``:`` before whitespace, after ``， 、 ： —``, or a line break),
  a word boundary (before whitespace, or next to a CJK character); and only if the
  window has none of these, at exactly ``max_chars`` (moved back over combining marks),
  which is the one case that can split a word: a single token longer than ``max_chars``.

Every decision depends on the text alone, never on how it was chopped: a boundary is
recorded only once the characters that could veto it have arrived, and the scanner
looks at each character once (plus a 40-character look-back at a ``.``), so feeding
one character at a time stays O(n).
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_left, bisect_right

import attrs

__all__ = ["SentenceSplitter", "is_speakable", "split_sentences"]

_WEST_TERMS = frozenset(".!?;…⋯")
_CJK_TERMS = frozenset("。！？；｡．")
_TERMS = _WEST_TERMS | _CJK_TERMS
# "'" and '"' open as well as close; after a terminator they can only be closing.
_CLOSERS = frozenset("\"'”’」』）)]】》〉}〕〗｣")
_NEWLINES = frozenset("\n\x85\u2028")
_PARAGRAPH_SEP = "\u2029"  # a blank line all by itself
_CLAUSE_WEST = frozenset(",:")  # a clause boundary only before whitespace (1,000 / 10:30)
_CLAUSE_FW = frozenset("，、：")
_DASHES = frozenset("—―")  # em dash; horizontal bar (Chinese typesetting)

# Pending clause kinds.
_NO_CLAUSE, _WEST, _FULL, _DASH = 0, 1, 2, 3

# Look-back window at a ".": enough for the longest abbreviation token (32 chars)
# plus what precedes it.
_LOOK = 40

_ABBREVIATIONS = frozenset(
    {
        *("Mr", "Mrs", "Ms", "Mx", "Dr", "Prof", "Sr", "Jr", "St", "Mt", "Ph.D"),
        *("Gen", "Col", "Capt", "Lt", "Sgt", "Rev", "Hon", "Gov", "Sen", "Rep"),
        *("Inc", "Ltd", "Co", "Corp", "No", "Nos", "Dept", "Univ", "Ave", "Blvd", "Rd"),
        *("Fig", "Figs", "Vol", "Vols", "Jan", "Feb", "Aug", "Sep", "Sept", "Oct", "Nov", "Dec"),
        *("vs", "etc", "approx", "cf", "al", "viz", "ca", "Vs", "Etc", "Approx", "Cf", "Ca"),
    }
)
# The letters (and inner dots) right before a ".", if nothing alphabetic precedes them.
_TOKEN_RE = re.compile(r"(?:^|[^A-Za-z.])([A-Za-z.]{1,32})\Z")
_DOTTED_RE = re.compile(r"[A-Za-z](?:\.[A-Za-z])+")  # e.g  i.e  a.m  U.S  U.S.A
# A list number: "\n2." or "Done. 2." (not "in 1990." or "I have 2.").
_LIST_RE = re.compile(r"(?:\n|[.!?;…][\"'”’)\]]*\s)[ \t]*\d{1,3}\Z")
_LIST_AT_START_RE = re.compile(r"[ \t]*\d{1,3}")


def is_speakable(s: str) -> bool:
    """Whether ``s`` has anything to say: a letter or digit (CJK included)."""
    return any(ch.isalnum() for ch in s)


def split_sentences(text: str, *, max_chars: int = 300, min_chars: int = 1) -> list[str]:
    """Split a whole text: the same pieces :class:`SentenceSplitter` streams out."""
    splitter = SentenceSplitter(max_chars=max_chars, min_chars=min_chars)
    return splitter.feed(text) + splitter.flush()


def _is_cjk(c: str) -> bool:
    """Han or kana: scripts written without spaces, where every character is a word."""
    o = ord(c)
    return (
        0x4E00 <= o <= 0x9FFF
        or 0x3040 <= o <= 0x30FF
        or 0x3400 <= o <= 0x4DBF
        or 0xF900 <= o <= 0xFAFF
        or 0x20000 <= o <= 0x3FFFF
        or 0x31F0 <= o <= 0x31FF
        or 0xFF66 <= o <= 0xFF9F
    )


def _is_joiner(c: str) -> bool:
    """Characters that belong to the one before them (accents, ZWJ, emoji modifiers)."""
    o = ord(c)
    return bool(
        unicodedata.combining(c)
        or o in (0x200C, 0x200D)
        or 0xFE00 <= o <= 0xFE0F
        or 0x1F3FB <= o <= 0x1F3FF
        or 0xE0020 <= o <= 0xE007F
    )


def _dot_is_not_an_end(before: str, at_stream_start: bool) -> bool:
    """Whether a lone "." after ``before`` marks an abbreviation, initial or list number."""
    m = _TOKEN_RE.search(before)
    if m is not None:
        token = m.group(1).lstrip(".")
        if (
            token in _ABBREVIATIONS
            or _DOTTED_RE.fullmatch(token)
            or (len(token) == 1 and token.isupper())
        ):
            return True
    if _LIST_RE.search(before):
        return True
    return at_stream_start and _LIST_AT_START_RE.fullmatch(before) is not None


@attrs.define
class _Marks:
    """Candidate cut positions, ascending, each with the non-space count before it."""

    pos: list[int] = attrs.Factory(list)
    cum: list[int] = attrs.Factory(list)
    head: int = 0  # entries before head are consumed

    def add(self, p: int, c: int) -> None:
        self.pos.append(p)
        self.cum.append(c)

    def drop_upto(self, p: int) -> None:
        """Forget candidates at or before ``p`` (amortised O(1))."""
        pos, head = self.pos, self.head
        while head < len(pos) and pos[head] <= p:
            head += 1
        if head > 64 and 2 * head > len(pos):
            del pos[:head], self.cum[:head]
            head = 0
        self.head = head

    def first_cum_at_least(self, target: int) -> tuple[int, int] | None:
        """The first candidate with at least ``target`` non-space characters before it."""
        i = bisect_left(self.cum, target, self.head)
        return (self.pos[i], self.cum[i]) if i < len(self.pos) else None

    def rightmost_upto(self, limit: int) -> tuple[int, int] | None:
        """The last candidate at or before ``limit``."""
        i = bisect_right(self.pos, limit, self.head) - 1
        return (self.pos[i], self.cum[i]) if i >= self.head else None


@attrs.define
class _State:
    """Everything one stream accumulates; replaced wholesale on flush."""

    # Positions are absolute offsets into the stream; cum counts non-space characters.
    pos: int = 0  # characters scanned (= fed)
    cum: int = 0
    prev: str = ""
    prev_cjk: bool = False
    tail: str = ""  # the last _LOOK characters scanned, for look-back across fragments
    # A terminator run waiting for the character that decides it.
    in_run: bool = False
    run_cjk: bool = False
    run_dot: bool = False  # the run is exactly "."
    run_closed: bool = False  # closing quotes/brackets seen after the run
    dot_exempt: bool = False
    # The whitespace run the text currently ends in (-1: none).
    ws_start: int = -1
    ws_newlines: int = 0
    clause: int = _NO_CLAUSE
    sent: _Marks = attrs.Factory(_Marks)
    clause_marks: _Marks = attrs.Factory(_Marks)
    word: _Marks = attrs.Factory(_Marks)
    # Unemitted text: text holds it from base (== start between calls), chunks the
    # fragments not yet joined onto it (joined only when something is cut).
    start: int = 0
    start_cum: int = 0
    base: int = 0
    text: str = ""
    chunks: list[str] = attrs.Factory(list)
    # Characters touched (scanned, looked back at, copied): lets tests check O(n).
    work: int = 0


@attrs.define
class SentenceSplitter:
    """Incremental sentence splitter: :meth:`feed` fragments, then :meth:`flush`.

    ``max_chars`` caps every emitted piece (see the module docstring for where it
    cuts). A sentence ending that leaves fewer than ``min_chars`` non-space characters
    in its piece is skipped, merging short sentences into the next one; the last piece
    of a stream may still be shorter.
    """

    max_chars: int = attrs.field(default=300, validator=attrs.validators.ge(1))
    min_chars: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    _st: _State = attrs.field(init=False, factory=_State)

    def __attrs_post_init__(self) -> None:
        if self.min_chars > self.max_chars:
            raise ValueError(f"min_chars ({self.min_chars}) > max_chars ({self.max_chars})")

    @property
    def pending(self) -> str:
        """Text fed but not yet emitted."""
        return self._materialize()

    def feed(self, fragment: str) -> list[str]:
        """Add ``fragment``; return the pieces it completed (possibly none)."""
        if not fragment:
            return []
        st = self._st
        st.chunks.append(fragment)
        self._scan(fragment)
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of input: return the remaining pieces and start afresh."""
        out = self._drain(final=True)
        self._st = _State()
        return out

    def _materialize(self) -> str:
        st = self._st
        if st.chunks:
            st.text += "".join(st.chunks)
            st.chunks.clear()
            st.work += len(st.text)
        return st.text

    def _scan(self, frag: str) -> None:
        """Record the candidate cuts that ``frag`` decides; each character once."""
        st = self._st
        sent, clause_marks, word = st.sent, st.clause_marks, st.word
        # Hot loop: state lives in locals and is written back at the end.
        i, cum, prev, prev_cjk = st.pos, st.cum, st.prev, st.prev_cjk
        in_run, run_cjk, run_dot = st.in_run, st.run_cjk, st.run_dot
        run_closed, dot_exempt = st.run_closed, st.dot_exempt
        ws_start, ws_newlines, clause = st.ws_start, st.ws_newlines, st.clause
        work = len(frag)
        for j, c in enumerate(frag):
            if in_run:
                if not run_closed and c in _TERMS:
                    run_cjk = run_cjk or c in _CJK_TERMS
                    run_dot = False
                    cum += 1
                    prev, prev_cjk, i = c, False, i + 1
                    continue
                if c in _CLOSERS:
                    run_closed = True
                    cum += 1
                    prev, prev_cjk, i = c, False, i + 1
                    continue
                # c decides the run; then it is scanned like any other character.
                if run_cjk:
                    ends = True
                elif c.isspace():
                    ends = run_closed or not (run_dot and dot_exempt)
                elif _is_cjk(c):
                    ends = run_closed or not run_dot
                else:
                    ends = False
                if ends:
                    sent.add(i, cum)
                in_run = False
            if c.isspace():
                if ws_start < 0:
                    ws_start, ws_newlines = i, 0
                    word.add(i, cum)
                    if clause:  # "," / "，" / "—" + space
                        clause_marks.add(i, cum)
                        clause = _NO_CLAUSE
                if c in _NEWLINES or c == _PARAGRAPH_SEP:
                    before = ws_newlines
                    ws_newlines += 2 if c == _PARAGRAPH_SEP else 1
                    # Marks at ws_start come late but still in order: nothing was
                    # recorded inside the whitespace run.
                    if before == 0:
                        clause_marks.add(ws_start, cum)  # a line break is a clause break
                    if before < 2 <= ws_newlines:
                        sent.add(ws_start, cum)  # a blank line ends the sentence
                prev, prev_cjk, i = c, False, i + 1
                continue
            ws_start = -1
            if clause and c not in _CLOSERS:
                if c not in _TERMS and (clause == _FULL or (clause == _DASH and c not in _DASHES)):
                    clause_marks.add(i, cum)
                clause = _NO_CLAUSE
            if c in _CLAUSE_WEST:
                clause = _WEST
            elif c in _CLAUSE_FW:
                clause = _FULL
            elif c in _DASHES:
                clause = _DASH
            elif c in _TERMS:
                in_run, run_cjk, run_dot, run_closed = True, c in _CJK_TERMS, c == ".", False
                dot_exempt = False
                if run_dot:
                    # The look-back may reach into earlier fragments: st.tail.
                    lo = j - _LOOK
                    before_dot = frag[lo:j] if lo >= 0 else (st.tail + frag[:j])[-_LOOK:]
                    work += len(before_dot)
                    dot_exempt = _dot_is_not_an_end(before_dot, i == len(before_dot))
            cjk = _is_cjk(c)
            if (cjk and (prev_cjk or prev.isalnum())) or (prev_cjk and c.isalnum()):
                word.add(i, cum)
            cum += 1
            prev, prev_cjk, i = c, cjk, i + 1
        st.pos, st.cum, st.prev, st.prev_cjk = i, cum, prev, prev_cjk
        st.in_run, st.run_cjk, st.run_dot = in_run, run_cjk, run_dot
        st.run_closed, st.dot_exempt = run_closed, dot_exempt
        st.ws_start, st.ws_newlines, st.clause = ws_start, ws_newlines, clause
        st.tail = frag[-_LOOK:] if len(frag) >= _LOOK else (st.tail + frag)[-_LOOK:]
        st.work += work

    def _drain(self, final: bool) -> list[str]:
        """Cut off every piece the text seen so far decides (all of it if ``final``)."""
        st = self._st
        s, s_cum, end = st.start, st.start_cum, st.pos
        cuts: list[int] = []
        while s < end:
            st.sent.drop_upto(s)
            hit = st.sent.first_cum_at_least(s_cum + self.min_chars)
            limit = s + self.max_chars
            if hit is None or hit[0] > limit:
                if end <= limit:
                    if not final:
                        break  # the next fragment may end the sentence in time
                    hit = (end, st.cum)
                elif not final and s < st.ws_start <= limit and st.ws_newlines < 2:
                    break  # that whitespace may yet become a line or paragraph break
                else:
                    hit = self._cap_cut(s, s_cum, limit)
            cuts.append(hit[0])
            s, s_cum = hit
        if not cuts:
            return []
        text, base = self._materialize(), st.base
        out = []
        a = st.start
        for b in cuts:
            out.append(text[a - base : b - base])
            a = b
        st.text = text[s - base :]
        st.work += (s - st.start) + len(st.text)
        st.start, st.start_cum, st.base = s, s_cum, s
        return out

    def _cap_cut(self, s: int, s_cum: int, limit: int) -> tuple[int, int]:
        """Where to cut a piece that would run past ``limit`` (see module docstring)."""
        st = self._st
        for marks in (st.sent, st.clause_marks, st.word):
            marks.drop_upto(s)
            hit = marks.rightmost_upto(limit)
            if hit is not None:
                return hit
        # One token fills the window: cut at the cap, but not before a combining mark.
        text, base = self._materialize(), st.base
        cut = limit
        for _ in range(16):
            if cut - 1 <= s:
                cut = limit
                break
            if not (_is_joiner(text[cut - base]) or text[cut - 1 - base] == "\u200d"):
                break
            cut -= 1
        else:
            cut = limit
        piece = text[s - base : cut - base]
        st.work += len(piece)
        return cut, s_cum + len(piece) - sum(ch.isspace() for ch in piece)
