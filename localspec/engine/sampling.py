"""The target's own choice of token at a logits row, exactly as the target alone would choose.

Greedy without penalties reads llama.cpp's logits buffer in place (argmax and top-2 margin, no copies).
Everything else goes through a llama.cpp sampler chain, which also keeps the penalty history and the seeded
RNG: one draw per settled position, so a speculative run consumes the RNG exactly like a target-alone run.
"""

from __future__ import annotations

import contextlib
import math
import random

import llama_cpp
import numpy as np

from localspec.engine.llama_model import LlamaModel, top_two, top_two_expecting
from localspec.engine.types import SamplingParams
from localspec.errors import InvalidRequestError


def validate_sampling(params: SamplingParams) -> None:
    checks = [
        (params.temperature >= 0.0, "temperature must be >= 0"),
        (params.top_k >= 0, "top_k must be >= 0"),
        (0.0 < params.top_p <= 1.0, "top_p must be in (0, 1]"),
        (0.0 <= params.min_p <= 1.0, "min_p must be in [0, 1]"),
        (params.repeat_penalty > 0.0, "repeat_penalty must be > 0"),
        (params.repeat_last_n >= 0, "repeat_last_n must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidRequestError(f"Invalid sampling parameter: {message}.")


class TokenPicker:
    def __init__(self, model: LlamaModel, params: SamplingParams, history: list[int]) -> None:
        validate_sampling(params)
        self.model = model
        self.fast_greedy = params.greedy and params.repeat_penalty == 1.0
        self._chain = None
        if not self.fast_greedy:
            self._chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
            chain = self._chain
            if params.repeat_penalty != 1.0:
                llama_cpp.llama_sampler_chain_add(
                    chain,
                    llama_cpp.llama_sampler_init_penalties(
                        model.n_vocab, params.repeat_last_n, params.repeat_penalty, 0.0, 0.0
                    ),
                )
            if params.greedy:
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
            else:
                if params.top_k > 0:
                    llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(params.top_k))
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
                llama_cpp.llama_sampler_chain_add(
                    chain, llama_cpp.llama_sampler_init_temp(params.temperature)
                )
                seed = params.seed if params.seed is not None else random.getrandbits(32)
                llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
            # The penalty history starts from the prompt, as it does for the target alone.
            for token in history[-max(params.repeat_last_n, 0) :] if params.repeat_penalty != 1.0 else []:
                llama_cpp.llama_sampler_accept(chain, token)

    def pick(
        self, row_index: int, n_rows: int, margin: bool = True, expected: int | None = None
    ) -> tuple[int, float]:
        """(token, top-2 logit margin) for output row `row_index` of the last decode.

        The margin is only known on the greedy fast path, and only computed when asked for (a second pass over a
        vocabulary-sized row the GPU just copied, spared where the row's best token is `expected`: the draft
        after it); elsewhere it is +inf (never treated as a near-tie).
        """
        if self._chain is not None:
            # A negative index counts output rows from the last (the batch may hold tokens without rows).
            token = llama_cpp.llama_sampler_sample(self._chain, self.model.ctx, row_index - n_rows)
            return int(token), math.inf
        row = self.model.logits(n_rows)[row_index]
        if not margin:
            return int(np.argmax(row)), math.inf
        return top_two(row) if expected is None else top_two_expecting(row, expected)

    def close(self) -> None:
        if self._chain is not None:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: ctypes may already be gone
            self.close()
