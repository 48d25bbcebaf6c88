"""Bytes of generated tokens -> text deltas, honouring stop strings.

Text that could be the start of a stop string is held back until it is clear that it
is not; the stop string itself is never emitted.
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class TextStream:
    def __init__(self, stop: Sequence[str]) -> None:
        self.stop = [s for s in stop if s]
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self.text = ""  # everything emitted so far
        self.stopped = False

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text that is now safe to emit."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(data)
        for s in self.stop:
            at = self._pending.find(s)
            if at >= 0:
                self.stopped = True
                return self._emit(self._pending[:at])
        hold = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return self._emit(self._pending[: len(self._pending) - hold], keep=hold)

    def finish(self) -> str:
        """Flush what was held back (generation ended without a stop string)."""
        if self.stopped:
            return ""
        self._pending += self._decoder.decode(b"", final=True)
        return self._emit(self._pending)

    def _emit(self, out: str, keep: int = 0) -> str:
        self._pending = self._pending[len(self._pending) - keep:] if keep else ""
        self.text += out
        return out
