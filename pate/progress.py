"""Progress on long work: a tqdm bar on stderr (a widget in a notebook), silent with --quiet."""
from __future__ import annotations

import sys

import click
from tqdm.auto import tqdm


class Progress:
    """A counter towards ``total`` with a label and free-text status (loss, throughput), drawn by
    tqdm; nothing at all when ``quiet``. A bar that reaches ``total`` is finished (left on its line),
    so several bars in a row each keep one line; ``close`` finishes one stopped short."""

    def __init__(self, total: int, label: str, quiet: bool = False, start: int = 0, unit: str = ""):
        self.total, self.label, self.quiet, self.unit = total, label, quiet, unit
        self.done = min(total, start)
        self.status = ""
        self._bar = tqdm(total=total, desc=label, initial=self.done, unit=unit or "it",
                         disable=quiet or self.done >= total,  # nothing left to do: no bar (a resumed stage)
                         file=sys.stderr, mininterval=0.5, dynamic_ncols=True, leave=True)

    def update(self, n: int = 1, status: str | None = None) -> None:
        self.update_to(self.done + n, status)

    def update_to(self, done: int | float, status: str | None = None) -> None:
        """Set the count (callbacks report absolute positions: epoch i of n, step t of T; a
        fraction of an epoch is shown to two decimals)."""
        done = min(self.total, done)
        if isinstance(done, float):
            done = int(done) if done.is_integer() else round(done, 2)
        self.done = self._bar.n = done  # set, not added: no drift from summing fractions
        if status is not None:
            self.status = status
            self._bar.set_postfix_str(status, refresh=False)
        self._bar.update(0)  # draws at most every half second (tqdm's mininterval), and at the end
        if self.done >= self.total:
            self._bar.close()

    def close(self) -> None:
        self._bar.close()  # idempotent: a finished bar is already closed
        sys.stderr.flush()


def say(message: str, quiet: bool = False) -> None:
    if not quiet:
        click.echo(message, err=True)


def plural(count: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{count} {word}{'' if count == 1 else 's'}"
