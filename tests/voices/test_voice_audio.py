"""Prompt audio: decoding untrusted uploads, the checks on them, and the WAV voxcpm reads."""

from __future__ import annotations

import hashlib
import io
import struct
import time
import zipfile
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from voxtrio.voices import _audio as _voice_audio
from voxtrio.voices._audio import (
    VoiceAudioError,
    decode_prompt_audio,
    sniff_format,
    write_wav_atomic,
)

RATE = 16000


def voice_like(seconds: float, rate: int = RATE, level: float = 0.3) -> np.ndarray:
    """A syllable-like signal: a 180 Hz tone with 4 Hz amplitude modulation and some noise."""
    t = np.arange(int(seconds * rate)) / rate
    envelope = 0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)
    rng = np.random.default_rng(0)
    signal = np.sin(2 * np.pi * 180 * t) * envelope + 0.05 * rng.standard_normal(t.size)
    return (level * signal / np.max(np.abs(signal))).astype(np.float32)


def encode(
    samples: np.ndarray, rate: int = RATE, fmt: str = "WAV", subtype: str = "PCM_16"
) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def mp3_with_pyav(samples: np.ndarray, rate: int = RATE) -> bytes:
    """An MP3 (with the ID3 tag FFmpeg writes) encoded by libmp3lame through PyAV."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")
        frame.sample_rate = rate
        resampler = av.AudioResampler(format="s16p", layout="mono", rate=rate)
        for converted in resampler.resample(frame):
            for packet in stream.encode(converted):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buffer.getvalue()


def refused(data: bytes, **kwargs: object) -> VoiceAudioError:
    options: dict[str, object] = {"target_rate": RATE, **kwargs}
    with pytest.raises(VoiceAudioError) as info:
        decode_prompt_audio(data, **options)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate", "expected"),
    [
        ("WAV", "PCM_16", 16000, "wav"),
        ("WAV", "FLOAT", 22050, "wav"),
        ("FLAC", "PCM_24", 44100, "flac"),
        ("OGG", "VORBIS", 32000, "ogg"),
        ("OGG", "OPUS", 48000, "ogg"),
        ("MP3", "MPEG_LAYER_III", 24000, "mp3"),
    ],
)
def test_decodes_each_accepted_format(fmt: str, subtype: str, rate: int, expected: str) -> None:
    """WAV, FLAC, Ogg Vorbis/Opus and MP3 decode to float32 mono at the target rate."""
    audio = decode_prompt_audio(encode(voice_like(2.0, rate), rate, fmt, subtype), target_rate=RATE)
    assert audio.format == expected
    assert audio.source_rate == rate
    assert audio.sample_rate == RATE
    assert audio.samples.dtype == np.float32
    assert audio.samples.ndim == 1
    assert audio.duration == pytest.approx(2.0, abs=0.06)
    assert audio.samples.size == pytest.approx(2.0 * RATE, abs=0.06 * RATE)


def test_decodes_mp3_made_by_pyav() -> None:
    """An ID3-tagged MP3 from FFmpeg's libmp3lame decodes."""
    audio = decode_prompt_audio(mp3_with_pyav(voice_like(1.5)), target_rate=RATE)
    assert audio.format == "mp3"
    assert audio.duration == pytest.approx(1.5, abs=0.1)


def test_stereo_is_downmixed_by_averaging() -> None:
    """Stereo becomes the mean of its channels."""
    left = voice_like(1.5)
    audio = decode_prompt_audio(
        encode(np.stack([left, np.zeros_like(left)], axis=1), subtype="FLOAT"), target_rate=RATE
    )
    np.testing.assert_allclose(audio.samples, left / 2, atol=1e-6)


def test_resampling_keeps_pitch() -> None:
    """A 44.1 kHz prompt resampled to 16 kHz keeps its 180 Hz fundamental."""
    audio = decode_prompt_audio(encode(voice_like(2.0, 44100), 44100), target_rate=RATE)
    spectrum = np.abs(np.fft.rfft(audio.samples))
    peak_hz = np.argmax(spectrum) * RATE / audio.samples.size
    assert peak_hz == pytest.approx(180, abs=2)


def test_pyav_decodes_what_libsndfile_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """When libsndfile cannot open a file of an accepted format, PyAV decodes it."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise soundfile.LibsndfileError(1, "simulated")

    data = encode(voice_like(2.0, 22050), 22050)
    monkeypatch.setattr(soundfile, "SoundFile", refuse)
    audio = decode_prompt_audio(data, target_rate=RATE)
    assert audio.source_rate == 22050
    assert audio.duration == pytest.approx(2.0)


def id3v24_title(title: bytes) -> bytes:
    """An ID3v2.4 tag with one TIT2 frame declared UTF-8, holding `title` as given."""

    def syncsafe(n: int) -> bytes:
        return bytes((n >> shift) & 0x7F for shift in (21, 14, 7, 0))

    body = b"\x03" + title  # encoding 3: UTF-8
    frame = b"TIT2" + syncsafe(len(body)) + b"\x00\x00" + body
    return b"ID3\x04\x00\x00" + syncsafe(len(frame)) + frame


def test_pyav_decodes_a_file_whose_tags_are_not_utf8(monkeypatch: pytest.MonkeyPatch) -> None:
    """Undecodable tag bytes do not fail PyAV's open (PyAV 18 and 19 alike)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise soundfile.LibsndfileError(1, "simulated")

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp3", options={"id3v2_version": "0"}) as container:
        stream = container.add_stream("libmp3lame", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(voice_like(1.5)[None, :], format="fltp", layout="mono")
        frame.sample_rate = RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    data = id3v24_title(b"caf\xe9 \xff\xfe") + buffer.getvalue()
    monkeypatch.setattr(soundfile, "SoundFile", refuse)
    audio = decode_prompt_audio(data, target_rate=RATE)
    assert audio.duration == pytest.approx(1.5, abs=0.1)


def test_metadata_option_matches_the_pyav_major_version() -> None:
    """PyAV 18 is told to ignore bad tag bytes; PyAV 19 no longer takes the argument."""
    assert _voice_audio._metadata_options("18.1.0") == {"metadata_errors": "ignore"}
    assert _voice_audio._metadata_options("19.0.1") == {}


def test_hash_is_of_the_input_bytes() -> None:
    """sha256 identifies the encoded input (the key for fetched prompts)."""
    data = encode(voice_like(1.5))
    assert decode_prompt_audio(data, target_rate=RATE).sha256 == hashlib.sha256(data).hexdigest()


def test_empty_is_refused() -> None:
    """No bytes at all is refused as empty."""
    assert refused(b"").message == "is empty"


def test_too_large_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Over max_bytes is refused without touching a decoder."""
    data = encode(voice_like(2.0))
    monkeypatch.setattr(soundfile, "SoundFile", None)
    error = refused(data, max_bytes=1000)
    assert error.message.startswith("too large:")


def test_garbage_is_not_audio() -> None:
    """Random bytes are not a supported audio file."""
    error = refused(b"\x00\x01 this is not audio at all " * 200)
    assert error.message == "not a supported audio file (expected WAV, FLAC, MP3 or Ogg)"


def id3_tag(body: bytes = b"TIT2\x00\x00\x00\x02\x00\x00\x00x") -> bytes:
    """An ID3v2.4 tag around `body` (syncsafe size)."""
    size = len(body)
    syncsafe = bytes(((size >> 21) & 0x7F, (size >> 14) & 0x7F, (size >> 7) & 0x7F, size & 0x7F))
    return b"ID3\x04\x00\x00" + syncsafe + body


@pytest.mark.parametrize(("fmt", "subtype"), [("AIFF", "PCM_16"), ("AU", "PCM_16")])
def test_id3_tag_does_not_smuggle_another_container(fmt: str, subtype: str) -> None:
    """An ID3 tag in front of AIFF or AU is judged by what follows it, and refused."""
    data = id3_tag() + encode(voice_like(2.0), fmt=fmt, subtype=subtype)
    assert sniff_format(data) is None
    assert refused(data).message.startswith("not a supported audio file")


def test_id3_tag_running_past_the_end_is_not_audio() -> None:
    """A tag claiming more bytes than there are is refused by the sniffer."""
    assert sniff_format(b"ID3\x04\x00\x00\x7f\x7f\x7f\x7f" + b"\xff\xfb" * 10) is None


def test_zip_is_not_audio() -> None:
    """A zip archive (even one holding a WAV) is refused by its magic bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("voice.wav", encode(voice_like(2.0)))
    assert refused(buffer.getvalue()).message.startswith("not a supported audio file")


def test_wav_magic_with_garbage_body_is_undecodable() -> None:
    """A WAV signature followed by junk is refused as undecodable."""
    data = b"RIFF\x24\x00\x00\x00WAVE" + np.random.default_rng(2).bytes(4000)
    assert refused(data).message == "could not be decoded as WAV audio"


def test_truncated_header_is_undecodable() -> None:
    """A WAV cut inside its header is refused."""
    assert refused(encode(voice_like(2.0))[:30]).message == "could not be decoded as WAV audio"


def test_truncated_body_counts_what_is_there() -> None:
    """A WAV cut to 0.5 s of its 2 s is judged on the 0.5 s present (too short)."""
    data = encode(voice_like(2.0))[: 44 + RATE]  # header + 0.5 s of 16-bit samples
    assert refused(data).message == "too short: 0.50 s, at least 1 s"


def test_too_short_is_refused() -> None:
    """Under min_seconds is refused."""
    assert refused(encode(voice_like(0.8))).message == "too short: 0.80 s, at least 1 s"


def test_too_long_is_refused() -> None:
    """Over max_seconds is refused."""
    assert refused(encode(voice_like(4.0)), max_seconds=3.0).message == "too long: more than 3 s"


def test_header_claiming_ten_hours_reads_only_what_is_there() -> None:
    """A WAV whose header claims 10 hours but holds 2 s decodes as 2 s, quickly."""
    data = bytearray(encode(voice_like(2.0)))
    claimed = 10 * 3600 * RATE * 2
    struct.pack_into("<I", data, 4, claimed + 36)
    struct.pack_into("<I", data, data.find(b"data") + 4, claimed)
    started = time.perf_counter()
    audio = decode_prompt_audio(bytes(data), target_rate=RATE)
    assert audio.duration == pytest.approx(2.0)
    assert time.perf_counter() - started < 1.0


def test_absurd_sample_rate_is_refused() -> None:
    """A sample rate outside 8-192 kHz is refused before reading samples."""
    error = refused(encode(voice_like(2.0, 4000), 4000))
    assert error.message == "unsupported sample rate 4000 Hz (need 8000-192000)"


def test_digital_silence_is_refused() -> None:
    """All-zero audio is refused as silent."""
    error = refused(encode(np.zeros(2 * RATE, np.float32)))
    assert error.message == "silent: 0.00 s above -50 dBFS, at least 0.5 s"


def test_constant_offset_is_silent() -> None:
    """A stuck (DC) signal carries no sound and is refused as silent."""
    assert refused(encode(np.full(2 * RATE, 0.5, np.float32))).message.startswith("silent:")


def test_a_blip_in_silence_is_refused() -> None:
    """Five seconds holding 0.2 s of sound is refused as silent."""
    samples = np.zeros(5 * RATE, np.float32)
    samples[RATE : RATE + RATE // 5] = voice_like(0.2)
    assert refused(encode(samples)).message.startswith("silent: 0.2")


def test_quiet_speech_level_is_accepted() -> None:
    """A prompt at about -40 dBFS RMS is quiet but not silent."""
    audio = decode_prompt_audio(encode(voice_like(2.0, level=0.015)), target_rate=RATE)
    assert audio.duration == pytest.approx(2.0)


def test_full_scale_square_wave_is_clipped() -> None:
    """Audio mostly at full scale is refused as clipped."""
    t = np.arange(2 * RATE) / RATE
    square = np.sign(np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    assert refused(encode(square, subtype="FLOAT")).message.startswith("heavily clipped:")


def test_nan_samples_are_refused() -> None:
    """A float WAV holding NaN is refused."""
    samples = voice_like(2.0)
    samples[100] = np.nan
    assert refused(encode(samples, subtype="FLOAT")).message == "contains NaN or infinite samples"


def test_error_names_the_given_field() -> None:
    """The error carries the request field it is about."""
    error = refused(b"", field="params.prompt_wav_url")
    assert error.field == "params.prompt_wav_url"
    assert str(error) == "params.prompt_wav_url: is empty"


def test_sniff_recognises_mpeg_frame_sync() -> None:
    """A bare MPEG audio frame header (no ID3) is sniffed as MP3."""
    assert sniff_format(encode(voice_like(1.0), fmt="MP3", subtype="MPEG_LAYER_III")) == "mp3"


# librosa.load imports audioread's backends on first use, and audioread imports the
# deprecated aifc/sunau modules: noise from a dependency, not from our code.
@pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread.*")
def test_written_wav_reads_back_through_librosa(tmp_path: Path) -> None:
    """What write_wav_atomic writes, librosa.load (voxcpm 2's loader) reads at the same rate."""
    import librosa

    samples = voice_like(1.5)
    path = tmp_path / "audio.wav"
    digest = write_wav_atomic(path, samples, RATE)
    loaded, rate = librosa.load(path, sr=RATE, mono=True)
    assert rate == RATE
    np.testing.assert_allclose(loaded, samples, atol=1 / 32768 + 1e-7)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_failed_atomic_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails before the rename leaves the old file and no temporary file."""
    path = tmp_path / "audio.wav"
    path.write_bytes(b"old")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(_voice_audio.os, "fsync", crash)
    with pytest.raises(OSError, match="disk full"):
        write_wav_atomic(path, voice_like(1.0), RATE)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["audio.wav"]
