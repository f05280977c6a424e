"""OpenAI-compatible HTTP API (`/v1/audio/speech`, `/v1/models`, `/v1/audio/voices`)."""
