"""Write a tiny GGUF with a real model's tokenizer and random weights, to measure what lies outside the engine.

Usage: python bench/overhead_model.py SOURCE.gguf OUT.gguf

The copy keeps SOURCE's vocabulary, merges, special tokens and chat template, and gets two layers 64 wide: a pass
costs about a millisecond on a CPU (most of it the output layer over the vocabulary), so `localspec bench-editor
--target OUT.gguf --draft none --max-tokens 7` times the language server, HTTP and the daemon's own work on a
suggestion with the real tokenizer's prompts (the test models' byte-level tokenizer makes a prompt four times as
many tokens). Its text is noise; only times are meaningful. Llama and Qwen2 architectures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

from localspec.benchmark.cost_scaled import field_value

WIDTH, LAYERS, HEADS, KV_HEADS, FFN = 64, 2, 4, 2, 128
ARCHITECTURES = ("llama", "qwen2")  # qwen2's attention has biases


def write_overhead_model(source: Path, destination: Path) -> Path:
    reader = GGUFReader(source)
    arch = str(field_value(reader.fields["general.architecture"])[0])
    if arch not in ARCHITECTURES:
        raise SystemExit(f"{source.name} is a {arch} model; this writes {' or '.join(ARCHITECTURES)} ones.")
    writer = GGUFWriter(destination, arch)
    for name, field in reader.fields.items():
        # The tokenizer and the model's description; the shapes and the weights' format are the copy's own.
        if name.startswith(("tokenizer.", "general.")) and name not in (
            "general.architecture",
            "general.file_type",
        ):
            value, sub = field_value(field)
            writer.add_key_value(name, value, field.types[0], sub_type=sub)
    writer.add_context_length(32768)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    rng = np.random.default_rng(0)

    def weights(*shape: int, scale: float = 0.05) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    kv_width = KV_HEADS * (WIDTH // HEADS)
    writer.add_tensor("token_embd.weight", weights(vocab, WIDTH, scale=0.5).astype(np.float16))
    writer.add_tensor("output_norm.weight", np.ones(WIDTH, np.float32))
    writer.add_tensor("output.weight", weights(vocab, WIDTH, scale=0.5).astype(np.float16))
    for layer in range(LAYERS):
        block = f"blk.{layer}."
        writer.add_tensor(block + "attn_norm.weight", np.ones(WIDTH, np.float32))
        for part, rows in (("q", WIDTH), ("k", kv_width), ("v", kv_width)):
            writer.add_tensor(f"{block}attn_{part}.weight", weights(rows, WIDTH))
            if arch == "qwen2":
                writer.add_tensor(f"{block}attn_{part}.bias", weights(rows))
        writer.add_tensor(block + "attn_output.weight", weights(WIDTH, WIDTH))
        writer.add_tensor(block + "ffn_norm.weight", np.ones(WIDTH, np.float32))
        writer.add_tensor(block + "ffn_gate.weight", weights(FFN, WIDTH))
        writer.add_tensor(block + "ffn_up.weight", weights(FFN, WIDTH))
        writer.add_tensor(block + "ffn_down.weight", weights(WIDTH, FFN))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("destination", type=Path)
    args = parser.parse_args()
    print(write_overhead_model(args.source, args.destination))


if __name__ == "__main__":
    main()
