"""`--denoiser-path` / TTS_DENOISER_PATH: refused at start-up, never loaded and ignored."""

from __future__ import annotations

import pytest

from voxtrio._cli import main
from voxtrio._config import ConfigError, load_settings


def test_flag_stops_serve_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    """`serve --denoiser-path DIR` exits 2 before loading anything, saying denoising is off."""
    assert main(["serve", "--engine", "synthetic", "--denoiser-path", "/models/zip"]) == 2
    err = capsys.readouterr().err
    assert "--denoiser-path='/models/zip'" in err
    assert "prompt denoising is not supported" in err


def test_environment_variable_is_refused() -> None:
    """TTS_DENOISER_PATH in the environment is a ConfigError naming it."""
    with pytest.raises(ConfigError, match=r"TTS_DENOISER_PATH=.*prompt denoising"):
        load_settings(None, {"TTS_DENOISER_PATH": "/models/zip"})
