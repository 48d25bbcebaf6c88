"""Progress for long image/VM work: one line per step on stderr (rich), with timings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


class Progress:
    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.timings: dict[str, float] = {}

    def note(self, message: str) -> None:
        if not self.quiet:
            self.console.print(f"  {message}")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        if self.quiet:
            yield
        else:
            with self.console.status(name):
                yield
        elapsed = time.monotonic() - start
        self.timings[name] = round(elapsed, 2)
        if not self.quiet:
            self.console.print(f"[green]✓[/green] {name} ({elapsed:.1f} s)")
