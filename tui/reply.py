"""What a streamed reply means to the UI: text deltas with their origin, and live speculative stats.

Plain functions over the daemon's OpenAI-shaped stream chunks, so they are testable without a screen.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from localspec.tui.store import ChatSettings, Conversation, Message


@dataclass
class ReplyDelta:
    text: str
    drafted_chars: int = 0  # leading chars of `text` that came from accepted drafts
    drafted: int = 0
    accepted: int = 0
    source: str = "none"


@dataclass
class ReplyDone:
    finish_reason: str
    usage: dict[str, Any] = field(default_factory=dict)
    speculative: dict[str, Any] = field(default_factory=dict)


def parse_chunk(chunk: dict[str, Any]) -> list[ReplyDelta | ReplyDone]:
    """One chat-completion stream chunk -> the delta it carries and, on the last chunk, the summary."""
    events: list[ReplyDelta | ReplyDone] = []
    choices = chunk.get("choices") or [{}]
    choice = choices[0]
    text = (choice.get("delta") or {}).get("content") or ""
    step = chunk.get("speculative_step") or {}
    final = bool(choice.get("finish_reason")) or "speculative" in chunk
    # The final chunk's step is all zeros: it closes the reply rather than settling tokens.
    if text or (step and not final):
        events.append(
            ReplyDelta(
                text=text,
                # null (a remote backend does not say per chunk): counted as target text with no drafts
                drafted_chars=min(int(step.get("drafted_chars") or 0), len(text)),
                drafted=int(step.get("drafted") or 0),
                accepted=int(step.get("accepted") or 0),
                source=str(step.get("source") or "none"),
            )
        )
    if final:
        events.append(
            ReplyDone(
                finish_reason=choice.get("finish_reason") or "stop",
                usage=chunk.get("usage") or {},
                speculative=chunk.get("speculative") or {},
            )
        )
    return events


def add_origin(runs: list[list[int]], drafted_chars: int, n_chars: int) -> None:
    """Append a delta's origin to run-length runs [[drafted(0/1), n_chars], ...], merging equal neighbours."""
    for drafted, count in ((1, drafted_chars), (0, n_chars - drafted_chars)):
        if count <= 0:
            continue
        if runs and runs[-1][0] == drafted:
            runs[-1][1] += count
        else:
            runs.append([drafted, count])


def origin_spans(text: str, runs: list[list[int]]) -> list[tuple[str, bool]]:
    """Split `text` by origin runs: (piece, came_from_draft). Text past the runs counts as the target's."""
    spans: list[tuple[str, bool]] = []
    pos = 0
    for drafted, count in runs:
        if pos >= len(text):
            break
        spans.append((text[pos : pos + count], bool(drafted)))
        pos += count
    if pos < len(text):
        spans.append((text[pos:], False))
    return spans


@dataclass
class LiveStats:
    """Speculative stats of the reply in flight, from per-step events; replaced by the final summary."""

    started: float = field(default_factory=time.monotonic)
    steps: int = 0
    tokens: int = 0
    drafted: int = 0
    accepted: int = 0
    final: dict[str, Any] = field(default_factory=dict)

    def add(self, delta: ReplyDelta) -> None:
        self.steps += 1
        # A verify pass settles the accepted drafts plus the target's own next token.
        self.tokens += delta.accepted + 1
        self.drafted += delta.drafted
        self.accepted += delta.accepted

    def finish(self, done: ReplyDone) -> None:
        self.final = dict(done.speculative)
        if "completion_tokens" in done.usage:
            self.final.setdefault("tokens", done.usage["completion_tokens"])

    @property
    def tokens_per_second(self) -> float:
        if self.final.get("tokens_per_second") is not None:
            return float(self.final["tokens_per_second"])
        elapsed = time.monotonic() - self.started
        return self.tokens / elapsed if elapsed > 0 else 0.0

    # The final summary's fields are null where the daemon's backend (a remote server) does not report them:
    # they stay None (unknown) here rather than turning into 0.

    @property
    def drafted_total(self) -> int | None:
        return self._final_or("drafted", self.drafted)

    @property
    def acceptance(self) -> float | None:
        return self._final_or("acceptance", self.accepted / self.drafted if self.drafted else 0.0)

    @property
    def mean_accepted_length(self) -> float | None:
        return self._final_or("mean_accepted_length", self.tokens / self.steps if self.steps else 0.0)

    def _final_or(self, key: str, live: Any) -> Any:
        if key not in self.final:
            return live
        value = self.final[key]
        return None if value is None else type(live)(value)

    def summary(self) -> dict[str, Any]:
        acceptance, mean_length = self.acceptance, self.mean_accepted_length
        return {
            "tokens_per_second": round(self.tokens_per_second, 2),
            "acceptance": None if acceptance is None else round(acceptance, 4),
            "mean_accepted_length": None if mean_length is None else round(mean_length, 3),
            "drafted": self.drafted_total,
            "accepted": self._final_or("accepted", self.accepted),
        }


def chat_messages(conversation: Conversation, history: list[Message]) -> list[dict[str, str]]:
    """OpenAI messages for a request: the system prompt, then every user/assistant turn with text."""
    messages = []
    if conversation.system_prompt.strip():
        messages.append({"role": "system", "content": conversation.system_prompt})
    for message in history:
        if message.role in ("user", "assistant") and message.content:
            messages.append({"role": message.role, "content": message.content})
    return messages


def request_options(settings: ChatSettings, conversation_id: str) -> dict[str, Any]:
    """Extra chat-completion fields for a conversation's settings; its own KV slot keeps the prefix cached."""
    options: dict[str, Any] = {
        "temperature": settings.temperature,
        "top_p": settings.top_p,
        "max_tokens": settings.max_tokens,
        "slot": f"chat-{conversation_id[:12]}",
    }
    if settings.speculative:
        options["speculative"] = settings.speculative
    if settings.seed is not None:
        options["seed"] = settings.seed
    return options


_FENCE = re.compile(
    r"^(?P<fence>`{3,}|~{3,})[^\n]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL
)


def code_blocks(text: str) -> list[str]:
    """Bodies of the fenced code blocks in a Markdown text, in order (an unclosed last fence counts too)."""
    matches = list(_FENCE.finditer(text))
    blocks = [m.group("body") for m in matches]
    tail = text[matches[-1].end() :] if matches else text
    if unclosed := re.search(r"^(`{3,}|~{3,})[^\n]*\n(?P<body>.*)\Z", tail, re.MULTILINE | re.DOTALL):
        blocks.append(unclosed.group("body"))
    return blocks
