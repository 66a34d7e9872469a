"""Whether the vendored llama.cpp's backend sampling picks the right rows where several sequences have samplers.

Usage: python bench/backend_sampling_check.py MODEL.gguf
A top-2 sampler chain on each of three sequences; one sequence's pass of 8 rows right after another's pass of 8
rows. Each row's pick is compared with the argmax of the same pass's whole logits row in a context without
samplers. With llama-cpp-python 0.3.36 the first row comes back wrong (session 38, docs/BENCHMARKS.md). Greedy picks
on the device were tried on sequence 0 only for that reason, and dropped as slower (the thirty-first lease); run this
again on a newer llama.cpp before trying them again.
"""

from __future__ import annotations

import argparse

import llama_cpp
import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    args = parser.parse_args()
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(args.model.encode(), llama_cpp.llama_model_default_params())
    n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))

    def context(samplers: bool) -> llama_cpp.llama_context_p:
        params = llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 1536, 512, 512, 3
        params.n_outputs_max_per_seq = 512
        ctx = llama_cpp.llama_init_from_model(model, params)
        for seq in range(3) if samplers else ():
            chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(2))
            assert llama_cpp.llama_set_sampler(ctx, seq, chain)
        return ctx

    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def decode(ctx: llama_cpp.llama_context_p, tokens: list[int], start: int, seq: int, outputs: int) -> None:
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = i >= len(tokens) - outputs
        assert llama_cpp.llama_decode(ctx, batch) == 0

    def passes(ctx: llama_cpp.llama_context_p) -> None:
        decode(ctx, [1, 2, 3], 0, 0, 1)
        decode(ctx, [1, 2, 3], 0, 1, 1)
        decode(ctx, [4] * 8, 3, 1, 8)  # another sequence's pass of 8 rows, then this one's
        decode(ctx, [5] * 8, 3, 0, 8)

    plain, sampling = context(False), context(True)
    passes(plain)
    passes(sampling)
    wrong = 0
    for row in range(8):
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(plain, row - 8), shape=(n_vocab,))
        tokens = llama_cpp.llama_get_sampled_candidates_ith(sampling, row - 8)
        values = llama_cpp.llama_get_sampled_logits_ith(sampling, row - 8)
        picked, whole = tokens[0] if values[0] >= values[1] else tokens[1], int(np.argmax(logits))
        wrong += int(picked != whole)
        print(f"row {row}: whole row {whole}, picked on the device {picked}")
    print("all rows right" if not wrong else f"{wrong} of 8 rows wrong")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
