"""The engine: a target model, an optional draft model, prompt-cache slots, and the speculative loop.

A library with no knowledge of HTTP, terminals or editors. Not thread-safe: drive it from one thread
(the daemon's scheduler does); `CancelToken.cancel()` is the one call that may come from another thread. (On a
GPU the engine itself runs the draft model on a helper thread during each verify pass: `EngineSettings.draft_ahead`.)
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localspec.config import (
    DEFAULT_HISTORY_TOKENS,
    DEFAULT_N_CTX,
    DEFAULT_SLOTS,
    DRAFT_MAX_CPU,
    DRAFT_MAX_GPU,
    DRAFT_MAX_LIMIT,
    draft_ahead_setting,
    draft_max_setting,
    draft_p_min_setting,
    prompt_cache_mb_setting,
)
from localspec.engine.canary import ensure_llama_runs
from localspec.engine.chooser import AdaptiveChooser
from localspec.engine.compat import ensure_compatible
from localspec.engine.drafters import NgramHistory, NgramTable, confidence_floor
from localspec.engine.host_memory import prompt_cache_bytes
from localspec.engine.kv_snapshots import KvSnapshots
from localspec.engine.llama_model import LlamaModel
from localspec.engine.pass_costs import PassCosts
from localspec.engine.pass_costs import calibrate as time_passes
from localspec.engine.prefix_cache import ONE_BY_ONE_CATCH_UP, SlotPool, SlotState
from localspec.engine.prompt_chunks import PromptChunks
from localspec.engine.prompts import PromptLayout
from localspec.engine.recently_used import recently_used
from localspec.engine.speculative import Generation
from localspec.engine.types import (
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    RequestStats,
    SpeculativeMode,
)
from localspec.errors import ConfigError, InvalidRequestError

if TYPE_CHECKING:
    from localspec.config import Config

# Greedy positions whose top-2 logit margin in a batched verify pass is below this are re-evaluated alone, so the
# output stays the target alone's: batched and one-token passes differ in the last bits, by more on a CPU than on
# a GPU (`bench/batch_numerics.py`; docs/BENCHMARKS.md has the measured spread). On a GPU each re-evaluation also
# costs the next verify pass its CUDA graph, so the GPU's margin is as small as its measured spread allows.
TIE_MARGIN_CPU = 0.35
TIE_MARGIN_GPU = 0.1
MAX_CHOOSERS = 64
MAX_LOOKUP_TABLES = 64
# Prefills have the draft model read their prompt too where a draft token costs at most this share of the target's
# one-token pass (a 7B-14B target with a 0.5B draft): the prompt cache's copy then holds its KV, and a request
# restoring the copy drafts at once instead of first catching the draft model up on the whole prompt. Where the
# draft model costs more (the 1.5B + 0.5B pair) it seldom drafts, and reading would only slow the warm-up.
PREFILL_DRAFT_MAX_COST = 0.25


@dataclass
class EngineSettings:
    target_path: Path
    draft_path: Path | None = None
    n_ctx: int = DEFAULT_N_CTX  # per slot
    threads: int = 0  # 0 = all cores, or 1 for a model wholly on a GPU (`default_threads`)
    target_gpu_layers: int = -1  # -1 = all layers on the GPU when llama.cpp has one, else CPU
    draft_gpu_layers: int = -1
    slots: int = DEFAULT_SLOTS
    mode: SpeculativeMode = "adaptive"
    # Most drafts a step makes (a request may ask for less, not more). None: DRAFT_MAX_GPU where the target runs on a
    # GPU, else DRAFT_MAX_CPU (`Engine.draft_max`).
    draft_max: int | None = None
    draft_p_min: float | None = None  # None: `confidence_floor` of this machine's measured costs
    tie_margin: float | None = None  # None: TIE_MARGIN_GPU when the target runs on a GPU, else TIE_MARGIN_CPU
    # The draft model drafts the next step while the target verifies this one (on a thread of its own). None: where
    # both models run on a GPU (on a CPU the two would share the same cores).
    draft_ahead: bool | None = None
    # An infill prompt's own n-grams are indexed on a thread of their own while its first pass is launched. None:
    # where the target runs on a GPU (there the launch is most of a short pass; on a CPU the pass needs every core).
    index_beside: bool | None = None
    # Prefills have the draft model read their prompt too. None: where a draft token costs at most
    # PREFILL_DRAFT_MAX_COST of a target token (`Engine.prefills_draft`).
    prefill_draft: bool | None = None
    # A one-token pass works out the next step's n-gram prices while it runs (`AdaptiveChooser.prepare`). None: where
    # the target runs on a GPU (its passes return before they are done; on a CPU the work would only add up).
    plan_ahead: bool | None = None
    history_tokens: int = DEFAULT_HISTORY_TOKENS  # earlier outputs kept as an n-gram source (0 = none)
    # MiB of host memory for saved KV sequences (0 = none); None: a share of this machine's (`prompt_cache_bytes`).
    prompt_cache_mb: int | None = None
    prompt_cache_pinned: bool = True  # ... page-locked where the models run on a GPU (see `host_memory`)

    @classmethod
    def from_config(
        cls, config: Config, target: Path, draft: Path | None, **overrides: Any
    ) -> EngineSettings:
        """The settings config.toml's [engine] and [speculative] ask for; `overrides` win (a command's flags, or
        fewer slots for a one-shot command)."""
        values: dict[str, Any] = {
            "target_path": target,
            "draft_path": draft,
            "n_ctx": config.n_ctx,
            "threads": config.threads,
            "target_gpu_layers": config.target_gpu_layers,
            "draft_gpu_layers": config.draft_gpu_layers,
            "slots": config.slots,
            "mode": config.mode,  # Config.validate() checked it
            "draft_max": draft_max_setting(config.draft_max),
            "draft_p_min": draft_p_min_setting(config.draft_p_min),
            "history_tokens": config.history_tokens,
            "prompt_cache_mb": prompt_cache_mb_setting(config.prompt_cache_mb),
            "prompt_cache_pinned": config.prompt_cache_pinned,
            "draft_ahead": draft_ahead_setting(config.draft_ahead),
        }
        return cls(**{**values, **overrides})


class Engine:
    def __init__(self, settings: EngineSettings, *, calibrate: bool = True) -> None:
        """Load the models; with `calibrate=False` the start-up timing waits for an explicit `calibrate()`
        (the daemon loads a new engine beside a serving one and times it on the scheduler's thread, because
        every context shares one CPU threadpool that serves one decode at a time)."""
        self.settings = settings
        if settings.draft_max is not None and not 0 <= settings.draft_max <= DRAFT_MAX_LIMIT:
            raise ConfigError(f"draft_max must be between 0 and {DRAFT_MAX_LIMIT}, not {settings.draft_max}.")
        if settings.mode == "draft" and settings.draft_path is None:
            raise ConfigError(
                'speculative.mode = "draft" needs a draft model, and none is configured. Set [models] draft '
                '(or --draft), or choose the mode "adaptive", "ngram" or "none".'
            )
        ensure_llama_runs()
        self.target = self._load(settings.target_path, "target", settings.target_gpu_layers)
        default_draft_max = DRAFT_MAX_GPU if self.target.offloaded else DRAFT_MAX_CPU
        self.draft_max = default_draft_max if settings.draft_max is None else settings.draft_max
        default_margin = TIE_MARGIN_GPU if self.target.offloaded else TIE_MARGIN_CPU
        self.tie_margin = default_margin if settings.tie_margin is None else settings.tie_margin
        self.draft: LlamaModel | None = None
        self._ahead: ThreadPoolExecutor | None = None
        # Where the draft model drafts ahead, each slot has a second draft sequence for a second chain
        # (`DraftModelDrafter.run_ahead`), sharing KV cells with the first.
        self._branch_seqs = False
        if settings.draft_path is not None:
            try:
                ahead = settings.draft_ahead
                self._branch_seqs = ahead if ahead is not None else self.target.offloaded
                self.draft = self._load(
                    settings.draft_path, "draft", settings.draft_gpu_layers, self._branch_seqs
                )
                ensure_compatible(self.target, self.draft)
                on_gpus = self.target.offloaded and self.draft.offloaded
                if ahead if ahead is not None else on_gpus:
                    self.draft.use_own_threads(1 if on_gpus else self.draft.n_threads)
                    self._ahead = ThreadPoolExecutor(1, thread_name_prefix="localspec-draft-ahead")
            except Exception:
                self.close()
                raise
        index_beside = settings.index_beside if settings.index_beside is not None else self.target.offloaded
        self._indexer = ThreadPoolExecutor(1, thread_name_prefix="localspec-index") if index_beside else None
        self._slots = SlotPool(settings.slots)
        # Chunks of the prompts of requests that may give way to a more urgent one (a warm-up prefill, a chat).
        self.prompt_chunks = PromptChunks(self.target.n_batch, stoppable=not self.target.offloaded)
        self.snapshots = KvSnapshots(
            prompt_cache_bytes(settings.prompt_cache_mb), settings.prompt_cache_pinned
        )
        self.prompts = PromptLayout(self.target, settings.n_ctx)
        self._choosers: dict[tuple[str, str], AdaptiveChooser] = {}
        self._lookup_tables: dict[str, NgramTable] = {}
        ratio = self.draft.n_params() / self.target.n_params() if self.draft else 0.0
        self.costs = PassCosts(
            draft_ratio=max(0.1, min(1.0, ratio * 1.5)),
            draft_one_by_one=ONE_BY_ONE_CATCH_UP if self.draft is not None and self.draft.offloaded else 1,
            price_depth=not self.target.offloaded,
        )
        self.calibrated = False
        if calibrate:
            self.calibrate()
        # N-grams of earlier outputs, one more draft source for later requests (replaceable: `bench` keeps one
        # per mode so a mode never copies another mode's output of the same prompt).
        self.history = NgramHistory(settings.history_tokens)
        self._totals = RequestStats()
        self._requests = 0
        self._started = time.time()

    def calibrate(self) -> str:
        """Time the passes the chooser plans with (once; a no-op for mode "none") and return the prices, for
        logs. Decodes on the shared threadpool: call it only where no other engine can decode at the same time."""
        if not self.calibrated and self.settings.mode != "none":
            time_passes(self.costs, self.target, self.draft, self._slots.slots[0].seq_id, self.draft_max + 1)
        self.calibrated = True
        floor = f"; draft confidence floor {self.draft_p_min():.2f}" if self.draft is not None else ""
        return self.costs.describe() + floor

    def _load(self, path: Path, role: str, gpu_layers: int, branch_seqs: bool = False) -> LlamaModel:
        """The model with a sequence per slot; with `branch_seqs`, a second one per slot (`branch_seq`), the
        sequences sharing one KV buffer with room for every slot's and a branch chain's tokens."""
        settings = self.settings
        branch_room = DRAFT_MAX_LIMIT + 1
        return LlamaModel(
            Path(path),
            role=role,
            n_ctx_per_seq=settings.n_ctx,
            n_seq=settings.slots * (2 if branch_seqs else 1),
            n_threads=settings.threads,
            gpu_layers=gpu_layers,
            shared_cells=settings.slots * (settings.n_ctx + branch_room) if branch_seqs else None,
        )

    def _branch_seq(self, slot: SlotState) -> int | None:
        """The draft model's second sequence for `slot`'s second chain, where it drafts ahead."""
        return slot.seq_id + self.settings.slots if self._branch_seqs and self._ahead is not None else None

    # ---- information ------------------------------------------------------------------------------------------

    @property
    def n_ctx(self) -> int:
        return self.settings.n_ctx

    @staticmethod
    def _info(model: LlamaModel) -> ModelInfo:
        special = model.special_tokens()
        return ModelInfo(
            path=str(model.path),
            name=model.metadata("general.name") or model.path.stem,
            architecture=model.metadata("general.architecture") or "unknown",
            n_params=model.n_params(),
            n_vocab=model.n_vocab,
            n_ctx_train=model.n_ctx_train(),
            has_fim=all(special[k] >= 0 for k in ("fim_pre", "fim_suf", "fim_mid")),
            chat_template=model.metadata("tokenizer.chat_template"),
        )

    @property
    def target_info(self) -> ModelInfo:
        return self._info(self.target)

    @property
    def draft_info(self) -> ModelInfo | None:
        return self._info(self.draft) if self.draft else None

    def stats(self) -> dict[str, Any]:
        """Cumulative stats over finished requests, in the per-request format plus engine-wide fields."""
        totals = self._totals
        return {
            "requests": self._requests,
            **totals.as_dict(),
            "cache_hit_tokens": totals.cached_tokens,
            "slots": self._slots.describe(),
            "prompt_cache": self.snapshots.describe(),
            "prices": self.costs.describe(),  # what the chooser plans with (ms), as start-up and passes left them
            "draft_p_min": round(self.draft_p_min(), 3) if self.draft is not None else None,
            "draft_max": self.draft_max,
            "prompt_chunk": self.prompt_chunks.size,  # tokens a pass reads of a prompt that gives way
        }

    # ---- prompts ----------------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        return self.prompts.tokenize(text, add_bos=add_bos, parse_special=parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        return self.prompts.detokenize(tokens)

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render messages with the chat template stored in the target GGUF (generation prompt appended)."""
        return self.prompts.chat_prompt(messages)

    def infill_prompt(
        self,
        prefix: str,
        suffix: str,
        extra: list[tuple[str, str]] | None = None,
        filename: str | None = None,
        max_tokens: int = 256,
    ) -> list[int]:
        """Fill-in-the-middle prompt in the model's FIM tokens (see `PromptLayout.infill_prompt`)."""
        return self.prompts.infill_prompt(prefix, suffix, extra, filename, max_tokens)

    # ---- generation -------------------------------------------------------------------------------------------

    def _lookup_table(self, text: str) -> NgramTable:
        """The n-gram table of a text the request offers to copy from. An editor sends the same chunks of other files
        with every suggestion, so their tables are kept (the most recent MAX_LOOKUP_TABLES) rather than rebuilt."""

        def index() -> NgramTable:
            tokens = list(self.prompts.plain_tokens(text))  # (the infill prompt tokenized the same texts)
            table = NgramTable()
            table.add(tokens, 0, len(tokens) - 1)
            return table

        return recently_used(self._lookup_tables, text, index, MAX_LOOKUP_TABLES)

    def _chooser(self, key: str, mode: SpeculativeMode) -> AdaptiveChooser:
        # Slot keys come from clients: the most recent MAX_CHOOSERS are kept.
        return recently_used(
            self._choosers,
            (key, mode),
            lambda: AdaptiveChooser(mode, self.draft_max, self.draft is not None, self.costs),
            MAX_CHOOSERS,
        )

    def generate(self, request: GenerationRequest) -> Generation:
        if request.max_tokens < 0:
            raise InvalidRequestError(
                f"max_tokens must be 0 (evaluate the prompt only) or more, not {request.max_tokens}."
            )
        limit = self.draft_max
        if request.draft_max is not None and not 0 <= request.draft_max <= limit:
            raise InvalidRequestError(
                f"draft_max must be between 0 and {limit} (this engine's speculative.draft_max), not "
                f"{request.draft_max}. Ask for at most {limit}, or raise speculative.draft_max in config.toml."
            )
        prompt, truncated = self.prompts.request_tokens(request)
        mode: SpeculativeMode = request.speculative or self.settings.mode
        if mode == "draft" and self.draft is None:
            raise InvalidRequestError(
                'speculative="draft" needs a draft model, and none is loaded. Ask for "adaptive", "ngram" or '
                '"none" instead, or load a pair with a draft model ([models] draft in config.toml, --draft, '
                "or `localspec models use PAIR`)."
            )
        stats = RequestStats(prompt_tokens=len(prompt), prompt_truncated_tokens=truncated)
        lookups = [self._lookup_table(text) for text in request.lookup_texts]
        slot = self._slots.acquire(request.slot, prompt)
        chooser = self._chooser(request.slot, mode)
        chooser.start_request()
        try:
            started = time.perf_counter()
            stats.t_cache_save = self.snapshots.prepare(slot, prompt, self.target, self.draft)
            stats.t_cache = time.perf_counter() - started
            return Generation(
                request,
                prompt,
                self.target,
                self.draft if mode in ("adaptive", "draft") else None,
                slot,
                chooser,
                self.tie_margin,
                self.draft_p_min(),
                lookups,
                [self.history.table],
                stats,
                on_finish=self._record,
                prompt_chunks=self.prompt_chunks if request.give_way is not None else None,
                ahead=self._ahead,
                branch_seq=self._branch_seq(slot),
                # An editor's suffix and other files' chunks come as lookup texts too: index only its prefix.
                own_text=self.prompts.infill_window(prompt) if request.lookup_texts else None,
                indexer=self._indexer,
                prefill_draft=mode in ("adaptive", "draft") and self.prefills_draft(),
                plan_ahead=self.plans_ahead,
            )
        except Exception:
            slot.release()
            raise

    def complete(self, request: GenerationRequest) -> GenerationResult:
        generation = self.generate(request)
        for _ in generation:
            pass
        assert generation.result is not None
        return generation.result

    def _record(self, generation: Generation) -> None:
        self._requests += 1
        if generation.request.max_tokens == 0:  # a prefill: keep its KV for the request it prepares
            room = self.snapshots.save(generation.slot, self.target, self.draft)
        else:
            room = self.snapshots.room()
        if generation.result is not None:
            generation.result.prompt_cache = room
            self.history.add(generation.result.token_ids)
        stats, totals = generation.stats, self._totals
        for name in (
            "prompt_tokens",
            "cached_tokens",
            "tokens",
            "settled",
            "drafted",
            "accepted",
            "drafted_ahead",
            "second_chains",
            "target_passes",
            "settled_near_ties",
            "gave_way",
            "t_cache",
            "t_cache_save",
            "t_prompt",
            "t_plan",
            "t_draft",
            "t_verify",
            "t_sample",
            "t_total",
        ):
            setattr(totals, name, getattr(totals, name) + getattr(stats, name))
        for source, count in stats.steps_by_source.items():
            totals.steps_by_source[source] += count

    def reset_cache(self) -> None:
        """Forget every slot's cached prefix (benchmarks use it to measure cold prompts)."""
        self._slots.reset(self.target, self.draft)
        self.snapshots.clear()

    def draft_p_min(self) -> float:
        """The confidence below which the draft model stops drafting: the configured one, or by default the floor
        for what a draft token costs against the target's one-token pass here (as measured so far)."""
        if self.settings.draft_p_min is not None:
            return self.settings.draft_p_min
        return confidence_floor(self.costs.draft_token() / self.costs.verify(1, warm=True))

    def prefills_draft(self) -> bool:
        """Whether prefills have the draft model read their prompt too (see PREFILL_DRAFT_MAX_COST)."""
        if self.draft is None:
            return False
        if self.settings.prefill_draft is not None:
            return self.settings.prefill_draft
        return self.costs.draft_token() <= PREFILL_DRAFT_MAX_COST * self.costs.verify(1, warm=True)

    @property
    def plans_ahead(self) -> bool:
        """Whether one-token passes work out the next step's n-gram prices while they run (`plan_ahead`)."""
        ahead = self.settings.plan_ahead
        return ahead if ahead is not None else self.target.offloaded

    @property
    def drafts_ahead(self) -> bool:
        return self._ahead is not None

    def close(self) -> None:
        for executor in (getattr(self, "_ahead", None), getattr(self, "_indexer", None)):
            if executor is not None:
                executor.shutdown()
        if getattr(self, "draft", None) is not None:
            self.draft.close()  # type: ignore[union-attr]
        self.target.close()
