"""Declared field limits, checked while the one converter structures each field.

A field declares its limits in attrs metadata: ``range`` (low, high), ``choices`` (a
collection) or ``length`` (low, high) of a string. The structure hook of every attrs
class wraps such a field's own hook with the check, so a range or length error is one
of the field errors cattrs collects for the message, reported with the type and
unknown-key errors of the other fields (docs/PROTOCOL.md section 2), not after them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override


class LimitError(ValueError):
    """A value of the right type outside its field's declared limits."""


def _limit_problem(metadata: Any, value: Any) -> str | None:
    """What is wrong with a structured value against its field's `range`/`choices`/`length`."""
    if value is None:
        return None
    if (bounds := metadata.get("range")) is not None:
        low, high = bounds
        if not low <= value <= high:
            return f"must be between {low} and {high}, got {value}"
    if (choices := metadata.get("choices")) is not None and value not in choices:
        return f"must be one of {', '.join(map(str, choices))}, got {value}"
    if (length := metadata.get("length")) is not None:
        low, high = length
        if len(value) < low:
            return "must not be empty" if low == 1 else f"needs {low}+ characters"
        if len(value) > high:
            return f"too long: {len(value)} characters, at most {high}"
    return None


def _limited(conv: cattrs.Converter, field: attrs.Attribute[Any]) -> Callable[[Any, Any], Any]:
    structure = conv.get_structure_hook(field.type)

    def hook(value: Any, field_type: Any) -> Any:
        result = structure(value, field_type)
        if (problem := _limit_problem(field.metadata, result)) is not None:
            raise LimitError(problem)
        return result

    return hook


def _attrs_with_limits(conv: cattrs.Converter) -> Callable[[type[Any]], Any]:
    """Structure attrs classes with each field's limits checked as that field is built,
    so range and length errors join type and unknown-key errors in one report."""

    def factory(cls: type[Any]) -> Any:
        fields = attrs.fields(attrs.resolve_types(cls))
        overrides: dict[str, Any] = {
            f.name: override(struct_hook=_limited(conv, f))
            for f in fields
            if {"range", "choices", "length"} & f.metadata.keys()
        }
        return make_dict_structure_fn(cls, conv, **overrides)

    return factory


def install_limit_hooks(conv: cattrs.Converter) -> None:
    """Make `conv` check declared limits as it structures any attrs class."""
    conv.register_structure_hook_factory(attrs.has, _attrs_with_limits(conv))
