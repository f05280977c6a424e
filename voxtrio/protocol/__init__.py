"""The wire protocols, sans-IO: what clients and the server may say, and what it means.

Native protocol: messages and the one strict converter (`_messages`, `_converter`),
binary audio frames (`_frames`), error codes (`_errors`), limits and format facts
(`_limits`, `_formats`), one connection's message handling (`_connection_state`),
voice messages and voice rules (`_voice_messages`, `_voice_rules`). Text: sentence
splitting (`_sentences`) and SSML (`_ssml`). DashScope (CosyVoice) duplex protocol:
`_dashscope` (messages, parameters, events, actions, the task state machine).

Imports only the standard library, attrs, cattrs and defusedxml: no sockets, no
threads, no Trio, no codecs or models (import-linter contracts in pyproject.toml).
Every layer above may import it; it imports none of them.
"""
