"""The prompt cache beyond the slots (engine/kv_snapshots.py) and prefills (max_tokens=0), on real llama.cpp with the
tiny models the tests write."""

from __future__ import annotations

import ctypes
import random
from collections.abc import Iterator

import pytest
from test_engine import make_engine

from localspec.engine import Engine, GenerationRequest
from localspec.engine.kv_snapshots import MIN_SAVED_TOKENS
from localspec.engine.prefix_cache import common_prefix_length, sync_sequence
from localspec.engine.prompt_chunks import (
    GIVE_WAY_PASS_S,
    MAX_SLOWDOWN,
    SMALLEST_CHUNK,
    STOPPABLE_CHUNK,
    PromptChunks,
)

LINES = [f"def function_{i}(value):\n    return value * {i} + {i * 7}\n\n" for i in range(40)]
TEXT = "".join(LINES)


def infill(engine: Engine, prefix: str, max_tokens: int = 12, mode: str = "ngram") -> GenerationRequest:
    prompt = engine.infill_prompt(
        prefix, "\n\ndef tail():\n    pass\n", filename="code.py", max_tokens=max_tokens
    )
    return GenerationRequest(prompt=prompt, max_tokens=max_tokens, slot="editor", speculative=mode)  # type: ignore[arg-type]


@pytest.fixture(params=[False, True], ids=["ordinary", "pinned"])
def engine(tiny_models, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """With copies in ordinary memory, and with `prompt_cache_pinned` (page-locked where a GPU runs the models)."""
    engine = make_engine(
        tiny_models.target, tiny_models.draft_similar, n_ctx=2048, slots=2, prompt_cache_pinned=request.param
    )
    assert engine.snapshots.pinned == request.param
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(tiny_models) -> Iterator[Engine]:
    """The same models with no prompt cache at all: what the target alone gives for each prompt."""
    engine = make_engine(
        tiny_models.target, tiny_models.draft_similar, n_ctx=2048, slots=1, prompt_cache_mb=0
    )
    yield engine
    engine.close()


def fresh(reference: Engine, request: GenerationRequest) -> str:
    reference.reset_cache()
    return reference.complete(
        GenerationRequest(prompt=request.prompt, max_tokens=request.max_tokens, speculative="none")
    ).text


def test_returning_to_an_earlier_place_restores_its_kv_and_gives_the_target_alone_output(
    engine: Engine, reference: Engine
) -> None:
    first = engine.complete(infill(engine, TEXT[:1500]))
    elsewhere = engine.complete(infill(engine, TEXT[900:2400]))  # overwrites the slot: its KV is saved first
    assert elsewhere.stats.cached_tokens < 50
    assert engine.snapshots.describe()["saves"] == 1
    # The time split says which part of the cache's time went to saving: none where nothing was saved.
    assert first.stats.t_cache_save == 0 and 0 < elsewhere.stats.t_cache_save <= elsewhere.stats.t_cache

    back = infill(engine, TEXT[:1500] + "def ")  # the first place, a few characters typed
    result = engine.complete(back)
    assert engine.snapshots.describe()["restores"] == 1
    assert result.stats.t_cache > 0  # the copy's restore is timed apart from the prompt
    assert engine.snapshots.describe()["saves"] == 2  # (the place left, before the restore overwrote it)
    assert 0 < result.stats.t_cache_save < result.stats.t_cache
    assert result.stats.cached_tokens >= len(engine.tokenize(TEXT[:1480], parse_special=False))
    assert first.stats.prompt_tokens > result.stats.cached_tokens > elsewhere.stats.cached_tokens
    assert result.text == fresh(reference, back)


def test_without_a_prompt_cache_the_slot_evaluates_again(tiny_models) -> None:
    engine = make_engine(tiny_models.target, None, n_ctx=2048, slots=1, prompt_cache_mb=0)
    try:
        engine.complete(infill(engine, TEXT[:1500]))
        engine.complete(infill(engine, TEXT[900:2400]))
        result = engine.complete(infill(engine, TEXT[:1500] + "def "))
        assert result.stats.cached_tokens < 50
        assert engine.snapshots.describe()["saves"] == 0
    finally:
        engine.close()


def test_the_prompt_cache_size_is_a_share_of_memory_by_default_or_as_configured(
    tiny_models, localspec_home, monkeypatch
) -> None:
    # A larger target holds several times the KV per token: "auto" scales the budget with the machine.
    import os

    from localspec.config import PROMPT_CACHE_AUTO_MB, load_config
    from localspec.engine import EngineSettings
    from localspec.engine.host_memory import MIB, prompt_cache_bytes
    from localspec.errors import ConfigError

    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    low, high = (mb * MIB for mb in PROMPT_CACHE_AUTO_MB)
    assert prompt_cache_bytes(None) == min(high, max(low, memory // 4))
    assert prompt_cache_bytes(0) == 0 and prompt_cache_bytes(512) == 512 * MIB
    for setting, expected in (("auto", prompt_cache_bytes(None)), ("300", 300 * MIB)):
        monkeypatch.setenv("LOCALSPEC_ENGINE_PROMPT_CACHE_MB", setting)
        settings = EngineSettings.from_config(load_config(), tiny_models.target, None, n_ctx=256, slots=1)
        engine = Engine(settings, calibrate=False)
        try:
            assert engine.snapshots.max_bytes == expected
        finally:
            engine.close()
    for bad in ("-1", "lots"):
        monkeypatch.setenv("LOCALSPEC_ENGINE_PROMPT_CACHE_MB", bad)
        with pytest.raises(
            ConfigError, match='prompt_cache_mb must be "auto" or a whole number of MiB from 0 to 1048576'
        ):
            load_config()


def test_a_prefill_evaluates_the_prompt_generates_nothing_and_keeps_its_kv(
    engine: Engine, reference: Engine
) -> None:
    warm = engine.complete(infill(engine, TEXT[:2000], max_tokens=0))
    assert (warm.text, warm.token_ids, warm.finish_reason) == ("", [], "length")
    assert engine.snapshots.describe()["entries"] == 1
    # Its result says what its copy took of the cache (the language server's warm-up keeps within that).
    room = warm.prompt_cache
    assert room is not None and room.kept and room.copy_bytes == engine.snapshots.nbytes == room.bytes > 0
    assert room.max_bytes == engine.snapshots.max_bytes

    between = engine.complete(infill(engine, TEXT[1200:2600]))  # another place in between
    request = infill(engine, TEXT[:1700])
    result = engine.complete(request)
    assert result.stats.cached_tokens >= len(engine.tokenize(TEXT[:1650], parse_special=False))
    assert result.text == fresh(reference, request)
    # Every result names the cache it left (no copy of its own but a prefill's); an emptied cache is another one.
    assert between.prompt_cache is not None and not between.prompt_cache.kept
    assert between.prompt_cache.id == room.id
    engine.reset_cache()
    after = engine.complete(infill(engine, TEXT[:1700]))
    assert after.prompt_cache is not None and after.prompt_cache.id != room.id


@pytest.mark.parametrize("ahead", [False, True], ids=["own-buffers", "shared-cells"])
def test_where_the_draft_model_is_cheap_a_prefill_has_it_read_the_prompt_and_its_copy_keeps_that(
    tiny_models, reference: Engine, ahead: bool
) -> None:
    # A 7B-14B target's editor windows: the draft model's KV comes back with the copy, so a jump drafts at once.
    # (Drafting ahead, as on a GPU, gives the draft model one buffer of cells its sequences share.)
    target, draft = tiny_models.target, tiny_models.draft_similar
    engine = make_engine(target, draft, n_ctx=2048, slots=2, prefill_draft=True, draft_ahead=ahead)
    assert engine.drafts_ahead == ahead
    try:
        warm = engine.complete(infill(engine, TEXT[:2000], max_tokens=0, mode="draft"))
        assert (warm.text, warm.stats.tokens) == ("", 0) and warm.stats.t_draft > 0
        assert engine.snapshots.describe()["with_draft"] == 1
        engine.complete(infill(engine, TEXT[1200:2600], mode="draft"))  # another place in between
        request = infill(engine, TEXT[:1700], mode="draft")
        generation = engine.generate(request)
        window = len(engine.tokenize(TEXT[:1650], parse_special=False))
        slot = generation.slot  # before any step: the copy restored both models' KV
        assert len(slot.draft_tokens) >= window and slot.draft_tokens[:window] == slot.target_tokens[:window]
        for _ in generation:
            pass
        assert generation.result is not None and generation.result.stats.drafted > 0
        assert generation.result.text == fresh(reference, request)
    finally:
        engine.close()
    # By default only where a draft token costs a fraction of a target token (these two cost the same).
    engine = make_engine(tiny_models.target, tiny_models.draft_similar, n_ctx=2048, slots=1)
    try:
        assert not engine.prefills_draft()
        engine.complete(infill(engine, TEXT[:2000], max_tokens=0, mode="draft"))
        assert engine.snapshots.describe()["with_draft"] == 0
    finally:
        engine.close()


def test_a_prefill_runs_in_chunks_so_other_work_can_run_between_them(engine: Engine) -> None:
    request = infill(engine, TEXT, max_tokens=0)
    request.give_way = lambda: (
        False
    )  # (the daemon's scheduler gives every request but the most urgent kind one)
    generation = engine.generate(request)
    steps = 0
    while generation.step() is not None:
        steps += 1
    assert generation.result is not None and generation.result.finish_reason == "length"
    prompt_tokens = generation.stats.prompt_tokens
    assert engine.prompt_chunks.size == STOPPABLE_CHUNK  # (small on a CPU, where a pass stops part-way)
    assert steps == -(-(prompt_tokens - 1) // STOPPABLE_CHUNK)
    assert steps > 1


def test_where_a_pass_cannot_stop_the_chunks_take_what_the_passes_measured_to_fit() -> None:
    """On a GPU a chunk's pass runs to its end, so the chunks are sized from their passes' times to take at most
    GIVE_WAY_PASS_S: smaller where passes are slow, never below SMALLEST_CHUNK, and larger again only where a
    larger chunk, estimated in proportion to a measured one, surely fits."""
    chunks = PromptChunks(512, stoppable=False)
    assert chunks.size == 512  # nothing measured yet
    chunks.record(512, GIVE_WAY_PASS_S * 3.5)  # a 7B's prompt pass on a small GPU
    assert chunks.size == 128
    chunks.record(500, GIVE_WAY_PASS_S * 100)  # a prompt's last, shorter chunk teaches nothing
    assert chunks.size == 128
    chunks.record(128, GIVE_WAY_PASS_S * 0.4)  # shorter passes cost less than in proportion
    assert chunks.size == 256
    chunks.record(256, GIVE_WAY_PASS_S * 3)  # (not so much less)
    assert chunks.size == 128
    slow = PromptChunks(512, stoppable=False)
    slow.record(512, GIVE_WAY_PASS_S * 50)
    assert slow.size == SMALLEST_CHUNK
    fast = PromptChunks(512, stoppable=False)
    fast.record(512, GIVE_WAY_PASS_S / 2)  # a small model on a fast GPU keeps whole batches
    assert fast.size == 512
    stoppable = PromptChunks(512, stoppable=True)
    stoppable.record(STOPPABLE_CHUNK, GIVE_WAY_PASS_S * 50)
    assert stoppable.size == STOPPABLE_CHUNK


def test_a_chunk_whose_tokens_cost_much_more_than_in_larger_chunks_is_not_taken() -> None:
    """Where a pass has a large fixed cost (many thin layers), a short chunk fits the time but makes the prompt
    being read pay for it: no size whose tokens cost over MAX_SLOWDOWN times the cheapest measured is kept, and
    where none fits the time, the smallest size still affordable is."""
    chunks = PromptChunks(512, stoppable=False)
    chunks.record(512, GIVE_WAY_PASS_S * 4)
    assert chunks.size == 128  # (estimated in proportion: it fits)
    chunks.record(128, GIVE_WAY_PASS_S * 2)  # four times 512's cost a token
    assert chunks.size == SMALLEST_CHUNK  # (not measured yet, estimated from 128's: it fits)
    chunks.record(SMALLEST_CHUNK, GIVE_WAY_PASS_S * 1.5)
    assert chunks.size == 256  # nothing affordable fits: the smallest not measured to cost too much
    per_token_512 = GIVE_WAY_PASS_S * 4 / 512
    chunks.record(256, 256 * per_token_512 * MAX_SLOWDOWN * 0.95)
    assert chunks.size == 256  # within MAX_SLOWDOWN of 512's cost a token, and as short as that allows


def test_a_prefill_reads_its_prompt_in_the_chunks_the_engine_holds_and_teaches_them(engine: Engine) -> None:
    assert engine.target.n_batch == 512
    chunks = PromptChunks(512, stoppable=False)
    chunks.record(512, GIVE_WAY_PASS_S * 3.5)
    assert chunks.size == 128
    engine.prompt_chunks = chunks
    request = infill(engine, TEXT, max_tokens=0)
    request.give_way = lambda: False
    generation = engine.generate(request)
    assert generation.step() is not None
    assert len(generation.slot.target_tokens) == 128
    assert chunks.seconds[128].samples == 1  # (its pass was timed)
    while generation.step() is not None:
        pass
    assert generation.result is not None and generation.result.finish_reason == "length"


@pytest.mark.parametrize("max_tokens", [0, 6], ids=["prefill", "generation"])
def test_a_prompt_pass_gives_way_part_way_and_the_request_later_resumes_where_it_was(
    engine: Engine, reference: Engine, max_tokens: int
) -> None:
    """On a CPU a pass over a chunk of the prompt stops where a more urgent request has come (`give_way`): the step
    settles nothing and the slot keeps what earlier chunks evaluated, so the request goes on later as if never
    stopped (a prefill, or a generation whose output is then the target alone's)."""
    urgent = [False]
    warm = infill(engine, TEXT, max_tokens=max_tokens)
    warm.give_way = lambda: urgent[0]
    generation = engine.generate(warm)
    assert generation.step() is not None  # the first chunk, undisturbed
    held = list(generation.slot.target_tokens)
    urgent[0] = True
    assert generation.step() is not None  # something more urgent came: the pass stops part-way
    assert generation.stats.gave_way == 1 and generation.slot.target_tokens == held
    # Urgent requests in a row do not starve it: the chunk after one that gave way is not stopped.
    assert generation.step() is not None
    assert generation.stats.gave_way == 1
    assert len(generation.slot.target_tokens) == len(held) + STOPPABLE_CHUNK
    assert generation.step() is not None
    assert generation.stats.gave_way == 2
    urgent[0] = False
    while generation.step() is not None:
        pass
    assert generation.result is not None
    if max_tokens:
        assert generation.result.text == fresh(reference, warm)
        return
    assert generation.result.finish_reason == "length"
    # What it evaluated is the prompt's KV, as from a prefill never stopped: a request after it reuses it.
    request = infill(engine, TEXT[:2500])
    result = engine.complete(request)
    assert result.stats.cached_tokens >= len(engine.tokenize(TEXT[:2450], parse_special=False))
    assert result.text == fresh(reference, request)


def test_the_store_keeps_within_its_memory_and_drops_the_least_recently_used(tiny_models) -> None:
    engine = make_engine(tiny_models.target, None, n_ctx=2048, slots=1)
    try:
        places = [TEXT[start : start + 1500] for start in (0, 400, 800)]
        for prefix in places[:2]:
            engine.complete(infill(engine, prefix, max_tokens=0))
        assert len(engine.snapshots) == 2
        engine.snapshots.max_bytes = engine.snapshots.nbytes + 1  # no room for a third copy
        third = engine.complete(infill(engine, places[2], max_tokens=0))
        assert engine.snapshots.nbytes <= engine.snapshots.max_bytes
        shares = [engine.snapshots.best(engine.infill_prompt(p, "", filename="code.py"))[1] for p in places]
        assert shares[0] < MIN_SAVED_TOKENS  # the oldest copy went first
        assert shares[2] > 1000  # the newest is kept
        assert engine.snapshots.describe()["dropped"] == 1
        assert third.prompt_cache is not None and third.prompt_cache.kept

        # A copy larger than the whole cache is not kept, and the prefill says so with the copy's size.
        engine.snapshots.max_bytes = third.prompt_cache.copy_bytes // 2
        whole = engine.complete(infill(engine, TEXT[:1900], max_tokens=0)).prompt_cache
        assert whole is not None and not whole.kept and whole.copy_bytes > whole.max_bytes
        # With the cache off nothing is copied.
        engine.snapshots.max_bytes = 0
        off = engine.complete(infill(engine, TEXT[500:1900], max_tokens=0)).prompt_cache
        assert off is not None and (off.kept, off.copy_bytes, off.max_bytes) == (False, 0, 0)
    finally:
        engine.close()


def test_a_slot_whose_tokens_a_copy_already_holds_is_not_copied_again(engine: Engine) -> None:
    engine.complete(infill(engine, TEXT[:1500], max_tokens=0))  # warmed: copied once
    engine.complete(
        infill(engine, TEXT[:1400], max_tokens=4)
    )  # a suggestion there: few tokens beyond the copy
    engine.complete(infill(engine, TEXT[600:2000], max_tokens=4))  # elsewhere: nothing worth a second copy
    assert engine.snapshots.describe()["saves"] == 1
    back = engine.complete(infill(engine, TEXT[:1450], max_tokens=4))  # back: the copy serves it again
    assert engine.snapshots.describe()["restores"] == 1
    assert back.stats.cached_tokens >= len(engine.tokenize(TEXT[:1400], parse_special=False))


def test_a_copy_of_more_tokens_replaces_the_copies_it_extends(tiny_models) -> None:
    engine = make_engine(tiny_models.target, None, n_ctx=2048, slots=1)
    try:
        store, slot = engine.snapshots, engine._slots.slots[0]
        tokens = engine.tokenize(TEXT[:1500], parse_special=False)

        def hold_and_save(length: int) -> None:
            sync_sequence(engine.target, slot.seq_id, slot.target_tokens, tokens[:length], "none")
            store.save(slot, engine.target, None)

        for length in (600, 900, len(tokens)):
            hold_and_save(length)
        assert len(store) == 1  # each copy extended the one before it, which went
        assert store.best(tokens)[1] == len(tokens)
        hold_and_save(700)  # a copy of more is already here
        hold_and_save(len(tokens))  # and of exactly these
        assert store.describe()["saves"] == 3 and len(store) == 1
    finally:
        engine.close()


def test_the_copy_sharing_most_with_a_prompt_is_found_among_many_saved_in_any_order(tiny_models) -> None:
    # Copies are looked up beside where the prompt sorts among them, not one by one: that must still be the copy
    # sharing the longest prefix, and a copy of more tokens must still be found and replace what it extends.
    engine = make_engine(tiny_models.target, None, n_ctx=2048, slots=1)
    try:
        store, slot = engine.snapshots, engine._slots.slots[0]
        tokens = engine.tokenize(TEXT, parse_special=False)
        # Every place shares the file's first lines, as an editor's prompts share their context.
        head = tokens[:80]
        rng = random.Random(7)
        places = [
            head + tokens[start : start + rng.randrange(40, 300)] for start in rng.sample(range(80, 1200), 24)
        ]
        places += [place[: len(place) - 20] for place in places[:4]]  # copies held already: not saved again
        for place in places:
            sync_sequence(engine.target, slot.seq_id, slot.target_tokens, place, "none")
            store.save(slot, engine.target, None)
        assert store.describe()["saves"] == len(store) == 24
        for start in rng.sample(range(80, 1200), 40):
            prompt = head + tokens[start : start + rng.randrange(10, 300)]
            longest = max(common_prefix_length(place, prompt) for place in places)
            assert store.best(prompt)[1] == longest
        places.append(places[0] + tokens[1300:1340])
        sync_sequence(engine.target, slot.seq_id, slot.target_tokens, places[-1], "none")
        store.save(slot, engine.target, None)
        # The longer copy took its place.
        assert len(store) == 24 and store.best(places[0])[1] == len(places[0])
    finally:
        engine.close()


def test_kv_copy_buffers_are_page_locked_only_where_a_gpu_offers_it() -> None:
    # On a GPU the prompt cache's copies live in page-locked memory (the copy engine reads it directly); without
    # one, ordinary memory. Either way a buffer holds what is written to it.
    from localspec.engine.host_memory import host_buffer, pinned_allocator, pinned_bytes

    buffer = host_buffer(1 << 20, pinned=True)
    buffer[:] = 7
    assert buffer.size == 1 << 20 and int(buffer.sum()) == 7 << 20
    assert (pinned_bytes() >= 1 << 20) == (pinned_allocator() is not None)
    assert host_buffer(1 << 20, pinned=False).size == 1 << 20


def test_a_freed_page_locked_buffer_serves_the_next_copy_of_about_its_size() -> None:
    """Allocating page-locked memory costs many times a copy, so the pool keeps freed buffers (the last
    KEPT_FREE) for copies of about their size, and frees the rest. (The allocator here hands out ordinary
    memory: what is under test is the pool's keeping and reuse.)"""
    import gc

    from localspec.engine.host_memory import KEPT_FREE, REUSE_SLACK, BufferPool, capacity

    held: dict[int, ctypes.Array[ctypes.c_uint8]] = {}
    released: list[int] = []

    def allocate(size: int) -> tuple[int, int]:
        memory = (ctypes.c_uint8 * size)()
        held[id(memory)] = memory
        return id(memory), ctypes.addressof(memory)

    def release(handle: int) -> None:
        released.append(handle)
        del held[handle]

    pool = BufferPool(allocate, release)
    first = pool.take(1_000_000)
    assert first is not None and first.size == 1_000_000 and pool.allocations == 1
    first[:] = 3
    assert pool.in_use == capacity(1_000_000) >= 1_000_000
    del first
    gc.collect()
    assert pool.in_use == 0 and pool.free_bytes == capacity(1_000_000) and not released
    again = pool.take(960_000)  # a window a few percent shorter takes the freed buffer
    assert again is not None and again.size == 960_000 and pool.allocations == 1
    small = pool.take(int(1_000_000 / REUSE_SLACK) - 1)  # a much smaller copy would waste it: a new one
    assert small is not None and pool.allocations == 2
    others = [pool.take(2_000_000) for _ in range(KEPT_FREE + 1)]
    assert pool.allocations == 2 + KEPT_FREE + 1
    del again, small, others
    gc.collect()
    assert pool.in_use == 0 and len(released) == 2 + KEPT_FREE + 1 - KEPT_FREE  # all but the last KEPT_FREE
    assert pool.free_bytes == KEPT_FREE * capacity(2_000_000)
    assert capacity(1_000_000) - 1_000_000 <= 1_000_000 // 16


def test_a_draft_model_whose_sequences_share_cells_comes_back_whole_from_a_copy(tiny_models) -> None:
    # Drafting ahead, the draft model has a second sequence per slot, all sharing one KV buffer (so a second chain
    # of drafts costs no copy). A slot's saved copy must still bring back exactly what its draft sequence held:
    # the draft model then drafts what it drafts on a slot that evaluated the prompt itself.
    def ahead_engine() -> Engine:
        return make_engine(
            tiny_models.target,
            tiny_models.draft_similar,
            n_ctx=2048,
            slots=2,
            draft_ahead=True,
            tie_margin=None,
        )

    # (Compared with a fresh engine's draft-mode run, not with the target alone: on a CPU the first step's drafts
    # ride the prompt's last pass, whose other size makes these float32 models' prompt rows differ in their last
    # bits from the target alone's, and their answers hold near-ties of a few thousandths. docs/BENCHMARKS.md,
    # session 74.)
    engine = ahead_engine()
    try:
        for prefix in (TEXT[:1500], TEXT[900:2400]):
            engine.complete(infill(engine, prefix, mode="draft", max_tokens=24))
        back = infill(engine, TEXT[:1500] + "def ", mode="draft", max_tokens=24)
        restored = engine.complete(back)
        assert engine.snapshots.describe()["restores"] == 1
    finally:
        engine.close()
    engine = ahead_engine()
    try:
        evaluated = engine.complete(back)
    finally:
        engine.close()
    assert restored.text == evaluated.text
    assert restored.stats.drafted == evaluated.stats.drafted > 0
    assert restored.stats.accepted == evaluated.stats.accepted
