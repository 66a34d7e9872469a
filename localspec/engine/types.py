"""Plain data types of the engine's public API: requests in, step events and results out."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

from localspec.engine.end_rules import EndRule

DraftSource = Literal["draft", "ngram", "none"]
SpeculativeMode = Literal["adaptive", "draft", "ngram", "none"]
FinishReason = Literal["stop", "length", "cancelled"]


@dataclass
class SamplingParams:
    """Target sampling. temperature 0 means greedy (argmax) and makes the output deterministic."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


class CancelToken:
    """Set from any thread; the engine checks it between decode steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class GenerationRequest:
    prompt: str | list[int]
    max_tokens: int = 256
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: list[str] = field(default_factory=list)
    # Ends the generation where code completion should end (an infill's line or block); it then ends with "stop".
    end_rule: EndRule | None = None
    # KV slot key: requests with the same key reuse each other's cached prefix ("chat", "infill", ...).
    slot: str = "default"
    # None = the engine's configured mode; "none" = the target alone.
    speculative: SpeculativeMode | None = None
    draft_max: int | None = None
    # Text prompts: parse special tokens such as <|im_start|> (chat templates do), add BOS if the model wants.
    parse_special: bool = True
    add_bos: bool = True
    # Extra text the n-gram drafter may copy from (other files of the user's repository, for instance).
    lookup_texts: list[str] = field(default_factory=list)
    # Drop the prompt's start to fit the context instead of failing (documented truncation).
    truncate_prompt: bool = False
    # Keep the target's top-2 logit margin for every settled token (benchmarks use it to explain divergences).
    record_margins: bool = False
    # Keep a `StepRecord` for every step (benchmarks use them to see what the adaptive chooser did).
    record_steps: bool = False
    cancel: CancelToken = field(default_factory=CancelToken)
    # Whether a more urgent request has come (None: nothing is more urgent). On a CPU a pass over a chunk of the
    # prompt then stops part-way and the step settles nothing, so the scheduler can run that request first; the
    # chunk is evaluated again later, and not stopped again right away (urgent requests in a row do not starve it).
    give_way: Callable[[], bool] | None = None


@dataclass
class StepEvent:
    """One target pass: the text it settled (possibly empty while a UTF-8 character or stop string is pending)."""

    text: str
    tokens: int  # tokens settled in this step
    drafted: int
    accepted: int
    source: DraftSource
    # How many leading characters of `text` came from accepted draft tokens (the rest the target produced).
    drafted_chars: int = 0


@dataclass
class StepRecord:
    """One speculative step: where its drafts came from, what became of them, and what its target pass cost."""

    source: DraftSource
    drafted: int
    accepted: int
    ready: int  # drafts the draft model had made while the target verified the step before
    # Tokens in the target's pass: drafts + 1, more where padded or where the prompt's end was folded in.
    pass_tokens: int
    draft_ms: float
    verify_ms: float
    draft_ready: int = 0  # drafts the draft model had ready when the step was planned
    # Tokens per second the adaptive chooser expected of each source it priced for this step (none where a fixed
    # mode, or a re-timing of the target alone, priced nothing).
    priced: dict[str, float] = field(default_factory=dict)
    # What the adaptive chooser priced a pass repeating the previous pass's size at (a CUDA graph capture, net of
    # the replays it expected after it) and those replays, where it priced one.
    capture_ms: float | None = None
    replays: float | None = None
    # Tokens the adaptive chooser expected the step to settle at the length it planned (its drafts' acceptance
    # rates; a draft-model step may stop sooner where the draft model is unsure), and the length of the n-gram
    # match behind an n-gram step's drafts: the traces then say which estimate a price that missed came from.
    expected: float | None = None
    ngram_match: int = 0
    # Tokens the target's sequence held before the pass (with pass_tokens, the KV length the pass attends over: on a
    # GPU a captured CUDA graph replays only at the KV length it was captured at, to llama.cpp's padding).
    depth: int = 0


@dataclass
class RequestStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the slot's KV cache
    prompt_truncated_tokens: int = 0
    tokens: int = 0  # generated tokens
    settled: int = 0  # tokens the target passes settled, counting a final end-of-generation token
    drafted: int = 0
    accepted: int = 0
    drafted_ahead: int = 0  # drafts the draft model had made while the target verified the step before
    # Steps that took the draft model's second choice and found a chain drafted from it.
    second_chains: int = 0
    target_passes: int = 0
    steps_by_source: dict[str, int] = field(default_factory=lambda: {"draft": 0, "ngram": 0, "none": 0})
    settled_near_ties: int = 0  # positions re-decoded alone because the verify margin was tiny
    gave_way: int = (
        0  # a prefill's passes stopped part-way for a more urgent request (`GenerationRequest.give_way`)
    )
    t_cache: float = 0.0  # saving and restoring KV copies of the prompt cache, before the prompt is evaluated
    t_cache_save: float = 0.0  # ... of which saving the slot's KV before it is overwritten
    t_prompt: float = 0.0
    t_plan: float = 0.0  # choosing each step's draft source and length (the n-gram lookups with it)
    t_draft: float = 0.0
    t_verify: float = 0.0
    t_sample: float = 0.0
    t_total: float = 0.0
    margins: list[float] = field(default_factory=list)  # only with GenerationRequest.record_margins
    steps: list[StepRecord] = field(default_factory=list)  # only with GenerationRequest.record_steps

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """Tokens settled per target pass (1.0 = no gain from speculation)."""
        return self.settled / self.target_passes if self.target_passes else 0.0

    @property
    def tokens_per_second(self) -> float:
        decode_time = self.t_total - self.t_prompt
        return self.tokens / decode_time if decode_time > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "prompt_truncated_tokens": self.prompt_truncated_tokens,
            "tokens": self.tokens,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "drafted_ahead": self.drafted_ahead,
            "second_chains": self.second_chains,
            "acceptance": round(self.acceptance, 4),
            "target_passes": self.target_passes,
            "mean_accepted_length": round(self.mean_accepted_length, 3),
            "steps_by_source": dict(self.steps_by_source),
            "settled_near_ties": self.settled_near_ties,
            "gave_way": self.gave_way,
            "tokens_per_second": round(self.tokens_per_second, 3),
            "time": self.time_split(),
        }

    def time_split(self) -> dict[str, float]:
        """Seconds by phase: the prompt cache's KV copies (of which saving one), the prompt, planning steps, drafting,
        verify passes, sampling, all."""
        return {
            "cache": round(self.t_cache, 4),
            "cache_save": round(self.t_cache_save, 4),
            "prompt": round(self.t_prompt, 4),
            "plan": round(self.t_plan, 4),
            "draft": round(self.t_draft, 4),
            "verify": round(self.t_verify, 4),
            "sample": round(self.t_sample, 4),
            "total": round(self.t_total, 4),
        }


@dataclass(frozen=True)
class CacheRoom:
    """The prompt cache after a request: which store it is (a new id whenever the store starts empty: another engine,
    a restarted daemon, a cleared cache), its use and budget (bytes), and for a prefill whether its KV was kept as
    a copy and the copy's size (0 where none was made: a short prompt, or the cache off)."""

    id: str
    bytes: int
    max_bytes: int
    kept: bool = False
    copy_bytes: int = 0

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    stats: RequestStats
    prompt_cache: CacheRoom | None = None  # where the engine keeps copies of evaluated prompts


@dataclass
class ModelInfo:
    path: str
    name: str
    architecture: str
    n_params: int
    n_vocab: int
    n_ctx_train: int
    has_fim: bool
    chat_template: str | None
