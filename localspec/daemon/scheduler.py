"""One engine worker thread and a priority queue of generation jobs.

The engine is not thread-safe, so every engine call happens on the worker thread. Jobs come from the event
loop; step events go back to it through `loop.call_soon_threadsafe`, so neither side ever waits on the other,
several at a time where steps come fast (each hand-over costs the engine's thread the event loop's work on it).
Between decode steps the worker steps the highest-priority live generation: an editor infill that arrives
during a long chat reply runs at once (the chat's Generation stays alive on its own KV slot) and the chat
resumes when the infill is done.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from localspec.engine.types import CancelToken, GenerationRequest, GenerationResult, RequestStats, StepEvent
from localspec.errors import DaemonUnavailableError
from localspec.gc_pauses import freeze_long_lived
from localspec.remote.stats import unknown_fields

if TYPE_CHECKING:
    from localspec.daemon.backend import Backend, Generating

log = logging.getLogger("localspec.daemon.scheduler")

JobKind = Literal["infill", "chat", "completion", "prefill"]
# Lower runs first. Infill is latency-critical (the editor waits on every keystroke); a prefill only prepares the
# cache for a later request, so it runs when nothing else does.
PRIORITY: dict[str, int] = {"infill": 0, "chat": 1, "completion": 1, "prefill": 2}
RECENT_REQUESTS = 64
# A streaming job's step events go to the event loop at most this often, the steps between together (each still
# its own stream chunk): on a GPU steps can come hundreds a second, and handing each over alone (waking the loop,
# which sends it while the engine's thread waits for the GIL) costs a share of every step (docs/BENCHMARKS.md).
STEP_EVENTS_EVERY = 0.02


@dataclass
class Job:
    kind: JobKind
    slot: str
    # Builds the request on the worker thread (templates and FIM prompts need the engine's tokenizer).
    prepare: Callable[[Backend], GenerationRequest]
    loop: asyncio.AbstractEventLoop
    stream: bool = False
    cancel: CancelToken = field(default_factory=CancelToken)
    # ("steps", [StepEvent, ...]) items when streaming, then one ("done", GenerationResult) or ("error", Exception).
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    # Step events not yet handed to the loop (touched on the worker thread only).
    _unsent: list[StepEvent] = field(default_factory=list, init=False)
    _sent_at: float = field(default=-math.inf, init=False)  # (the first step goes at once)
    id: int = 0
    max_tokens: int = 0
    submitted_at: float = field(default_factory=time.monotonic)
    admitted_at: float | None = None  # when the engine took it (the time before is spent waiting for a turn)

    @property
    def priority(self) -> int:
        return PRIORITY[self.kind]

    def _post(self, item: tuple[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            self.cancel.cancel()

    def _post_step(self, event: StepEvent | None) -> None:
        """Queue a step's event (None: the step has no text to send); hand the queued ones over once
        STEP_EVENTS_EVERY has passed since the last, so that steps without text do not hold back one with text."""
        if event is not None:
            self._unsent.append(event)
        if time.monotonic() - self._sent_at >= STEP_EVENTS_EVERY:
            self._flush_steps()

    def _flush_steps(self) -> None:
        if self._unsent:
            steps, self._unsent = self._unsent, []
            self._sent_at = time.monotonic()
            self._post(("steps", steps))


@dataclass
class _Active:
    job: Job
    generation: Generating


@dataclass
class DaemonCounters:
    received: int = 0  # jobs queued (a client that left before its body was read never becomes one)
    requests: dict[str, int] = field(default_factory=dict)  # finished, by kind
    finish_reasons: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    preemptions: int = 0
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))


class Scheduler:
    """Owns the engine worker thread. Install an engine with `install()`; submit jobs from the event loop."""

    def __init__(self, max_active: int = 4) -> None:
        self._max_active = max(1, max_active)
        self._lock = threading.Condition()
        self._pending: list[Job] = []
        self._to_close: list[Backend] = []
        self._active: list[_Active] = []
        self._engine: Backend | None = None
        self._next_engine: Backend | None = None
        self._unavailable: str | None = None  # why jobs cannot run (no engine could be loaded)
        self._stopping = False
        self._ids = itertools.count(1)
        self._last_stepped: Job | None = None
        # The most urgent priority among jobs that came since the worker last admitted jobs: a less urgent job's
        # prompt pass stops part-way (on a CPU) so that the new one starts at once rather than after that pass.
        self._came = math.inf
        self._stats_lock = threading.Lock()
        self._counters = DaemonCounters()
        self._engine_stats: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, name="localspec-engine", daemon=True)
        self._thread.start()

    # ---- called from other threads ----

    def submit(self, job: Job) -> Job:
        job.id = next(self._ids)
        with self._lock:
            if self._stopping:
                raise DaemonUnavailableError("The daemon is shutting down; retry in a moment.")
            with self._stats_lock:  # (before the worker can see it: never fewer received than finished)
                self._counters.received += 1
            self._pending.append(job)
            self._came = min(self._came, job.priority)
            self._lock.notify()
        return job

    def install(self, engine: Backend) -> None:
        """Swap in a loaded engine once the running generations finish (timing it first, on the worker
        thread, if it was built with `calibrate=False`); new jobs wait for it."""
        with self._lock:
            if self._next_engine is not None:
                self._to_close.append(self._next_engine)
            self._next_engine = engine
            self._unavailable = None
            self._lock.notify()

    def set_unavailable(self, reason: str | None) -> None:
        """With no engine to run on, fail queued and new jobs with this reason (None: let them wait)."""
        with self._lock:
            self._unavailable = reason
            self._lock.notify()

    @property
    def has_engine(self) -> bool:
        return self._engine is not None or self._next_engine is not None

    def snapshot(self) -> dict[str, Any]:
        """Daemon counters and the engine's cumulative stats as of the last finished request."""
        with self._stats_lock:
            c = self._counters
            return {
                "engine": dict(self._engine_stats),
                "received": c.received,
                "requests": dict(c.requests),
                "finish_reasons": dict(c.finish_reasons),
                "errors": c.errors,
                "preemptions": c.preemptions,
                "queue_length": len(self._pending),
                "active": len(self._active),
                "recent": list(c.recent),
            }

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
            for item in self._active:
                item.job.cancel.cancel()
            for job in self._pending:
                job.cancel.cancel()
            self._lock.notify()
        self._thread.join(timeout)

    # ---- the worker thread ----

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._has_work():
                    self._lock.wait()
                if self._stopping and not self._active and not self._pending:
                    break
                # (the engine's id: a reference would keep a swapped-out engine from being freed)
                serving = id(self._engine)
                uncalibrated = self._swap_engine_if_idle()
                swapped = id(self._engine) != serving
                to_close, self._to_close = self._to_close, []
            while to_close:
                to_close.pop().close()
            if swapped:  # (the new engine timed and serving, the old one closed and let go)
                freeze_long_lived()
            if uncalibrated is not None:
                self._calibrate(uncalibrated)
                continue  # swap it in on the next turn (unless a newer engine was installed meanwhile)
            self._came = math.inf  # (a job gives way once for each arrival: what came is admitted next)
            self._admit()
            if self._active:
                self._step_one()
        if self._engine is not None:
            self._engine.close()
        if self._next_engine is not None:
            self._next_engine.close()

    def _has_work(self) -> bool:
        if self._stopping or self._active or self._to_close:
            return True
        if self._next_engine is not None:
            return True
        return bool(self._pending) and (self._engine is not None or self._unavailable is not None)

    def _swap_engine_if_idle(self) -> Backend | None:
        """Swap in the installed engine once no generation runs; returns it instead while it is uncalibrated."""
        if self._next_engine is None or self._active:
            return None
        if not self._next_engine.calibrated:
            return self._next_engine
        old, self._engine, self._next_engine = self._engine, self._next_engine, None
        if old is not None:
            self._to_close.append(old)
        self._refresh_engine_stats()
        log.info("engine swapped in")
        return None

    def _calibrate(self, engine: Backend) -> None:
        """Time a new engine here, on the one thread that decodes: every llama.cpp context shares one CPU
        threadpool, which must never run two decodes at once. A failure keeps the serving engine."""
        try:
            prices = engine.calibrate()
        except Exception as exc:
            log.exception("timing the new engine failed; it is not swapped in")
            with self._lock:
                if self._next_engine is engine:
                    self._next_engine = None
                    if self._engine is None:
                        self._unavailable = f"The models loaded but failed their first passes: {exc}"
                self._to_close.append(engine)
            return
        if prices:
            log.info("measured pass costs: %s", prices)

    def _admit(self) -> None:
        """Start pending jobs whose slot is free, highest priority first, up to `max_active` at once."""
        with self._lock:
            if self._next_engine is not None and self._active:
                return  # draining for a model swap
            self._pending.sort(key=lambda j: (j.priority, j.id))
            candidates = list(self._pending)
        busy = {a.job.slot for a in self._active}
        # A job leaves the queue only once it is active or counted (finished or failed), so that `snapshot()`,
        # read on another thread, never sees nothing queued or running while a job is still unanswered.
        for job in candidates:
            if job.cancel.cancelled:
                self._finish(job, _cancelled_result(), started=False)
                self._remove_pending(job)
                continue
            if self._engine is None:
                if self._unavailable is not None:
                    self._fail(job, DaemonUnavailableError(self._unavailable))
                    self._remove_pending(job)
                continue
            if job.slot in busy or len(self._active) >= self._max_active:
                continue
            job.admitted_at = time.monotonic()
            try:
                request = job.prepare(self._engine)
                request.slot = job.slot
                request.cancel = job.cancel
                if job.priority > min(PRIORITY.values()):
                    request.give_way = functools.partial(self._more_urgent_came, job.priority)
                job.max_tokens = request.max_tokens
                generation = self._engine.generate(request)
            except Exception as exc:
                self._fail(job, exc)
                self._remove_pending(job)
                continue
            self._active.append(_Active(job, generation))
            self._remove_pending(job)
            busy.add(job.slot)

    def _more_urgent_came(self, priority: int) -> bool:
        return self._came < priority

    def _remove_pending(self, job: Job) -> None:
        with self._lock:
            self._pending.remove(job)

    def _step_one(self) -> None:
        current = min(self._active, key=lambda a: (a.job.priority, a.job.id))
        last = self._last_stepped
        if last is not None and last is not current.job:
            last._flush_steps()  # (its text must not wait while another job runs)
            if any(a.job is last for a in self._active):
                with self._stats_lock:
                    self._counters.preemptions += 1
        self._last_stepped = current.job
        try:
            event: StepEvent | None = current.generation.step()
        except Exception as exc:
            try:
                current.generation.close()  # release its engine slot, or a few failures would busy them all
            except Exception:
                log.exception("closing a failed generation")
            self._fail(current.job, exc)
            self._active.remove(current)  # (once counted: see `_admit`)
            return
        if current.job.stream:
            current.job._post_step(event if event is not None and event.text else None)
        result = current.generation.result
        if event is None or result is not None:  # (finished by this step: answer now, not a turn later)
            self._finish(current.job, result if result is not None else _cancelled_result(), started=True)
            self._active.remove(current)

    def _finish(self, job: Job, result: GenerationResult, started: bool) -> None:
        reason = result.finish_reason
        if started:
            self._refresh_engine_stats()
        unknown = unknown_fields(result.stats)  # what a remote backend did not report is null, not 0
        with self._stats_lock:
            counters = self._counters
            counters.requests[job.kind] = counters.requests.get(job.kind, 0) + 1
            counters.finish_reasons[reason] = counters.finish_reasons.get(reason, 0) + 1
            counters.recent.append(
                {
                    "id": job.id,
                    "kind": job.kind,
                    "slot": job.slot,
                    "finish_reason": reason,
                    "max_tokens": job.max_tokens,
                    "prompt_tokens": None if "prompt_tokens" in unknown else result.stats.prompt_tokens,
                    "cached_tokens": None if "cached_tokens" in unknown else result.stats.cached_tokens,
                    "tokens": result.stats.tokens,
                    "drafted": None if "drafted" in unknown else result.stats.drafted,
                    "accepted": None if "accepted" in unknown else result.stats.accepted,
                    "started": started,
                    "seconds": round(time.monotonic() - job.submitted_at, 4),
                    "time": _time_split(job, result),
                }
            )
        job._flush_steps()
        job._post(("done", result))

    def _fail(self, job: Job, exc: BaseException) -> None:
        with self._stats_lock:
            self._counters.errors += 1
        log.info("request %s (%s) failed: %s", job.id, job.kind, exc)
        job._flush_steps()
        job._post(("error", exc))

    def _refresh_engine_stats(self) -> None:
        if self._engine is not None:
            try:
                stats = dict(self._engine.stats())
                with self._stats_lock:
                    self._engine_stats = stats
            except Exception:  # stats are informative; never let them break serving
                log.exception("engine.stats() failed")


def _time_split(job: Job, result: GenerationResult) -> dict[str, float]:
    """Where a request's seconds went: waiting for the engine, then the engine's own split (RequestStats)."""
    queued = (job.admitted_at or time.monotonic()) - job.submitted_at
    return {"queued": round(queued, 4), **result.stats.time_split()}


def _cancelled_result() -> GenerationResult:
    return GenerationResult(text="", token_ids=[], finish_reason="cancelled", stats=RequestStats())
