"""Cluster fixtures: a shared voice library, the instances' flags, and the figures report."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FIGURES_ENV = "VOXTRIO_CLUSTER_FIGURES"


@pytest.fixture(scope="session")
def figures() -> Iterator[dict[str, Any]]:
    """What the cluster tests measured; printed and (with $VOXTRIO_CLUSTER_FIGURES) saved."""
    collected: dict[str, Any] = {}
    yield collected
    print("\ncluster figures:\n" + json.dumps(collected, indent=2))
    if path := os.environ.get(FIGURES_ENV):
        Path(path).write_text(json.dumps(collected, indent=2) + "\n")


@pytest.fixture
def instance_flags(tiny_model_dir: Path, tmp_path: Path) -> list[str]:
    voices = tmp_path / "voices"
    voices.mkdir()
    return [
        "--model", str(tiny_model_dir), "--device", "cpu", "--voices-dir", str(voices),
        "--allow-voice-upload", "--max-concurrent", "8", "--drain-timeout", "30",
    ]  # fmt: skip
