"""Turns token bytes into text deltas: UTF-8 safe, never emitting any part of a stop string, and ending where
the request's end rule (an infill's single line or block) cuts the text. `EndWatch` asks the same of drafts: where
they would end the text, drafting further is wasted."""

from __future__ import annotations

import codecs
import copy
from collections.abc import Callable

from localspec.engine.end_rules import EndRule


class TextStream:
    def __init__(self, stop: list[str], end_rule: EndRule | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._cutter = end_rule.cutter() if end_rule is not None else None
        self._held = ""  # decoded text not yet emitted: it may be the start of a stop string
        self.text = ""  # everything emitted so far
        self.stopped = False  # a stop string or the end rule ended the text

    @property
    def can_stop(self) -> bool:
        """Whether text can end the stream (a stop string or an end rule), not only the end of generation."""
        return bool(self._stop) or self._cutter is not None

    def fork(self) -> TextStream:
        """An independent copy in the same state: what it is fed does not reach this stream."""
        forked = copy.copy(self)
        forked._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        forked._decoder.setstate(self._decoder.getstate())
        forked._cutter = copy.copy(self._cutter)
        return forked

    def push(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(data)
        return self._release()

    def finish(self) -> str:
        """End of generation: whatever is held (and any dangling partial character) is final text."""
        if self.stopped:
            return ""
        self._held += self._decoder.decode(b"", final=True)
        out, self._held = self._held, ""
        if self._cutter is not None:
            out = self._cutter.feed(out) + self._cutter.flush()
        self.text += out
        return out

    def _release(self) -> str:
        cut = -1
        for stop in self._stop:
            index = self._held.find(stop)
            if index != -1 and (cut == -1 or index < cut):
                cut = index
        if cut != -1:
            out, self._held = self._held[:cut], ""
            self.stopped = True
        else:
            keep = self._longest_stop_prefix_suffix()
            out = self._held[: len(self._held) - keep]
            self._held = self._held[len(self._held) - keep :]
        if self._cutter is not None:
            stopped_by_string = self.stopped
            out = self._cutter.feed(out)
            if stopped_by_string:
                out += self._cutter.flush()  # the stop string ended it: what the rule held back is final
            self.stopped = stopped_by_string or self._cutter.done
        self.text += out
        return out

    def _longest_stop_prefix_suffix(self) -> int:
        """Length of the longest tail of the held text that could still grow into a stop string."""
        best = 0
        for stop in self._stop:
            for length in range(min(len(stop) - 1, len(self._held)), best, -1):
                if self._held.endswith(stop[:length]):
                    best = length
                    break
        return best


class EndWatch:
    """Where drafts would end a request's text (a stop string, or the end rule: an infill's line or block), which
    ends the request whatever the target settles after: drafting past there is wasted.

    It forks the request's own stream at the settled output and feeds the fork along the chains asked about,
    remembering where it stopped: asked again along the same chain (a growing draft, a proposal asked for twice, the
    tokens the target settles) it reads only the tokens it has not read; a chain that parts from it (a rejected
    draft) forks the stream anew."""

    def __init__(
        self, stream: TextStream, output: list[int], prompt_length: int, piece: Callable[[int], bytes]
    ) -> None:
        """stream and output: the request's, updated in place as tokens settle; prompt_length: where its
        contexts' output starts; piece: a token's bytes."""
        self._stream = stream
        self._output = output
        self._start = prompt_length
        self._piece = piece
        self._fork: TextStream | None = None
        self._fed: list[int] = []  # the output tokens the fork has read
        self._stop: int | None = None  # how many of them it had read when it stopped

    def ends(self, context: list[int], token: int) -> bool:
        """Whether `token`, after `context` (the prompt, the output, drafts), ends the text."""
        chain = context[self._start :]
        asked_from = len(chain)
        chain.append(token)
        return self._stopped_at(chain, asked_from) is not None

    def cut(self, context: list[int], drafts: list[int]) -> list[int]:
        """`drafts` up to the first that ends the text (kept: the target may settle it), none past it."""
        asked_from = len(context) - self._start
        stop = self._stopped_at(context[self._start :] + drafts, asked_from) if drafts else None
        return drafts if stop is None else drafts[: max(0, stop - asked_from)]

    def _stopped_at(self, chain: list[int], asked_from: int) -> int | None:
        """How many tokens of `chain` (output tokens after the prompt) the text reads before it ends, or None where
        it does not end within them. The first `asked_from` tokens are the context asked from: where they are not the
        settled output and its continuation (a context from before the last settled token), nothing is known."""
        settled = len(self._output)
        if asked_from < settled or chain[:settled] != self._output:
            return None
        fed = self._fed
        shared = min(len(fed), len(chain))
        if self._fork is None or chain[:shared] != fed[:shared]:
            self._fork, self._fed = self._stream.fork(), chain[:settled]
            self._stop = settled if self._stream.stopped else None
            fed = self._fed
        fork = self._fork
        for token in chain[len(fed) :]:
            if self._stop is not None:
                break
            fork.push(self._piece(token))
            fed.append(token)
            if fork.stopped:
                self._stop = len(fed)
        return self._stop if self._stop is not None and self._stop <= len(chain) else None
