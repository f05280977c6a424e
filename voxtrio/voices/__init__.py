"""The voice library: registered cloning prompts and the voice fields of a request.

`_store` (VoiceStore: the index of voices, in memory and on disk), `_disk` (the
on-disk layout, atomic writes, crash recovery, the shared-directory lock),
`_prompts` (building voxcpm prompt caches and their LRU), `_voice` (the Voice
record), `_audio` (decoding and checking prompt audio), `_fetch` (the SSRF-safe
prompt_wav_url fetcher), `_service` (the Trio side: voice_* messages, a request's
voice fields).

May import `voxtrio.protocol` (the rules, limits and messages it enforces) and
`voxtrio._config`, plus numpy, soundfile, soxr, PyAV, h11, structlog and Trio;
never `voxtrio.audio` (its sibling layer), speech, server, ops or above
(import-linter contracts in pyproject.toml).
"""
