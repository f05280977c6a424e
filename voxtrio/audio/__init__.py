"""Audio output, sans-IO: float chunks in, encoded bytes out, no sockets or threads.

`_codecs` (the streaming encoder and resampler a request's output goes through),
`_pcm` (checking and quantising float chunks to 16-bit PCM, the streamed WAV
header), `_backends` (raw PCM/WAV, and libav codecs and muxers through PyAV for
mp3, opus and flac), `_dsp` (streaming speed and pitch changes for the DashScope
endpoint; optional).

May import `voxtrio.protocol` (format names and limits) and `voxtrio._config`, plus
numpy, soxr and PyAV (`av`); never `voxtrio.voices` (its sibling layer),
`voxtrio.speech`, the server or above, and no Trio (import-linter contracts in
pyproject.toml).
"""
