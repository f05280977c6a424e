"""The Trio I/O layer: one port that speaks WebSocket (native and DashScope) and HTTP.

`_listener` accepts connections, tells a WebSocket handshake from plain HTTP
(`_sniff`), routes by path and gives each connection an error boundary, and drains
on shutdown. Native protocol (`/tts`): `_native` (the endpoint, a child task per
request), `_request` (one request from admission to its one terminal message),
`_text_input` (one text or sentences cut from text deltas), `_native_sink` (speech
events as frames and `progress`), `_native_errors` (speech errors become protocol
errors, in one place). DashScope duplex (`/api-ws/v1/inference`): `_dashscope`,
`_dashscope_task`, `_dashscope_audio`. Shared WebSocket plumbing: `_endpoint` (the
lifecycle every endpoint shares), `_websocket` (repairs to trio-websocket),
`_writer` (serialised writes), `_keepalive` (ping/pong deadlines), `_activity` (when
a peer last showed life; write deadlines that count its progress). Shared by both
protocols: `_pending` (connections still sending their request), `_origin` (browser
Origin and Host checks). `openai/` is the OpenAI-compatible HTTP API; `web/` the
browser page's static files.

May import the layers below it: `voxtrio.ops`, `voxtrio.speech`, `voxtrio.voices`,
`voxtrio.audio`, `voxtrio.protocol`, `voxtrio._config`, plus Trio, trio-websocket,
wsproto, h11, python-multipart, attrs and structlog. It never imports torch or
voxcpm itself (the engines behind `voxtrio.speech` do), nor `voxtrio.tools`,
`voxtrio._app` or the CLI (import-linter contracts in pyproject.toml).
"""
