"""The protocol layer is sans-IO at run time too: what importing all of it loads."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import voxtrio.protocol

# attrs/cattrs (and what they import), defusedxml, voxtrio itself.
ALLOWED = {"attr", "attrs", "cattrs", "typing_extensions", "defusedxml", "voxtrio"}


def test_importing_every_protocol_module_loads_only_stdlib_attrs_cattrs_defusedxml() -> None:
    """Every voxtrio.protocol module, imported in a fresh interpreter, pulls in no package but
    attrs, cattrs and defusedxml, and no voxtrio layer but protocol."""
    modules = [m.name for m in pkgutil.iter_modules(voxtrio.protocol.__path__, "voxtrio.protocol.")]
    probe = (
        "import importlib, json, sys\n"
        "before = set(sys.modules)\n"  # what the interpreter's own set-up loaded
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "new = set(sys.modules) - before\n"
        "tops = {m.split('.')[0] for m in new} - set(sys.stdlib_module_names)\n"
        "layers = {m for m in sys.modules if m.startswith('voxtrio.')\n"
        "          and not m.startswith('voxtrio.protocol')}\n"
        "print(json.dumps([sorted(tops), sorted(layers)]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    tops, layers = json.loads(out.stdout)
    assert set(tops) - ALLOWED == set()
    assert layers == []
