"""Speech generation: engines, the model threads they run on, and one request's output.

`_engine` (the small `Engine` interface and `SynthesisSpec`), `_voxcpm_engine` (the
real engine, VoxCPM through voxcpm's own loader), `_voxcpm_import` (importing voxcpm
where torchaudio cannot be imported), `_synthetic` (a paced model-free engine),
`_seeding` (per-instance random streams so a seed reproduces audio), the pool of
model instances that owns the model threads behind a capacity limit, `_jobs` (a
job's hand-over between its model thread and its request task), `_speak` (utterances
through the pool into one encoded stream), `_output` (the encoder, rate and pitch
for one request), `_progress`, `_errors` (why generation was refused or failed, as
types). `batched/` holds continuous batching (many generations per model step).

May import `voxtrio.voices` (prompt caches), `voxtrio.audio` (encoding),
`voxtrio.protocol`, `voxtrio._config`, plus torch, voxcpm (once `_voxcpm_import`
has made it importable), numpy, Trio and threads; never `voxtrio.ops`, `voxtrio.server`,
`voxtrio.tools` or above (import-linter contracts in pyproject.toml).
"""
