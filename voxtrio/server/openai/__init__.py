"""OpenAI-compatible HTTP API (`/v1/audio/speech`, `/v1/models`, `/v1/audio/voices`).

Plain HTTP on the WebSocket port: `_routes` (routing, auth, the browser page),
`_exchange` (one HTTP/1.1 request and response over h11), `_request` (the speech
request body, parsed by the protocol's converter), `_speech` (one speech request
through the same speech path as `/tts`), `_upload` (voice registration from a
multipart form), `_voices` (OpenAI's voice names), `_errors` (OpenAI's error bodies).

Part of the server layer: may import `voxtrio.server`'s own modules and the layers
below it (`voxtrio.ops`, `voxtrio.speech`, `voxtrio.voices`, `voxtrio.audio`,
`voxtrio.protocol`, `voxtrio._config`), plus Trio, h11 and python-multipart; never
`voxtrio.tools`, `voxtrio._app` or the CLI (import-linter contracts in pyproject.toml).
"""
