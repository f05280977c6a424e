"""Logging set-up: what an operator sees on stderr, and what is kept out of it."""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator

import pytest
import structlog

from voxtrio._logging import configure_logging


@pytest.fixture
def restored() -> Iterator[None]:
    """Put structlog and the root logger back as they were."""
    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.mark.usefixtures("restored")
def test_torch_weight_norm_deprecation_is_not_logged() -> None:
    """voxcpm's weight_norm FutureWarning (one per layer, every load) never reaches the log."""
    out = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("default")  # the test run's own filter turns warnings into errors
        configure_logging("INFO", "json", out)
        warnings.warn(
            "`torch.nn.utils.weight_norm` is deprecated in favor of "
            "`torch.nn.utils.parametrizations.weight_norm`.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("another deprecation", FutureWarning, stacklevel=1)
    text = out.getvalue()
    assert "weight_norm" not in text
    (logged,) = [json.loads(line) for line in text.splitlines()]
    assert logged["logger"] == "py.warnings"
    assert "another deprecation" in logged["event"]
