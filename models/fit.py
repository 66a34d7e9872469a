"""Whether a target/draft pair fits this machine: its files plus their KV cache, against GPU memory or RAM.

A pair needs both files, each model's KV cache for the whole context the engine allocates (n_ctx tokens for
each of `slots` sequences, f16 K and V), and an allowance per model for llama.cpp's compute buffers. It
fits the GPU when that is at most the GPU's free memory, and RAM (where it runs on the CPU, slowly) when it
is at most the RAM available.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from localspec.errors import ModelLoadError
from localspec.models.catalog import CatalogModel
from localspec.models.hardware import Memory

# An allowance per loaded model for llama.cpp's compute buffers and the GPU runtime: the logits alone of a
# 512-token batch over Qwen2.5's 152K-token vocabulary take 0.31 GB.
RUNTIME_BYTES_PER_MODEL = 500_000_000
# KV bytes per token per byte of weights when neither the file nor the catalog gives the model's shape:
# Qwen2.5-Coder 0.5B-14B and Llama-3-8B at Q4_K_M lie between 1.2e-5 and 2.7e-5.
KV_BYTES_PER_FILE_BYTE = 2.5e-5

Verdict = Literal["gpu", "gpu-if-freed", "ram", "too-big", "unknown"]
LABELS: dict[Verdict, str] = {
    "gpu": "fits GPU",
    "gpu-if-freed": "fits GPU if freed",
    "ram": "fits RAM (CPU: slow)",
    "too-big": "too big",
    "unknown": "unknown",
}


@dataclass(frozen=True)
class ModelNeed:
    """One model's file size and KV cache per token, and where the KV figure came from."""

    name: str
    file_bytes: int | None
    kv_bytes_per_token: int | None
    kv_source: Literal["gguf", "catalog", "estimate", "unknown"]


def model_need(model: CatalogModel, models_dir: Path) -> ModelNeed:
    """From the installed file when there is one (its size, its GGUF metadata), else from the catalog."""
    from localspec.models.install import is_installed

    path = models_dir / model.file
    if is_installed(model, models_dir):
        from localspec.models.gguf_info import read_gguf_info

        try:
            info = read_gguf_info(path)
        except ModelLoadError:  # a damaged file: `models verify` reports it; size it from the catalog
            info = None
        if info is not None and info.kv_bytes_per_token:
            return ModelNeed(model.name, info.size, info.kv_bytes_per_token, "gguf")
        size: int | None = path.stat().st_size
    else:
        size = model.size
    if model.kv_bytes_per_token:
        return ModelNeed(model.name, size, model.kv_bytes_per_token, "catalog")
    if size:
        return ModelNeed(model.name, size, int(size * KV_BYTES_PER_FILE_BYTE), "estimate")
    return ModelNeed(model.name, size, None, "unknown")


@dataclass(frozen=True)
class PairNeed:
    """Memory a pair needs with `tokens` (= n_ctx x slots) of KV cache in each model."""

    models: tuple[ModelNeed, ...]
    tokens: int

    @property
    def weights(self) -> int | None:
        sizes = [m.file_bytes for m in self.models]
        return None if None in sizes else sum(s or 0 for s in sizes)

    @property
    def kv_cache(self) -> int | None:
        per_token = [m.kv_bytes_per_token for m in self.models]
        return None if None in per_token else sum(p or 0 for p in per_token) * self.tokens

    @property
    def runtime(self) -> int:
        return RUNTIME_BYTES_PER_MODEL * len(self.models)

    @property
    def total(self) -> int | None:
        weights, kv = self.weights, self.kv_cache
        return None if weights is None or kv is None else weights + kv + self.runtime


def judge(needed: int | None, gpu: Memory | None, ram: Memory | None) -> Verdict:
    """The GPU first (free memory, then all of it), then available RAM."""
    if gpu is not None and not gpu.usable:
        gpu = None
    if needed is None or (gpu is None and ram is None):
        return "unknown"
    if gpu is not None and needed <= gpu.free:
        return "gpu"
    if gpu is not None and needed <= gpu.total:
        return "gpu-if-freed"
    if ram is not None and needed <= ram.free:
        return "ram"
    return "too-big"


@dataclass(frozen=True)
class Fit:
    verdict: Verdict
    need: PairNeed

    @property
    def label(self) -> str:
        return LABELS[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "label": self.label,
            "needed_bytes": self.need.total,
            "weights_bytes": self.need.weights,
            "kv_cache_bytes": self.need.kv_cache,
            "runtime_bytes": self.need.runtime,
            "kv_tokens": self.need.tokens,
            "kv_sources": {m.name: m.kv_source for m in self.need.models},
        }


def pair_fit(
    models: tuple[CatalogModel, ...],
    models_dir: Path,
    *,
    n_ctx: int,
    slots: int,
    gpu: Memory | None,
    ram: Memory | None,
) -> Fit:
    need = PairNeed(tuple(model_need(m, models_dir) for m in models), n_ctx * slots)
    return Fit(judge(need.total, gpu, ram), need)
