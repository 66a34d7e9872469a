"""What a pass costs on this machine: seconds per target pass of each size and per draft-model token, measured at
start-up (`calibrate`) and kept current by every real pass."""

from __future__ import annotations

import copy
import time
from bisect import bisect_left

from localspec.engine.estimates import Ewma
from localspec.engine.llama_model import LlamaModel

FASTER_WEIGHT, SLOWER_WEIGHT = 0.5, 0.1  # weight of a pass timed below / above its size's estimate
# A pass timed above this many times its size's estimate counts as this many: where the passes share the cores with
# other work (a daemon streaming its answer on a 2-core machine), a pass now and then takes far longer than usual.
OUTLIER_FACTOR = 1.5
MEASURED_SAMPLES = round(1 / SLOWER_WEIGHT)  # (`Ewma.add` weighs a next sample 1 / (samples + 1) at least)
# Sizes of the draft model's batched catch-up passes timed at start-up (larger ones are extrapolated).
DRAFT_CATCH_UP_SIZES = (4, 16, 64)
# A pass also attends over the context before it: each of its tokens pays about the same per position of context
# (start-up times passes at the start of an empty sequence; an editor's prompt sits thousands of tokens deep).
# Passes this deep or deeper teach that price and only it (at one depth a size's price and the depth's cannot be
# told apart); shallower ones teach their size's price (their depth's part is within a pass's noise).
DEPTH_TAUGHT_FROM = 512
BEST_OF_THREE_UP_TO = 4  # start-up times passes of up to this many tokens 3 times, and once after the sweep
# Start-up times every pass size up to DENSE_UP_TO, then every SPARSE_STEP-th and the largest: prices between are
# interpolated (past this size a pass costs about a straight line), so a longer draft_max costs start-up little.
DENSE_UP_TO, SPARSE_STEP = 17, 4
ONE_TOKEN_RETRIES = 3  # times start-up re-times a one-token pass that timed dearer than a two-token one
CAPTURE_ROUNDS = 2  # rounds of capture timings (a size's second pass in a row) on a GPU, the best kept
# Sweeps of cold timings (and rounds of draft-model catch-ups) on a GPU, each size's best kept. With a CUDA graph per
# pass size (build_flags.CUDA_GRAPH_KEY) a size's first pass runs uncaptured and its second captures its graph: only
# from the third does a pass after one of another size run as decoding meets it, replayed (with upstream's one
# graph a context every sweep runs uncaptured). Elsewhere two sweeps and one round.
GPU_SWEEPS = 3


class PassCosts:
    """Seconds per target pass over n tokens (for each n) and per draft-model token, on this machine.

    Measured per size because batched passes are neither free nor linear (llama.cpp picks other kernels by batch
    size). One instance is shared by all requests: the costs describe the machine and the model pair, not the text.

    Three prices per size, because on a GPU a pass of the size before costs less than one of another size:
    "cold" (after a pass of another size), "capture" (the second in a row) and "warm" (the third or later). With
    upstream llama.cpp a context keeps one CUDA graph, so a cold pass launches its kernels one by one, the second
    captures the graph and only the third replays it; with localspec's graph per pass size (a build with
    `llama_patches`, the default key) a cold pass replays its size's graph after llama.cpp rebuilds it on the CPU,
    and capture and warm cost the same, while the KV length attended over stays the same. The prices are timed,
    not assumed, so either build is priced as it runs. On a CPU they are the same, and the cold price stands for
    all three until passes of a repeated size are timed. A fourth table holds passes right after draft-model
    passes (a draft-model step's verify pass) of a size other than the pass before: with the draft model working
    beside it they cost more than other cold passes. Of the size before, such a pass replays or captures the CUDA
    graph as any pass does (the draft model's passes leave the target's graph alone) and is priced so; a one-token
    one stays apart, so that it cannot spoil the target alone's prices (`_after_draft_kind`).

    The tables hold prices at the start of a sequence; a pass `depth` tokens in costs `per_position` seconds more
    per token and position (learnt from deep passes), so a size measured only at one depth prices every depth.
    """

    def __init__(
        self,
        one: float = 0.05,
        extra_ratio: float = 0.5,
        draft_ratio: float = 0.4,
        draft_one_by_one: int = 1,
        price_depth: bool = True,
    ) -> None:
        """draft_one_by_one: the draft model catches up this many tokens or fewer in one-token passes (a draft on
        a GPU: see `drafters.sync_sequence`), more in one batched pass. price_depth: learn a price per token and
        position of context, as measured on a CPU (a pass's extra cost there grows with its tokens times its
        depth). Off where the target runs on a GPU, whose kernels read the context once for all of a pass's
        tokens (not measured there): passes are then priced by their size alone, deep ones included."""
        self._prior_one, self._prior_extra = one, one * extra_ratio
        self._cold: dict[int, Ewma] = {}
        self._warm: dict[int, Ewma] = {}
        self._capture: dict[int, Ewma] = {}
        self._after_draft: dict[int, Ewma] = {}
        self._draft_ratio = draft_ratio
        self._draft_token = Ewma(0.0)
        self._draft_passes: dict[int, Ewma] = {}  # the draft model's batched passes (catch-ups), per size
        self.draft_one_by_one = draft_one_by_one
        self._per_position = Ewma(0.0, weight=0.1)
        self.price_depth = price_depth
        # Each table's measured sizes, sorted, kept until it gains a size: the chooser prices every draft length of
        # every source at each step, and finding the measured sizes around an unmeasured one was most of that.
        self._sizes: dict[int, list[int]] = {}
        # Cold prices by size (index n), kept until a cold pass is timed: one-token steps time warm passes, and
        # every one of them prices each draft length cold.
        self._cold_prices: list[float] = []
        self.cold_version = 0  # counts changes to the cold prices and the price per position

    def record_verify(
        self,
        n: int,
        seconds: float,
        warm: bool = False,
        capture: bool = False,
        after_draft: bool = False,
        depth: int = 0,
    ) -> None:
        """A target pass over n tokens that started `depth` tokens into its sequence took `seconds`."""
        shallow = self._shallow(n, warm, capture, after_draft)
        # A deep pass faster than its size's price at a sequence's start says that price is too high (a start-up
        # timing caught by other work): it corrects it, as a shallow pass would, and teaches no depth price.
        if self.price_depth and depth >= DEPTH_TAUGHT_FROM and seconds >= shallow:
            self._per_position.measure((seconds - shallow) / (n * depth))
            self.cold_version += 1
            return
        if seconds >= shallow:
            seconds = max(seconds - self.depth_cost(n, depth), seconds / 2)
        if self._after_draft_kind(n, warm, capture, after_draft):
            table = self._after_draft
        else:
            table = self._warm if warm else (self._capture if capture else self._cold)
        self._record(table, n, seconds)
        if table is self._cold and n in self._warm and seconds < self._warm[n].value:
            # A warm pass is never slower than a cold one of its size: its price was timed too high. (On a GPU a
            # lone one-token pass, such as the target alone's re-timing between speculative steps, runs cold.)
            self._record(self._warm, n, seconds)

    def _record(self, table: dict[int, Ewma], n: int, seconds: float) -> None:
        if table is self._cold:
            self._cold_prices = []
            self.cold_version += 1
        estimate = table.get(n)
        if estimate is None:
            self._sizes.pop(id(table), None)
            # A price is a measurement, not a prior: later passes move it by the weights below from the start,
            # not by the larger ones `Ewma` gives its first samples.
            table[n] = Ewma(seconds, samples=MEASURED_SAMPLES)
            return
        # Quick to go down, slow to go up: a pass is rarely faster than it can be, but often slower (a busy
        # machine, a first pass of its shape), and an estimate stuck too high would keep its size from being
        # planned, and so from being measured again. One slow outlier moves it by a few percent at most; a
        # machine that really got slower moves it step by step.
        if seconds < estimate.value:
            estimate.add(seconds, FASTER_WEIGHT)
        else:
            estimate.add(min(seconds, OUTLIER_FACTOR * estimate.value), SLOWER_WEIGHT)

    def record_draft(self, tokens: int, seconds: float) -> None:
        if not tokens:
            return
        self._draft_token.measure(seconds / tokens)

    def record_draft_pass(self, n: int, seconds: float) -> None:
        """A batched draft-model pass over n tokens (a catch-up)."""
        self._record(self._draft_passes, n, seconds)

    def draft_catch_up(self, n: int) -> float:
        """Seconds for the draft model to read n tokens it has not seen, its last pass leaving logits to draft
        from (n = 1 in steady drafting: the token the target settled after the drafts)."""
        if n <= self.draft_one_by_one:
            return n * self.draft_token()
        if not self._draft_passes:  # not measured: a batched token costs a fifth of a one-token pass
            return self.draft_token() * (1 + (n - 1) / 5)
        return self._estimate(self._draft_passes, n)

    def measured_sizes(self) -> set[int]:
        return set(self._cold)

    @property
    def per_position(self) -> float:
        """Seconds a pass pays per token for each position of context before it."""
        return self._per_position.value

    def depth_cost(self, n: int, depth: int) -> float:
        """What a pass over n tokens `depth` tokens into its sequence costs more than at its start."""
        return self._per_position.value * n * depth

    def verify(
        self, n: int, warm: bool = False, capture: bool = False, after_draft: bool = False, depth: int = 0
    ) -> float:
        """Seconds for a pass over n tokens `depth` tokens into its sequence; warm: after two or more passes of
        the same size; capture: after exactly one; after_draft: right after draft-model passes."""
        return self._shallow(n, warm, capture, after_draft) + self.depth_cost(n, depth)

    @staticmethod
    def _after_draft_kind(n: int, warm: bool, capture: bool, after_draft: bool) -> bool:
        """Whether a pass is priced from the after-draft table: right after draft-model passes, and either of
        another size than the pass before (cold) or a one-token pass."""
        return after_draft and (n == 1 or not (warm or capture))

    def _shallow(self, n: int, warm: bool, capture: bool, after_draft: bool) -> float:
        cold = self._estimate(self._cold, n)
        if self._after_draft_kind(n, warm, capture, after_draft):
            return self._relative_to_cold(self._after_draft, n, cold)
        if capture:
            return self._relative_to_cold(self._capture, n, cold)
        if warm and n in self._warm:
            return self._warm[n].value
        if warm:  # an unmeasured warm size saves what the nearest measured one does
            return min(cold, self._relative_to_cold(self._warm, n, cold))
        return cold

    def _relative_to_cold(self, table: dict[int, Ewma], n: int, cold: float) -> float:
        """Size n as measured in `table`, or the cold price scaled as the nearest size measured there (or as is)."""
        if (known := table.get(n)) is not None:
            return known.value
        if not table:
            return cold
        sizes = self._sorted_sizes(table)
        at = bisect_left(sizes, n)
        either_side = sizes[max(at - 1, 0) : at + 1]
        nearest = min(either_side, key=lambda size: abs(size - n))  # (the smaller one at a tie)
        return cold * table[nearest].value / self._estimate(self._cold, nearest)

    def _sorted_sizes(self, table: dict[int, Ewma]) -> list[int]:
        sizes = self._sizes.get(id(table))
        if sizes is None:
            sizes = self._sizes[id(table)] = sorted(table)
        return sizes

    def switch_cost(self) -> float:
        """What returning to one-token passes after a pass of another size costs more than staying with them: the
        first one-token pass runs cold, the second captures a CUDA graph (0 until warm prices are measured; on a
        CPU the three prices barely differ)."""
        if 1 not in self._warm:
            return 0.0
        warm, cold = self._warm[1].value, self._estimate(self._cold, 1)
        capture = self._relative_to_cold(self._capture, 1, cold)
        return max(0.0, cold - warm) + max(0.0, capture - warm)

    def in_sequence(
        self, n: int, previous: int, streak: int, after_draft: bool = False, depth: int = 0
    ) -> float:
        """Seconds for a pass over n tokens after `streak` passes in a row of `previous` tokens (or right after
        draft-model passes), `depth` tokens into its sequence."""
        same = n == previous
        return self.verify(n, same and streak >= 2, same and streak == 1, after_draft, depth)

    def sequence_prices(
        self, sizes: range, previous: int, streak: int, after_draft: bool = False, depth: int = 0
    ) -> list[float]:
        """`in_sequence` for each size in `sizes`, the same figures at a fraction of the cost: the chooser prices
        every draft length of every source at each step, and on a fast GPU that planning is a share of a step."""
        per_position = self._per_position.value
        cold = self._cold_prices
        if len(cold) < sizes.stop:
            cold = self._cold_prices = [self._estimate(self._cold, n) for n in range(sizes.stop)]
        # `_shallow` written out by kind of pass (only a pass of the previous size is warm or a capture; a pass of
        # another size after the draft model's is priced cold until such passes are timed), plus the depth's part.
        after = self._after_draft
        prices = []
        for n in sizes:
            if n == previous:
                shallow = self._shallow(n, streak >= 2, streak == 1, after_draft)
            elif after_draft:
                known = after.get(n)
                shallow = known.value if known is not None else self._relative_to_cold(after, n, cold[n])
            else:
                shallow = cold[n]
            prices.append(shallow + per_position * n * depth)
        return prices

    def _estimate(self, table: dict[int, Ewma], n: int) -> float:
        if (known := table.get(n)) is not None:
            return known.value
        sizes = self._sorted_sizes(table)
        at = bisect_left(sizes, n)  # sizes[:at] are below n, sizes[at:] above (n itself is not measured)
        if 0 < at < len(sizes):  # interpolate between the nearest measured sizes
            low, high = sizes[at - 1], sizes[at]
            t_low, t_high = table[low].value, table[high].value
            return t_low + (t_high - t_low) * (n - low) / (high - low)
        if at >= 2:  # extend the line through the two largest measured sizes
            low, high = sizes[at - 2], sizes[at - 1]
            t_low, t_high = table[low].value, table[high].value
            return t_high + max(0.0, (t_high - t_low) / (high - low)) * (n - high)
        if sizes:  # one size known (or only larger ones): scale the largest per token
            return table[sizes[-1]].value * n / sizes[-1]
        return self._prior_one + (n - 1) * self._prior_extra

    def copy(self) -> PassCosts:
        """An independent copy, learning from its own passes from here on (`bench` gives each mode one)."""
        twin = copy.deepcopy(self)
        twin._sizes = {}  # (keyed by the tables' ids, which the copy's tables do not share)
        return twin

    def describe(self) -> str:
        """The main prices in milliseconds, for logs."""
        sizes = sorted({n for n in (1, 2, 4, 8, 16) if n in self._cold} | {max(self._cold, default=1)})
        text = "target pass " + ", ".join(f"{n}: {self.verify(n) * 1000:.1f}" for n in sizes)
        if self._warm:
            text += (
                " (after two of the same size: "
                + ", ".join(f"{n}: {self.verify(n, warm=True) * 1000:.1f}" for n in sizes)
                + ")"
            )
        if self._capture:
            text += (
                " (the second of the same size, capturing its CUDA graph: "
                + ", ".join(f"{n}: {self.verify(n, capture=True) * 1000:.1f}" for n in sizes)
                + ")"
            )
        if self._after_draft:
            text += (
                " (after draft-model passes: "
                + ", ".join(f"{n}: {self.verify(n, after_draft=True) * 1000:.1f}" for n in sizes)
                + ")"
            )
        if self._per_position.samples:
            text += f" (+{self.depth_cost(1, 1000) * 1000:.1f} per token 1,000 tokens deep)"
        text += f"; draft token {self.draft_token() * 1000:.1f}"
        if self._draft_passes:
            text += f", draft catch-up of 64 tokens {self.draft_catch_up(64) * 1000:.1f}"
        return text

    def draft_token(self) -> float:
        """Seconds per draft-model token; until measured, a fraction of a one-token target pass."""
        return self._draft_token.value if self._draft_token.samples else self.verify(1) * self._draft_ratio


def calibrate(
    costs: PassCosts,
    target: LlamaModel,
    draft: LlamaModel | None,
    seq_id: int,
    max_size: int,
    quick_sweep: float = 1.0,
) -> None:
    """Time target passes of the sizes a step can verify (`sweep_sizes(max_size)`): cold, and where the target is
    on a GPU or a sweep takes under `quick_sweep` seconds also capture, warm and right after draft-model passes; a
    draft-model token and a few draft-model catch-ups. The chooser plans with these from the first request on;
    every real pass then updates its price. Leaves sequence `seq_id` empty in both models."""
    sizes = sweep_sizes(min(max_size, target.n_ctx_per_seq - 1, 64))
    tokens = [0] * (max(sizes) + 1)  # any token: a pass costs the same whatever it reads
    target.decode(tokens, 0, seq_id, "all")  # warm-up: first-use allocations are not a pass cost
    target.remove_from(seq_id, 1)
    # Cold prices, each size's best of two sweeps (the first passes after loading can be slow). On a GPU every
    # table is measured however long a sweep takes (an expensive target's warm prices are what its one-token
    # passes cost); a slow CPU sweep is not repeated, to keep start-up short where warm and cold do not differ.
    best: dict[int, float] = {}

    def time_best(n: int, times: int) -> None:
        for _ in range(times):
            if target.offloaded:  # as in a session: after a one-token pass (or a 2-token one)
                _timed_pass(target, tokens[: 2 if n == 1 else 1], seq_id)
            seconds = _timed_pass(target, tokens[:n], seq_id)
            best[n] = min(best.get(n, seconds), seconds)

    started = time.perf_counter()
    repeat = True
    for sweep in range(GPU_SWEEPS if target.offloaded else 2):
        if sweep and not target.offloaded and time.perf_counter() - started > quick_sweep:
            repeat = False
            break
        for n in sizes:
            # The one-token pass is the yardstick of every plan, and short passes decide whether short drafts pay:
            # best of three (on a CPU a single timing moves enough from start to start to flip such drafts).
            time_best(n, 3 if n <= BEST_OF_THREE_UP_TO else 1)
    # A sweep's first timings are its least reliable (a daemon's other start-up work, a machine still settling after
    # loading): the short passes, which decide whether short drafts pay, are timed once more after it.
    for n in sizes:
        if n <= BEST_OF_THREE_UP_TO:
            time_best(n, 1)
    # A one-token pass does less work than a two-token one: timed dearer, all its timings were caught by other
    # work (a daemon starting beside an editor's warm-up), and it would make every draft look cheap.
    for _ in range(ONE_TOKEN_RETRIES):
        if best.get(1, 0.0) <= best.get(2, float("inf")):
            break
        time_best(1, 3)
    for n, seconds in best.items():
        costs.record_verify(n, seconds)
    if repeat:
        captures: dict[int, float] = {}  # (the second pass of a size in a row)
        for n in sizes:
            passes = [_timed_pass(target, tokens[:n], seq_id) for _ in range(4)]
            captures[n] = passes[1]
            costs.record_verify(n, min(passes[2:]), warm=True)
        # Each capture timed again, the cheapest kept: one timed dear here would last, as few later passes are
        # captures to correct it.
        for _ in range(CAPTURE_ROUNDS - 1):
            for n in sizes:
                _timed_pass(target, tokens[:n], seq_id)  # (after a pass of another size)
                captures[n] = min(captures[n], _timed_pass(target, tokens[:n], seq_id))
        for n, seconds in captures.items():
            costs.record_verify(n, seconds, capture=True)
    if draft is not None:
        catch_up_sizes = [n for n in DRAFT_CATCH_UP_SIZES if n < draft.n_ctx_per_seq - 1]
        catch_ups = [0] * max(catch_up_sizes, default=1)
        draft.decode(catch_ups, 0, seq_id, "last")  # warm-up, as for the target
        draft.remove_from(seq_id, 1)
        costs.record_draft(1, min(_timed_pass(draft, tokens[:1], seq_id) for _ in range(3)))
        catch_up_times: dict[int, float] = {}
        for _ in range(GPU_SWEEPS if draft.offloaded else 1):
            for n in catch_up_sizes:  # (each after a pass of another size, as a catch-up is)
                seconds = _timed_pass(draft, catch_ups[:n], seq_id, "last")
                catch_up_times[n] = min(catch_up_times.get(n, seconds), seconds)
        for n, seconds in catch_up_times.items():
            costs.record_draft_pass(n, seconds)
        if repeat:
            # A verify pass right after draft-model passes, as in a draft-model step. Best of two.
            for n in sizes:
                after_draft: list[float] = []
                for _ in range(2):
                    for _ in range(2):
                        _timed_pass(draft, tokens[:1], seq_id, "last")
                    after_draft.append(_timed_pass(target, tokens[:n], seq_id))
                costs.record_verify(n, min(after_draft), after_draft=True)
        draft.remove_from(seq_id, 0)
    target.remove_from(seq_id, 0)


def sweep_sizes(largest: int) -> list[int]:
    """The pass sizes start-up times, up to `largest` (see DENSE_UP_TO)."""
    dense = range(1, min(largest, DENSE_UP_TO) + 1)
    return sorted({*dense, *range(DENSE_UP_TO + SPARSE_STEP, largest, SPARSE_STEP), largest})


def _timed_pass(model: LlamaModel, tokens: list[int], seq_id: int, outputs: str = "all") -> float:
    """Seconds for one pass over `tokens` after position 0 of `seq_id` (the KV is left as it was)."""
    started = time.perf_counter()
    model.decode(tokens, 1, seq_id, outputs)
    model.synchronize()
    elapsed = time.perf_counter() - started
    model.remove_from(seq_id, 1)
    return elapsed
