"""Hot reload against the shared CPU threadpool, on the daemon's real scheduler, engine host and engines.

Every llama.cpp context of the process computes on one threadpool, which serves one decode at a time
(`LlamaModel` raises if two overlap). A reload loads the new engine on a loader thread while the scheduler keeps
generating with the old one; the new engine's start-up timing must wait for the scheduler's thread.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from localspec.daemon.engine_host import EngineHost
from localspec.daemon.scheduler import Job, Scheduler
from localspec.engine import Engine, EngineSettings
from localspec.engine.types import GenerationRequest, GenerationResult

PROMPT = "def fib(n):\n    return"
LONG = 300  # tokens: the generation outlives the whole reload


def _request(max_tokens: int) -> GenerationRequest:
    # The target alone: its greedy output does not depend on timings, so two runs must agree token for token.
    return GenerationRequest(prompt=PROMPT, max_tokens=max_tokens, speculative="none")


async def _run(scheduler: Scheduler, max_tokens: int) -> GenerationResult:
    job = scheduler.submit(
        Job(
            kind="completion",
            slot="a",
            prepare=lambda _: _request(max_tokens),
            loop=asyncio.get_running_loop(),
        )
    )
    kind, value = await asyncio.wait_for(job.events.get(), timeout=240)
    assert kind == "done", value
    return value


async def test_a_reload_during_a_long_generation_never_decodes_two_engines_at_once(
    endless_pair: tuple[Path, Path],
) -> None:
    target, draft = endless_pair
    old = EngineSettings(target_path=target, draft_path=draft, n_ctx=2048, slots=2, threads=2)
    new = replace(old, target_path=draft, draft_path=target)  # another pair: the endless draft as target
    scheduler = Scheduler()
    host = EngineHost(scheduler)
    try:
        host.load(old).join()
        reference = await _run(scheduler, LONG)
        assert reference.finish_reason == "length" and len(reference.token_ids) == LONG

        loop = asyncio.get_running_loop()
        job = scheduler.submit(
            Job(kind="completion", slot="a", prepare=lambda _: _request(LONG), loop=loop, stream=True)
        )
        kind, _ = await asyncio.wait_for(job.events.get(), timeout=60)
        assert kind == "steps"  # the old engine is decoding
        loader = host.load(new)
        await asyncio.to_thread(loader.join)
        events = [await asyncio.wait_for(job.events.get(), timeout=240)]
        assert events[0][0] == "steps", "the generation should still run when the new models have loaded"
        while events[-1][0] == "steps":
            events.append(await asyncio.wait_for(job.events.get(), timeout=240))
        kind, result = events[-1]
        assert kind == "done", result
        assert result.token_ids == reference.token_ids  # undisturbed by the reload

        assert host.health()["errors"] == []
        served = await _run(scheduler, 32)
        assert host.health()["models"]["target"] == "endless-draft"
    finally:
        scheduler.stop()
    with_new = Engine(new)  # the scheduler has stopped: nothing else decodes now
    try:
        assert served.token_ids == with_new.complete(_request(32)).token_ids
    finally:
        with_new.close()


async def test_a_swap_keeps_what_the_daemon_holds_out_of_full_collections_and_frees_the_engine_it_replaced(
    endless_pair: tuple[Path, Path],
) -> None:
    # A full garbage collection walks every object the process holds, in the middle of some request. Once an engine
    # is swapped in, what the daemon then holds is frozen out of those walks; an engine swapped out is still let go.
    import gc
    import weakref

    target, draft = endless_pair
    old = EngineSettings(target_path=target, draft_path=draft, n_ctx=2048, slots=2, threads=2)
    scheduler = Scheduler()
    host = EngineHost(scheduler)
    try:
        host.load(old).join()
        await _run(scheduler, 4)
        first = scheduler._engine
        assert first is not None
        walked = {id(thing) for thing in gc.get_objects()}  # (frozen objects are not walked, nor listed)
        assert id(first) not in walked and id(scheduler) not in walked
        gone = weakref.ref(first)
        del first, walked
        host.load(replace(old, target_path=draft, draft_path=target)).join()
        await _run(scheduler, 4)  # (served once the new engine is in)
        assert gone() is None
        assert id(scheduler._engine) not in {id(thing) for thing in gc.get_objects()}
    finally:
        scheduler.stop()
