"""A progress line on stderr per role: requests, tokens, errors, rate, ETA, estimated cost."""

from __future__ import annotations

import sys
import time


class Progress:
    """Counts one role's requests; redraws (a tty) or prints (a log) at most every ``every`` s."""

    def __init__(self, role: str, *, total: int, done: int, price_per_mtok: float | None, every: float = 1.0) -> None:
        self.role = role
        self.total = total
        self.done = done
        self.errors = 0
        self.tokens = 0
        self.price = price_per_mtok
        self._start_done = done
        self._start = time.monotonic()
        self._last = 0.0
        self._every = every
        self._tty = sys.stderr.isatty()
        self._shown: tuple[int, int] | None = None

    def update(self, *, ok: bool, tokens: int = 0) -> None:
        if ok:
            self.done += 1
            self.tokens += tokens
        else:
            self.errors += 1
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self.show()

    def line(self) -> str:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (self.done - self._start_done) / elapsed
        left = self.total - self.done
        eta = f"{left / rate:,.0f}s" if rate > 0 else "?"
        cost = f"  ${self.tokens * self.price / 1e6:,.4f}" if self.price is not None else ""
        return (
            f"approxft collect: {self.role}: {self.done}/{self.total} requests  {self.tokens:,} tokens  "
            f"{self.errors} errors  {rate:.1f} req/s  ETA {eta}{cost}"
        )

    def show(self, *, final: bool = False) -> None:
        if final and self._shown == (self.done, self.errors) and not self._tty:
            return  # a log already has this line
        self._shown = (self.done, self.errors)
        if self._tty:
            print("\r" + self.line(), end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(self.line(), file=sys.stderr, flush=True)
