"""What a GGUF file is, read from its header with the `gguf` package (weights are mapped, never loaded)."""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localspec.errors import ModelLoadError

GGUF_MAGIC = b"GGUF"
# Token texts llama.cpp recognises as fill-in-the-middle markers when the ids are not in the metadata.
_FIM_TEXTS = {
    "prefix": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "▁<PRE>"),
    "suffix": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "▁<SUF>"),
    "middle": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "▁<MID>"),
}
_FIM_KEYS = {"prefix": "fim_pre", "suffix": "fim_suf", "middle": "fim_mid"}


@dataclass
class GGUFInfo:
    path: str
    size: int
    architecture: str
    name: str = ""
    size_label: str = ""
    parameters: int = 0
    quantization: str = ""
    context_length: int | None = None
    vocab_size: int = 0
    vocab_type: str = ""
    tokenizer_pre: str = ""
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    fim_tokens: dict[str, str] = field(default_factory=dict)
    has_chat_template: bool = False
    # Bytes of llama.cpp's default (f16) KV cache per token of context, over all layers; None when the
    # metadata does not describe attention (a recurrent model) or is incomplete.
    kv_bytes_per_token: int | None = None

    @property
    def has_fim(self) -> bool:
        return len(self.fim_tokens) == 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"has_fim": self.has_fim}


def _corrupt(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"{path} is not a usable GGUF model: {why}. If it was downloaded, the download is broken: remove it "
        "and pull it again (`localspec models rm NAME` then `localspec models pull NAME`); if it is your own "
        "file, re-export or re-download it."
    )


def _value(fields: dict[str, Any], key: str) -> Any:
    f = fields.get(key)
    return None if f is None else f.contents()


def _kv_bytes_per_token(fields: dict[str, Any], arch: str) -> int | None:
    """K and V, f16, for every layer: sum over layers of kv_heads x (key_length + value_length) x 2 bytes."""
    n_layer = _value(fields, f"{arch}.block_count")
    n_head = _value(fields, f"{arch}.attention.head_count")
    n_embd = _value(fields, f"{arch}.embedding_length")
    if n_layer is None or n_head is None:
        return None
    heads = [int(h) for h in n_head] if isinstance(n_head, list) else [int(n_head)] * int(n_layer)
    n_head_kv = _value(fields, f"{arch}.attention.head_count_kv")
    if n_head_kv is None:
        kv_heads = heads
    else:
        kv_heads = (
            [int(h) for h in n_head_kv] if isinstance(n_head_kv, list) else [int(n_head_kv)] * int(n_layer)
        )
    widest = max(heads, default=0)
    default_dim = int(n_embd) // widest if n_embd is not None and widest else None
    key = _value(fields, f"{arch}.attention.key_length") or default_dim
    value = _value(fields, f"{arch}.attention.value_length") or default_dim
    if not key or not value:
        return None
    return sum(kv_heads) * (int(key) + int(value)) * 2


def read_gguf_info(path: Path) -> GGUFInfo:
    """Metadata of a GGUF file; ModelLoadError (with what to do) if it is missing or corrupt."""
    import gguf  # heavy (numpy); only commands that inspect files pay for it

    path = Path(path)
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelLoadError(
            f"Cannot read {path}: {exc.strerror or exc}. Check the path and permissions."
        ) from exc
    if magic != GGUF_MAGIC:
        raise _corrupt(path, f"it does not start with the GGUF magic bytes (found {magic!r})")
    try:
        reader = gguf.GGUFReader(path, "r")
        fields = reader.fields
        arch = str(_value(fields, "general.architecture") or "")
        tokens = _value(fields, "tokenizer.ggml.tokens") or []
        parameters = sum(int(t.n_elements) for t in reader.tensors)
        tensor_types = Counter(t.tensor_type.name for t in reader.tensors)
        file_type = _value(fields, "general.file_type")
        kv_bytes_per_token = _kv_bytes_per_token(fields, arch) if arch else None
    except (ValueError, IndexError, KeyError, TypeError, struct.error, OSError) as exc:
        raise _corrupt(path, f"its header cannot be parsed ({type(exc).__name__}: {exc})") from exc
    if not arch:
        raise _corrupt(path, "it has no general.architecture key")
    quantization = ""
    if file_type is not None:
        try:
            quantization = (
                gguf.LlamaFileType(int(file_type)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
            )
        except ValueError:
            quantization = f"file type {file_type}"
    elif tensor_types:
        quantization = tensor_types.most_common(1)[0][0]
    fim: dict[str, str] = {}
    for part, key in _FIM_KEYS.items():
        token_id = _value(fields, f"tokenizer.ggml.{key}_token_id")
        if token_id is not None and 0 <= int(token_id) < len(tokens):
            fim[part] = tokens[int(token_id)]
    if len(fim) < 3:
        present = set(tokens)
        for part, texts in _FIM_TEXTS.items():
            found = next((t for t in texts if t in present), None)
            if found and part not in fim:
                fim[part] = found
    bos, eos = _value(fields, "tokenizer.ggml.bos_token_id"), _value(fields, "tokenizer.ggml.eos_token_id")
    context = _value(fields, f"{arch}.context_length")
    return GGUFInfo(
        path=str(path),
        size=path.stat().st_size,
        architecture=arch,
        name=str(_value(fields, "general.name") or ""),
        size_label=str(_value(fields, "general.size_label") or ""),
        parameters=parameters,
        quantization=quantization,
        context_length=int(context) if context is not None else None,
        vocab_size=len(tokens),
        vocab_type=str(_value(fields, "tokenizer.ggml.model") or ""),
        tokenizer_pre=str(_value(fields, "tokenizer.ggml.pre") or ""),
        bos_token_id=int(bos) if bos is not None else None,
        eos_token_id=int(eos) if eos is not None else None,
        fim_tokens=fim,
        has_chat_template="tokenizer.chat_template" in fields,
        kv_bytes_per_token=kv_bytes_per_token,
    )


def looks_like_gguf(path: Path) -> bool:
    """A cheap sniff (magic bytes only) for files too large to parse on every check."""
    try:
        with Path(path).open("rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False
