"""The `voxtrio` command line: help as the operator reads it, flags, early refusals."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest

from voxtrio._cli import build_parser, main
from voxtrio._config import OPTIONS, ConfigError, Settings, load_settings, settings_from_env


def serve_help() -> str:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    # One line per option, so a default can be matched next to its flag.
    return re.sub(r"\s+", " ", commands.choices["serve"].format_help())


def test_serve_help_never_shows_a_none_default() -> None:
    """An unset option says nothing rather than "(default: None)"."""
    assert "(default: None)" not in serve_help()


def test_compile_default_is_auto() -> None:
    """--compile's default reads "auto"; --optimize is gone (one flag)."""
    assert re.search(r"--compile \S+ [^[]*\(default: auto\) \[env TTS_COMPILE\]", serve_help())
    assert "--optimize" not in serve_help()


def test_metrics_host_default_is_shown_once() -> None:
    """--metrics-host shows its default (--host) exactly once."""
    entry = re.search(r"--metrics-host ADDRESS [^[]*\[env METRICS_HOST\]", serve_help())
    assert entry is not None
    assert entry.group(0).count("default") == 1
    assert "(default: --host)" in entry.group(0)


def subcommand_help(name: str) -> str:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return re.sub(r"\s+", " ", commands.choices[name].format_help())


def test_no_flag_shows_a_bare_value_placeholder() -> None:
    """Each flag's placeholder says what it takes (PORT, SECONDS, N...), never VALUE."""
    text = serve_help()
    assert "VALUE" not in text
    assert "--port PORT" in text
    assert "--write-timeout SECONDS" in text
    assert "--model HUB_ID_OR_DIR" in text


def test_serve_is_described_as_websocket_and_http_on_one_port() -> None:
    """`voxtrio --help` describes serve as the WebSocket + HTTP server; --port says so too."""
    assert "run the TTS server (WebSocket + HTTP on one port)" in build_parser().format_help()
    assert re.search(r"--port PORT port of the WebSocket and HTTP APIs", serve_help())


@pytest.mark.parametrize(
    ("argv", "join_steps"),
    [
        ([], True),
        (["--join-steps"], True),
        (["--no-join-steps"], False),
        (["--join-steps", "false"], False),
    ],
)
def test_boolean_settings_are_flags(argv: list[str], join_steps: bool) -> None:
    """--join-steps / --no-join-steps switch join steps; `--join-steps false` still works."""
    args = build_parser().parse_args(["serve", *argv])
    assert load_settings(args, {}).join_steps is join_steps


def serve_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_every_setting_is_declared_with_its_option() -> None:
    """Each Settings field carries its flag and help, so none is left without one."""
    assert [option.name for option in OPTIONS] == [field.name for field in attrs.fields(Settings)]


def test_a_switch_flag_overrides_its_environment_variable() -> None:
    """`--no-join-steps` turns join steps off over the environment's `true`."""
    settings = load_settings(serve_args("--no-join-steps"), {"TTS_JOIN_STEPS": "true"})
    assert settings.join_steps is False
    assert load_settings(serve_args("--allow-voice-upload"), {}).allow_voice_upload is True


def test_an_unset_switch_leaves_the_environment_value() -> None:
    """A switch not given on the command line does not override its variable."""
    assert load_settings(serve_args(), {"TTS_JOIN_STEPS": "false"}).join_steps is False


def test_a_bad_flag_value_names_the_flag() -> None:
    """An invalid value is refused with the flag it came from, over a valid variable."""
    with pytest.raises(ConfigError, match=r"invalid --port='70000': must be a port number"):
        load_settings(serve_args("--port", "70000"), {"TTS_PORT": "1"})
    with pytest.raises(ConfigError, match=r"invalid --join-steps='maybe': expected true/false"):
        load_settings(serve_args("--join-steps", "maybe"), {})


def test_tiny_model_help_describes_every_argument() -> None:
    """`voxtrio tiny-model --help` explains the directory and each flag."""
    text = subcommand_help("tiny-model")
    assert "voxtrio serve --model DIR" in text
    for fragment in (
        "where to write the checkpoint",
        "model family",
        "random seed for the weights",
    ):
        assert fragment in text


def test_model_that_is_no_directory_is_refused_before_loading(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`--model /nonexistent/dir` exits 2 with "no such directory", before loading anything."""
    missing = tmp_path / "nonexistent" / "dir"
    assert main(["serve", "--model", str(missing)]) == 2
    assert f"--model {missing}: no such directory" in capsys.readouterr().err


def test_model_that_cannot_be_loaded_is_an_error_with_a_hint(tmp_path: Path) -> None:
    """A directory that holds no checkpoint: an error-level event that says what to do."""
    empty = tmp_path / "empty"
    empty.mkdir()
    command = [sys.executable, "-m", "voxtrio", "serve", "--model", str(empty), "--device", "cpu"]
    done = subprocess.run(
        [*command, "--port", "0", "--metrics-port", "0", "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"},
        check=False,
    )
    assert done.returncode == 1
    events = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (failed,) = [e for e in events if e.get("event") == "model_load_failed"]
    assert failed["level"] == "error"
    assert "--model" in failed["hint"]
    assert "voxtrio tiny-model DIR" in failed["hint"]


def test_start_up_log_names_every_address(tmp_path: Path) -> None:
    """The `serving` line gives the WebSocket URL, the OpenAI route, the page and /health."""
    ready = tmp_path / "ready"
    command = [sys.executable, "-m", "voxtrio", "serve", "--engine", "synthetic"]
    flags = ["--port", "0", "--metrics-port", "0", "--log-format", "json"]
    server = subprocess.Popen(
        [*command, *flags, "--ready-file", str(ready)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        websocket, side = ready.read_text().split()
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=60)
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    (serving,) = [e for e in events if e.get("event") == "serving"]
    http = websocket.removeprefix("ws://").removesuffix("/tts")
    assert serving["websocket"] == websocket
    assert serving["openai"] == f"http://{http}/v1/audio/speech"
    assert serving["page"] == f"http://{http}/"
    assert serving["health"] == f"{side}/health"


def test_compile_setting_reads_off_auto_on() -> None:
    """TTS_COMPILE takes off, auto or on; anything else names the variable."""
    assert settings_from_env({}).compile == "auto"
    assert settings_from_env({"TTS_COMPILE": "on"}).compile == "on"
    with pytest.raises(ConfigError, match="TTS_COMPILE"):
        settings_from_env({"TTS_COMPILE": "fast"})


def test_old_optimize_variable_is_refused_with_its_replacement() -> None:
    """A leftover TTS_OPTIMIZE fails at start-up, naming TTS_COMPILE."""
    with pytest.raises(ConfigError, match="TTS_COMPILE"):
        settings_from_env({"TTS_OPTIMIZE": "true"})
