"""How a streaming job's step events reach the event loop, on the daemon's real scheduler and engine.

Steps that come faster than `STEP_EVENTS_EVERY` go over several at a time (each is still its own stream chunk);
a job that another one pre-empts hands over what it has first, so its text never waits behind the other job.
The interval is set per test (a day, or zero) so that what arrives together does not depend on timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localspec.daemon import scheduler as scheduler_module
from localspec.daemon.engine_host import EngineHost
from localspec.daemon.scheduler import Job, JobKind, Scheduler
from localspec.engine import EngineSettings
from localspec.engine.types import GenerationRequest, StepEvent

DAY = 86400.0


@pytest.fixture(scope="module")
def scheduler(endless_pair: tuple[Path, Path]) -> Iterator[Scheduler]:
    target, _ = endless_pair
    running = Scheduler()
    EngineHost(running).load(EngineSettings(target_path=target, n_ctx=2048, slots=2, threads=1)).join()
    yield running
    running.stop()


def _request(max_tokens: int) -> GenerationRequest:
    return GenerationRequest(prompt="def fib(n):\n", max_tokens=max_tokens, speculative="none")


def _submit(scheduler: Scheduler, kind: JobKind, slot: str, max_tokens: int) -> Job:
    request = _request(max_tokens)
    return scheduler.submit(
        Job(kind=kind, slot=slot, prepare=lambda _: request, loop=asyncio.get_running_loop(), stream=True)
    )


async def _events(job: Job) -> list[tuple[str, Any]]:
    """The job's events up to its last ("done" or "error")."""
    events = [await asyncio.wait_for(job.events.get(), timeout=120)]
    while events[-1][0] == "steps":
        events.append(await asyncio.wait_for(job.events.get(), timeout=120))
    return events


async def test_steps_that_come_fast_reach_the_loop_together(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "STEP_EVENTS_EVERY", DAY)
    events = await _events(_submit(scheduler, "completion", "a", 64))
    # The first step goes at once (the client sees its first token without waiting), the rest with the result.
    assert [kind for kind, _ in events] == ["steps", "steps", "done"]
    first, rest, (_, result) = events
    assert len(first[1]) == 1 and len(rest[1]) > 1
    assert "".join(step.text for _, steps in events[:2] for step in steps) == result.text

    monkeypatch.setattr(scheduler_module, "STEP_EVENTS_EVERY", 0.0)
    events = await _events(_submit(scheduler, "completion", "a", 64))
    assert all(len(payload) == 1 for kind, payload in events if kind == "steps")
    assert len(events) - 1 == len(first[1]) + len(rest[1])  # the same steps, one event each


class _ChatStartingAnInfill(Job):
    """A chat job that submits `infill` as its second step is queued, on the engine's thread: the infill then
    pre-empts the chat at its next turn, with that step not yet handed over (the interval is a day)."""

    scheduler: Scheduler
    infill: Job
    queued = 0

    def _post_step(self, event: StepEvent | None) -> None:
        super()._post_step(event)
        self.queued += event is not None
        if event is not None and self.queued == 2:
            self.scheduler.submit(self.infill)


async def test_a_preempted_job_hands_over_its_steps_before_the_other_runs(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "STEP_EVENTS_EVERY", DAY)
    loop = asyncio.get_running_loop()
    request = _request(1500)
    chat = _ChatStartingAnInfill(kind="chat", slot="chat", prepare=lambda _: request, loop=loop, stream=True)
    chat.scheduler = scheduler
    chat.infill = Job(kind="infill", slot="infill", prepare=lambda _: _request(16), loop=loop)
    scheduler.submit(chat)
    kind, result = await asyncio.wait_for(chat.infill.events.get(), timeout=120)
    assert kind == "done", result
    # The chat's first step went at once, its second when the infill took over, the rest with its result.
    events = await _events(chat)
    assert [(kind, len(payload) if kind == "steps" else None) for kind, payload in events[:2]] == [
        ("steps", 1),
        ("steps", 1),
    ]
    assert [kind for kind, _ in events[2:]] == ["steps", "done"]


async def test_a_step_without_text_hands_over_a_waiting_step_once_the_interval_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A step whose text is held back (part of a stop string, a split character) sends nothing, but the steps
    after it still hand over what waits once STEP_EVENTS_EVERY has passed: text never waits for the next text."""
    job = Job(
        kind="completion",
        slot="s",
        prepare=lambda _: _request(4),
        loop=asyncio.get_running_loop(),
        stream=True,
    )
    steps = [StepEvent(text=text, tokens=1, drafted=0, accepted=0, source="none") for text in ("a", "b")]
    monkeypatch.setattr(scheduler_module, "STEP_EVENTS_EVERY", DAY)
    job._post_step(steps[0])  # (the first goes at once)
    job._post_step(steps[1])
    job._post_step(None)  # not due yet: "b" waits
    monkeypatch.setattr(scheduler_module, "STEP_EVENTS_EVERY", 0.0)
    job._post_step(None)  # due: "b" goes without waiting for another step with text
    job._post_step(None)  # nothing waits: nothing is sent
    job._post(("done", None))
    events = await _events(job)
    assert events == [("steps", [steps[0]]), ("steps", [steps[1]]), ("done", None)]
