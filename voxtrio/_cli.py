"""`voxtrio serve | say | tiny-model`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from voxtrio import __version__


def _serve(args: argparse.Namespace) -> int:
    import structlog
    import trio

    from voxtrio._app import check_settings_exposure, serve_until_signalled
    from voxtrio._config import ConfigError, load_settings
    from voxtrio._logging import configure_logging
    from voxtrio.ops._auth import KeyStore
    from voxtrio.speech._pool import EngineLoadError

    try:
        settings = load_settings(args, os.environ)
        _check_model_directory(settings.engine, settings.model)
        # Keys come from the environment or a file, never a flag (`ps` shows flags).
        keys = KeyStore.from_sources(
            env_value=os.environ.get("TTS_API_KEYS"), key_file=settings.api_key_file
        )
        check_settings_exposure(settings, keys)
    except ConfigError as exc:
        print(f"voxtrio serve: {exc}", file=sys.stderr)
        return 2
    os.environ.setdefault("TQDM_DISABLE", "1")
    configure_logging(settings.log_level, settings.log_format, capture_stderr=True)
    code = 1
    # Errors leave trio.run inside exception groups (one per nursery they crossed).
    try:
        code = trio.run(serve_until_signalled, settings, keys)
    except* EngineLoadError as group:
        structlog.get_logger("voxtrio").error(
            "model_load_failed", model=settings.model, error=str(_first(group)), hint=LOAD_HINT
        )
    except* OSError as group:
        print(f"voxtrio serve: cannot listen: {_first(group)}", file=sys.stderr)
    return code


LOAD_HINT = (
    "--model takes a hub id (which needs the hub reachable) or a local checkpoint "
    "directory; offline, `voxtrio tiny-model DIR` writes a random-weight one to serve"
)


def _check_model_directory(engine: str, model: str) -> None:
    """A --model that names a path must be an existing directory (not a hub id then)."""
    from voxtrio._config import ConfigError

    # Hub ids are `owner/name`; more separators, or a path-like start, make it a path.
    looks_like_path = model.startswith(("/", ".", "~")) or model.count("/") > 1
    path = Path(model).expanduser()
    if engine != "voxcpm" or not (looks_like_path or path.exists()) or path.is_dir():
        return
    if path.exists():
        raise ConfigError(f"--model {model}: not a directory (give the checkpoint's directory)")
    raise ConfigError(f"--model {model}: no such directory")


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _say(args: argparse.Namespace) -> int:
    from voxtrio.tools._say import run_say

    return run_say(args)


def build_parser() -> argparse.ArgumentParser:
    from voxtrio._config import add_arguments

    parser = argparse.ArgumentParser(prog="voxtrio", description=__doc__)
    parser.add_argument("--version", action="version", version=f"voxtrio {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the TTS server (WebSocket + HTTP on one port)",
        description=(
            "Run the TTS server: the native and DashScope WebSocket APIs, the OpenAI-"
            "compatible HTTP API and the browser page on --port; /health, /ready and "
            "/metrics on --metrics-port. Flags override the environment variables shown."
        ),
    )
    add_arguments(serve)
    serve.set_defaults(func=_serve)

    say = commands.add_parser("say", help="speak a text through a running server into a WAV")
    from voxtrio.tools._say import add_say_arguments

    add_say_arguments(say)
    say.set_defaults(func=_say)

    tiny = commands.add_parser(
        "tiny-model",
        help="write a random-weight VoxCPM checkpoint (offline tests, GPU speed runs)",
        description=(
            "Write a VoxCPM checkpoint with random weights that voxcpm's own loader reads: "
            "serve it with `voxtrio serve --model DIR` when the model hub is out of reach. "
            "It speaks noise, not words."
        ),
    )
    from voxtrio.tools._tiny_cli import add_tiny_model_arguments, run_tiny_model

    add_tiny_model_arguments(tiny)
    tiny.set_defaults(func=run_tiny_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
