"""Prompt layout: text to tokens, the model's chat template, its fill-in-the-middle layout, and fitting a prompt into
the context budget.

This is the one place where prompts are cut to a token budget. Callers send the text they have (the LSP picks
its window of lines around the cursor) and the number of tokens they want generated.
"""

from __future__ import annotations

import re

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from localspec.engine.llama_model import LlamaModel
from localspec.engine.recently_used import recently_used
from localspec.engine.types import GenerationRequest
from localspec.errors import ContextOverflowError, InvalidRequestError, UnsupportedError

# Tokens an infill prompt leaves unused, so that the layout's small extras never push it over the context.
INFILL_SLACK_TOKENS = 8
# Infill texts whose tokens are kept: an editor sends the same chunks of other files (and, while the user types at
# one place, the same suffix) with every suggestion, and tokenizing them anew cost milliseconds per request.
MAX_CACHED_TEXTS = 64
# An infill prefix is tokenized line by line from a cache of lines (it runs from a window's start to the cursor,
# so no two jumps send the same one, but they share most lines). Where a line starts with more than blanks, the
# tokenizers of code models split their words there, so its tokens do not depend on the line before; that is
# checked on the first CHECKED_PREFIXES prefixes against tokenizing them whole, and a tokenizer that differs once is
# never split again.
MAX_CACHED_LINES = 8192
CHECKED_PREFIXES = 16
_LINE_START = re.compile(r"(?<=\n)(?=[ \t]*[^\s])")


def answer_reserve(n_ctx: int, max_tokens: int) -> int:
    """Context tokens a prompt that must be cut leaves for the answer: what was asked for, but at most half the
    context, so that the prompt (the code around the cursor, the conversation) always keeps the other half."""
    return min(max_tokens, n_ctx // 2)


class PromptLayout:
    """Builds the token ids a request is decoded from, with the target model's vocabulary and templates."""

    def __init__(self, model: LlamaModel, n_ctx: int) -> None:
        self.model = model
        self.n_ctx = n_ctx
        self._chat_formatter: Jinja2ChatFormatter | None = None
        self._text_tokens: dict[str, tuple[int, ...]] = {}
        self._line_tokens: dict[str, tuple[int, ...]] = {}
        # Whether a prefix's tokens joined line by line match its tokens made whole (None: still checking).
        self.lines_exact: bool | None = None
        self._lines_checked = 0

    def tokenize(self, text: str, add_bos: bool = False, parse_special: bool = True) -> list[int]:
        return self.model.tokenize(text, add_bos=add_bos, parse_special=parse_special)

    def plain_tokens(self, text: str) -> tuple[int, ...]:
        """`text`'s tokens with special-token syntax left as text, from a cache of the most recently used
        MAX_CACHED_TEXTS texts (tokenizing is exact text to tokens, so a cached list is the same list)."""
        return self._cached_plain(self._text_tokens, text, MAX_CACHED_TEXTS)

    def prefix_tokens(self, text: str) -> list[int]:
        """`text`'s tokens with special-token syntax left as text, joined from its lines' cached tokens where that
        gives the same tokens as tokenizing it whole (see MAX_CACHED_LINES)."""
        if self.lines_exact is False:
            return self.tokenize(text, parse_special=False)
        cache = self._line_tokens
        tokens = [
            token
            for line in _LINE_START.split(text)
            for token in self._cached_plain(cache, line, MAX_CACHED_LINES)
        ]
        if self.lines_exact is None:
            whole = self.tokenize(text, parse_special=False)
            if whole != tokens:
                self.lines_exact = False
                cache.clear()
                return whole
            self._lines_checked += 1
            self.lines_exact = True if self._lines_checked >= CHECKED_PREFIXES else None
        return tokens

    def _cached_plain(self, cache: dict[str, tuple[int, ...]], text: str, size: int) -> tuple[int, ...]:
        """`text`'s plain tokens from `cache` (the `size` most recently used texts), tokenized where missing."""
        return recently_used(cache, text, lambda: tuple(self.tokenize(text, parse_special=False)), size)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.model.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def _token_text(self, token: int) -> str:
        return self.model.token_text(token).decode("utf-8", errors="replace") if token >= 0 else ""

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render messages with the chat template stored in the target GGUF (generation prompt appended)."""
        if self._chat_formatter is None:
            template = self.model.metadata("tokenizer.chat_template")
            if not template:
                raise UnsupportedError(
                    f"The target model {self.model.path.name} has no chat template; use /v1/completions instead."
                )
            special = self.model.special_tokens()
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

        When it does not fit the context minus `answer_reserve(max_tokens)`, extra chunks go first, then the
        prefix's start and the suffix's end (the suffix keeps at most a quarter of the budget).
        """
        special = self.model.special_tokens()
        if min(special["fim_pre"], special["fim_suf"], special["fim_mid"]) < 0:
            raise UnsupportedError(
                f"The target model {self.model.path.name} has no fill-in-the-middle tokens, so it cannot do "
                "infill. Use a code model with FIM support (e.g. Qwen2.5-Coder)."
            )
        budget = self.n_ctx - answer_reserve(self.n_ctx, max_tokens) - INFILL_SLACK_TOKENS
        prefix_tokens = self.prefix_tokens(prefix)
        suffix_tokens = list(self.plain_tokens(suffix)[: max(0, budget // 4)])
        prefix_tokens = (
            prefix_tokens[-max(0, budget - len(suffix_tokens)) :] if budget > len(suffix_tokens) else []
        )
        head: list[int] = []
        if self.model.adds_bos() and special["bos"] >= 0:
            head.append(special["bos"])
        has_repo_tokens = special["fim_rep"] >= 0 and special["fim_sep"] >= 0
        room = budget - len(prefix_tokens) - len(suffix_tokens)
        if has_repo_tokens and (extra or filename):
            repo = [special["fim_rep"], *self.plain_tokens("localspec\n")]
            chunks = [repo]
            for chunk_name, text in extra or []:
                chunk = [special["fim_sep"], *self.plain_tokens(f"{chunk_name}\n{text}")]
                if sum(map(len, chunks)) + len(chunk) > room:
                    break
                chunks.append(chunk)
            chunks.append([special["fim_sep"], *self.plain_tokens(f"{filename or 'file'}\n")])
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

    def infill_window(self, tokens: list[int]) -> range | None:
        """Where an infill prompt's prefix lies (from `<fim_prefix>` to `<fim_suffix>`), or None for another
        prompt. The rest of it, the other files' chunks before and the suffix after, is what an editor also
        offers as lookup texts."""
        special = self.model.special_tokens()
        start, end = special["fim_pre"], special["fim_suf"]
        if start < 0 or end < 0 or start not in tokens or end not in tokens:
            return None
        window = range(tokens.index(start), tokens.index(end))
        return window if window else None

    def request_tokens(self, request: GenerationRequest) -> tuple[list[int], int]:
        """The request's prompt as token ids, and how many tokens were dropped from its start to fit."""
        if isinstance(request.prompt, list):
            tokens = list(request.prompt)
            if tokens and (min(tokens) < 0 or max(tokens) >= self.model.n_vocab):
                raise InvalidRequestError(f"Prompt token ids must be in [0, {self.model.n_vocab}).")
        else:
            bos = self.model.special_tokens()["bos"]
            # Chat templates often write the BOS text themselves; do not add a second one.
            starts_with_bos = bos >= 0 and request.prompt.startswith(self._token_text(bos) or "\0")
            add_bos = request.add_bos and self.model.adds_bos() and not starts_with_bos
            tokens = self.model.tokenize(request.prompt, add_bos=add_bos, parse_special=request.parse_special)
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
        keep = max(1, limit - answer_reserve(limit, request.max_tokens))
        return tokens[-keep:], len(tokens) - keep
