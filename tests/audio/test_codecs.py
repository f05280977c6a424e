"""Tests for voxtrio.audio._codecs: streaming encoders checked with independent decoders.

wav, mp3 and Ogg Opus are decoded with libsndfile (soundfile; mpg123 and libopus/libogg
behind it); pcm16 with numpy. FLAC is decoded with PyAV's demuxer and decoder (libav's,
not its encoder): libsndfile's Python wrapper cannot read a FLAC stream whose
STREAMINFO has an unknown length, which every streamed FLAC has.
"""

from __future__ import annotations

import io
import itertools
import struct
import wave

import av
import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st

from voxtrio.audio._codecs import (
    SUPPORTED_RATES,
    WAV_UNKNOWN_SIZE,
    AudioEncoder,
    AudioFormat,
    check_finite,
    float_to_pcm16,
    mp3_bit_rates,
)
from voxtrio.protocol._formats import ANY_RATE_FORMATS

MP3_PRIMING = 1105  # LAME encoder delay 576 + decoder delay 529; no LAME tag to trim it
CONTAINER_FORMATS: tuple[AudioFormat, ...] = ("wav", "mp3", "opus", "flac")
FRAMED_FORMATS: tuple[AudioFormat, ...] = ("mp3", "opus", "flac")
RATE_PAIRS = [(48000, 48000), (48000, 16000), (16000, 48000), (48000, 22050)]


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    """A float32 sine."""
    t = np.arange(round(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def stream(encoder: AudioEncoder, audio: np.ndarray, chunk: int) -> list[bytes]:
    """Feed `audio` in `chunk`-sample pieces; return every encode() result and finish()'s."""
    pieces = [encoder.encode(audio[i : i + chunk]) for i in range(0, audio.size, chunk)]
    return [*pieces, encoder.finish()]


def decode(fmt: AudioFormat, data: bytes) -> tuple[np.ndarray, int | None]:
    """Decode a whole stream or a prefix of one: (float samples, sample rate)."""
    if fmt == "pcm16":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, None
    if fmt == "flac":
        with av.open(io.BytesIO(data), "r", format="flac") as container:
            rate = container.streams.audio[0].codec_context.sample_rate
            frames = [f.to_ndarray()[0] for f in container.decode(audio=0)]
        samples = np.concatenate(frames) if frames else np.zeros(0, np.int16)
        return samples.astype(np.float32) / 32768, rate
    with sf.SoundFile(io.BytesIO(data)) as f:
        return f.read(dtype="float32"), f.samplerate


def content(fmt: AudioFormat, data: bytes) -> int:
    """Samples of fed audio a client can decode from `data` (MP3 priming excluded)."""
    samples, _ = decode(fmt, data)
    return max(0, samples.size - MP3_PRIMING) if fmt == "mp3" else samples.size


def is_mp3_sync(data: bytes) -> bool:
    """Whether `data` starts with an MPEG audio frame sync word (11 set bits)."""
    return data[0] == 0xFF and data[1] & 0xE0 == 0xE0


def dominant_frequency(samples: np.ndarray, rate: int) -> float:
    """Frequency of the largest FFT bin of a Hann-windowed slice."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.argmax(spectrum) * rate / samples.size)


# --- round trips through independent decoders -------------------------------------


@pytest.mark.parametrize(("input_rate", "output_rate"), RATE_PAIRS)
@pytest.mark.parametrize("fmt", ANY_RATE_FORMATS)
def test_round_trip_rate_and_duration(fmt: AudioFormat, input_rate: int, output_rate: int) -> None:
    """Decoded rate and length match what was fed (MP3: plus priming and last-frame padding)."""
    encoder = AudioEncoder(fmt, input_rate=input_rate, output_rate=output_rate)
    audio = tone(input_rate, 0.5)
    samples, rate = decode(fmt, b"".join(stream(encoder, audio, input_rate // 10)))
    expected = audio.size * encoder.sample_rate / input_rate
    assert rate in (None, encoder.sample_rate)
    assert abs(encoder.samples_out - expected) <= 1
    if fmt == "mp3":
        frame = 1152 if encoder.sample_rate >= 32000 else 576
        assert 0 <= samples.size - MP3_PRIMING - encoder.samples_out < frame
    else:
        assert samples.size == encoder.samples_out


@pytest.mark.parametrize("output_rate", [48000, 16000])
@pytest.mark.parametrize("fmt", ANY_RATE_FORMATS)
def test_streamed_pieces_decode_like_one_piece(fmt: AudioFormat, output_rate: int) -> None:
    """Chunked encoding decodes to exactly what encoding all audio at once does."""
    audio = tone(48000, 0.6) + tone(48000, 0.6, freq=3000, amp=0.2)
    chunked_encoder = AudioEncoder(fmt, input_rate=48000, output_rate=output_rate)
    chunked = b"".join(stream(chunked_encoder, audio, 7680))
    whole_encoder = AudioEncoder(fmt, input_rate=48000, output_rate=output_rate)
    whole = whole_encoder.encode(audio) + whole_encoder.finish()
    np.testing.assert_array_equal(decode(fmt, chunked)[0], decode(fmt, whole)[0])


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=9600), max_size=8))
def test_chunking_never_changes_output(cuts: list[int]) -> None:
    """Any split of the input (empty chunks included) yields the same resampled FLAC bytes."""
    audio = tone(44100, 9600 / 44100)
    bounds = [0, *sorted(cuts), audio.size]
    encoder = AudioEncoder("flac", input_rate=44100, output_rate=48000)
    split = [encoder.encode(audio[a:b]) for a, b in itertools.pairwise(bounds)]
    reference = AudioEncoder("flac", input_rate=44100, output_rate=48000)
    assert b"".join([*split, encoder.finish()]) == reference.encode(audio) + reference.finish()


@pytest.mark.parametrize("fmt", ANY_RATE_FORMATS)
def test_every_prefix_decodes(fmt: AudioFormat) -> None:
    """After each chunk, everything sent so far decodes, and never to less than before."""
    encoder = AudioEncoder(fmt, input_rate=48000, output_rate=24000 if fmt == "opus" else 48000)
    sent = b""
    decoded = 0
    for piece in stream(encoder, tone(48000, 0.8), 7680):
        sent += piece
        if sent:
            now = content(fmt, sent)
            assert now >= decoded
            decoded = now
    padding = 1152 if fmt == "mp3" else 1  # MP3 pads the last frame with silence
    assert 0 <= decoded - encoder.samples_out < padding


@pytest.mark.parametrize(
    ("fmt", "max_held"),
    [
        ("pcm16", 0),
        ("wav", 0),
        ("flac", 0),  # 20 ms frames divide the 160 ms chunk
        ("opus", 960 + 312),  # the muxer's held-back page (one packet) + libopus lookahead
        ("mp3", 3 * 1152),  # LAME's lookahead; ~5300 with the bit reservoir on
    ],
)
def test_first_chunk_is_not_held_back(fmt: AudioFormat, max_held: int) -> None:
    """The first 160 ms chunk at 48 kHz comes out decodable, less at most the codec's need."""
    encoder = AudioEncoder(fmt, input_rate=48000)
    first = encoder.encode(tone(48000, 0.16))
    assert first
    assert 7680 - content(fmt, first) <= max_held


# --- stream structure ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", CONTAINER_FORMATS)
def test_stream_starts_with_its_header(fmt: AudioFormat) -> None:
    """The first piece starts with the format's magic: RIFF/WAVE, sync word, OggS+OpusHead, fLaC."""
    first = AudioEncoder(fmt, input_rate=48000).encode(tone(48000, 0.16))
    if fmt == "wav":
        assert first[:4] + first[8:12] == b"RIFFWAVE"
    elif fmt == "mp3":
        assert first[:3] == b"ID3" or is_mp3_sync(first)
    elif fmt == "opus":
        assert first[:4] + first[28:36] == b"OggSOpusHead"
    else:
        assert first[:4] == b"fLaC"


@pytest.mark.parametrize("fmt", FRAMED_FORMATS)
def test_later_pieces_start_on_a_frame_or_page(fmt: AudioFormat) -> None:
    """Pieces after the first begin with an MP3/FLAC frame sync or an Ogg page."""
    pieces = stream(AudioEncoder(fmt, input_rate=48000), tone(48000, 1.0), 7680)[1:]
    assert any(pieces)
    for piece in filter(None, pieces):
        if fmt == "opus":
            assert piece[:4] == b"OggS"
        elif fmt == "mp3":
            assert is_mp3_sync(piece)
        else:
            assert piece[:2] == b"\xff\xf8"


@pytest.mark.parametrize("rate", SUPPORTED_RATES)
def test_wav_header_fields(rate: int) -> None:
    """The WAV header is 44 bytes of mono 16-bit PCM at the output rate, sizes 0xFFFFFFFF."""
    data = AudioEncoder("wav", input_rate=rate).encode(np.zeros(10, np.float32))
    fields = struct.unpack("<4sI4s4sIHHIIHH4sI", data[:44])
    assert fields == (
        b"RIFF", WAV_UNKNOWN_SIZE, b"WAVE", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16,
        b"data", WAV_UNKNOWN_SIZE,
    )  # fmt: skip
    assert len(data) == 44 + 20


def test_wav_header_is_sent_once() -> None:
    """Only the first piece carries the WAV header; later pieces are bare samples."""
    encoder = AudioEncoder("wav", input_rate=16000)
    encoder.encode(np.zeros(160, np.float32))
    assert encoder.encode(np.full(160, 0.5, np.float32)) == float_to_pcm16(
        np.full(160, 0.5, np.float32)
    )


def test_wav_stream_reads_with_stdlib_wave() -> None:
    """Python's wave module reads the streamed WAV (unknown sizes) to the last sample."""
    data = b"".join(stream(AudioEncoder("wav", input_rate=22050), tone(22050, 0.3), 2205))
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (
            22050,
            1,
            2,
        )
        assert len(reader.readframes(10**6)) == 2 * round(22050 * 0.3)


def test_empty_wav_stream_is_just_the_header() -> None:
    """finish() without audio still yields a valid, empty WAV."""
    data = AudioEncoder("wav", input_rate=16000).finish()
    assert len(data) == 44
    assert decode("wav", data)[0].size == 0


def test_empty_pcm16_stream_is_empty() -> None:
    """pcm16 has no header, so no audio means no bytes."""
    encoder = AudioEncoder("pcm16", input_rate=16000)
    assert encoder.encode(np.zeros(0, np.float32)) == b""
    assert encoder.finish() == b""


# --- signal content -----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ANY_RATE_FORMATS)
def test_silence_in_silence_out(fmt: AudioFormat) -> None:
    """Digital silence decodes to (near) silence in every format."""
    data = b"".join(stream(AudioEncoder(fmt, input_rate=48000), np.zeros(24000, np.float32), 7680))
    samples, _ = decode(fmt, data)
    assert samples.size > 0
    assert np.abs(samples).max() <= 1e-3


@pytest.mark.parametrize(("input_rate", "output_rate"), [(48000, 48000), (48000, 16000)])
@pytest.mark.parametrize("fmt", ["mp3", "opus", "flac"])
def test_sine_keeps_its_frequency(fmt: AudioFormat, input_rate: int, output_rate: int) -> None:
    """A 1 kHz sine comes back as a 1 kHz sine through the codecs (and the resampler)."""
    encoder = AudioEncoder(fmt, input_rate=input_rate, output_rate=output_rate)
    samples, rate = decode(fmt, b"".join(stream(encoder, tone(input_rate, 1.0, freq=1000), 7680)))
    assert rate == output_rate
    window = samples[MP3_PRIMING : MP3_PRIMING + output_rate // 2]
    assert dominant_frequency(window, output_rate) == pytest.approx(1000, abs=2 * 2)


def test_sine_is_not_distorted_by_opus() -> None:
    """Opus at the default bit rate keeps a tone's energy at its frequency (SNR > 20 dB)."""
    encoder = AudioEncoder("opus", input_rate=48000)
    samples, _ = decode("opus", b"".join(stream(encoder, tone(48000, 1.0, freq=440), 7680)))
    spectrum = np.abs(np.fft.rfft(samples[4800:43200] * np.hanning(38400))) ** 2
    peak = round(440 * 38400 / 48000)
    in_band = spectrum[peak - 3 : peak + 4].sum()
    assert 10 * np.log10(in_band / (spectrum.sum() - in_band)) > 20


# --- pcm16 conversion ----------------------------------------------------------------


def test_float_to_pcm16_scales_and_rounds() -> None:
    """Samples scale by 32767 and round to nearest (half to even)."""
    x = np.array([0.0, 0.49 / 32767, 0.51 / 32767, -0.51 / 32767, 0.5, 1.0, -1.0], np.float64)
    assert np.frombuffer(float_to_pcm16(x), "<i2").tolist() == [0, 0, 1, -1, 16384, 32767, -32767]


def test_float_to_pcm16_clips() -> None:
    """Out-of-range samples clip to ±32767 instead of wrapping around."""
    x = np.array([1.5, -2.0, 1e30], np.float32)
    assert np.frombuffer(float_to_pcm16(x), "<i2").tolist() == [32767, -32767, 32767]


def test_float_to_pcm16_is_little_endian() -> None:
    """The bytes are little-endian int16."""
    assert float_to_pcm16(np.array([1.0, 0.5 / 32767 * 3], np.float32)) == b"\xff\x7f\x02\x00"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_to_pcm16_refuses_non_finite(bad: float) -> None:
    """NaN and ±inf raise ValueError("non-finite audio")."""
    with pytest.raises(ValueError, match="non-finite audio"):
        float_to_pcm16(np.array([0.0, bad], np.float32))


def test_check_finite_accepts_finite_audio() -> None:
    """check_finite passes finite audio, out-of-range samples included."""
    check_finite(np.array([0.0, -3.0, 1e30], np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 4999, 9999])
def test_check_finite_finds_one_bad_sample_anywhere(dtype: type, bad: float, where: int) -> None:
    """One NaN or ±inf anywhere in a chunk is found, whatever the float type."""
    x = np.full(10000, 0.25, dtype)
    x[where] = bad
    with pytest.raises(ValueError, match="non-finite audio"):
        check_finite(x)


def test_check_finite_accepts_the_largest_float32_values() -> None:
    """Full-range float32 chunks are finite: the one-pass check cannot overflow."""
    big = np.finfo(np.float32).max
    check_finite(np.full(1_000_000, big, np.float32))
    check_finite(np.array([big, -big] * 1000, np.float32))


@given(st.lists(st.floats(-4.0, 4.0, width=32), min_size=1, max_size=300))
def test_pcm16_matches_clip_scale_round(values: list[float]) -> None:
    """pcm16 is exactly rint(clip(x, -1, 1) * 32767) for float32 and float64 input."""
    for dtype in (np.float32, np.float64):
        x = np.array(values, dtype)
        expected = np.rint(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2")
        assert np.frombuffer(float_to_pcm16(x), "<i2").tolist() == expected.tolist()


def test_encode_refuses_non_finite_chunk_without_consuming_it() -> None:
    """A NaN chunk raises ValueError and leaves the counters untouched."""
    encoder = AudioEncoder("opus", input_rate=48000)
    with pytest.raises(ValueError, match="non-finite audio"):
        encoder.encode(np.array([0.1, np.nan], np.float32))
    assert (encoder.samples_in, encoder.samples_out) == (0, 0)


def test_huge_samples_clip_to_full_scale_through_the_resampler() -> None:
    """Finite but absurd float64 samples come out at full scale, never as NaN garbage."""
    encoder = AudioEncoder("pcm16", input_rate=48000, output_rate=16000, volume=100.0)
    audio = np.full(4800, 1e300)
    out = np.frombuffer(encoder.encode(audio) + encoder.finish(), "<i2")
    assert out.size == 1600
    assert out[200:-200].tolist() == [32767] * 1200


# --- volume ----------------------------------------------------------------------------


def test_volume_scales_samples() -> None:
    """volume is a linear gain applied before quantization."""
    encoder = AudioEncoder("pcm16", input_rate=16000, volume=0.5)
    out = encoder.encode(np.full(8, 0.5, np.float32))
    assert np.frombuffer(out, "<i2").tolist() == [8192] * 8  # round(0.25 * 32767)


def test_volume_clips_after_gain() -> None:
    """Gain that pushes samples past full scale clips rather than wraps."""
    encoder = AudioEncoder("pcm16", input_rate=16000, volume=3.0)
    out = encoder.encode(np.array([0.5, -0.5, 0.1], np.float32))
    assert np.frombuffer(out, "<i2").tolist() == [32767, -32767, round(0.3 * 32767)]


def test_volume_zero_mutes() -> None:
    """volume=0 yields silence."""
    out = AudioEncoder("pcm16", input_rate=16000, volume=0.0).encode(tone(16000, 0.1))
    assert not any(out)


def test_volume_does_not_modify_the_callers_array() -> None:
    """The gain is applied to a copy, never in place."""
    audio = tone(48000, 0.1)
    original = audio.copy()
    AudioEncoder("pcm16", input_rate=48000, volume=0.25).encode(audio)
    np.testing.assert_array_equal(audio, original)


@pytest.mark.parametrize("volume", [-0.1, float("nan"), float("inf"), 100.5])
def test_invalid_volume_is_refused(volume: float) -> None:
    """Negative, non-finite or absurd (> MAX_VOLUME) gains raise ValueError."""
    with pytest.raises(ValueError, match="volume"):
        AudioEncoder("pcm16", input_rate=16000, volume=volume)


# --- rates and bit rates --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "encoded"),
    [(8000, 8000), (16000, 16000), (22050, 24000), (24000, 24000), (44100, 48000), (48000, 48000)],
)
def test_opus_encodes_at_the_next_opus_rate(requested: int, encoded: int) -> None:
    """Rates Opus lacks are encoded at the next Opus rate up, reported in sample_rate."""
    assert AudioEncoder("opus", input_rate=48000, output_rate=requested).sample_rate == encoded


def test_output_rate_defaults_to_input_rate() -> None:
    """Without output_rate the audio is not resampled."""
    encoder = AudioEncoder("wav", input_rate=44100)
    assert encoder.sample_rate == 44100
    assert len(encoder.encode(np.zeros(441, np.float32))) == 44 + 882


def test_counters_report_input_and_output_samples() -> None:
    """samples_in counts input-rate samples, samples_out output-rate samples, duration seconds."""
    encoder = AudioEncoder("mp3", input_rate=48000, output_rate=16000)
    stream(encoder, tone(48000, 0.5), 7680)
    assert (encoder.samples_in, encoder.samples_out) == (24000, 8000)
    assert encoder.duration == pytest.approx(0.5)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "opus", "flac"])
def test_finish_twice_returns_nothing_more(fmt: AudioFormat) -> None:
    """A second finish() is harmless and returns b""."""
    encoder = AudioEncoder(fmt, input_rate=16000)
    encoder.encode(tone(16000, 0.1))
    encoder.finish()
    assert encoder.finish() == b""


@pytest.mark.parametrize("fmt", ANY_RATE_FORMATS)
def test_close_abandons_the_stream(fmt: AudioFormat) -> None:
    """close() mid-stream ends it: finish() then returns b"" and encode() raises."""
    encoder = AudioEncoder(fmt, input_rate=48000)
    encoder.encode(tone(48000, 0.1))
    encoder.close()
    encoder.close()
    assert encoder.finish() == b""
    with pytest.raises(RuntimeError):
        encoder.encode(tone(48000, 0.1))


def test_encode_after_finish_is_an_error() -> None:
    """Feeding a finished encoder raises RuntimeError."""
    encoder = AudioEncoder("pcm16", input_rate=16000)
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.encode(np.zeros(10, np.float32))


def test_mp3_frames_carry_the_requested_bit_rate() -> None:
    """Every MP3 frame header has the requested CBR bit rate (MPEG-1 index 5 = 64 kbit/s)."""
    encoder = AudioEncoder("mp3", input_rate=48000, bit_rate=64000)
    data = b"".join(stream(encoder, tone(48000, 0.5), 7680))
    frame_bytes = 144 * 64000 // 48000
    headers = [data[i : i + 4] for i in range(0, len(data), frame_bytes)]
    assert all(h[0] == 0xFF and h[1] == 0xFB and h[2] >> 4 == 5 for h in headers)


def test_opus_bit_rate_controls_size() -> None:
    """A higher opus bit_rate produces proportionally more bytes."""
    audio = tone(48000, 1.0) + tone(48000, 1.0, freq=5000, amp=0.1)
    sizes = [
        len(b"".join(stream(AudioEncoder("opus", input_rate=48000, bit_rate=b), audio, 7680)))
        for b in (16000, 96000)
    ]
    assert sizes[1] > 3 * sizes[0]


@pytest.mark.parametrize(
    ("fmt", "rate", "default"),
    [("mp3", 48000, 128000), ("mp3", 24000, 64000), ("mp3", 8000, 32000), ("opus", 16000, 32000)],
)
def test_default_bit_rates(fmt: AudioFormat, rate: int, default: int) -> None:
    """mp3 defaults to 128/64/32 kbit/s by MPEG version, opus to 32 kbit/s."""
    assert AudioEncoder(fmt, input_rate=rate).bit_rate == default


@pytest.mark.parametrize(
    ("fmt", "rate", "bit_rate"),
    [("mp3", 48000, 320000), ("mp3", 48000, 32000), ("mp3", 22050, 160000), ("mp3", 8000, 64000),
     ("opus", 48000, 6000), ("opus", 8000, 256000)],
)  # fmt: skip
def test_bit_rate_limits_are_accepted(fmt: AudioFormat, rate: int, bit_rate: int) -> None:
    """The ends of each valid bit rate range are accepted and kept."""
    assert AudioEncoder(fmt, input_rate=rate, bit_rate=bit_rate).bit_rate == bit_rate


@pytest.mark.parametrize(
    ("fmt", "rate", "bit_rate"),
    [("mp3", 48000, 100000), ("mp3", 48000, 16000), ("mp3", 24000, 192000),
     ("mp3", 8000, 80000), ("opus", 48000, 5999), ("opus", 48000, 510001),
     ("opus", 48000, 32000.0), ("mp3", 48000, True), ("wav", 48000, 128000),
     ("flac", 48000, 128000), ("pcm16", 48000, 128000)],
)  # fmt: skip
def test_invalid_bit_rate_is_refused(fmt: AudioFormat, rate: int, bit_rate: object) -> None:
    """Bit rates outside the codec's set/range, non-integers, or for lossless formats fail."""
    with pytest.raises(ValueError, match="bit_rate"):
        AudioEncoder(fmt, input_rate=rate, bit_rate=bit_rate)  # type: ignore[arg-type]


def test_opus_bit_rate_above_mono_maximum_is_capped() -> None:
    """DashScope's opus maximum (510 kbit/s) is accepted and capped at Opus's mono 256k."""
    assert AudioEncoder("opus", input_rate=48000, bit_rate=510000).bit_rate == 256000


def test_mp3_bit_rate_table_follows_mpeg_version() -> None:
    """MPEG-1 rates go to 320k, MPEG-2 to 160k, 8 kHz (MPEG-2.5, LAME) to 64k."""
    assert [max(mp3_bit_rates(r)) for r in (48000, 44100, 24000, 16000, 8000)] == [
        320000, 320000, 160000, 160000, 64000,
    ]  # fmt: skip


def test_unknown_format_is_refused() -> None:
    """A format outside ENCODER_FORMATS raises ValueError."""
    with pytest.raises(ValueError, match="unsupported audio format"):
        AudioEncoder("vorbis", input_rate=16000)  # type: ignore[arg-type]


def test_aac_streams_adts_that_decodes_to_its_length() -> None:
    """AAC (for the OpenAI endpoint) is ADTS from byte 0 and decodes to the samples encoded."""
    import io

    import av

    encoder = AudioEncoder("aac", input_rate=16000, output_rate=24000)
    tone = np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.3
    data = b"".join(encoder.encode(piece) for piece in np.array_split(tone, 7)) + encoder.finish()
    assert data[:2] == b"\xff\xf1"  # ADTS sync word, MPEG-4, no CRC
    with av.open(io.BytesIO(data), format="aac") as container:
        decoded = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(decoded - 24000) <= 2048  # encoder priming/padding, at most two AAC frames


@pytest.mark.parametrize("rate", [0, 11025, 32000, 96000, -16000, True])
def test_unsupported_output_rate_is_refused(rate: int) -> None:
    """Output rates outside SUPPORTED_RATES raise ValueError."""
    with pytest.raises(ValueError, match="sample rate"):
        AudioEncoder("pcm16", input_rate=48000, output_rate=rate)


def test_unsupported_input_rate_needs_an_output_rate() -> None:
    """An input rate outside SUPPORTED_RATES is fine only when resampled to one."""
    with pytest.raises(ValueError, match="sample rate"):
        AudioEncoder("pcm16", input_rate=32000)
    assert AudioEncoder("pcm16", input_rate=32000, output_rate=16000).sample_rate == 16000


@pytest.mark.parametrize("rate", [0, -48000, 16000.0, True])
def test_invalid_input_rate_is_refused(rate: object) -> None:
    """input_rate must be a positive integer."""
    with pytest.raises(ValueError, match="input_rate"):
        AudioEncoder("pcm16", input_rate=rate, output_rate=16000)  # type: ignore[arg-type]


def test_stereo_chunk_is_refused() -> None:
    """Chunks must be mono 1-D arrays."""
    with pytest.raises(ValueError, match="mono"):
        AudioEncoder("pcm16", input_rate=16000).encode(np.zeros((2, 10), np.float32))


def test_integer_chunk_is_refused() -> None:
    """Chunks must be floating point; int16 input is a caller bug, not audio to rescale."""
    with pytest.raises(TypeError, match="floating"):
        AudioEncoder("pcm16", input_rate=16000).encode(np.zeros(10, np.int16))
