"""voxtrio serving a model vs the same engine called directly; then the synthetic engine.

`python -m bench server [args]`, or `python -m bench [args]`: the default scenario.

By default: a tiny random-weight VoxCPM2 checkpoint served by voxtrio and called
directly in-process, side by side (closed loop at concurrency 1, 4, 16 and open
loop at 70 % of the engine's capacity), then the synthetic engine alone (real-time
streams up to 512, 1,000 idle connections). A few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import trio

from ..harness import _report
from ..harness._procs import raise_open_files_limit
from ..harness._texts import TEXT_SETS
from . import _compare, _synthetic

ENGINES = ("tiny", "model", "synthetic")


def _ints(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,4,16; got {text!r}")
    return values


def _rates(text: str) -> list[float | str]:
    if text.strip().lower() in {"", "0", "none", "off"}:
        return []
    rates: list[float | str] = []
    for part in text.split(","):
        part = part.strip()
        rates.append("auto" if part == "auto" else float(part))
    return rates


def _engines(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    for name in names:
        if name not in ENGINES:
            raise argparse.ArgumentTypeError(f"unknown engine {name!r}; choose from {ENGINES}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench [server]",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--engine",
        type=_engines,
        default=["tiny", "synthetic"],
        help="comma list of: tiny (a checkpoint from `voxtrio tiny-model`, see --arch/--size), "
        "model (an existing model directory, --model), synthetic (no model: the server "
        "alone). Default: tiny,synthetic",
    )
    p.add_argument("--model", help="model directory for --engine model")
    p.add_argument("--arch", choices=("voxcpm2", "voxcpm"), default="voxcpm2")
    p.add_argument(
        "--size",
        choices=("tiny", "full"),
        default="tiny",
        help="checkpoint size for --engine tiny: full = the released model's shapes (GPU)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (server + baseline)")
    p.add_argument("--workers", type=_ints, default=[1], help="model instance counts, e.g. 1,4")
    p.add_argument("--concurrency", type=_ints, default=[1, 4, 16], help="closed-loop levels")
    p.add_argument(
        "--rate",
        type=_rates,
        default=["auto"],
        help="open-loop request rates per second, comma list; auto = 70%% of the engine's "
        "capacity; none to skip (default: auto)",
    )
    p.add_argument(
        "--requests-per-level",
        type=int,
        default=12,
        help="requests per level and round (at least 2 x concurrency are sent)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds: each level alternates between server and engine this many times",
    )
    p.add_argument("--max-len", type=int, default=24, help="LM steps (chunks) per request")
    p.add_argument("--text-set", choices=sorted(TEXT_SETS), default="short")
    p.add_argument("--seed", type=int, default=0, help="first request seed (request i: seed+i)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads for server and baseline. Default: 1 for the tiny "
        "checkpoint (its ops take microseconds: a second OpenMP thread only spins, doubling "
        "CPU use on a 2-core machine), else torch's own choice, read from the baseline and "
        "given to the server",
    )
    p.add_argument(
        "--server-launcher",
        default=None,
        help="command that runs voxtrio's CLI in its own process instead of "
        "`python -m voxtrio` (experiments: e.g. a wrapper that sets sys.setswitchinterval)",
    )
    p.add_argument("--request-timeout", type=float, default=600.0)
    p.add_argument(
        "--streams",
        type=_ints,
        default=[32, 64, 128, 256, 384, 512],
        help="synthetic: concurrent real-time stream levels",
    )
    p.add_argument("--stream-chunks", type=int, default=50, help="synthetic: chunks per stream")
    p.add_argument("--synthetic-rtf", type=float, default=1.0)
    p.add_argument("--idle-connections", type=int, default=1000)
    p.add_argument(
        "--idle-streams", type=int, default=256, help="streams run while idle connections are held"
    )
    p.add_argument(
        "--settle-seconds",
        type=float,
        default=12.0,
        help="synthetic: after the idle connections close, read server RSS every 3 s this long "
        "(VOXTRIO_MEMORY_REPORTS=DIR in the environment: a server memory report at each point)",
    )
    p.add_argument(
        "--quiet-below",
        type=float,
        default=0.25,
        help="before each level, wait for other processes to use fewer cores than this ...",
    )
    p.add_argument(
        "--quiet-patience",
        type=float,
        default=10.0,
        help="... for at most this many seconds (0: never wait). Default 0.25 cores, 10 s",
    )
    p.add_argument(
        "--synthetic-replicas",
        action="store_true",
        help="synthetic: one instance of one slot per stream (--max-batch 1, no batching)",
    )
    p.add_argument(
        "--profile-server",
        metavar="DIR",
        default=None,
        help="synthetic: py-spy the server through each streams level (collapsed stacks per "
        "thread, DIR/server-N-streams.txt; needs py-spy and ptrace rights)",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `voxtrio serve` argument (repeat; e.g. --server-arg=--log-level=WARNING)",
    )
    p.add_argument("--out", type=Path, default=_report.ROOT / "bench" / "results")
    p.add_argument("--doc", type=Path, default=None, help="markdown file to append tables to")
    p.add_argument("--no-doc", action="store_true", help="do not append to docs/BENCHMARKS.md")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a short run (1 round; concurrency 1,4; streams 32,256) that writes no doc "
        "table unless --doc is given",
    )
    return p


def apply_quick(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """--quick shortens whatever was not set explicitly."""
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    quick = {
        "--concurrency": ("concurrency", [1, 4]),
        "--requests-per-level": ("requests_per_level", 8),
        "--repeat": ("repeat", 1),
        "--streams": ("streams", [32, 256]),
        "--stream-chunks": ("stream_chunks", 25),
    }
    for flag, (name, value) in quick.items():
        if flag not in given:
            setattr(args, name, value)


def ensure_checkpoint(arch: str, size: str) -> Path:
    """A never-stopping random-weight checkpoint under .tiny/ (built once, then reused)."""
    directory = _report.ROOT / ".tiny" / f"bench-{arch}-{size}"
    config = directory / "config.json"
    if config.exists():
        record = json.loads(config.read_text()).get("voxtrio_tiny", {})
        if (record.get("arch"), record.get("size"), record.get("stop")) == (arch, size, "never"):
            return directory
    print(f"building a {size} {arch} checkpoint in {directory} ...", flush=True)
    subprocess.run(
        [
            *(sys.executable, "-m", "voxtrio", "tiny-model", str(directory)),
            *("--arch", arch, "--size", size, "--stop", "never", "--force"),
        ],
        check=True,
    )
    return directory


def _torch_threads(args: argparse.Namespace, engine: str) -> int | None:
    if args.torch_threads is not None:
        return int(args.torch_threads)
    return 1 if engine == "tiny" and args.size == "tiny" else None


def _launcher(args: argparse.Namespace) -> tuple[str, ...]:
    if args.server_launcher:
        return tuple(shlex.split(args.server_launcher))
    return (sys.executable, "-m", "voxtrio")


def _meta(args: argparse.Namespace, argv: Sequence[str], title: str) -> dict[str, Any]:
    return {
        "schema": 1,
        "title": title,
        "command": _report.command_line(argv),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "machine": _report.machine(),
        "versions": _report.versions(),
        "commit": _report.commit(),
    }


async def _run_compare(
    args: argparse.Namespace, argv: Sequence[str], engine: str
) -> tuple[str, dict[str, Any]]:
    if engine == "tiny":
        model_dir = ensure_checkpoint(args.arch, args.size)
        arch_name = {"voxcpm2": "VoxCPM2", "voxcpm": "VoxCPM-0.5B"}[args.arch]
        what = f"{args.size} {arch_name} random-weight checkpoint"
        label = f"{args.size}-{args.arch}"
    else:
        if not args.model:
            raise SystemExit("--engine model needs --model DIR")
        model_dir = Path(args.model)
        what = f"model {model_dir.name}"
        label = f"model-{model_dir.name}"
    options = _compare.CompareOptions(
        model_dir=str(model_dir),
        device=args.device,
        workers=args.workers,
        concurrency=args.concurrency,
        rates=args.rate,
        requests_per_level=args.requests_per_level,
        repeat=args.repeat,
        max_len=args.max_len,
        text_set=args.text_set,
        seed=args.seed,
        torch_threads=_torch_threads(args, engine),
        request_timeout=args.request_timeout,
        server_args=args.server_arg,
        server_launcher=_launcher(args),
        quiet_below=args.quiet_below,
        quiet_patience=args.quiet_patience,
    )
    print(f"{what}: voxtrio vs the engine direct", flush=True)
    figures = await _compare.compare(options)
    device = figures["gpu"] or figures["device"]
    title = f"{what} on {device}, {dt.date.today().isoformat()}"
    result = {
        **_meta(args, argv, title + (" (quick)" if args.quick else "")),
        "settings": {
            "model_dir": str(model_dir),
            "engine": engine,
            "arch": args.arch if engine == "tiny" else None,
            "size": args.size if engine == "tiny" else None,
            "workers": args.workers,
            "concurrency": args.concurrency,
            "rates": args.rate,
            "requests_per_level": args.requests_per_level,
            "repeat": args.repeat,
            "max_len": args.max_len,
            "text_set": args.text_set,
            "seed": args.seed,
            "torch_threads": options.torch_threads,
            "quiet_gate": {"below_cores": args.quiet_below, "patience_s": args.quiet_patience},
            "server_launcher": list(options.server_launcher),
            "server_args": [*_compare.server_arguments(options, args.workers[0])],
        },
        **figures,
    }
    result["targets"] = _compare.targets(result)
    return label, result


async def _run_synthetic(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    options = _synthetic.SyntheticOptions(
        streams=args.streams,
        stream_chunks=args.stream_chunks,
        rtf=args.synthetic_rtf,
        idle_connections=args.idle_connections,
        idle_streams=args.idle_streams,
        request_timeout=args.request_timeout,
        server_args=args.server_arg,
        server_launcher=_launcher(args),
        quiet_below=args.quiet_below,
        quiet_patience=args.quiet_patience,
        batched=not args.synthetic_replicas,
        profile_dir=args.profile_server,
        settle_seconds=args.settle_seconds,
    )
    print("synthetic engine: the server alone", flush=True)
    figures = await _synthetic.synthetic(options)
    title = f"synthetic engine (server alone), {dt.date.today().isoformat()}"
    result = {
        **_meta(args, argv, title + (" (quick)" if args.quick else "")),
        "settings": {
            "synthetic_rtf": options.rtf,
            "chunk_ms": options.chunk_seconds * 1000,
            "stream_chunks": options.stream_chunks,
            "streams": list(options.streams),
            "idle_connections": options.idle_connections,
            "idle_streams": options.idle_streams,
            "quiet_gate": {"below_cores": args.quiet_below, "patience_s": args.quiet_patience},
            "server_launcher": list(options.server_launcher),
            "server_args": _synthetic.server_arguments(options),
        },
        **figures,
    }
    result["targets"] = _synthetic.targets(result, options)
    return result


def _save(args: argparse.Namespace, label: str, result: dict[str, Any], doc: Path | None) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    path = _report.result_path(args.out, label + ("-quick" if args.quick else ""))
    png: Path | None = path.with_suffix(".png")
    try:
        plot = _report.plot_synthetic if label == "synthetic" else _report.plot_engine
        plot(result, png)
    except ImportError as exc:  # matplotlib is optional
        print(f"no plot: {exc}", file=sys.stderr)
        png = None
    _report.write_json(path, result)
    render = _report.synthetic_markdown if label == "synthetic" else _report.engine_markdown
    base = (doc or _report.ROOT / "docs" / "BENCHMARKS.md").parent
    section = render(
        result,
        json_name=os.path.relpath(path, base),
        png_name=os.path.relpath(png, base) if png else None,
    )
    print()
    print(section)
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    if doc is not None:
        _report.append_to_doc(doc, section)
        print(f"appended to {doc}")


async def main_async(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.no_doc:
        doc = None
    elif args.doc is not None:
        doc = args.doc
    else:
        doc = None if args.quick else _report.ROOT / "docs" / "BENCHMARKS.md"
    for engine in args.engine:
        if engine == "synthetic":
            result = await _run_synthetic(args, argv)
            label = "synthetic"
        else:
            label, result = await _run_compare(args, argv, engine)
        _save(args, label, result, doc)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.quick:
        apply_quick(args, argv)
    raise_open_files_limit()
    return trio.run(partial(main_async, args, argv))
