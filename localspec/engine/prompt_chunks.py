"""How many prompt tokens one pass reads for a request that may give way to a more urgent one.

A warm-up prefill or a chat's prompt is read in chunks, one per scheduler step, so that an editor's request can
run between two of them (`GenerationRequest.give_way`). On a CPU llama.cpp also stops a pass part-way for it (its
abort check), so the chunks are short and fixed; the last one, read with the first token where nothing stops it,
stays short too. On a GPU a pass runs to its end, so a request that comes during one waits for it: the chunks are
sized from the passes of earlier chunks to take at most GIVE_WAY_PASS_S each, but never so small that a token
costs more than MAX_SLOWDOWN times what it does in the cheapest chunks measured: shorter passes waste more of a
GPU, and the prompt being read (a chat's, which its user waits for) would pay for every wait saved.
docs/BENCHMARKS.md (the twenty-ninth and thirtieth leases) has both sides of it.
"""

from __future__ import annotations

from localspec.engine.estimates import Ewma

# Where a pass stops part-way (a CPU), the chunk size: what smaller chunks cost is in docs/BENCHMARKS.md.
STOPPABLE_CHUNK = 128
GIVE_WAY_PASS_S = 0.03  # where a pass does not stop (a GPU): the longest a chunk's pass should take
MAX_SLOWDOWN = 1.25  # the most a chunk's token may cost over the cheapest measured chunk's
SMALLEST_CHUNK = 64  # below this a pass reads too few tokens to use a GPU well, whatever it takes


class PromptChunks:
    """The chunk size for requests that give way on one machine and model (`size`), from their passes' times."""

    def __init__(self, largest: int, stoppable: bool) -> None:
        """largest: the most tokens one pass takes (the context's batch size); stoppable: whether llama.cpp stops a
        pass part-way for a more urgent request (a model on a CPU)."""
        self.largest = largest
        self._stoppable = stoppable
        self.seconds: dict[int, Ewma] = {}  # per chunk size, its passes' seconds
        self.size = min(STOPPABLE_CHUNK, largest) if stoppable else largest
        self._sizes = [largest]  # the sizes tried: halving from the largest down to SMALLEST_CHUNK
        while self._sizes[-1] > SMALLEST_CHUNK:
            self._sizes.append(max(self._sizes[-1] // 2, SMALLEST_CHUNK))

    def record(self, tokens: int, seconds: float) -> None:
        """A chunk's pass over `tokens` took `seconds` (a prompt's shorter last chunk teaches nothing).

        Of the sizes tried (`_sizes`) not measured to cost too much per token, the size is the largest whose pass
        fits GIVE_WAY_PASS_S, or where none does, the smallest: each size is measured once it is taken, so a few
        prompts settle it."""
        if self._stoppable or tokens != self.size:
            return
        self.seconds.setdefault(tokens, Ewma(0.0, weight=0.3)).measure(seconds)
        cheapest = min(measured.value / size for size, measured in self.seconds.items())
        affordable = [
            size for size in self._sizes if self._per_token(size, default=cheapest) <= cheapest * MAX_SLOWDOWN
        ]
        fitting = [size for size in affordable if self._estimate(size) <= GIVE_WAY_PASS_S]
        self.size = fitting[0] if fitting else affordable[-1]

    def _per_token(self, size: int, default: float) -> float:
        measured = self.seconds.get(size)
        return measured.value / size if measured is not None else default

    def _estimate(self, size: int) -> float:
        """Seconds a pass of `size` takes: measured, else the nearest measured size's in proportion to the tokens
        (longer passes cost less per token, so an unmeasured longer chunk is taken only where it surely fits)."""
        measured = self.seconds.get(size)
        if measured is not None:
            return measured.value
        nearest = min(self.seconds, key=lambda known: abs(known - size))
        return self.seconds[nearest].value * size / nearest
