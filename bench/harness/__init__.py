"""The bench harness: what every scenario shares.

- `_procs`: the processes under test, `ServerProcess` (Trio) and `BaselineProcess`;
  `_served.serving()` is the same server for code that is not Trio. Both build one
  command line (`server_command`): there is no other way to start `voxtrio serve`
  in bench/.
- `_client`: the WebSocket load-generator client and its per-request timings.
- `_load`: closed/open-loop levels, idle connections, CPU/RSS monitoring.
- `_stats`: percentiles and summaries; `_report`: JSON/PNG/Markdown output.
- `_texts`: request texts and arrival schedules; `_baseline`: the engine called
  directly (run by `BaselineProcess` as `python -m bench.harness._baseline`).
"""

from ._procs import (
    BaselineProcess,
    ProcessFailed,
    ServerProcess,
    raise_open_files_limit,
    server_command,
)
from ._served import RunningServer, serving

__all__ = [
    "BaselineProcess",
    "ProcessFailed",
    "RunningServer",
    "ServerProcess",
    "raise_open_files_limit",
    "server_command",
    "serving",
]
