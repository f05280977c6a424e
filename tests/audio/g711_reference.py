"""Reference G.711 decoding for tests, independent of the encoder under test.

The expansion is ITU-T G.711's, written out from the standard's sign/segment/mantissa
layout (no lookup table shared with libav's encoder); libav's decoders are the second
opinion.
"""

from __future__ import annotations

import av
import numpy as np


def ulaw_expand(codes: np.ndarray) -> np.ndarray:
    """G.711 mu-law code -> 16-bit linear (bits inverted on the wire; bias 0x84)."""
    u = ~codes.astype(np.int32) & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude)


def alaw_expand(codes: np.ndarray) -> np.ndarray:
    """G.711 A-law code -> 16-bit linear (even bits inverted on the wire; sign 1 = +)."""
    a = codes.astype(np.int32) ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    magnitude = np.where(
        exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0)
    )
    return np.where(a & 0x80, magnitude, -magnitude)


def reference_decode(fmt: str, data: bytes) -> np.ndarray:
    """Raw ulaw_8000 / alaw_8000 bytes -> 16-bit linear samples, by the formulas above."""
    codes = np.frombuffer(data, np.uint8)
    return ulaw_expand(codes) if fmt == "ulaw_8000" else alaw_expand(codes)


def libav_decode(fmt: str, data: bytes) -> np.ndarray:
    """Decode with libav's pcm_mulaw / pcm_alaw decoder (16-bit linear)."""
    codec = av.CodecContext.create({"ulaw_8000": "pcm_mulaw", "alaw_8000": "pcm_alaw"}[fmt], "r")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate, codec.layout = 8000, "mono"
    frames = [*codec.decode(av.Packet(data)), *codec.decode(None)]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int32)
