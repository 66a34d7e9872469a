"""Where a fill-in-the-middle completion should end: end rules suited to code, applied while text streams.

- single_line: the completion ends at the first newline after it produced something that is not blank.
- block: it ends at the first blank line that follows a complete statement, i.e. a non-blank line
  not ending in a continuation character (`( [ { , \\ : =` and friends), and it ends before a line that
  repeats the first non-blank line of the suffix (the model re-typing the code after the cursor).
The kept text never includes the cut newline. While streaming, text that a later cut could still remove
(trailing whitespace, a line that may turn out to repeat the suffix) is held back until it is settled.

An `EndRule` travels in the GenerationRequest; each generation (local or remote) runs its own `EndCutter`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CONTINUATION_ENDINGS = ("(", "[", "{", ",", "\\", ":", "=", "+", "-", "*", "/", "|", "&", ".")
EndRuleKind = Literal["single_line", "block"]


@dataclass(frozen=True)
class EndRule:
    """Which rule ends the generation, and the suffix (the code after the cursor) the block rule watches for."""

    kind: EndRuleKind
    suffix: str = ""

    def cutter(self) -> EndCutter:
        return EndCutter(self.kind == "single_line", self.suffix)


class EndCutter:
    """Streaming state of one rule: `feed` text as it is generated, `flush` when the generation ended."""

    def __init__(self, single_line: bool, suffix: str = "") -> None:
        self.single_line = single_line
        self.text = ""
        self.done = False
        self._emitted = 0
        self._cut: int | None = None
        self._suffix_line = next((line.strip() for line in suffix.split("\n") if line.strip()), "")

    def feed(self, delta: str) -> str:
        """Add generated text; return the part that is now final. Sets `done` once a rule cut the text."""
        if self.done:
            return ""
        self.text += delta
        self._cut = self._find_cut()
        if self._cut is not None:
            self.done = True
            return self._emit(self._cut)
        return self._emit(self._safe_end())

    def flush(self) -> str:
        """The generation ended on its own: release whatever was held back."""
        return self._emit(len(self.text) if self._cut is None else self._cut)

    @property
    def final_text(self) -> str:
        return self.text if self._cut is None else self.text[: self._cut]

    def _emit(self, end: int) -> str:
        if end <= self._emitted:
            return ""
        out = self.text[self._emitted : end]
        self._emitted = end
        return out

    def _find_cut(self) -> int | None:
        text = self.text
        if self.single_line:
            start = len(text) - len(text.lstrip())
            if start == len(text):
                return None
            newline = text.find("\n", start)
            return newline if newline >= 0 else None
        pos = 0
        last_content = ""
        lines = text.split("\n")
        for line in lines[:-1]:  # complete lines only
            stripped = line.strip()
            if stripped and self._suffix_line and stripped == self._suffix_line:
                return max(pos - 1, 0)
            if not stripped and last_content and not last_content.endswith(CONTINUATION_ENDINGS):
                return pos - 1
            if stripped:
                last_content = stripped
            pos += len(line) + 1
        return None

    def _safe_end(self) -> int:
        if self.single_line:
            return len(self.text)
        end = len(self.text.rstrip())
        line_start = self.text.rfind("\n") + 1
        tail = self.text[line_start:].strip()
        if tail and self._suffix_line.startswith(tail):
            end = min(end, max(line_start - 1, 0))
        return end
