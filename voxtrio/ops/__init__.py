"""What operators run the server with: API keys, health, metrics and systemd.

`_auth` (API keys from the environment or a file, how a handshake presents one, a
constant-time check), `_health` (`/health` and `/ready` as pure functions of the
engine's state), `_metrics` (Prometheus metrics on a registry of their own),
`_http` (the small h11 server on the side port, 9090 by default, for `/metrics`,
`/health`, `/ready`), `_systemd` (sd_notify and the watchdog, without libsystemd),
`_memory` (freed heap returned to the system once a load has gone).

May import the layers below it (`voxtrio.speech`, `voxtrio.voices`, `voxtrio.audio`,
`voxtrio.protocol`, `voxtrio._config`) and Trio, h11, prometheus_client, attrs and
structlog; never `voxtrio.server`, `voxtrio.tools` or above (import-linter contracts
in pyproject.toml). It loads no model and imports no torch.
"""
