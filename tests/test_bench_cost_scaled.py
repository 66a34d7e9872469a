"""Cost-scaled targets: a copy with N times the layers or M times the FFN width that decodes exactly as the original."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader

from localspec.benchmark.cost_scaled import Scale, cached_scaled_copy, write_scaled
from localspec.engine import Engine, EngineSettings, GenerationRequest
from localspec.errors import LocalspecError

PROMPTS = ("def add(a, b):\n    return", "x = [1, 2, 3]\nfor item in x:\n", "class Stack:\n    def")


def _greedy_tokens(path: Path) -> list[list[int]]:
    engine = Engine(EngineSettings(target_path=path, n_ctx=256, slots=1, threads=1, mode="none"))
    try:
        return [
            engine.complete(GenerationRequest(prompt=prompt, max_tokens=24, speculative="none")).token_ids
            for prompt in PROMPTS
        ]
    finally:
        engine.close()


def _shape(reader: GGUFReader, name: str) -> tuple[int, ...]:
    tensor = next(t for t in reader.tensors if t.name == name)
    return tuple(int(n) for n in tensor.shape)


def _field(reader: GGUFReader, key: str) -> int:
    field = reader.fields[key]
    return int(field.parts[field.data[0]][0])


@pytest.fixture(scope="module")
def q8_target(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny target quantized by llama.cpp (Q8_0): quantized tensors are stored as rows of blocks of bytes."""
    import llama_cpp

    path = tmp_path_factory.mktemp("q8") / "target-q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_cpp.llama_model_quantize(str(tiny_models.target).encode(), str(path).encode(), params) == 0
    return path


@pytest.mark.parametrize("quantized", [False, True], ids=["f32", "q8_0"])
@pytest.mark.parametrize("scale", [Scale(layers=3), Scale(ffn=4), Scale(layers=2, ffn=2)], ids=str)
def test_a_cost_scaled_copy_is_bigger_and_decodes_exactly_as_the_original(
    tiny_models, q8_target: Path, tmp_path: Path, scale: Scale, quantized: bool
) -> None:
    source = q8_target if quantized else tiny_models.target
    scaled = write_scaled(source, tmp_path / "scaled.gguf", scale)
    original, copy = GGUFReader(source), GGUFReader(scaled)
    layers, width = _field(original, "llama.block_count"), _field(original, "llama.feed_forward_length")
    assert _field(copy, "llama.block_count") == layers * scale.layers
    assert _field(copy, "llama.feed_forward_length") == width * scale.ffn
    last = f"blk.{layers * scale.layers - 1}."
    n_embd = _shape(original, "blk.0.attn_output.weight")[0]
    # gguf shapes are (columns, rows): FFN matrices of the new width, in every layer including the added ones.
    assert _shape(copy, last + "ffn_up.weight") == (n_embd, width * scale.ffn)
    assert _shape(copy, last + "ffn_down.weight") == (width * scale.ffn, n_embd)
    assert len(copy.tensors) == len(original.tensors) + 9 * layers * (scale.layers - 1)  # 9 tensors per layer
    assert _greedy_tokens(scaled) == _greedy_tokens(source)


def test_the_scaled_copy_is_written_once_and_reused(tiny_models, tmp_path: Path) -> None:
    progress: list[tuple[int, int]] = []
    path, written = cached_scaled_copy(
        tiny_models.target, Scale(layers=2), tmp_path, lambda done, total: progress.append((done, total))
    )
    assert written and path.is_file() and path.parent == tmp_path
    assert progress and progress[-1][0] == progress[-1][1] > 0  # progress reaches the total it announced
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    modified = path.stat().st_mtime_ns
    again, written_again = cached_scaled_copy(tiny_models.target, Scale(layers=2), tmp_path)
    assert (again, written_again) == (path, False) and path.stat().st_mtime_ns == modified
    other, _ = cached_scaled_copy(tiny_models.target, Scale(ffn=2), tmp_path)
    assert other != path  # another scale is another file


def test_scaling_factors_below_one_are_refused() -> None:
    with pytest.raises(LocalspecError, match="at least 1"):
        Scale(layers=0)
    assert Scale(layers=5).label() == "cost-scaled (x5 layers)"
    assert Scale(layers=2, ffn=6).label() == "cost-scaled (x2 layers, x6 FFN)"
