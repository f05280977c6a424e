"""The commands beside `serve`: `voxtrio say`, `voxtrio tiny-model`, and the offline demo.

`_say` (speak a text through a running server into a WAV, with `voxtrio.client`),
`_tiny_cli` (`tiny-model`'s arguments), `_tiny_model` (random-weight VoxCPM
checkpoints that voxcpm's real loader reads; it builds them from `_tiny_config`,
`_tiny_tokenizer` and `_tiny_weights`), `_demo` (the offline main job: serve a
checkpoint in a subprocess and speak one sentence to a WAV).

The top library layer below the CLI and `voxtrio._app`: may import `voxtrio.client`,
`voxtrio.server`, `voxtrio.speech` and every layer below, plus torch, voxcpm,
transformers, tokenizers and safetensors for the checkpoints; never `voxtrio._app`
or `voxtrio._cli` (import-linter contracts in pyproject.toml). Heavy imports stay
inside functions so `--help` stays fast.
"""
