"""Shared fixtures: tiny GGUF models written by the tests, and an isolated localspec home per test."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import TinySpec, write_tiny_model  # noqa: E402


@dataclass(frozen=True)
class TinyModels:
    target: Path
    draft_same: Path  # identical weights: acceptance must be 100%
    draft_similar: Path  # target weights plus noise: mixed acceptance
    draft_other: Path  # unrelated weights, same tokenizer: low acceptance
    draft_bad_vocab: Path  # different special tokens: incompatible with the target
    no_fim: Path  # a model without FIM tokens


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    folder = tmp_path_factory.mktemp("tiny-models")
    return TinyModels(
        target=write_tiny_model(folder / "target.gguf", TinySpec(seed=1), name="tiny-target"),
        draft_same=write_tiny_model(folder / "draft-same.gguf", TinySpec(seed=1), name="tiny-draft-same"),
        draft_similar=write_tiny_model(
            folder / "draft-similar.gguf", TinySpec(seed=2, noise_from=1, noise=0.35), name="tiny-draft-similar"
        ),
        draft_other=write_tiny_model(
            folder / "draft-other.gguf", TinySpec(seed=3, n_embd=32, n_ff=64), name="tiny-draft-other"
        ),
        draft_bad_vocab=write_tiny_model(
            folder / "draft-bad-vocab.gguf", TinySpec(seed=4, with_fim=False), name="tiny-draft-bad-vocab"
        ),
        no_fim=write_tiny_model(folder / "no-fim.gguf", TinySpec(seed=5, with_fim=False), name="tiny-no-fim"),
    )


@pytest.fixture
def localspec_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every config/data/state/log folder under one temporary directory (see localspec.locations)."""
    home = tmp_path / "localspec-home"
    monkeypatch.setenv("LOCALSPEC_HOME", str(home))
    for name in ("CONFIG", "DATA", "STATE", "LOG", "CACHE"):
        monkeypatch.delenv(f"LOCALSPEC_{name}_DIR", raising=False)
    return home
