"""Turns token bytes into text deltas: UTF-8 safe, never emitting any part of a stop string, and ending where
the request's end rule (an infill's single line or block) cuts the text."""

from __future__ import annotations

import codecs

from localspec.engine.end_rules import EndRule


class TextStream:
    def __init__(self, stop: list[str], end_rule: EndRule | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._cutter = end_rule.cutter() if end_rule is not None else None
        self._held = ""  # decoded text not yet emitted: it may be the start of a stop string
        self.text = ""  # everything emitted so far
        self.stopped = False  # a stop string or the end rule ended the text

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
