"""Batched VoxCPM: the same audio as voxcpm's own generator, whatever shares the batch.

Both architectures, tiny random-weight checkpoints, float32 on CPU. Initial noise is
injected on both sides through a generator seeded with the request's seed: voxcpm's
draws are routed to it (`_seeding`), the batched model draws each row's from its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import numpy as np
import pytest
import torch

from tests.speech.batched.conftest import Loaded
from voxtrio.speech import _seeding
from voxtrio.speech._engine import SynthesisSpec, TextTooLong
from voxtrio.speech.batched._voxcpm import BatchedVoxCPM, VoxCPMRow

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread.*")

TOLERANCE = 1e-5
TEXT = "Hello there, this is a batched test."


def max_diff(left: list[np.ndarray], right: list[np.ndarray]) -> float:
    assert [c.shape for c in left] == [c.shape for c in right]
    return max(float(np.abs(a - b).max()) for a, b in zip(left, right, strict=True))


@pytest.fixture
def seeded() -> Iterator[torch.Generator]:
    generator = torch.Generator(device="cpu")
    _seeding.use_generator(generator)
    yield generator
    _seeding.use_generator(None)


def upstream(loaded: Loaded, spec: SynthesisSpec, generator: torch.Generator) -> list[np.ndarray]:
    """voxcpm's own streaming generation: VoxCPM.generate_streaming, or the prompt-cache path."""
    generator.manual_seed(spec.seed)
    options = {
        "max_len": spec.max_len,
        "inference_timesteps": spec.inference_timesteps,
        "cfg_value": spec.cfg_value,
        "retry_badcase": False,
        "retry_badcase_ratio_threshold": spec.retry_badcase_ratio_threshold,
    }
    if spec.voice_id is None:
        stream = loaded.voxcpm.generate_streaming(text=spec.text, **options)
        return [np.asarray(chunk, dtype=np.float32) for chunk in stream]
    stream = loaded.engine.tts_model.generate_with_prompt_cache_streaming(
        target_text=spec.text, prompt_cache=loaded.engine.prompt_cache_for(spec), **options
    )
    try:
        return [wav.squeeze(0).float().numpy() for wav, _tokens, _feats in stream]
    finally:
        stream.close()


def alone(model: BatchedVoxCPM, spec: SynthesisSpec) -> list[np.ndarray]:
    (row,) = model.prefill([spec])
    chunks = []
    try:
        while not row.finished:
            chunks.append(model.step([row])[0].audio)
    finally:
        model.release(row)
    return chunks


def voices(loaded: Loaded) -> list[str | None]:
    if loaded.engine.architecture == "voxcpm2":
        return [None, "reference", "continuation", "both"]
    return [None, "continuation"]


def test_zero_shot_equals_voxcpm_generate_streaming(
    loaded: Loaded, seeded: torch.Generator
) -> None:
    """With the same initial noise, a row's chunks are voxcpm's generate_streaming chunks."""
    model = BatchedVoxCPM(loaded.engine, max_batch=4)
    spec = SynthesisSpec(text=TEXT, seed=11, max_len=9, cfg_value=2.5, inference_timesteps=6)
    expected = upstream(loaded, spec, seeded)
    assert len(expected) == 9
    assert max_diff(alone(model, spec), expected) <= TOLERANCE


def test_voice_prompts_equal_voxcpm(loaded: Loaded, seeded: torch.Generator) -> None:
    """Every cloning mode the architecture has gives voxcpm's own audio for that prompt cache."""
    model = BatchedVoxCPM(loaded.engine, max_batch=4)
    for voice in voices(loaded)[1:]:
        spec = SynthesisSpec(text=TEXT, seed=5, max_len=6, voice_id=voice)
        expected = upstream(loaded, spec, seeded)
        assert max_diff(alone(model, spec), expected) <= TOLERANCE, voice


def test_text_length_cap_as_voxcpm(loaded: Loaded, seeded: torch.Generator) -> None:
    """A never-stopping row ends at voxcpm's cap min(tokens * ratio + 10, max_len)."""
    model = BatchedVoxCPM(loaded.engine, max_batch=2)
    spec = SynthesisSpec(text="Hi.", seed=2, retry_badcase_ratio_threshold=2.0)
    expected = upstream(loaded, spec, seeded)
    chunks = alone(model, spec)
    assert len(chunks) == len(expected) == model.max_steps(spec)
    assert max_diff(chunks, expected) <= TOLERANCE


def test_stop_head_ends_each_row_as_voxcpm(stopping: Loaded, seeded: torch.Generator) -> None:
    """A row stops when its own stop head fires after min_len, like voxcpm's loop."""
    model = BatchedVoxCPM(stopping.engine, max_batch=4)
    specs = [SynthesisSpec(text=TEXT, seed=seed, max_len=cap) for seed, cap in ((1, 50), (2, 3))]
    rows = model.prefill(specs)
    produced: dict[int, list[np.ndarray]] = {0: [], 1: []}
    while live := [i for i, row in enumerate(rows) if not row.finished]:
        for i, result in zip(live, model.step([rows[i] for i in live]), strict=True):
            produced[i].append(result.audio)
    for i, spec in enumerate(specs):
        expected = upstream(stopping, spec, seeded)
        assert len(produced[i]) == len(expected) == min(4, spec.max_len)
        assert max_diff(produced[i], expected) <= TOLERANCE


@attrs.frozen
class Arrival:
    spec: SynthesisSpec
    join: int  # batch step at which it is prefilled
    leave: int | None = None  # batch step at which it is cancelled (released unfinished)
    pause: tuple[int, ...] = ()  # batch steps it sits out (a client not reading)


def schedule(loaded: Loaded) -> list[Arrival]:
    """Eleven requests through eight slots: slots are reused after rows finish or leave."""
    names = voices(loaded)
    texts = ["Short one.", TEXT, "A rather longer sentence, to vary the prompt length a lot."]
    arrivals = []
    for i in range(11):
        spec = SynthesisSpec(
            text=texts[i % 3],
            seed=100 + i,
            max_len=4 + (i * 3) % 7,
            cfg_value=1.5 + 0.5 * (i % 4),
            inference_timesteps=(10, 4, 7)[i % 3],
            voice_id=names[i % len(names)],
        )
        leave = 3 + i % 4 if i % 4 == 1 else None
        pause = (2, 3) if i == 6 else ()
        arrivals.append(Arrival(spec, join=min(i, 8) if i < 8 else i - 2, leave=leave, pause=pause))
    return arrivals


def run_batched(model: BatchedVoxCPM, arrivals: list[Arrival]) -> list[list[np.ndarray]]:
    produced: list[list[np.ndarray]] = [[] for _ in arrivals]
    running: dict[int, VoxCPMRow] = {}
    pending = dict(enumerate(arrivals))
    step = 0
    while pending or running:
        for i, arrival in list(pending.items()):
            if arrival.join <= step and model.free_slots > 0:
                (running[i],) = model.prefill([arrival.spec])
                del pending[i]
        for i in [i for i in running if arrivals[i].leave == step]:
            model.release(running.pop(i))
        active = [i for i in running if step not in arrivals[i].pause]
        for i, result in zip(active, model.step([running[i] for i in active]), strict=True):
            produced[i].append(result.audio)
            if result.finished:
                model.release(running.pop(i))
        step += 1
    return produced


def test_rows_are_independent_of_the_batch(loaded: Loaded) -> None:
    """Each request's audio in a churning batch of 8 equals its audio alone (<= 1e-5)."""
    arrivals = schedule(loaded)
    model = BatchedVoxCPM(loaded.engine, max_batch=8)
    batched = run_batched(model, arrivals)
    assert model.free_slots == 8
    worst = 0.0
    for arrival, chunks in zip(arrivals, batched, strict=True):
        solo = alone(model, arrival.spec)
        assert len(chunks) == (len(solo) if arrival.leave is None else len(chunks))
        assert chunks, "every row produced audio"
        worst = max(worst, max_diff(chunks, solo[: len(chunks)]))
    assert worst <= TOLERANCE


def test_release_is_idempotent_and_frees_the_slot(loaded: Loaded) -> None:
    """Releasing twice frees one slot once; a released row cannot be stepped."""
    model = BatchedVoxCPM(loaded.engine, max_batch=2)
    (row,) = model.prefill([SynthesisSpec(text=TEXT, max_len=3)])
    assert model.free_slots == 1
    model.release(row)
    model.release(row)
    assert model.free_slots == 2
    with pytest.raises(ValueError, match="no longer running"):
        model.step([row])


def test_prefill_beyond_free_slots_is_refused(loaded: Loaded) -> None:
    """Asking for more rows than free slots fails before touching any slot."""
    model = BatchedVoxCPM(loaded.engine, max_batch=1)
    with pytest.raises(RuntimeError, match="slots free"):
        model.prefill([SynthesisSpec(text=TEXT)] * 2)
    assert model.free_slots == 1


def test_request_longer_than_the_kv_cache_is_refused(loaded: Loaded) -> None:
    """A row whose prompt plus max_len cannot fit its KV slot is refused at prefill."""
    model = BatchedVoxCPM(loaded.engine, max_batch=1, max_length=16)
    with pytest.raises(ValueError, match="KV positions"):
        model.prefill([SynthesisSpec(text=TEXT, max_len=20)])
    assert model.free_slots == 1


def test_text_too_long_is_refused_like_the_engine(loaded: Loaded) -> None:
    """Text past half the model's context is TextTooLong at prefill, before any slot is used."""
    model = BatchedVoxCPM(loaded.engine, max_batch=1)
    context = int(loaded.engine.tts_model.config.max_length)
    with pytest.raises(TextTooLong):
        model.prefill([SynthesisSpec(text="word " * context)])
    assert model.free_slots == 1
