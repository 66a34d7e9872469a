"""Tiny llama-architecture GGUF models written with the `gguf` package, for fast real llama.cpp tests.

The tokenizer is byte-level BPE ("gpt2"): 256 byte tokens, a few merges, and special tokens (BOS, EOS
and the FIM set), so any text tokenizes and multi-byte UTF-8 characters can split across tokens.
Weights are random but seeded, so a model written twice is identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

MERGES = [("d", "e"), ("e", "f"), ("de", "f"), ("Ġ", "t"), ("i", "n"), ("r", "e"), ("o", "n"), ("Ġ", "a")]
SPECIALS = [
    "<s>",
    "</s>",
    "<|fim_prefix|>",
    "<|fim_suffix|>",
    "<|fim_middle|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<|im_start|>",
    "<|im_end|>",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, which byte-level BPE vocabularies use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def vocabulary(with_fim: bool = True) -> tuple[list[str], list[int]]:
    byte_map = _bytes_to_unicode()
    tokens = [byte_map[b] for b in range(256)] + ["".join(pair) for pair in MERGES]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    specials = (
        SPECIALS
        if with_fim
        else [s for s in SPECIALS if "fim" not in s and "file_sep" not in s and "repo" not in s]
    )
    tokens += specials
    types += [gguf.TokenType.CONTROL] * len(specials)
    return tokens, [int(t) for t in types]


@dataclass(frozen=True)
class TinySpec:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_head_kv: int = 2
    n_ff: int = 128
    n_ctx: int = 2048
    seed: int = 0
    noise_from: int | None = None  # build from this seed's weights plus noise (a "similar" draft)
    noise: float = 0.0
    with_fim: bool = True
    eos_token: str = "</s>"
    add_bos: bool = True
    endless: bool = False  # never pick a special token (no end of generation): replies run to max_tokens


def _weights(spec: TinySpec, n_vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(spec.noise_from if spec.noise_from is not None else spec.seed)
    e, ff = spec.n_embd, spec.n_ff
    kv = e // spec.n_head * spec.n_head_kv

    def mat(rows: int, cols: int, scale: float) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) * scale).astype(np.float32)

    tensors = {
        "token_embd.weight": mat(n_vocab, e, 1.0),
        "output_norm.weight": np.ones(e, dtype=np.float32),
        "output.weight": mat(n_vocab, e, 0.6),
    }
    for i in range(spec.n_layer):
        tensors |= {
            f"blk.{i}.attn_norm.weight": np.ones(e, dtype=np.float32),
            f"blk.{i}.attn_q.weight": mat(e, e, 0.3),
            f"blk.{i}.attn_k.weight": mat(kv, e, 0.3),
            f"blk.{i}.attn_v.weight": mat(kv, e, 0.3),
            f"blk.{i}.attn_output.weight": mat(e, e, 0.3),
            f"blk.{i}.ffn_norm.weight": np.ones(e, dtype=np.float32),
            f"blk.{i}.ffn_gate.weight": mat(ff, e, 0.3),
            f"blk.{i}.ffn_up.weight": mat(ff, e, 0.3),
            f"blk.{i}.ffn_down.weight": mat(e, ff, 0.3),
        }
    if spec.noise_from is not None:
        noise_rng = np.random.default_rng(spec.seed + 10_000)
        for name, value in tensors.items():
            if value.ndim == 2:
                tensors[name] = value + (
                    noise_rng.standard_normal(value.shape) * spec.noise * value.std()
                ).astype(np.float32)
    if spec.endless:
        tensors["output.weight"][256 + len(MERGES) :] = 0.0
    return tensors


def write_tiny_model(path: Path, spec: TinySpec = TinySpec(), name: str = "tiny") -> Path:
    tokens, types = vocabulary(spec.with_fim)
    index = {t: i for i, t in enumerate(tokens)}
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(spec.n_ctx)
    writer.add_embedding_length(spec.n_embd)
    writer.add_block_count(spec.n_layer)
    writer.add_feed_forward_length(spec.n_ff)
    writer.add_head_count(spec.n_head)
    writer.add_head_count_kv(spec.n_head_kv)
    writer.add_rope_dimension_count(spec.n_embd // spec.n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{a} {b}" for a, b in MERGES])
    writer.add_bos_token_id(index["<s>"])
    writer.add_eos_token_id(index[spec.eos_token])
    writer.add_add_bos_token(spec.add_bos)
    writer.add_chat_template(CHAT_TEMPLATE)
    if spec.with_fim:
        writer.add_uint32("tokenizer.ggml.fim_pre_token_id", index["<|fim_prefix|>"])
        writer.add_uint32("tokenizer.ggml.fim_suf_token_id", index["<|fim_suffix|>"])
        writer.add_uint32("tokenizer.ggml.fim_mid_token_id", index["<|fim_middle|>"])
        writer.add_uint32("tokenizer.ggml.fim_pad_token_id", index["<|fim_pad|>"])
        writer.add_uint32("tokenizer.ggml.fim_rep_token_id", index["<|repo_name|>"])
        writer.add_uint32("tokenizer.ggml.fim_sep_token_id", index["<|file_sep|>"])
    for tensor_name, value in _weights(spec, len(tokens)).items():
        writer.add_tensor(tensor_name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_endless_pair(folder: Path) -> tuple[Path, Path]:
    """A target and a similar draft that never emit end-of-generation: a reply streams until max_tokens. Their
    training context is long, so a server that caps its context at it (llama-server) streams long replies too."""
    target = write_tiny_model(
        folder / "target.gguf", TinySpec(seed=1, endless=True, n_ctx=32768), name="endless-target"
    )
    draft = write_tiny_model(
        folder / "draft.gguf",
        TinySpec(seed=2, noise_from=1, noise=0.05, endless=True, n_ctx=32768),
        name="endless-draft",
    )
    return target, draft
