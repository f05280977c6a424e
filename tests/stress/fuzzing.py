"""Protocol fuzzing: Hypothesis strategies of bad (and good) client messages, and their runs.

Every generated `Case` knows what the server must answer: the error codes one of which
must come back (`expect`), or None for a message that is valid (then anything but
INTERNAL_ERROR goes, and the ledger checks its one terminal message), or the close
codes that may end the connection instead (`close`). Invalid messages are invalid by
construction (a wrong JSON type for the field's schema, a number outside its range),
not judged by the server's own parser.

A run sends each case followed by a sentinel (a `ping` on the native endpoint, an
unknown action on the DashScope one, whose answers come back in order), so every
answer is attributed to the case that caused it.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from typing import Any

import attrs
import trio
from hypothesis import strategies as st
from trio_websocket import ConnectionClosed, WebSocketConnection

from voxtrio.protocol._frames import decode_frame

from .harness import Ledger, RawWebSocket, client_frame, connect

NATIVE_TYPES = (
    "tts_request",
    "cancel",
    "ping",
    "text_stream_start",
    "text_delta",
    "text_flush",
    "text_stream_end",
)
# Types other work adds to the native protocol: never used as "unknown".
RESERVED_TYPES = frozenset({*NATIVE_TYPES, "voice_register", "voice_list", "voice_delete"})
ERROR_CODES = frozenset(
    {
        "INVALID_JSON",
        "UNKNOWN_MESSAGE_TYPE",
        "INVALID_PARAMS",
        "UNSUPPORTED_FORMAT",
        "DUPLICATE_REQUEST_ID",
        "UNKNOWN_REQUEST",
        "RATE_LIMITED",
        "MODEL_NOT_LOADED",
        "GENERATION_FAILED",
        "SHUTTING_DOWN",
    }
)
ANCHOR = "anchor"  # the text stream every native example keeps open
SENTENCES = ("Hi.", "Hello there.", "One, two.", "A short line of speech.", "Okay!")
MAX_MESSAGE_BYTES = 64 * 1024  # the fuzzed servers' --max-message-bytes
# Invalid UTF-8 in a text frame: RFC 6455 wants 1007, but trio-websocket 0.12.2 drops the
# TCP connection without a close frame on any wsproto parse failure (1006 at the client).
UTF8_CLOSE = frozenset({1007, 1006})
# A message over the limit: 1009. The server closes while the client is still sending the
# rest of it, so the kernel may answer with a reset that overtakes the close frame: 1006.
OVERSIZE_CLOSE = frozenset({1009, 1006})
# Answers to one case must come within this (a live server answers in milliseconds).
CASE_TIMEOUT = 10.0


class Case:
    """One client message and what the server must do with it.

    A plain class, not attrs: Hypothesis then prints a failing case by its short repr.
    """

    def __init__(
        self,
        label: str,
        payload: str | bytes = "",
        *,
        raw: bytes | None = None,
        expect: frozenset[str] | None = None,
        close: frozenset[int] = frozenset(),
        duplicate: bool = False,
        maybe_starts: str | None = None,
        fields: frozenset[str] = frozenset(),
        max_answer: int | None = None,
    ) -> None:
        self.label = label
        self.payload = payload  # sent as a text (str) or binary (bytes) message
        self.raw = raw  # a hand-built frame instead of payload
        self.expect = expect  # error codes, one of which must answer; None: valid
        self.close = close  # close codes allowed to end the connection
        self.duplicate = duplicate  # names an active request: a non-terminal error
        # Starts this request if the server's parser gets to its id: deep nesting may be
        # refused as INVALID_JSON first, and where depends on the stack the parser runs on.
        self.maybe_starts = maybe_starts
        self.fields = fields  # paths the error's details must all name (all reported at once)
        self.max_answer = max_answer  # bytes an answer may take (no reply amplification)

    def __repr__(self) -> str:
        return f"Case({self.label!r}, {_show(self)})"


def codes(*names: str) -> frozenset[str]:
    return frozenset(names)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# ---------------------------------------------------------------- JSON building blocks

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
containers = st.lists(scalars, max_size=2) | st.dictionaries(
    st.text(max_size=4), scalars, max_size=2
)
not_str = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | containers
not_bool = st.none() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6) | containers
not_number = st.none() | st.booleans() | st.text(max_size=6) | containers
not_int = not_number | st.floats(allow_nan=False, allow_infinity=False)
not_object = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=6) | st.lists(scalars, max_size=2)
)

# The schema of every field a client may send: (kind, low, high).
OPTION_FIELDS: dict[str, tuple[str, float, float]] = {
    "cfg_value": ("float", 0.1, 10.0),
    "inference_timesteps": ("int", 1, 50),
    "normalize": ("bool", 0, 0),
    "retry_badcase": ("bool", 0, 0),
    "retry_badcase_max_times": ("int", 0, 10),
    "retry_badcase_ratio_threshold": ("float", 1.0, 20.0),
    "seed": ("int?", 0, 2**63 - 1),
    "max_len": ("int?", 1, 4096),
    "format": ("enum", 0, 0),
    "sample_rate": ("rate?", 0, 0),
    "bit_rate": ("int?", 6000, 510_000),
}
REQUEST_FIELDS = {**OPTION_FIELDS, "text": ("text", 1, 5000), "mode": ("enum", 0, 0)}


def wrong_value(kind: str) -> st.SearchStrategy[Any]:
    """A JSON value whose type the field refuses."""
    match kind:
        case "text" | "enum" | "str":
            return not_str
        case "bool":
            return not_bool
        case "float":
            return not_number
        case "int" | "int?":
            return not_int.filter(lambda v: not (kind == "int?" and v is None))
        case "rate?":
            return not_int.filter(lambda v: v is not None) | st.sampled_from([0, 1, 11025, 96000])
    raise AssertionError(kind)


def out_of_range(kind: str, low: float, high: float) -> st.SearchStrategy[Any]:
    """A number of the right type outside the field's range, huge ones included."""
    if kind in ("int", "int?"):
        return st.integers(int(high) + 1, 10**400) | st.integers(-(10**400), int(low) - 1)
    return (
        st.floats(min_value=high, exclude_min=True, allow_nan=False, allow_infinity=False)
        | st.floats(max_value=low, exclude_max=True, allow_nan=False, allow_infinity=False)
        | st.integers(int(high) + 1, 10**400)
    )


@st.composite
def valid_options(draw: st.DrawFn) -> dict[str, Any]:
    """Synthesis options that are well-typed and in range (the server may still refuse a
    bit rate its codec does not take at that sample rate)."""
    options: dict[str, Any] = {}
    fmt = draw(st.sampled_from(["pcm16", "wav", "mp3", "opus", "flac", None]))
    if fmt is not None:
        options["format"] = fmt
    if draw(st.booleans()):
        options["sample_rate"] = draw(
            st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000, None])
        )
    if fmt in ("mp3", "opus") and draw(st.booleans()):
        options["bit_rate"] = draw(st.sampled_from([32000, 64000, 128000]))
    options["max_len"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        options["seed"] = draw(st.integers(0, 2**63 - 1))
    if draw(st.booleans()):
        options["cfg_value"] = draw(st.floats(0.1, 10.0))
    if draw(st.booleans()):
        options["inference_timesteps"] = draw(st.integers(1, 50))
    return options


class Ids:
    """Fresh request ids, unique within a run."""

    def __init__(self, prefix: str = "fz") -> None:
        self.prefix = prefix
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        return f"{self.prefix}{self.n}"


# ---------------------------------------------------------------- native cases


@st.composite
def valid_native(draw: st.DrawFn, ids: Ids) -> Case:
    """A message the protocol accepts: a short request, a ping, text for the anchor."""
    kind = draw(st.sampled_from(["tts_request", "tts_request", "ping", "delta", "flush", "stream"]))
    if kind == "tts_request":
        rid = ids()
        params = {"text": draw(st.sampled_from(SENTENCES)), **draw(valid_options())}
        if draw(st.booleans()):
            params["mode"] = draw(st.sampled_from(["streaming", "non_streaming"]))
        payload = {"type": "tts_request", "request_id": rid, "params": params}
        return Case("valid", dumps(payload))
    if kind == "stream":
        rid = ids()
        return Case("valid", dumps({"type": "text_stream_start", "request_id": rid}))
    if kind == "ping":
        stamp = draw(st.integers(-(10**30), 10**30))
        return Case("valid", dumps({"type": "ping", "timestamp": stamp}))
    if kind == "delta":
        text = draw(st.sampled_from(SENTENCES))
        return Case("valid", dumps({"type": "text_delta", "request_id": ANCHOR, "text": text}))
    return Case("valid", dumps({"type": "text_flush", "request_id": ANCHOR}))


def base_message(kind: str, rid: str) -> dict[str, Any]:
    """A valid message of each type that can be broken field by field."""
    match kind:
        case "tts_request":
            return {"type": kind, "request_id": rid, "params": {"text": "Hi.", "max_len": 2}}
        case "text_stream_start":
            return {"type": kind, "request_id": rid, "params": {"max_len": 2}}
        case "text_delta":
            return {"type": kind, "request_id": ANCHOR, "text": "Hi."}
        case "ping":
            return {"type": kind, "timestamp": 1}
    return {"type": kind, "request_id": ANCHOR if kind != "cancel" else rid}


def fields_of(kind: str) -> dict[str, tuple[str, float, float]]:
    """Breakable fields: "params.x" for options, top-level names otherwise."""
    top: dict[str, tuple[str, float, float]] = {}
    if kind != "ping":
        top["request_id"] = ("str", 1, 128)
    if kind == "ping":
        top["timestamp"] = ("int", -(10**4000), 10**4000)
    if kind == "text_delta":
        top["text"] = ("text", 1, 5000)
    if kind == "tts_request":
        top.update({f"params.{k}": v for k, v in REQUEST_FIELDS.items()})
    if kind == "text_stream_start":
        top.update({f"params.{k}": v for k, v in OPTION_FIELDS.items()})
    return top


def keys_of(path: str | tuple[str, ...]) -> tuple[str, ...]:
    return path if isinstance(path, tuple) else tuple(path.split(".", 1))


def put(message: dict[str, Any], path: str | tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `message` with the field at `path` ("params.seed") set to `value`."""
    message = json.loads(json.dumps(message))
    *parents, last = keys_of(path)
    target = message
    for name in parents:
        target = target[name]
    target[last] = value
    return message


def drop(message: dict[str, Any], path: str) -> dict[str, Any]:
    """A copy of `message` without the field at `path`."""
    message = json.loads(json.dumps(message))
    *parents, last = keys_of(path)
    target = message
    for name in parents:
        target = target[name]
    target.pop(last, None)
    return message


@st.composite
def broken_field(draw: st.DrawFn, ids: Ids) -> Case:
    """A valid message with one field made wrong: type, range, missing or unknown."""
    kind = draw(
        st.sampled_from(["tts_request", "text_stream_start", "text_delta", "ping", "cancel"])
    )
    rid = ids()
    message = base_message(kind, rid)
    fields = fields_of(kind)
    how = draw(st.sampled_from(["wrong_type", "out_of_range", "unknown_field", "missing"]))
    if how == "unknown_field":
        inside = "params" in message and draw(st.booleans())
        name = draw(
            st.text(min_size=1, max_size=12).filter(
                lambda k: k not in message and k not in REQUEST_FIELDS
            )
        )
        keys = ("params", name) if inside else (name,)
        broken = put(message, keys, draw(json_values))
        return Case("unknown_field", dumps(broken), expect=codes("INVALID_PARAMS"))
    required = [p for p in fields if p in ("request_id", "timestamp", "text", "params.text")]
    if how == "missing" and required:
        broken = drop(message, draw(st.sampled_from(required)))
        return Case("missing_field", dumps(broken), expect=codes("INVALID_PARAMS"))
    numeric = {
        p: v for p, v in fields.items() if v[0] in ("int", "int?", "float") and p != "timestamp"
    }
    if how == "out_of_range" and numeric:
        path = draw(st.sampled_from(sorted(numeric)))
        value = draw(out_of_range(*numeric[path]))
        return Case(
            "out_of_range", dumps(put(message, path, value)), expect=codes("INVALID_PARAMS")
        )
    path = draw(st.sampled_from(sorted(fields)))
    value = draw(wrong_value(fields[path][0]))
    return Case("wrong_type", dumps(put(message, path, value)), expect=codes("INVALID_PARAMS"))


@st.composite
def huge_literal(draw: st.DrawFn, ids: Ids) -> Case:
    """A number written with hundreds to thousands of digits, or as NaN/Infinity."""
    kind = draw(st.sampled_from(["tts_request", "ping"]))
    marker = "__NUMBER__"
    field = (
        "timestamp"
        if kind == "ping"
        else draw(st.sampled_from(["params.seed", "params.cfg_value", "params.max_len"]))
    )
    text = dumps(put(base_message(kind, ids()), field, marker))
    literal = draw(
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
        | st.integers(400, 50_000).map(lambda n: "9" * n)
        | st.integers(4301, 50_000).map(lambda n: "-" + "1" * n)
    )
    expect: frozenset[str] | None = codes("INVALID_JSON", "INVALID_PARAMS")
    if kind == "ping" and literal.lstrip("-").isdigit() and len(literal) <= 4300:
        expect = None  # a ping's timestamp is any integer: it is echoed
    return Case("huge_number", text.replace(f'"{marker}"', literal), expect=expect)


@st.composite
def deep_json(draw: st.DrawFn, ids: Ids) -> Case:
    """Nesting from ten to ten thousand levels (within the size limit), at the top or in a field."""
    depth = draw(st.integers(10, 10_000))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
    nested = opener * depth + "1" + closer * depth
    if draw(st.booleans()):
        # Parsed, an object nested within the limit has no `type`.
        return Case("deep_json", nested, expect=codes("INVALID_JSON", "UNKNOWN_MESSAGE_TYPE"))
    rid = ids()
    text = dumps(base_message("tts_request", rid)).replace('"max_len":2', f'"max_len":{nested}')
    return Case("deep_json", text, expect=codes("INVALID_JSON", "INVALID_PARAMS"), maybe_starts=rid)


not_json_text = st.text(max_size=40).filter(lambda t: not _is_json(t)) | st.sampled_from(
    ["", "{", '{"type":', "]", "nul", "{'type': 'ping'}", '{"type":"ping",}', "\x00"]
)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


@st.composite
def framing_case(draw: st.DrawFn) -> Case:
    """Not JSON, JSON but no object, no or unknown type, binary frames."""
    kind = draw(st.sampled_from(["not_json", "not_object", "no_type", "unknown_type", "binary"]))
    if kind == "not_json":
        return Case("not_json", draw(not_json_text), expect=codes("INVALID_JSON"))
    if kind == "not_object":
        return Case("not_object", dumps(draw(not_object)), expect=codes("INVALID_JSON"))
    if kind == "no_type":
        body = draw(
            st.dictionaries(
                st.text(max_size=8).filter(lambda k: k != "type"), json_values, max_size=3
            )
        )
        if draw(st.booleans()):
            body["type"] = draw(not_str)
        return Case("no_type", dumps(body), expect=codes("UNKNOWN_MESSAGE_TYPE"))
    if kind == "unknown_type":
        name = draw(st.text(max_size=30).filter(lambda t: t not in RESERVED_TYPES))
        body = {"type": name, "request_id": "u1"}
        return Case("unknown_type", dumps(body), expect=codes("UNKNOWN_MESSAGE_TYPE"))
    data = draw(st.binary(max_size=64))
    return Case("binary", data, expect=codes("UNSUPPORTED_FORMAT"))


@st.composite
def id_case(draw: st.DrawFn, ids: Ids) -> Case:
    """Duplicate active ids, unknown ids, ids of a bad length."""
    kind = draw(st.sampled_from(["duplicate", "unknown", "bad_id"]))
    if kind == "duplicate":
        start = draw(st.sampled_from(["tts_request", "text_stream_start"]))
        body = base_message(start, ANCHOR)
        return Case(
            "duplicate_id", dumps(body), expect=codes("DUPLICATE_REQUEST_ID"), duplicate=True
        )
    if kind == "unknown":
        verb = draw(st.sampled_from(["cancel", "text_delta", "text_flush", "text_stream_end"]))
        body = base_message(verb, ids())
        body["request_id"] = ids()
        return Case("unknown_id", dumps(body), expect=codes("UNKNOWN_REQUEST"))
    rid = draw(st.just("") | st.text(min_size=129, max_size=300))
    start = draw(st.sampled_from(["tts_request", "text_stream_start"]))
    return Case("bad_request_id", dumps(base_message(start, rid)), expect=codes("INVALID_PARAMS"))


@st.composite
def refused_case(draw: st.DrawFn, ids: Ids) -> Case:
    """Well-typed requests this server refuses: blank text, too long, denoise, bit rate."""
    rid = ids()
    params: dict[str, Any] = {"text": "Hi.", "max_len": 2}
    kind = draw(st.sampled_from(["blank", "long", "denoise", "bit_rate"]))
    if kind == "blank":
        params["text"] = draw(st.text(alphabet=" \t\n\u3000", min_size=1, max_size=20))
    elif kind == "long":
        params["text"] = "a" * draw(st.integers(5001, 20_000))
    elif kind == "denoise":
        params["denoise"] = True
    else:
        params["format"] = draw(st.sampled_from(["pcm16", "wav", "flac"]))
        params["bit_rate"] = 64000
    body = {"type": "tts_request", "request_id": rid, "params": params}
    return Case("refused_params", dumps(body), expect=codes("INVALID_PARAMS"))


# A lone surrogate: json.dumps writes it as a legal escape ("\ud800"), which decodes to a
# str no UTF-8 encoder takes. Issue 15 #1: every echo of one closed the connection (1011).
lone_surrogates = st.integers(0xD800, 0xDFFF).map(chr)


@st.composite
def surrogate_case(draw: st.DrawFn, ids: Ids) -> Case:
    """A lone surrogate in a request id, a key name or a text: INVALID_PARAMS, no close."""
    lone = draw(lone_surrogates)
    where = draw(st.sampled_from(["tts_id", "stream_id", "cancel_id", "key", "text", "delta"]))
    invalid = codes("INVALID_PARAMS")
    if where in ("tts_id", "stream_id"):
        kind = "tts_request" if where == "tts_id" else "text_stream_start"
        return Case("surrogate", dumps(base_message(kind, ids() + lone)), expect=invalid)
    if where == "cancel_id":
        return Case("surrogate", dumps({"type": "cancel", "request_id": lone}), expect=invalid)
    if where == "delta":
        body = {"type": "text_delta", "request_id": ANCHOR, "text": "Hi " + lone}
        return Case("surrogate", dumps(body), expect=invalid)
    message = base_message("tts_request", ids())
    if where == "key":
        message["params"]["cfg" + lone] = 1
    else:
        message["params"]["text"] = draw(st.sampled_from(SENTENCES)) + lone
    return Case("surrogate", dumps(message), expect=invalid)


@st.composite
def key_flood(draw: st.DrawFn, ids: Ids) -> Case:
    """Thousands of unknown keys (within the size limit): a short answer (issue 15 #3)."""
    count = draw(st.integers(200, 5000))
    message = base_message("tts_request", ids())
    target = message["params"] if draw(st.booleans()) else message
    target.update({f"x{i}": 0 for i in range(count)})
    return Case("key_flood", dumps(message), expect=codes("INVALID_PARAMS"), max_answer=4096)


@st.composite
def many_bad_fields(draw: st.DrawFn, ids: Ids) -> Case:
    """Two to four fields broken in different ways, maybe a typo too: every one is
    reported in one error (issue 15 #12: range and length errors were dropped)."""
    field_names = st.sampled_from(sorted(REQUEST_FIELDS))
    names = draw(st.lists(field_names, min_size=2, max_size=4, unique=True))
    message = base_message("tts_request", ids())
    for name in names:
        kind, low, high = REQUEST_FIELDS[name]
        how = draw(st.sampled_from(["type", "range"]))
        if how == "range" and kind in ("int", "int?", "float"):
            value = draw(out_of_range(kind, low, high))
        elif how == "range" and kind == "text":
            value = "a" * draw(st.integers(5001, 6000))
        else:
            value = draw(wrong_value(kind))
        message["params"][name] = value
    fields = {f"params.{name}" for name in names}
    if draw(st.booleans()):
        message["params"]["cfg_valeu"] = 2
        fields.add("params.cfg_valeu")
    return Case(
        "many_bad_fields",
        dumps(message),
        expect=codes("INVALID_PARAMS"),
        fields=frozenset(fields),
    )


@st.composite
def wire_case(draw: st.DrawFn) -> Case:
    """Broken framing: invalid UTF-8 in a text frame, a message over the size limit."""
    if draw(st.booleans()):
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"]))
        payload = b'{"type":"ping","timestamp":1,"x":"' + bad + b'"}'
        return Case("invalid_utf8", raw=client_frame(0x1, payload), close=UTF8_CLOSE)
    size = draw(st.integers(MAX_MESSAGE_BYTES + 1, 4 * MAX_MESSAGE_BYTES))
    text = dumps({"type": "ping", "timestamp": 1, "pad": "x" * size})
    return Case("oversized", text, close=OVERSIZE_CLOSE)


def native_case(ids: Ids, *, wire: bool = True) -> st.SearchStrategy[Case]:
    """Any native case; `wire` adds the ones that end the connection."""
    options = [
        framing_case(),
        broken_field(ids),
        huge_literal(ids),
        deep_json(ids),
        id_case(ids),
        refused_case(ids),
        surrogate_case(ids),
        key_flood(ids),
        many_bad_fields(ids),
        valid_native(ids),
    ]
    if wire:
        options.append(wire_case())
    return st.one_of(*options)


@st.composite
def native_examples(draw: st.DrawFn, max_cases: int = 6) -> list[Case]:
    """A few cases for one connection; a connection-ending case comes last, if at all."""
    ids = Ids(f"e{draw(st.integers(0, 10**6))}-")
    cases = draw(st.lists(native_case(ids, wire=False), min_size=1, max_size=max_cases))
    if draw(st.integers(0, 9)) == 0:
        cases.append(draw(wire_case()))
    return cases


# ---------------------------------------------------------------- running native cases


@attrs.define
class FuzzStats:
    """What a fuzz run tried and what it found."""

    inputs: Counter[str] = attrs.Factory(Counter)
    answers: Counter[str] = attrs.Factory(Counter)
    connections: int = 0
    tasks: int = 0  # DashScope tasks started
    failures: list[str] = attrs.Factory(list)

    def merge(self, other: FuzzStats) -> None:
        self.inputs.update(other.inputs)
        self.answers.update(other.answers)
        self.connections += other.connections
        self.tasks += other.tasks
        self.failures.extend(other.failures)


async def _until_sentinel(
    ws: WebSocketConnection, ledger: Ledger, conn: int, stamp: int
) -> tuple[list[dict[str, Any]], int | None]:
    """Messages up to the pong for `stamp`; and the close code if the connection ended."""
    seen: list[dict[str, Any]] = []
    with trio.fail_after(CASE_TIMEOUT):
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as exc:
                return seen, exc.reason.code if exc.reason else None
            decoded = ledger.observe(conn, message)
            if decoded is None:
                continue
            if decoded.get("type") == "pong" and decoded.get("timestamp") == stamp:
                return seen, None
            seen.append(decoded)


async def _drain(ws: WebSocketConnection, ledger: Ledger, conn: int) -> None:
    """Read until every request this connection started has its terminal message."""
    with trio.fail_after(CASE_TIMEOUT * 3):
        while ledger.pending(conn):
            ledger.observe(conn, await ws.get_message())


def judge(case: Case, seen: list[dict[str, Any]], closed: int | None, stats: FuzzStats) -> None:
    """Did the server answer `case` as the protocol says?"""
    errors = [m for m in seen if m.get("type") == "error"]
    got = {m["error"]["code"] for m in errors}
    for code in got:
        stats.answers[code] += 1
    unknown = got - ERROR_CODES
    if unknown:
        stats.failures.append(f"{case.label}: unknown error codes {sorted(unknown)}")
    if closed is not None:
        stats.answers[f"close {closed}"] += 1
        if closed not in case.close:
            stats.failures.append(f"{case.label}: connection closed with {closed}: {_show(case)}")
        return
    if case.close:
        stats.failures.append(
            f"{case.label}: expected a close {sorted(case.close)}, got {sorted(got)}"
        )
        return
    if case.expect is not None and not got & case.expect:
        answered = sorted(got) or "nothing"
        stats.failures.append(
            f"{case.label}: expected one of {sorted(case.expect)}, got {answered}: {_show(case)}"
        )
    reported = {path for m in errors for path in m["error"].get("details", {})}
    if case.fields - reported:
        missing = sorted(case.fields - reported)
        stats.failures.append(f"{case.label}: not reported: {missing}: {_show(case)}")
    biggest = max((len(dumps(m)) for m in errors), default=0)
    if case.max_answer is not None and biggest > case.max_answer:
        stats.failures.append(
            f"{case.label}: a {biggest}-byte answer, at most {case.max_answer}: {_show(case)}"
        )


def _show(case: Case) -> str:
    data = case.payload if case.raw is None else case.raw
    return repr(data[:160]) + (f"... ({len(data)} long)" if len(data) > 160 else "")


SENTINEL_BASE = 10**40  # sentinel ping timestamps: beyond any generated ping's


def started_by(case: Case) -> tuple[str, bool] | None:
    """(request id, is a text stream) a case's message starts, accepted or refused, read as
    the server reads it."""
    if case.maybe_starts is not None:
        return case.maybe_starts, False
    if case.raw is not None or not isinstance(case.payload, str) or case.duplicate:
        return None
    try:
        body = json.loads(case.payload)
    except (ValueError, RecursionError):
        return None
    if not isinstance(body, dict) or body.get("type") not in ("tts_request", "text_stream_start"):
        return None
    rid = body.get("request_id")
    return (rid, body["type"] == "text_stream_start") if isinstance(rid, str) else None


async def run_native_example(url: str, cases: list[Case], ledger: Ledger) -> FuzzStats:
    """One connection: open the anchor stream, send every case, then end every stream."""
    stats = FuzzStats(connections=1)
    conn = ledger.connection()
    streams = [ANCHOR]
    async with connect(url) as ws:
        ledger.started(conn, ANCHOR)
        anchor = {"type": "text_stream_start", "request_id": ANCHOR, "params": {"max_len": 2}}
        await ws.send_message(dumps(anchor))
        for index, case in enumerate(cases):
            stats.inputs[case.label] += 1
            start = started_by(case)
            if start is not None and ledger.started(conn, start[0]) is not None and start[1]:
                streams.append(start[0])
            with contextlib.suppress(ConnectionClosed, trio.BrokenResourceError):
                if case.raw is not None:
                    await ws._stream.send_all(case.raw)
                else:
                    await ws.send_message(case.payload)
            stamp = SENTINEL_BASE + index
            with contextlib.suppress(ConnectionClosed):
                await ws.send_message(dumps({"type": "ping", "timestamp": stamp}))
            seen, closed = await _until_sentinel(ws, ledger, conn, stamp)
            judge(case, seen, closed, stats)
            if case.maybe_starts is not None and (conn, case.maybe_starts) in ledger.current:
                ledger.forget(conn, case.maybe_starts)  # refused before its id was read
            if closed is not None:
                ledger.vanish(conn)
                return stats
        await ws.send_message(dumps({"type": "text_delta", "request_id": ANCHOR, "text": "Bye."}))
        for rid in streams:
            if (conn, rid) in ledger.current:
                await ws.send_message(dumps({"type": "text_stream_end", "request_id": rid}))
        await _drain(ws, ledger, conn)
    return stats


async def bystander(
    url: str, ledger: Ledger, text: str, *, expect_chunks: int | None = None
) -> str:
    """A well-behaved client on its own connection; returns its outcome."""
    conn = ledger.connection()
    async with connect(url) as ws:
        ledger.started(conn, "b")
        await ws.send_message(
            dumps({"type": "tts_request", "request_id": "b", "params": {"text": text}})
        )
        chunks = 0
        with trio.fail_after(CASE_TIMEOUT * 3):
            while ledger.pending(conn):
                message = await ws.get_message()
                if isinstance(message, bytes) and decode_frame(message).payload:
                    chunks += 1
                ledger.observe(conn, message)
    (record,) = [r for r in ledger.records if r.connection == conn]
    if expect_chunks is not None and record.outcome == "ok" and chunks != expect_chunks:
        return f"ok with {chunks} chunks, not {expect_chunks}"
    return record.outcome or "none"


# ---------------------------------------------------------------- DashScope cases


class DashCase:
    """One DashScope frame and what must answer it.

    `task_id`: the id its task-failed must carry; "" when not attributable, which fails
    the task running on the connection (`ends_running`); None for a valid message
    that must not fail. `starts`: a valid run-task, task-started must follow.
    """

    def __init__(
        self,
        label: str,
        payload: str | bytes = "",
        *,
        task_id: str | None = "",
        ends_running: bool = False,
        starts: bool = False,
        max_answer: int | None = None,
    ) -> None:
        self.max_answer = max_answer  # bytes its task-failed may take
        self.label = label
        self.payload = payload
        self.task_id = task_id
        self.ends_running = ends_running
        self.starts = starts

    def __repr__(self) -> str:
        shown = self.payload if len(self.payload) <= 600 else self.payload[:300] + "..."
        return f"DashCase({self.label!r}, {shown!r})"


def header(action: str, task_id: Any) -> dict[str, Any]:
    return {"action": action, "task_id": task_id, "streaming": "duplex"}


def run_task(task_id: Any, *, text: str = "", **parameters: Any) -> dict[str, Any]:
    return {
        "header": header("run-task", task_id),
        "payload": {
            "model": "cosyvoice-v2",
            "task_group": "audio",
            "task": "tts",
            "function": "SpeechSynthesizer",
            "input": {"text": text} if text else {},
            "parameters": {"voice": "default", "format": "pcm", "sample_rate": 16000, **parameters},
        },
    }


def continue_task(task_id: Any, text: str | None = None, **payload_input: Any) -> dict[str, Any]:
    data = {"text": text, **payload_input} if text is not None else payload_input
    return {"header": header("continue-task", task_id), "payload": {"input": data}}


def finish_task(task_id: Any, directive: str | None = None) -> dict[str, Any]:
    data = {"directive": directive} if directive else {}
    return {"header": header("finish-task", task_id), "payload": {"input": data}}


RUN_PARAMETERS: dict[str, tuple[str, float, float]] = {
    "voice": ("str", 0, 0),
    "format": ("str", 0, 0),
    "sample_rate": ("int", 0, 0),
    "volume": ("int", 0, 100),
    "rate": ("float", 0.5, 2.0),
    "pitch": ("float", 0.5, 2.0),
    "seed": ("int?", 0, 65535),
    "bit_rate": ("int?", 6, 510),
    "enable_ssml": ("bool", 0, 0),
}

SSML_BOMBS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
    "<speak>&lol2;</speak>",
    '<!DOCTYPE speak SYSTEM "file:///etc/passwd"><speak>x</speak>',
    "<speak>" + "<s>" * 40 + "deep" + "</s>" * 40 + "</speak>",
    "<speak>" + '<break time="10s"/>' * 300 + "</speak>",
    '<speak><break time="99999999999s"/></speak>',
    "<speak>" + "<sub alias='a'>b</sub>" * 2500 + "</speak>",
    "<speak><unknown>x</unknown></speak>",
    "<speak>unclosed",
    '<speak rate="2">x</speak>',
    "<speak>" + "Hi. " * 200 + "</speak>",
    '<speak>A<break time="' + "9" * 400 + 's"/></speak>',  # float() overflow: issue 15 #2
)


@st.composite
def dash_case(draw: st.DrawFn, ids: Ids, running: str | None) -> DashCase:
    """One DashScope mistake (or a valid message), given the task running, if any."""
    fresh = ids()
    kind = draw(
        st.sampled_from(
            [
                "not_json",
                "not_object",
                "no_header",
                "unknown_action",
                "bad_run",
                "bad_run_field",
                "stale_id",
                "second_run",
                "binary",
                "huge_number",
                "ssml",
                "bad_id",
                "surrogate",
                "key_flood",
                "valid",
            ]
        )
    )
    if kind == "not_json":
        return DashCase(kind, draw(not_json_text), ends_running=True)
    if kind == "not_object":
        return DashCase(kind, dumps(draw(not_object)), ends_running=True)
    if kind == "no_header":
        body: dict[str, Any] = {"payload": draw(json_values)}
        if draw(st.booleans()):
            body["header"] = draw(not_object)
        return DashCase(kind, dumps(body), ends_running=True)
    if kind == "unknown_action":
        action = draw(
            not_str
            | st.text(max_size=20).filter(
                lambda a: a not in ("run-task", "continue-task", "finish-task")
            )
        )
        return DashCase(
            kind, dumps({"header": header(action, fresh), "payload": {}}), task_id=fresh
        )
    if kind == "binary":
        return DashCase(kind, draw(st.binary(max_size=64)), ends_running=True)
    if kind == "bad_id":
        task_id = draw(st.just("") | st.text(min_size=129, max_size=200) | not_str)
        return DashCase(kind, dumps(run_task(task_id)), ends_running=True)
    if kind == "surrogate":
        lone = draw(lone_surrogates)
        where = draw(st.sampled_from(["task_id", "key", "voice", "text"]))
        if where == "task_id":
            return DashCase(kind, dumps(run_task(fresh + lone)), task_id=fresh + lone)
        if where == "text" and running is not None:  # echoed in sentence-begin, once
            text = "Hi " + lone + "."
            return DashCase(kind, dumps(continue_task(running, text)), task_id=running)
        parameter = {"cfg" + lone: 1} if where == "key" else {"voice": "v" + lone}
        return DashCase(kind, dumps(run_task(fresh, **parameter)), task_id=fresh)
    if kind == "key_flood":
        flood = {f"x{i}": 0 for i in range(draw(st.integers(200, 4000)))}
        return DashCase(kind, dumps(run_task(fresh, **flood)), task_id=fresh, max_answer=4096)
    if kind == "huge_number":
        digits = "9" * draw(st.integers(4301, 30_000))
        text = dumps(run_task(fresh, volume="__N__")).replace('"__N__"', digits)
        return DashCase(kind, text, ends_running=True)
    if running is not None and kind in ("stale_id", "second_run"):
        if kind == "second_run":
            return DashCase(kind, dumps(run_task(fresh)), task_id=fresh)
        verb = draw(st.sampled_from([continue_task(fresh, "Hi."), finish_task(fresh)]))
        return DashCase(kind, dumps(verb), task_id=fresh)
    if kind in ("stale_id", "second_run"):
        verb = draw(st.sampled_from([continue_task(fresh, "Hi."), finish_task(fresh)]))
        return DashCase("no_task", dumps(verb), task_id=fresh)
    if kind == "ssml" and running is not None:
        bomb = draw(st.sampled_from(SSML_BOMBS))
        return DashCase(kind, dumps(continue_task(running, bomb)), task_id=None)
    if kind == "valid" and running is not None:
        text = draw(st.sampled_from(SENTENCES))
        return DashCase(kind, dumps(continue_task(running, text)), task_id=None)
    if kind == "valid" or kind == "ssml":
        return DashCase(
            "valid", dumps(run_task(fresh, enable_ssml=True)), task_id=None, starts=True
        )
    if kind == "bad_run":
        payload = run_task(fresh)
        part = draw(
            st.sampled_from(["streaming", "task_group", "task", "function", "extra", "payload"])
        )
        if part == "streaming":
            payload["header"]["streaming"] = draw(
                st.text(max_size=8).filter(lambda s: s != "duplex") | not_str
            )
        elif part == "extra":
            payload["payload"]["parameters"]["hot_fix"] = draw(json_values)
        elif part == "payload":
            payload["payload"] = draw(not_object.filter(lambda v: v is not None))
        else:
            value = draw(st.text(max_size=8) | not_str)
            expected = {"task_group": "audio", "task": "tts", "function": "SpeechSynthesizer"}[part]
            if value == expected:
                value = expected + "x"
            payload["payload"][part] = value
        return DashCase(kind, dumps(payload), task_id=fresh)
    name = draw(st.sampled_from(sorted(RUN_PARAMETERS)))
    field_kind, low, high = RUN_PARAMETERS[name]
    if field_kind in ("int", "int?", "float") and high > low and draw(st.booleans()):
        value = draw(out_of_range(field_kind, low, high))
    elif name in ("voice", "format"):
        value = draw(
            st.text(max_size=10).filter(
                lambda v: v.lower() not in ("default", "pcm", "wav", "mp3", "opus")
            )
            | not_str
        )
    elif name == "sample_rate":
        value = draw(st.sampled_from([1, 11025, 96000, -1]) | wrong_value("int"))
    elif name in ("rate", "pitch"):
        # In range (0.75) is valid where the DSP extra is installed: only out of range here.
        value = draw(st.sampled_from([0.0, 0.49, 2.01, 10.0]) | wrong_value("float"))
    else:
        value = draw(wrong_value(field_kind))
    return DashCase("bad_run_field", dumps(run_task(fresh, **{name: value})), task_id=fresh)


@attrs.define
class DashLedger:
    """Per task id on one connection: started, terminal events, audio after the end."""

    started: set[str] = attrs.Factory(set)
    terminals: Counter[str] = attrs.Factory(Counter)
    ended: set[str] = attrs.Factory(set)
    outcomes: dict[str, str] = attrs.Factory(dict)  # "finished", or the task-failed code
    problems: list[str] = attrs.Factory(list)
    binary_frames: int = 0
    synthesis_events: int = 0

    def observe(self, message: str | bytes) -> dict[str, Any] | None:
        if isinstance(message, bytes):
            self.binary_frames += 1
            if self.binary_frames > self.synthesis_events:
                self.problems.append("binary frame without its sentence-synthesis event")
            return None
        event: dict[str, Any] = json.loads(message)
        head = event["header"]
        task_id, name = head["task_id"], head["event"]
        if name == "task-started":
            self.started.add(task_id)
        elif name in ("task-finished", "task-failed"):
            self.terminals[task_id] += 1
            self.outcomes[task_id] = "finished" if name == "task-finished" else head["error_code"]
            if name == "task-failed" and head.get("error_code") == "InternalError":
                self.problems.append(f"InternalError: {head.get('error_message')}")
            if task_id in self.ended and task_id in self.started:
                self.problems.append(f"second terminal event for task {task_id!r}: {name}")
            self.ended.add(task_id)
        elif name == "result-generated":
            if task_id in self.ended:
                self.problems.append(f"result-generated for task {task_id!r} after its end")
            if event["payload"]["output"]["type"] == "sentence-synthesis":
                self.synthesis_events += 1
        else:
            self.problems.append(f"unknown event {name!r}")
        return event


def sentinel(stamp: int) -> str:
    return dumps({"header": header("sentinel", f"sentinel-{stamp}"), "payload": {}})


async def _until_dash_sentinel(
    ws: WebSocketConnection, ledger: DashLedger, stamp: int
) -> tuple[list[dict[str, Any]], int | None]:
    seen: list[dict[str, Any]] = []
    with trio.fail_after(CASE_TIMEOUT):
        while True:
            try:
                message = await ws.get_message()
            except ConnectionClosed as exc:
                return seen, exc.reason.code if exc.reason else None
            event = ledger.observe(message)
            if event is None:
                continue
            if event["header"]["task_id"] == f"sentinel-{stamp}":
                return seen, None
            seen.append(event)


async def run_dash_example(url: str, draw_case: Any, n_cases: int, stats: FuzzStats) -> DashLedger:
    """One DashScope connection: cases drawn against the running task, then a clean task."""
    ids = Ids("t")
    ledger = DashLedger()
    running: str | None = None
    stats.connections += 1
    async with connect(url) as ws:
        for stamp in range(n_cases):
            if running is None and stamp % 2 == 0:
                running = ids()
                await ws.send_message(dumps(run_task(running, enable_ssml=True)))
            case: DashCase = draw_case(ids, running)
            stats.inputs[f"dashscope.{case.label}"] += 1
            await ws.send_message(case.payload)
            with contextlib.suppress(ConnectionClosed):
                await ws.send_message(sentinel(stamp))
            seen, closed = await _until_dash_sentinel(ws, ledger, stamp)
            failed = [e["header"]["task_id"] for e in seen if e["header"]["event"] == "task-failed"]
            biggest = max((len(dumps(e)) for e in seen), default=0)
            if case.max_answer is not None and biggest > case.max_answer:
                stats.failures.append(f"dashscope.{case.label}: a {biggest}-byte answer")
            for e in seen:
                if e["header"]["event"] == "task-failed":
                    stats.answers[f"dashscope.{e['header']['error_code']}"] += 1
            if closed is not None:
                stats.answers[f"dashscope.close {closed}"] += 1
                stats.failures.append(f"dashscope.{case.label}: closed with {closed}: {case!r}")
                return ledger
            if case.starts:
                running = _started_id(case)
                if running not in ledger.started and running not in failed:
                    stats.failures.append(
                        f"dashscope.{case.label}: no task-started: {case.payload[:160]!r}"
                    )
            expected = case.task_id
            if case.ends_running or expected == "":
                expected = running or ""
            if case.task_id is None and not case.ends_running:
                if running is not None and running in failed:
                    # An SSML document the server refuses fails the running task.
                    if case.label != "ssml":
                        stats.failures.append(
                            f"dashscope.{case.label}: running task failed: {seen}"
                        )
                    running = None
                continue
            if expected not in failed:
                stats.failures.append(
                    f"dashscope.{case.label}: expected task-failed for {expected!r}, got {failed}: "
                    f"{case!r}"
                )
            if running is not None and running in failed:
                running = None
        if running is not None:
            await ws.send_message(dumps(finish_task(running)))
            with trio.fail_after(CASE_TIMEOUT * 3):
                while ledger.terminals[running] == 0:
                    ledger.observe(await ws.get_message())
        final = ids()
        await ws.send_message(dumps(run_task(final, text="All good.")))
        await ws.send_message(dumps(finish_task(final)))
        with trio.fail_after(CASE_TIMEOUT * 3):
            while ledger.terminals[final] == 0:
                ledger.observe(await ws.get_message())
        if final not in ledger.started:
            stats.failures.append("dashscope: the connection no longer takes a task")
    stats.tasks += len(ledger.started)
    for task_id in ledger.started:
        if ledger.terminals[task_id] != 1:
            stats.failures.append(
                f"dashscope: task {task_id!r} had {ledger.terminals[task_id]} terminal events"
            )
    stats.failures.extend(f"dashscope: {p}" for p in ledger.problems)
    return ledger


def _started_id(case: DashCase) -> str:
    assert isinstance(case.payload, str)
    task_id: str = json.loads(case.payload)["header"]["task_id"]
    return task_id


async def dash_wire_case(url: str, stats: FuzzStats, *, utf8: bool) -> None:
    """Invalid UTF-8 or an oversized frame on the DashScope endpoint: a clean close."""
    stats.connections += 1
    label = "dashscope.invalid_utf8" if utf8 else "dashscope.oversized"
    stats.inputs[label] += 1
    async with RawWebSocket.open(url) as raw:
        if utf8:
            await raw.send_raw(client_frame(0x1, b'{"header":"\xff\xfe"}'))
        else:
            await raw.send_text(dumps(run_task("big", text="x" * (MAX_MESSAGE_BYTES + 10))))
        with trio.fail_after(CASE_TIMEOUT):
            while await raw.receive() is not None:
                pass
    code = raw.closed.code if raw.closed is not None else None
    stats.answers[f"{label} close {code}"] += 1
    if code not in (UTF8_CLOSE if utf8 else OVERSIZE_CLOSE):
        stats.failures.append(f"{label}: closed with {code}")


async def native_wire_case(url: str, stats: FuzzStats, *, utf8: bool) -> None:
    """Invalid UTF-8 or an oversized message on the native endpoint: a clean close."""
    stats.connections += 1
    label = "invalid_utf8" if utf8 else "oversized"
    stats.inputs[label] += 1
    async with RawWebSocket.open(url) as raw:
        if utf8:
            await raw.send_raw(client_frame(0x1, b'{"type":"ping","timestamp":1,"x":"\xc3\x28"}'))
        else:
            await raw.send_text("x" * (MAX_MESSAGE_BYTES + 1))
        with trio.fail_after(CASE_TIMEOUT):
            while await raw.receive() is not None:
                pass
    code = raw.closed.code if raw.closed is not None else None
    stats.answers[f"{label} close {code}"] += 1
    if code not in (UTF8_CLOSE if utf8 else OVERSIZE_CLOSE):
        stats.failures.append(f"{label}: closed with {code}")
