"""voxtrio: a streaming text-to-speech server for VoxCPM, on Trio."""

__version__ = "0.1.0"
