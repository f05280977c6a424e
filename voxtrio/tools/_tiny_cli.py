"""`voxtrio tiny-model`: its arguments and what it runs."""

from __future__ import annotations

import argparse
import sys

from voxtrio.tools._tiny_config import ARCHITECTURES, SIZES

#: The stop policies, as `StopPolicy` spells them (not imported: that pulls in torch).
STOP_POLICIES = ("never", "always", "random")


def add_tiny_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare `tiny-model`'s arguments, each with a description for `--help`."""
    parser.add_argument(
        "directory",
        help="where to write the checkpoint (created; must be empty or absent unless --force)",
    )
    parser.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        default="voxcpm2",
        help="model family: voxcpm2 (48 kHz out) or voxcpm (VoxCPM 1.x / 0.5B, 16 kHz) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="tiny",
        help="tiny (under 1 MB, CPU tests) or full (the released model's shapes, random "
        "weights, bfloat16) (default: %(default)s)",
    )
    parser.add_argument(
        "--stop",
        choices=STOP_POLICIES,
        default="never",
        help="stop head: never (length = voxcpm's cap, deterministic), always (stop as soon "
        "as voxcpm allows), random (left to the weights) (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        metavar="N",
        help="random seed for the weights; the same arguments give byte-identical files "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace an existing checkpoint directory (one that holds a config.json)",
    )


def run_tiny_model(args: argparse.Namespace) -> int:
    """Build the checkpoint `args` describe; print its path, or the reason it was refused."""
    from voxtrio.tools._tiny_model import build_checkpoint

    try:
        path = build_checkpoint(
            args.directory,
            arch=args.arch,
            size=args.size,
            stop=args.stop,
            seed=args.seed,
            force=args.force,
        )
    except (FileExistsError, ValueError) as exc:
        print(f"voxtrio tiny-model: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
