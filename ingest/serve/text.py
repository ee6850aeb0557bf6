"""The text a choice shows, built token by token: the tokens' bytes decoded incrementally (a
character split across tokens appears once it is complete; invalid UTF-8 becomes U+FFFD), cut
before the first stop sequence found in the generated part.

A token's offset is the index of the character it starts in. A choice shows the tokens whose
offset lies inside its text: a token that straddles the cut is shown whole, the tokens after it
are not (they were generated, and count in ``usage``, but are not part of the answer).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence


class ShownText:
    """Text of the tokens added so far, with their offsets; ``stops`` searched after ``start()``."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = tuple(stops)
        self._hold = max((len(s) for s in self._stops), default=1) - 1
        self._text = ""
        self._generated_from: int | None = None
        self._scanned = 0
        self.offsets: list[int] = []
        """Offset of each token added, in characters."""
        self.cut: int | None = None
        """Where the first stop sequence begins, once found."""
        self.finished = False

    def add(self, raw: bytes) -> None:
        """Append one token's bytes (and look for a stop sequence if generating)."""
        self.offsets.append(len(self._text))
        self._text += self._decoder.decode(raw)
        self._look_for_stops()

    def start_generating(self) -> None:
        """Tokens added from now on are generated: stop sequences are searched from here."""
        self._generated_from = self._scanned = len(self._text)

    def finish(self) -> None:
        """No more tokens: flush an incomplete last character (as U+FFFD)."""
        self._text += self._decoder.decode(b"", final=True)
        self._look_for_stops()
        self.finished = True

    @property
    def stopped(self) -> bool:
        return self.cut is not None

    @property
    def text(self) -> str:
        """The text so far, cut before a stop sequence."""
        return self._text if self.cut is None else self._text[: self.cut]

    def settled(self) -> int:
        """How much of the text can no longer change: all of it once finished or stopped; before
        that, all but what could still become the start of a stop sequence."""
        if self.finished or self.cut is not None:
            return len(self.text)
        floor = len(self._text) if self._generated_from is None else self._generated_from
        return max(floor, len(self._text) - self._hold)

    def shown(self, token: int) -> bool:
        """Whether token number ``token`` (in order added) is shown, given the text settled so far."""
        return self.offsets[token] < self.settled()

    def _look_for_stops(self) -> None:
        if self._generated_from is None or self.cut is not None or not self._stops:
            return
        begin = max(self._generated_from, self._scanned - self._hold)
        found = [i for i in (self._text.find(s, begin) for s in self._stops) if i >= 0]
        if found:
            self.cut = min(found)
        self._scanned = len(self._text)
