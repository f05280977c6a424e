"""The real engine: a VoxCPM model loaded through voxcpm's own loader."""

from __future__ import annotations

import re
import sys
from collections.abc import Generator
from typing import Any

import attrs
import numpy as np
import structlog

from voxtrio.protocol._voice_rules import apply_voice_description
from voxtrio.speech._engine import StepCallback, SynthesisSpec, TextTooLong
from voxtrio.voices._prompts import PromptBuilder, voxcpm_prompt_builder
from voxtrio.voices._store import VoiceStore

log = structlog.get_logger("voxtrio.engine")

_WHITESPACE = re.compile(r"\s+")
_WARM_UP_TEXT = "Hello, this is a warm-up sentence."


@attrs.frozen(kw_only=True)
class VoxCPMOptions:
    """How to load the model (the `serve` flags of the same names)."""

    model: str = "openbmb/VoxCPM-0.5B"
    device: str = "auto"
    optimize: bool | None = None  # None: on for CUDA (torch.compile + CUDA graphs), off elsewhere
    denoiser_path: str | None = None
    cache_dir: str | None = None
    local_files_only: bool = False
    warm_normalizer: bool = True
    torch_threads: int | None = None  # None: leave torch's default


def resolve_device(device: str) -> str:
    """`auto` means CUDA when this torch sees a GPU, else CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class VoxCPMEngine:
    """One VoxCPM model instance; used by the one instance thread that built it."""

    def __init__(self, model: Any, *, device: str, warm_normalizer: bool = True) -> None:
        import torch

        from . import _seeding

        self._model = model
        self._tts = model.tts_model
        self._device = device
        self._warm_normalizer = warm_normalizer
        self._normalizer: Any = None
        # Set once the voice library exists (after loading, before any request).
        self.voices: VoiceStore | None = None
        self._build_prompt: PromptBuilder | None = None
        _seeding.install()
        self._generator = torch.Generator(device=self._tts.device)

    @classmethod
    def load(cls, options: VoxCPMOptions) -> VoxCPMEngine:
        from voxtrio.speech._voxcpm_import import import_voxcpm

        voxcpm = import_voxcpm()
        device = resolve_device(options.device)
        if options.torch_threads and device == "cpu":
            import torch

            # Process-wide: every instance shares the cores with the event loop and codecs.
            # Oversubscribed OpenMP threads spin against each other and run many times slower.
            torch.set_num_threads(options.torch_threads)
        optimize = device.startswith("cuda") if options.optimize is None else options.optimize
        log.info("model_loading", model=options.model, device=device, optimize=optimize)
        model = voxcpm.VoxCPM.from_pretrained(
            options.model,
            load_denoiser=options.denoiser_path is not None,
            zipenhancer_model_id=options.denoiser_path,
            cache_dir=options.cache_dir,
            local_files_only=options.local_files_only,
            optimize=optimize,
            device=device,
        )
        return cls(model, device=device, warm_normalizer=options.warm_normalizer)

    @property
    def sample_rate(self) -> int:
        return int(self._tts.sample_rate)

    @property
    def tts_model(self) -> Any:
        return self._tts

    @property
    def device(self) -> str:
        return self._device

    @property
    def architecture(self) -> str:
        return "voxcpm2" if type(self._tts).__name__ == "VoxCPM2Model" else "voxcpm"

    def _text_tokens(self, text: str) -> int:
        return len(self._tts.text_tokenizer(text))

    def max_steps(self, spec: SynthesisSpec) -> int:
        # voxcpm's own cap: min(tokens * ratio + 10, max_len), within the context left.
        tokens = self._text_tokens(self._prepare_text(spec.text, normalize=False))
        room = int(self._tts.config.max_length) - tokens - 1
        cap = min(int(tokens * spec.retry_badcase_ratio_threshold + 10), spec.max_len, room)
        return max(1, cap)

    def badcase_steps(self, spec: SynthesisSpec) -> float:
        """Chunks at which a non-streaming generation is a bad case that voxcpm retries:
        audio at least `retry_badcase_ratio_threshold` times the text's token count."""
        tokens = self._text_tokens(self.target_text(spec))
        return tokens * spec.retry_badcase_ratio_threshold

    def _context_positions(self, text: str, prompt_cache: Any) -> int:
        """Positions of the model's context that voxcpm's prefill fills: the text tokens
        (after the prompt's transcript in continuation modes), the audio-start token, the
        prompt audio and the reference audio with its two markers."""
        if not prompt_cache:
            return self._text_tokens(text) + 1
        mode = prompt_cache.get("mode", "continuation")
        if mode in ("continuation", "ref_continuation"):
            text = prompt_cache.get("prompt_text", "") + text
        positions = self._text_tokens(text) + 1
        if mode != "reference" and (audio := prompt_cache.get("audio_feat")) is not None:
            positions += int(audio.shape[0])
        if (reference := prompt_cache.get("ref_audio_feat")) is not None:
            positions += int(reference.shape[0]) + 2
        return positions

    def fit_max_len(self, text: str, prompt_cache: Any, max_len: int) -> int:
        """`max_len` capped to the model's context for this text and prompt (see `_fit`)."""
        return self._fit(text, prompt_cache, max_len)

    def _fit(self, text: str, prompt_cache: Any, max_len: int) -> int:
        """The step cap that keeps text and audio within the model's context (its KV
        cache: 8192 positions on VoxCPM2, 4096 on 1.x). The text and prompt may take at
        most half of it; past that TextTooLong, before any audio."""
        context = int(self._tts.config.max_length)
        positions = self._context_positions(text, prompt_cache)
        if positions > context // 2:
            raise TextTooLong(
                f"too long for this model: {positions} tokens (text after normalisation, "
                f"with the voice prompt), at most {context // 2}: half of the model's "
                f"{context}-token context, the other half is for the audio; "
                "send shorter text or split it into several requests"
            )
        return min(max_len, context - positions)

    def _prepare_text(self, text: str, *, normalize: bool) -> str:
        # What voxcpm's VoxCPM._generate does before it tokenises.
        text = _WHITESPACE.sub(" ", text.replace("\n", " "))
        if normalize:
            text = self._get_normalizer().normalize(text)
        return text

    def _get_normalizer(self) -> Any:
        if self._normalizer is None:
            from voxcpm.utils.text_normalize import TextNormalizer

            self._normalizer = TextNormalizer()
        return self._normalizer

    def target_text(self, spec: SynthesisSpec) -> str:
        """The text voxcpm is given: cleaned, optionally normalised, voice description added."""
        # Normalise first: the normaliser must never see the description's parentheses.
        text = self._prepare_text(spec.text, normalize=spec.normalize)
        return apply_voice_description(text, spec.voice_description)

    def prompt_cache_for(self, spec: SynthesisSpec) -> Any:
        """voxcpm's prompt cache for the request's voice (None: zero-shot)."""
        return self._prompt_cache(spec)

    def _prompt_cache(self, spec: SynthesisSpec) -> Any:
        """The prompt features of the request's voice, built once and cached."""
        if spec.voice_id is None and spec.prompt_audio is None:
            return None
        if self.voices is None:
            raise RuntimeError("voice cloning asked of an engine with no voice library")
        if self._build_prompt is None:
            self._build_prompt = voxcpm_prompt_builder(self._tts)
        if spec.voice_id is not None:
            return self.voices.prompt_for(
                spec.voice_id, self._build_prompt, field="params.voice_id"
            )
        assert spec.prompt_audio is not None
        assert spec.prompt_mode is not None
        return self.voices.prompt_for_audio(
            spec.prompt_audio, spec.prompt_text, spec.prompt_mode, self._build_prompt
        )

    def generate(
        self, spec: SynthesisSpec, on_step: StepCallback
    ) -> Generator[np.ndarray, None, None]:
        from . import _seeding

        text = self.target_text(spec)
        prompt_cache = self._prompt_cache(spec)
        max_len = self._fit(text, prompt_cache, spec.max_len)
        _seeding.use_generator(self._generator)
        self._generator.manual_seed(spec.seed)
        # Non-streaming keeps voxcpm's bad-case retry (regenerate when the audio is
        # implausibly long for the text). Both modes run voxcpm's streaming
        # generator so a cancel stops at the next chunk in either; the joined
        # stream equals voxcpm's non-streaming output.
        attempts = spec.retry_badcase_max_times if spec.retry_badcase and not spec.streaming else 1
        attempts = max(1, attempts)
        badcase_steps = self.badcase_steps(spec)
        for attempt in range(1, attempts + 1):
            collected: list[np.ndarray] = []
            stream = self._tts.generate_with_prompt_cache_streaming(
                target_text=text,
                prompt_cache=prompt_cache,
                max_len=max_len,
                inference_timesteps=spec.inference_timesteps,
                cfg_value=spec.cfg_value,
                retry_badcase=False,
                retry_badcase_ratio_threshold=spec.retry_badcase_ratio_threshold,
            )
            try:
                for step, (wav, _tokens, _feats) in enumerate(stream, start=1):
                    on_step(step)
                    chunk = wav.squeeze(0).float().cpu().numpy()
                    if spec.streaming:
                        yield chunk
                    else:
                        collected.append(chunk)
            finally:
                stream.close()
            if spec.streaming:
                return
            if attempt < attempts and len(collected) >= badcase_steps:
                log.info("badcase_retry", attempt=attempt, steps=len(collected))
                continue
            yield np.concatenate(collected) if collected else np.zeros(0, np.float32)
            return

    def warm_up(self) -> None:
        spec = SynthesisSpec(text=_WARM_UP_TEXT, max_len=4, seed=0)
        for chunk in self.generate(spec, lambda _: None):
            del chunk
        if self._warm_normalizer:
            try:
                self._get_normalizer().normalize(_WARM_UP_TEXT)
            except Exception as exc:  # normalisation is optional; say why it is off
                print(f"voxtrio: text normaliser unavailable: {exc}", file=sys.stderr)

    def close(self) -> None:
        self._model = None
        self._tts = None
