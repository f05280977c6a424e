"""Bench scenarios: one module each, run as `python -m bench <name> [args]`.

A scenario is a public module here with a docstring (its first line is the
summary `python -m bench --help` lists) and `main(argv: list[str])`. Modules whose
name starts with `_` are parts of a scenario, not scenarios. Servers come from
`bench.harness` only.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from types import ModuleType

DEFAULT = "server"


def names() -> list[str]:
    """Every scenario, sorted (the default, `server`, among them)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def load(name: str) -> ModuleType:
    """The scenario's module (imported only when it runs: some need torch or espeak)."""
    if name not in names():
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}")


def entry(name: str) -> Callable[[list[str]], object]:
    main: Callable[[list[str]], object] = load(name).main
    return main


def summary(name: str) -> str:
    """The first line of the scenario's docstring, read without importing it."""
    import ast
    from pathlib import Path

    source = (Path(__path__[0]) / f"{name}.py").read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source)) or ""
    return doc.splitlines()[0] if doc else ""
