"""`localspec models list` says which pairs fit this machine: files + KV cache against GPU memory or RAM.

The memory figures are given through LOCALSPEC_GPU_MEMORY / LOCALSPEC_RAM_MEMORY (this machine has no GPU);
the KV-cache size read from a GGUF is checked against what llama.cpp itself stores per token.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import llama_cpp
import pytest

from localspec.cli import main
from localspec.engine.llama_model import LlamaModel
from localspec.models.catalog import load_catalog
from localspec.models.fit import RUNTIME_BYTES_PER_MODEL, judge
from localspec.models.gguf_info import read_gguf_info
from localspec.models.hardware import Memory, gpu_memory, ram_memory

GB = 1_000_000_000
# A pair whose files are 3 GB + 1 GB, with 100 kB + 20 kB of KV cache per token (sizes as the catalog gives
# them: nothing is downloaded), and a pair of the tiny test models once they are installed.
CATALOG = """
[pairs."big-pair"]
target = "big-t"
draft = "big-d"

[pairs."tiny-pair"]
target = "tiny-t"
draft = "tiny-d"

[pairs."guess-pair"]
target = "guess-t"
draft = "big-d"

[models."guess-t"]
file = "guess-t.gguf"
size = 2000000000
sources = [{ kind = "url", url = "http://127.0.0.1:9/guess-t.gguf" }]

[models."big-t"]
file = "big-t.gguf"
size = 3000000000
kv_bytes_per_token = 100000
sources = [{ kind = "url", url = "http://127.0.0.1:9/big-t.gguf" }]

[models."big-d"]
file = "big-d.gguf"
size = 1000000000
kv_bytes_per_token = 20000
sources = [{ kind = "url", url = "http://127.0.0.1:9/big-d.gguf" }]

[models."tiny-t"]
file = "tiny-t.gguf"
kv_bytes_per_token = 999999999
sources = [{ kind = "url", url = "http://127.0.0.1:9/tiny-t.gguf" }]

[models."tiny-d"]
file = "tiny-d.gguf"
sources = [{ kind = "url", url = "http://127.0.0.1:9/tiny-d.gguf" }]
"""
# big-pair with the default context (4096 tokens x 4 slots): 4 GB of files, 120 kB x 16384 of KV cache.
BIG_PAIR_NEEDS = 4 * GB + 120_000 * 4096 * 4 + 2 * RUNTIME_BYTES_PER_MODEL


@pytest.fixture
def models_dir(localspec_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG, encoding="utf-8")
    monkeypatch.setenv("LOCALSPEC_CATALOG", str(catalog))
    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("LOCALSPEC_MODELS_DIR", str(folder))
    for name in ("MODELS_TARGET", "MODELS_DRAFT", "ENGINE_N_CTX", "ENGINE_SLOTS"):
        monkeypatch.delenv(f"LOCALSPEC_{name}", raising=False)
    return folder


def _fits(capsys: pytest.CaptureFixture[str]) -> dict[str, dict]:
    assert main(["models", "list", "--json"]) == 0
    return {p["name"]: p["fit"] for p in json.loads(capsys.readouterr().out)["pairs"]}


@pytest.mark.parametrize(
    ("gpu", "ram", "verdict"),
    [
        ("24", "64", "gpu"),
        ("24,5", "64", "gpu-if-freed"),  # the GPU is big enough, but something else holds most of it
        ("4", "64", "ram"),
        ("none", "64", "ram"),
        ("none", "6", "too-big"),
    ],
)
def test_list_marks_a_pair_by_the_memory_it_needs(models_dir, capsys, monkeypatch, gpu, ram, verdict):
    monkeypatch.setenv("LOCALSPEC_GPU_MEMORY", gpu)
    monkeypatch.setenv("LOCALSPEC_RAM_MEMORY", ram)
    fit = _fits(capsys)["big-pair"]
    assert fit["verdict"] == verdict
    assert fit["needed_bytes"] == BIG_PAIR_NEEDS
    assert fit["weights_bytes"] == 4 * GB and fit["kv_cache_bytes"] == 120_000 * 4096 * 4
    assert fit["kv_sources"] == {"big-t": "catalog", "big-d": "catalog"}


def test_the_kv_cache_grows_with_the_configured_context_and_slots(models_dir, capsys, monkeypatch):
    # 4 GB of files + 1 GB allowance fit a 7.5 GB GPU with 4096 tokens x 4 slots (2 GB of KV cache), not
    # with 8192 x 4 (3.9 GB): then it runs from RAM.
    monkeypatch.setenv("LOCALSPEC_GPU_MEMORY", "7.5")
    monkeypatch.setenv("LOCALSPEC_RAM_MEMORY", "64")
    assert _fits(capsys)["big-pair"]["verdict"] == "gpu"
    monkeypatch.setenv("LOCALSPEC_ENGINE_N_CTX", "8192")
    fit = _fits(capsys)["big-pair"]
    assert fit["kv_tokens"] == 8192 * 4 and fit["kv_cache_bytes"] == 120_000 * 8192 * 4
    assert fit["verdict"] == "ram"


def test_the_table_shows_the_verdict_and_what_it_was_compared_with(models_dir, capsys, monkeypatch):
    monkeypatch.setenv("LOCALSPEC_GPU_MEMORY", "none")
    monkeypatch.setenv("LOCALSPEC_RAM_MEMORY", "64,32")
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    big = next(line for line in out.splitlines() if "big-pair" in line)
    assert "fits RAM (CPU: slow)" in big and "6.97 GB" in big
    assert "no NVIDIA GPU found" in out and "32.00 GB free of 64.00 GB (env LOCALSPEC_RAM_MEMORY)" in out


def test_an_installed_pair_is_sized_from_its_files_and_gguf_metadata(tiny_models, models_dir, capsys):
    shutil.copy(tiny_models.target, models_dir / "tiny-t.gguf")
    shutil.copy(tiny_models.draft_other, models_dir / "tiny-d.gguf")
    fit = _fits(capsys)["tiny-pair"]
    # The file's metadata wins over the catalog's figure; the size is the file's.
    assert fit["kv_sources"] == {"tiny-t": "gguf", "tiny-d": "gguf"}
    per_token = sum(
        read_gguf_info(p).kv_bytes_per_token or 0 for p in (tiny_models.target, tiny_models.draft_other)
    )
    assert fit["kv_cache_bytes"] == per_token * 4096 * 4
    files = (models_dir / "tiny-t.gguf").stat().st_size + (models_dir / "tiny-d.gguf").stat().st_size
    assert fit["weights_bytes"] == files


def test_a_model_the_catalog_does_not_size_gets_the_rule_of_thumb_or_unknown(models_dir, capsys, monkeypatch):
    monkeypatch.setenv("LOCALSPEC_GPU_MEMORY", "24")
    fits = _fits(capsys)
    # guess-t has a size but no KV figure: 2.5e-5 KV bytes per token per byte of file.
    assert fits["guess-pair"]["kv_sources"] == {"guess-t": "estimate", "big-d": "catalog"}
    assert fits["guess-pair"]["kv_cache_bytes"] == (50_000 + 20_000) * 4096 * 4
    # tiny-pair is neither installed nor sized in the catalog.
    assert fits["tiny-pair"]["verdict"] == "unknown" and fits["tiny-pair"]["needed_bytes"] is None


@pytest.mark.parametrize("model", ["target", "draft_other"])
def test_gguf_kv_bytes_per_token_match_what_llama_cpp_stores(tiny_models, model):
    """A sequence's saved state grows by the K and V of each token plus 12 bytes of cell bookkeeping."""
    path = getattr(tiny_models, model)
    expected = read_gguf_info(path).kv_bytes_per_token
    loaded = LlamaModel(path, role="target", n_ctx_per_seq=256, n_seq=1)
    try:
        loaded.decode(list(range(10, 42)), 0, 0, outputs="none")
        before = llama_cpp.llama_state_seq_get_size(loaded.ctx, 0)
        loaded.decode(list(range(42, 106)), 32, 0, outputs="none")
        after = llama_cpp.llama_state_seq_get_size(loaded.ctx, 0)
    finally:
        loaded.close()
    assert expected is not None and (after - before) / 64 == expected + 12


def test_builtin_pair_descriptions_agree_with_the_fit_rule(localspec_home, capsys, monkeypatch):
    """Each pair fits the GPU its catalog description names (GB as GPUs are sold: GiB), at those slots."""
    monkeypatch.delenv("LOCALSPEC_CATALOG", raising=False)
    monkeypatch.setenv("LOCALSPEC_RAM_MEMORY", "1")
    claims = {
        "qwen2.5-coder-7b+0.5b": [(8, 4)],
        "qwen2.5-coder-14b+0.5b": [(16, 4), (12, 2)],
        "qwen2.5-coder-32b+0.5b": [(24, 2)],
    }
    for pair, cases in claims.items():
        description = load_catalog().pairs[pair].description
        for gib, slots in cases:
            assert f"{gib} GB" in description
            monkeypatch.setenv("LOCALSPEC_ENGINE_SLOTS", str(slots))
            monkeypatch.setenv("LOCALSPEC_GPU_MEMORY", str(gib * 2**30 / GB))
            assert _fits(capsys)[pair]["verdict"] == "gpu", (pair, gib, slots)


def test_judge_prefers_free_gpu_memory_then_all_of_it_then_ram():
    gpu, ram = (
        Memory(total=16 * GB, free=10 * GB, source="test"),
        Memory(total=64 * GB, free=32 * GB, source="test"),
    )
    assert judge(10 * GB, gpu, ram) == "gpu"
    assert judge(10 * GB + 1, gpu, ram) == "gpu-if-freed"
    assert judge(16 * GB + 1, gpu, ram) == "ram"
    assert judge(32 * GB + 1, gpu, ram) == "too-big"
    assert judge(1, None, None) == "unknown" and judge(None, gpu, ram) == "unknown"
    # A GPU the installed llama.cpp cannot use (a CPU-only build) counts as none.
    unusable = Memory(total=16 * GB, free=10 * GB, source="test", usable=False)
    assert judge(1, unusable, ram) == "ram" and judge(1, unusable, None) == "unknown"


@pytest.mark.parametrize("value", ["lots", "8,9", "-1", "8,4,2"])
def test_a_bad_memory_override_is_a_clear_error(models_dir, capsys, monkeypatch, value):
    monkeypatch.setenv("LOCALSPEC_GPU_MEMORY", value)
    assert main(["models", "list"]) == 1
    assert 'use "none", "TOTAL" or "TOTAL,FREE" in GB' in capsys.readouterr().err


def test_the_probes_read_this_machine_without_an_override(monkeypatch):
    monkeypatch.delenv("LOCALSPEC_GPU_MEMORY", raising=False)
    monkeypatch.delenv("LOCALSPEC_RAM_MEMORY", raising=False)
    ram = ram_memory()
    assert ram is not None and 0 < ram.free <= ram.total
    gpu = gpu_memory()  # None on a machine without an NVIDIA driver, such as CI's
    assert gpu is None or (0 <= gpu.free <= gpu.total and gpu.devices)
