"""The one cattrs converter of the protocol, and strict structuring with every error at once.

Parsing is strict (no "7" for 7, no 1 for true, no lone surrogates in strings), refuses
unknown keys (typos), checks every range declared on a field (:func:`field_range`,
:func:`field_length`, ``choices``) while it structures that field (`_field_limits`), and
reports every bad field at once as
`details: {"params.cfg_value": "must be between 0.1 and 10.0", ...}`: type, range and
unknown-key errors together, at most MAX_REPORTED_KEYS unknown keys per object.
"""

from __future__ import annotations

import heapq
import math
from typing import Any, Final, TypeVar, get_args

import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.literals import is_literal

from voxtrio.protocol._errors import ErrorCode, ProtocolError
from voxtrio.protocol._field_limits import LimitError, install_limit_hooks
from voxtrio.protocol._json import lone_surrogate_problem, shown
from voxtrio.protocol._voice_rules import VoiceError, VoiceId, check_voice_id

T = TypeVar("T")

# Unknown keys named per object; the rest are counted. Bounds the work and the reply.
MAX_REPORTED_KEYS: Final = 10
MAX_PROBLEM_CHARS: Final = 200


def field_range(low: float, high: float) -> dict[str, Any]:
    """attrs field metadata: the value must lie in [low, high]."""
    return {"range": (low, high)}


def field_length(low: int, high: int) -> dict[str, Any]:
    """attrs field metadata: the string must have low..high characters."""
    return {"length": (low, high)}


class _FieldError(ValueError):
    pass


def _strict_int(value: Any, _: type) -> int:
    # bool is an int subclass; a client that sends true for a count has a bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _FieldError(f"must be an integer, got {json_type(value)}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _FieldError(f"must be a number, got {json_type(value)}")
    if not math.isfinite(value):
        raise _FieldError("must be a finite number")
    return float(value)


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise _FieldError(f"must be a string, got {json_type(value)}")
    # The one check every inbound string passes, on both endpoints.
    if (problem := lone_surrogate_problem(value)) is not None:
        raise _FieldError(problem)
    return value


def _strict_bool(value: Any, _: type) -> bool:
    if not isinstance(value, bool):
        raise _FieldError(f"must be a boolean, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int() | float():
            return "number"
        case str():
            return "string"
        case list():
            return "array"
        case dict():
            return "object"
    return type(value).__name__


def _strict_literal(cls: Any) -> Any:
    allowed = get_args(cls)

    def structure(value: Any, _: type) -> Any:
        if value not in allowed or isinstance(value, bool) != isinstance(allowed[0], bool):
            choices = ", ".join(repr(a) for a in allowed)
            raise _FieldError(f"must be one of {choices}, got {value!r}"[:200])
        return value

    return structure


def _structure_voice_id(value: Any, _: type) -> VoiceId:
    # A ValueError becomes that field's error, reported with every other bad field.
    if not isinstance(value, str):
        raise ValueError("must be a string")
    try:
        return VoiceId(check_voice_id(value))
    except VoiceError as exc:
        raise ValueError(exc.message) from None


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    install_limit_hooks(conv)
    conv.register_structure_hook_factory(is_literal, _strict_literal)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(VoiceId, _structure_voice_id)
    return conv


converter: Final = _make_converter()


def _collect_errors(exc: BaseException, path: str, errors: dict[str, str]) -> None:
    """Flatten a cattrs error tree into {"a.b.c": "what is wrong"}."""
    if isinstance(exc, ClassValidationError):
        with_notes, without_notes = exc.group_exceptions()
        for sub, note in with_notes:
            _collect_errors(sub, f"{path}.{note.name}" if path else str(note.name), errors)
        for sub in without_notes:
            _collect_errors(sub, path, errors)
    elif isinstance(exc, IterableValidationError):
        indexed, unindexed = exc.group_exceptions()
        for sub, index_note in indexed:
            _collect_errors(sub, f"{path}[{index_note.index}]", errors)
        for sub in unindexed:
            _collect_errors(sub, path, errors)
    elif isinstance(exc, ForbiddenExtraKeysError):
        # A message may carry ~10^5 unknown keys: name a few, count the rest.
        named = heapq.nsmallest(MAX_REPORTED_KEYS, exc.extra_fields)
        for key in named:
            errors[f"{path}.{shown(key)}" if path else shown(key)] = "unknown key"
        if (more := len(exc.extra_fields) - len(named)) > 0:
            errors[f"{path}.*" if path else "*"] = f"and {more} more unknown keys"
    elif isinstance(exc, KeyError):
        errors[path] = "is required"
    elif isinstance(exc, _FieldError | LimitError):
        errors[path] = str(exc)[:MAX_PROBLEM_CHARS]
    elif isinstance(exc, ExceptionGroup):
        for sub in exc.exceptions:
            _collect_errors(sub, path, errors)
    else:
        # cattrs' own checks (Literal values, unions, non-dict where an object goes).
        errors[path] = _describe_cattrs_error(exc)


def _describe_cattrs_error(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, AttributeError | TypeError):
        return "has the wrong type"
    return shown(text, MAX_PROBLEM_CHARS) if text else type(exc).__name__


def structure_message(cls: type[T], payload: Any, *, request_id: str | None) -> T:
    """Build `cls` from decoded JSON, or raise INVALID_PARAMS naming every bad field."""
    errors: dict[str, str] = {}
    if not isinstance(payload, dict):
        raise ProtocolError(ErrorCode.INVALID_PARAMS, "message must be a JSON object")
    try:
        return converter.structure(payload, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        _collect_errors(exc, "", errors)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        _collect_errors(exc, "", errors)
    # By path; a count of further unknown keys ("params.*") after the keys it follows.
    details = dict(sorted(errors.items(), key=lambda item: (item[0].endswith("*"), item[0])))
    summary = "; ".join(f"{field}: {problem}" for field, problem in details.items())
    raise ProtocolError(
        ErrorCode.INVALID_PARAMS,
        f"invalid {cls.__name__} message: {summary}",
        details=details,
        request_id=request_id,
    )
