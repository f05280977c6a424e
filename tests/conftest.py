"""Shared fixtures: real servers on 127.0.0.1 port 0, with a synthetic or a tiny VoxCPM engine."""

from __future__ import annotations

import os

os.environ.setdefault("TQDM_DISABLE", "1")

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from voxtrio._app import run_server
from voxtrio._config import Settings
from voxtrio.server._listener import ServerHandle
from voxtrio.speech._engine import EngineFactory
from voxtrio.speech._seeding import use_generator
from voxtrio.speech._synthetic import SyntheticEngine


@pytest.fixture(autouse=True)
def _no_leftover_thread_generator() -> Iterator[None]:
    """A test that runs an engine on the main thread leaves no per-thread RNG behind.

    Otherwise a later test's torch.manual_seed would not reach voxcpm's draws.
    """
    yield
    use_generator(None)


@pytest.fixture
async def start_server(nursery: trio.Nursery) -> Callable[..., Any]:
    """Start a real server in the test's nursery: `await start_server(engine, **settings)`."""

    async def start(engine_factory: EngineFactory | None = None, **overrides: Any) -> ServerHandle:
        settings = Settings(**{"port": 0, "metrics_port": 0, "engine": "synthetic", **overrides})
        factory = engine_factory or partial(SyntheticEngine, rtf=0.0)
        handle: ServerHandle = await nursery.start(
            partial(run_server, settings, engine_factory=factory)
        )
        return handle

    return start


@pytest.fixture
async def synthetic_server(start_server: Callable[..., Any]) -> ServerHandle:
    """A server on the synthetic engine: 48 kHz, 7680-sample chunks, one per 4 characters."""
    handle: ServerHandle = await start_server()
    return handle


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight VoxCPM2 checkpoint (never stops: length = voxcpm's cap)."""
    from voxtrio.tools._tiny_model import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("models") / "tiny-voxcpm2", arch="voxcpm2")
