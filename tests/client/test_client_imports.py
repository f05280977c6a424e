"""What `import voxtrio.client` costs: the protocol and Trio, never the server's stack."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "voxcpm", "av", "soxr", "soundfile", "numpy", "librosa")


def test_importing_the_client_loads_no_model_or_codec_stack() -> None:
    """A fresh interpreter that imports voxtrio.client has none of torch, voxcpm, av, soxr,
    soundfile, numpy or librosa in sys.modules, nor the server-side voxtrio layers."""
    probe = (
        "import json, sys, voxtrio.client; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{HEAVY!r} or m.startswith(('voxtrio.server', 'voxtrio.speech', "
        "'voxtrio.voices', 'voxtrio.audio', 'voxtrio.ops')))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []


def test_both_clients_raise_the_same_error_classes() -> None:
    """`except voxtrio.client.X` catches what the asyncio client raises, and the reverse."""
    import voxtrio.aioclient
    import voxtrio.client

    for name in (
        "VoxtrioClientError",
        "ConnectError",
        "ConnectionLost",
        "ProtocolViolation",
        "ResponseTimeout",
        "SynthesisError",
        "AudioChunk",
        "DEFAULT_URL",
    ):
        assert getattr(voxtrio.client, name) is getattr(voxtrio.aioclient, name), name
