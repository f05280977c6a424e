"""The synthetic engine's server carries no model stack: no torch in memory."""

from __future__ import annotations

import json
import subprocess
import sys


def test_serving_the_synthetic_engine_imports_no_torch() -> None:
    """The app and the synthetic engine's batched instances load without torch (~180 MB
    resident), so a synthetic server's memory is the server's own."""
    probe = (
        "import json, sys\n"
        "import voxtrio._app, voxtrio._cli\n"
        "from voxtrio.speech._synthetic import SyntheticEngine\n"
        "from voxtrio.speech.batched._factory import batch_model_for\n"
        "batch_model_for(SyntheticEngine(), max_batch=4)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []
