"""The engine: a target model, an optional draft model, prompt-cache slots, and the speculative loop.

A library with no knowledge of HTTP, terminals or editors. Not thread-safe: drive it from one thread
(the daemon's scheduler does); `CancelToken.cancel()` is the one call that may come from another thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from localspec.engine.canary import ensure_llama_runs
from localspec.engine.chooser import AdaptiveChooser, PassCosts
from localspec.engine.compat import ensure_compatible
from localspec.engine.drafters import ONE_BY_ONE_CATCH_UP, NgramHistory, common_prefix_length
from localspec.engine.llama_model import LlamaModel
from localspec.engine.speculative import Generation, SlotState
from localspec.engine.types import (
    GenerationRequest,
    GenerationResult,
    ModelInfo,
    RequestStats,
    SpeculativeMode,
)
from localspec.errors import ContextOverflowError, InvalidRequestError, UnsupportedError

# Greedy positions whose top-2 logit margin in a batched verify pass is below this are re-evaluated alone.
# Measured on this project's CPU build: batched vs one-token logits differ by up to ~0.3 at the top.
DEFAULT_TIE_MARGIN = 0.35
# A slot belonging to another key is reused only when it shares at least this many prompt tokens.
MIN_SHARED_PREFIX = 256
MAX_CHOOSERS = 64
# Sizes of the draft model's batched catch-up passes timed at start-up (larger ones are extrapolated).
DRAFT_CATCH_UP_SIZES = (4, 16, 64)


@dataclass
class EngineSettings:
    target_path: Path
    draft_path: Path | None = None
    n_ctx: int = 4096  # per slot
    threads: int = 0  # 0 = all cores
    target_gpu_layers: int = -1  # -1 = all layers on the GPU when llama.cpp has one, else CPU
    draft_gpu_layers: int = -1
    slots: int = 4
    mode: SpeculativeMode = "adaptive"
    draft_max: int = 16
    draft_p_min: float = 0.75
    tie_margin: float = DEFAULT_TIE_MARGIN
    history_tokens: int = 16384  # earlier outputs kept as an n-gram source (0 = none)


class Engine:
    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings
        if Path(settings.target_path).is_file():
            ensure_llama_runs(Path(settings.target_path))
        self.target = self._load(settings.target_path, "target", settings.target_gpu_layers)
        self.draft: LlamaModel | None = None
        if settings.draft_path is not None:
            try:
                self.draft = self._load(settings.draft_path, "draft", settings.draft_gpu_layers)
                ensure_compatible(self.target, self.draft)
            except Exception:
                self.close()
                raise
        self._slots = [
            SlotState(seq_id=i, key="", target_tokens=[], draft_tokens=[]) for i in range(settings.slots)
        ]
        self._choosers: dict[tuple[str, str], AdaptiveChooser] = {}
        ratio = self.draft.n_params() / self.target.n_params() if self.draft else 0.0
        self.costs = PassCosts(
            draft_ratio=max(0.1, min(1.0, ratio * 1.5)),
            draft_one_by_one=ONE_BY_ONE_CATCH_UP if self.draft is not None and self.draft.offloaded else 1,
        )
        if settings.mode != "none":
            self._calibrate()
        # N-grams of earlier outputs, one more draft source for later requests (replaceable: `bench` keeps one
        # per mode so a mode never copies another mode's output of the same prompt).
        self.history = NgramHistory(settings.history_tokens)
        self._totals = RequestStats()
        self._requests = 0
        self._started = time.time()
        self._chat_formatter: Jinja2ChatFormatter | None = None

    def _calibrate(self) -> None:
        """Time one target pass of every size a step can verify (on a GPU also after passes of the same size and
        after draft-model passes), a draft-model token and a few draft-model catch-ups (batched passes): the
        chooser plans with these from the first request on, and every real pass updates them. ~2.5 s on a 2-core
        CPU, ~0.5 s on a GPU."""
        seq_id = self._slots[0].seq_id
        sizes = range(1, min(self.settings.draft_max + 1, self.target.n_ctx_per_seq - 1, 64) + 1)
        tokens = [0] * (max(sizes) + 1)  # any token: a pass costs the same whatever it reads
        self.target.decode(tokens, 0, seq_id, "all")  # warm-up: first-use allocations are not a pass cost
        self.target.remove_from(seq_id, 1)
        # Each size's best of two sweeps: on a GPU the first passes of each batch shape also capture and upload
        # its graph (measured: 3x a warm pass). A slow CPU sweep has no such start-up and is not repeated.
        best: dict[int, float] = {}
        started = time.perf_counter()
        fast = True
        for sweep in range(2):
            if sweep and time.perf_counter() - started > 1.0:
                fast = False
                break
            for n in sizes:
                # The one-token pass is the yardstick of every plan, and the first passes after loading can be
                # slow (measured in the daemon: 49 ms for a 25 ms pass): take the best of three.
                for _ in range(3 if n == 1 else 1):
                    if self.target.offloaded:  # as in a session: after a one-token pass (or a 2-token one)
                        self._timed_pass(self.target, tokens[: 2 if n == 1 else 1], seq_id)
                    seconds = self._timed_pass(self.target, tokens[:n], seq_id)
                    best[n] = min(best.get(n, seconds), seconds)
        for n, seconds in best.items():  # each pass followed one of another size: cold prices
            self.costs.record_verify(n, seconds)
        if fast:
            # Passes after passes of the same size: on a GPU the second of a shape captures a CUDA graph, the
            # third and later replay it (warm). A slow CPU has no such difference and keeps the cold prices.
            for n in sizes:
                warm = [self._timed_pass(self.target, tokens[:n], seq_id) for _ in range(4)]
                self.costs.record_verify(n, warm[1], capture=True)
                self.costs.record_verify(n, min(warm[2:]), warm=True)
        if self.draft is not None:
            catch_up_sizes = [n for n in DRAFT_CATCH_UP_SIZES if n < self.draft.n_ctx_per_seq - 1]
            catch_ups = [0] * max(catch_up_sizes, default=1)
            self.draft.decode(catch_ups, 0, seq_id, "last")  # warm-up, as for the target
            self.draft.remove_from(seq_id, 1)
            self.costs.record_draft(
                1, min(self._timed_pass(self.draft, tokens[:1], seq_id) for _ in range(3))
            )
            for n in catch_up_sizes:  # (each after a pass of another size, as a catch-up is)
                self.costs.record_draft_pass(n, self._timed_pass(self.draft, catch_ups[:n], seq_id, "last"))
            if fast:
                # A verify pass right after draft-model passes, as in a draft-model step (on an H100 a 17-token
                # pass took 7.2 ms there against 4.6 ms after another 17-token pass). Best of two.
                for n in sizes:
                    after_draft: list[float] = []
                    for _ in range(2):
                        for _ in range(2):
                            self._timed_pass(self.draft, tokens[:1], seq_id, "last")
                        after_draft.append(self._timed_pass(self.target, tokens[:n], seq_id))
                    self.costs.record_verify(n, min(after_draft), after_draft=True)
            self.draft.remove_from(seq_id, 0)
        self.target.remove_from(seq_id, 0)

    @staticmethod
    def _timed_pass(model: LlamaModel, tokens: list[int], seq_id: int, outputs: str = "all") -> float:
        """Seconds for one pass over `tokens` after position 0 of `seq_id` (the KV is left as it was)."""
        started = time.perf_counter()
        model.decode(tokens, 1, seq_id, outputs)
        model.synchronize()
        elapsed = time.perf_counter() - started
        model.remove_from(seq_id, 1)
        return elapsed

    def _load(self, path: Path, role: str, gpu_layers: int) -> LlamaModel:
        settings = self.settings
        return LlamaModel(
            Path(path),
            role=role,
            n_ctx_per_seq=settings.n_ctx,
            n_seq=settings.slots,
            n_threads=settings.threads,
            gpu_layers=gpu_layers,
        )

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
            "slots": [
                {"key": s.key, "cached_tokens": len(s.target_tokens), "busy": s.busy} for s in self._slots
            ],
        }

    # ---- prompts ----------------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        return self.target.tokenize(text, add_bos=add_bos, parse_special=parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.target.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def _token_text(self, token: int) -> str:
        return self.target.token_text(token).decode("utf-8", errors="replace") if token >= 0 else ""

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render messages with the chat template stored in the target GGUF (generation prompt appended)."""
        if self._chat_formatter is None:
            template = self.target.metadata("tokenizer.chat_template")
            if not template:
                raise UnsupportedError(
                    f"The target model {self.target.path.name} has no chat template; use /v1/completions instead."
                )
            special = self.target.special_tokens()
            self._chat_formatter = Jinja2ChatFormatter(
                template,
                eos_token=self._token_text(special["eos"]),
                bos_token=self._token_text(special["bos"]),
            )
        try:
            return self._chat_formatter(messages=messages).prompt  # type: ignore[arg-type]
        except Exception as exc:  # jinja2 raises many kinds; the template decides what is valid
            raise InvalidRequestError(f"The model's chat template rejected these messages: {exc}") from exc

    def infill_prompt(
        self,
        prefix: str,
        suffix: str,
        extra: list[tuple[str, str]] | None = None,
        filename: str | None = None,
        max_tokens: int = 256,
    ) -> list[int]:
        """Fill-in-the-middle prompt in the model's FIM tokens (the layout llama.cpp's server uses).

        When it does not fit the context, extra chunks go first, then the prefix's start and the suffix's end.
        """
        special = self.target.special_tokens()
        if min(special["fim_pre"], special["fim_suf"], special["fim_mid"]) < 0:
            raise UnsupportedError(
                f"The target model {self.target.path.name} has no fill-in-the-middle tokens, so it cannot do "
                "infill. Use a code model with FIM support (e.g. Qwen2.5-Coder)."
            )
        budget = self.n_ctx - max_tokens - 8
        prefix_tokens = self.tokenize(prefix, parse_special=False)
        suffix_tokens = self.tokenize(suffix, parse_special=False)
        suffix_tokens = suffix_tokens[: max(0, budget // 4)]
        prefix_tokens = (
            prefix_tokens[-max(0, budget - len(suffix_tokens)) :] if budget > len(suffix_tokens) else []
        )
        head: list[int] = []
        if self.target.adds_bos() and special["bos"] >= 0:
            head.append(special["bos"])
        has_repo_tokens = special["fim_rep"] >= 0 and special["fim_sep"] >= 0
        room = budget - len(prefix_tokens) - len(suffix_tokens)
        if has_repo_tokens and (extra or filename):
            repo = [special["fim_rep"], *self.tokenize("localspec\n", parse_special=False)]
            chunks = [repo]
            for chunk_name, text in extra or []:
                chunk = [special["fim_sep"], *self.tokenize(f"{chunk_name}\n{text}", parse_special=False)]
                if sum(map(len, chunks)) + len(chunk) > room:
                    break
                chunks.append(chunk)
            chunks.append(
                [special["fim_sep"], *self.tokenize(f"{filename or 'file'}\n", parse_special=False)]
            )
            if sum(map(len, chunks)) <= room:
                for chunk in chunks:
                    head.extend(chunk)
        return [
            *head,
            special["fim_pre"],
            *prefix_tokens,
            special["fim_suf"],
            *suffix_tokens,
            special["fim_mid"],
        ]

    def _prompt_tokens(self, request: GenerationRequest) -> tuple[list[int], int]:
        if isinstance(request.prompt, list):
            tokens = list(request.prompt)
            if any(not 0 <= t < self.target.n_vocab for t in tokens):
                raise InvalidRequestError(f"Prompt token ids must be in [0, {self.target.n_vocab}).")
        else:
            bos = self.target.special_tokens()["bos"]
            # Chat templates often write the BOS text themselves; do not add a second one.
            starts_with_bos = bos >= 0 and request.prompt.startswith(self._token_text(bos) or "\0")
            add_bos = request.add_bos and self.target.adds_bos() and not starts_with_bos
            tokens = self.target.tokenize(
                request.prompt, add_bos=add_bos, parse_special=request.parse_special
            )
        if not tokens:
            raise InvalidRequestError("The prompt is empty; send at least one character.")
        limit = self.n_ctx - 1  # room for at least one generated token
        if len(tokens) <= limit:
            return tokens, 0
        if not request.truncate_prompt:
            raise ContextOverflowError(
                f"The prompt is {len(tokens)} tokens but the context holds {self.n_ctx} per request "
                f"(and at least one token must be generated). Shorten the prompt, raise engine.n_ctx, or ask "
                "for truncation (the prompt's start is dropped)."
            )
        keep = max(1, limit - min(request.max_tokens, limit // 2))
        return tokens[-keep:], len(tokens) - keep

    # ---- generation -------------------------------------------------------------------------------------------

    def _acquire_slot(self, key: str, prompt: list[int]) -> SlotState:
        free = [s for s in self._slots if not s.busy]
        if not free:
            raise InvalidRequestError(
                f"All {len(self._slots)} engine slots are busy; wait for a request to finish or raise engine.slots."
            )
        same_key = [s for s in free if s.key == key]
        unused = [s for s in free if not s.key]
        shared = max(free, key=lambda s: common_prefix_length(s.target_tokens, prompt))
        if same_key:
            slot = same_key[0]
        elif common_prefix_length(shared.target_tokens, prompt) >= MIN_SHARED_PREFIX:
            slot = shared  # another client's cache is worth taking over: most of it is this prompt too
        elif unused:
            slot = unused[0]
        else:
            slot = min(free, key=lambda s: s.last_used)  # each client kind keeps its slot; evict the oldest
        slot.key = key
        slot.busy = True
        return slot

    def _chooser(self, key: str, mode: SpeculativeMode) -> AdaptiveChooser:
        chooser = self._choosers.pop((key, mode), None)
        if chooser is None:
            if len(self._choosers) >= MAX_CHOOSERS:  # slot keys come from clients: keep the most recent only
                del self._choosers[next(iter(self._choosers))]
            chooser = AdaptiveChooser(mode, self.settings.draft_max, self.draft is not None, self.costs)
        self._choosers[(key, mode)] = (
            chooser  # (re)inserted last: the dict's order is least recently used first
        )
        return chooser

    def generate(self, request: GenerationRequest) -> Generation:
        if request.max_tokens < 1:
            raise InvalidRequestError(f"max_tokens must be at least 1, not {request.max_tokens}.")
        if request.draft_max is not None and not 0 <= request.draft_max <= 64:
            raise InvalidRequestError(f"draft_max must be between 0 and 64, not {request.draft_max}.")
        prompt, truncated = self._prompt_tokens(request)
        mode: SpeculativeMode = request.speculative or self.settings.mode
        if mode == "draft" and self.draft is None:
            mode = "none"
        stats = RequestStats(prompt_tokens=len(prompt), prompt_truncated_tokens=truncated)
        lookups = [self.tokenize(text, parse_special=False) for text in request.lookup_texts]
        slot = self._acquire_slot(request.slot, prompt)
        chooser = self._chooser(request.slot, mode)
        chooser.start_request()
        try:
            return Generation(
                request,
                prompt,
                self.target,
                self.draft if mode in ("adaptive", "draft") else None,
                slot,
                chooser,
                self.settings.tie_margin,
                self.settings.draft_p_min,
                lookups,
                [self.history.table],
                stats,
                on_finish=self._record,
            )
        except Exception:
            slot.busy = False
            raise

    def complete(self, request: GenerationRequest) -> GenerationResult:
        generation = self.generate(request)
        for _ in generation:
            pass
        assert generation.result is not None
        return generation.result

    def _record(self, generation: Generation) -> None:
        self._requests += 1
        if generation.result is not None:
            self.history.add(generation.result.token_ids)
        stats, totals = generation.stats, self._totals
        for name in (
            "prompt_tokens",
            "cached_tokens",
            "tokens",
            "settled",
            "drafted",
            "accepted",
            "target_passes",
            "settled_near_ties",
            "t_prompt",
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
        for slot in self._slots:
            if not slot.busy:
                self.target.remove_from(slot.seq_id, 0)
                slot.target_tokens.clear()
                if self.draft:
                    self.draft.remove_from(slot.seq_id, 0)
                slot.draft_tokens.clear()
                slot.ngram_index = None

    def close(self) -> None:
        if getattr(self, "draft", None) is not None:
            self.draft.close()  # type: ignore[union-attr]
        self.target.close()
