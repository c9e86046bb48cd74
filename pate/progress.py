"""Progress on long work: a bar with an ETA on stderr, silent with --quiet."""
from __future__ import annotations

import sys
import time

import click


class Progress:
    """A counter towards ``total`` with a label and free-text status (loss, throughput)."""

    def __init__(self, total: int, label: str, quiet: bool = False, start: int = 0, unit: str = ""):
        self.total, self.label, self.quiet, self.unit = total, label, quiet, unit
        self.done = start
        self._start_done, self._t0 = start, time.monotonic()
        self.status = ""
        self._last_draw = 0.0

    def update(self, n: int = 1, status: str | None = None) -> None:
        self.update_to(self.done + n, status)

    def update_to(self, done: int, status: str | None = None) -> None:
        """Set the count (callbacks report absolute positions: epoch i of n, step t of T)."""
        self.done = min(self.total, done)
        if status is not None:
            self.status = status
        now = time.monotonic()
        if not self.quiet and (now - self._last_draw > 0.5 or self.done >= self.total):
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = now - self._t0
        rate = (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        width = 24
        filled = int(width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (width - filled)
        eta_text = "--:--" if eta != eta else f"{int(eta) // 60:02d}:{int(eta) % 60:02d}"
        done = f"{self.done:.1f}" if isinstance(self.done, float) and not float(self.done).is_integer() else f"{self.done:g}"
        unit = f" {self.unit}" if self.unit else ""
        line = f"\r{self.label} [{bar}] {done}/{self.total}{unit} eta {eta_text} {self.status}"
        click.echo(line[:160].ljust(100), nl=False, err=True)
        if self.done >= self.total:
            click.echo("", err=True)

    def close(self) -> None:
        if not self.quiet and self.done < self.total:
            click.echo("", err=True)
        sys.stderr.flush()


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        click.echo(message, err=True)


def plural(count: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{count} {word}{'' if count == 1 else 's'}"
