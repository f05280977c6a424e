"""Static-shape steps: buckets, padding rows, and compiled steps equal to eager ones.

Inductor compiles each step function per bucket on CPU; on these tiny checkpoints
that costs tens of seconds for the small functions and minutes for `finish` (LocEnc,
AudioVAE, both LMs), so the default run compiles `begin` and `euler` at one bucket
and the test marked slow compiles everything at every bucket a churning batch uses.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.speech.batched.conftest import Loaded
from tests.speech.batched.test_voxcpm_batched import (
    TEXT,
    TOLERANCE,
    Arrival,
    alone,
    max_diff,
    run_batched,
    voices,
)
from voxtrio.speech._engine import SynthesisSpec
from voxtrio.speech.batched._graphs import (
    MIN_SPAN,
    Runner,
    bucket_for,
    bucket_sizes,
    resolve,
    span_bucket,
)
from voxtrio.speech.batched._voxcpm import BatchedVoxCPM

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:audioread.*"),
    # Dynamo walks torch.jit internals when it meets voxcpm's scripted `snake`.
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]


def test_bucket_sizes_double_up_to_max_batch() -> None:
    """Buckets are powers of two below max_batch, then max_batch itself."""
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(16) == [1, 2, 4, 8, 16]
    assert bucket_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]


def test_bucket_for_picks_the_smallest_that_holds_the_rows() -> None:
    """3 rows run at 4, 5 at 8, a full bucket at itself; more than the largest is refused."""
    sizes = bucket_sizes(128)
    assert [bucket_for(n, sizes) for n in (1, 2, 3, 5, 64, 65, 128)] == [1, 2, 4, 8, 64, 128, 128]
    with pytest.raises(ValueError, match="exceed"):
        bucket_for(129, sizes)


def test_span_bucket_is_a_power_of_two_capped_by_the_cache() -> None:
    """Attention spans start at MIN_SPAN, double, and never pass the KV length."""
    assert span_bucket(1, 8192) == MIN_SPAN
    assert span_bucket(MIN_SPAN + 1, 8192) == 2 * MIN_SPAN
    assert span_bucket(5000, 6000) == 6000


def test_compile_setting_resolves_per_device() -> None:
    """off is eager; on is inductor on CPU, CUDA graphs on CUDA; auto is eager on CPU."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve("off", cuda) == "eager"
    assert resolve("on", cpu) == "inductor"
    assert resolve("on", cuda) == "cuda-graphs"
    assert resolve("auto", cpu) == "eager"
    assert resolve("auto", cuda) is None  # measured at warm-up


def test_model_reports_its_buckets(loaded: Loaded) -> None:
    """Eager steps run unpadded; fixed buckets pad; bucket_for says which size a step runs at."""
    model = BatchedVoxCPM(loaded.engine, max_batch=6)
    assert [model.bucket_for(n) for n in range(1, 7)] == [1, 2, 3, 4, 5, 6]
    padded = BatchedVoxCPM(loaded.engine, max_batch=6, buckets=(2, 8))
    assert [padded.bucket_for(n) for n in (1, 2, 3, 6)] == [2, 2, 8, 8]
    with pytest.raises(ValueError, match="do not reach"):
        BatchedVoxCPM(loaded.engine, max_batch=6, buckets=(1, 4))


def test_auto_runs_eager_on_cpu_and_warms_up(loaded: Loaded) -> None:
    """--compile auto on CPU steps eager; warm-up runs a request and frees its slot."""
    model = BatchedVoxCPM(loaded.engine, max_batch=2, compile="auto")
    assert model.mode == "eager"
    model.warm_up()
    assert model.free_slots == 2


def crowd(loaded: Loaded, slots: int) -> list[Arrival]:
    """Requests that join, pause and leave through `slots` slots, with every voice,
    several texts, cfg values and timesteps."""
    names = voices(loaded)
    texts = ["Short one.", TEXT, "A rather longer sentence, to vary the prompt length."]
    arrivals = []
    for i in range(slots + 3):
        spec = SynthesisSpec(
            text=texts[i % 3],
            seed=200 + i,
            max_len=2 + i % 3,
            cfg_value=1.5 + 0.5 * (i % 3),
            inference_timesteps=(6, 3, 5)[i % 3],
            voice_id=names[i % len(names)],
        )
        leave = 2 if i % 4 == 1 else None
        pause = (1,) if i == 2 else ()
        arrivals.append(Arrival(spec, join=i // 2, leave=leave, pause=pause))
    return arrivals


def test_padding_rows_never_change_real_rows(loaded: Loaded) -> None:
    """Every row padded up to a bucket of 4 (2+ padding rows) gives its unpadded audio (<= 1e-5)."""
    arrivals = crowd(loaded, 2)
    padded = BatchedVoxCPM(loaded.engine, max_batch=2, buckets=(4,))
    plain = BatchedVoxCPM(loaded.engine, max_batch=2)
    assert max_diff_all(run_batched(padded, arrivals), run_batched(plain, arrivals)) <= TOLERANCE
    assert padded.free_slots == 2


def max_diff_all(left: list[list[np.ndarray]], right: list[list[np.ndarray]]) -> float:
    assert [len(c) for c in left] == [len(c) for c in right]
    return max(max_diff(a, b) for a, b in zip(left, right, strict=True))


def pcm16(chunks: list[np.ndarray]) -> np.ndarray:
    """What the server sends for float audio: clipped, scaled, rounded to int16."""
    audio = np.concatenate(chunks)
    return np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int32)


def test_a_request_alone_and_in_a_crowd_is_within_two_lsb(loaded: Loaded) -> None:
    """The same seed gives pcm16 audio within 2 LSB whether alone or among others."""
    arrivals = crowd(loaded, 3)
    model = BatchedVoxCPM(loaded.engine, max_batch=3, buckets=(1, 2, 4))
    crowded = run_batched(model, arrivals)
    for arrival, chunks in zip(arrivals, crowded, strict=True):
        if arrival.leave is not None:
            continue
        solo = alone(model, arrival.spec)
        assert np.abs(pcm16(chunks) - pcm16(solo)).max() <= 2


def test_compiled_bucket_equals_eager(loaded: Loaded) -> None:
    """begin + euler compiled by inductor at bucket 2 give eager's audio (<= 1e-5)."""
    if loaded.engine.architecture != "voxcpm2":
        pytest.skip("the default run compiles one architecture; the slow test does both")
    specs = [
        SynthesisSpec(text=TEXT, seed=7, max_len=3, cfg_value=2.5, inference_timesteps=5),
        SynthesisSpec(text="Short one.", seed=8, max_len=3, cfg_value=1.5, voice_id="both"),
    ]
    arrivals = [Arrival(spec, join=0) for spec in specs]
    eager = BatchedVoxCPM(loaded.engine, max_batch=2, buckets=(2,))
    compiled = BatchedVoxCPM(loaded.engine, max_batch=2, buckets=(2,))
    kernels = compiled._kernels
    kernels.begin = Runner(kernels._begin, "inductor")
    kernels.euler = Runner(kernels._euler, "inductor")
    assert max_diff_all(run_batched(compiled, arrivals), run_batched(eager, arrivals)) <= TOLERANCE


@pytest.mark.slow
def test_compiled_steps_equal_eager_under_churn(loaded: Loaded) -> None:
    """With --compile on (inductor) every bucket a churning batch uses gives eager's audio."""
    arrivals = crowd(loaded, 2)
    compiled = BatchedVoxCPM(loaded.engine, max_batch=2, compile="on")
    assert compiled.mode == "inductor"
    assert compiled.buckets == [1, 2]
    eager = BatchedVoxCPM(loaded.engine, max_batch=2, compile="off")
    assert max_diff_all(run_batched(compiled, arrivals), run_batched(eager, arrivals)) <= TOLERANCE
