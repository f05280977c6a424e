"""The wire protocols, sans-IO: what clients and the server may say, and what it means.

Native protocol: messages and the one strict converter (`_messages`, `_converter`),
binary audio frames (`_frames`), error codes (`_errors`), limits and format facts
(`_limits`, `_formats`), one connection's message handling (`_connection_state`),
voice messages and voice rules (`_voice_messages`, `_voice_rules`). Text: sentence
splitting (`_sentences`) and SSML (`_ssml`). DashScope (CosyVoice) duplex protocol:
`_dashscope` (messages, parameters, events, actions, the task state machine).
The client side, shared by the Trio and asyncio clients (`voxtrio.client`,
`voxtrio.aioclient`), which add only the I/O: their error classes
(`_client_errors`), the server's messages and frames decoded (`_client_incoming`),
each request's checks and the id table (`_client_requests`), what a client sends
(`_client_outgoing`) and one connection's state (`_client_connection`).

Imports only the standard library, attrs, cattrs and defusedxml: no sockets, no
threads, no Trio or WebSocket library, no codecs or models (import-linter contracts
in pyproject.toml).
Every layer above may import it; it imports none of them.
"""
