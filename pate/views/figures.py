"""Figures of a run (matplotlib, the `plot` extra): shared by `pate audit --plot` and `pate report`.

Each function takes plain numbers already computed elsewhere (audit, report, plan) and writes one
PNG atomically; none reads the run directory itself. matplotlib is an optional extra, imported
only when a figure is drawn.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import PateError
from ..io import atomic_write_bytes
from ..run.outputs import PNG_MARKER_KEY, png_marker

INSTALL_HINT = "pip install 'pate[plot]'"
PRIVATE_COLOR, PUBLIC_COLOR = "tab:purple", "tab:red"


class PlotError(PateError):
    """matplotlib (the plot extra) is not installed."""


def pyplot(what: str = "plots"):
    """matplotlib.pyplot on the Agg backend, or a one-line error naming the extra to install."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotError(f"{what} need matplotlib: {INSTALL_HINT}") from None
    return plt


def require_matplotlib(what: str = "plots") -> None:
    """Fail early, with the extra to install, before any expensive work."""
    pyplot(what)


def save(fig, plt, path: Path, made_for: str = "report") -> None:
    """Write ``fig`` to ``path`` as PNG, atomically, and close it; its ``Software`` text names what
    it was ``made_for``, so a later plot of that same kind may replace it and nothing else
    (``pate.run.outputs``)."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", metadata={PNG_MARKER_KEY: png_marker(made_for)})
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def cumulative_epsilon_png(rows: list[dict], report: dict, path: Path, *,
                           expected: tuple[Sequence[float], Sequence[float]] | None = None,
                           made_for: str = "report") -> None:
    """Cumulative data-dependent ε against queries asked (PRIVATE), answered queries marked, with
    the run's worst-case guarantee (safe to publish) as a horizontal line.

    ``rows`` are ``audit.query_table`` rows (realized data-dependent ε after each query);
    ``expected`` is an optional (queries asked, ε) curve of the expected cost; ``report`` is privacy.json.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    queries = [r["query"] + 1 for r in rows]
    ax.plot(queries, [r["cumulative_epsilon"] for r in rows], color=PRIVATE_COLOR,
            label="data-dependent, realized (PRIVATE; papers' convention)")
    answered = [r for r in rows if r["answered"]]
    ax.scatter([r["query"] + 1 for r in answered], [r["cumulative_epsilon"] for r in answered], s=6,
               color="tab:green", zorder=3, label="answered query")
    if expected is not None:
        ax.plot(*expected, color=PRIVATE_COLOR, ls=":", label="data-dependent, expected (PRIVATE)")
    public = report["public"]
    ax.axhline(public["guarantee"]["epsilon"], color=PUBLIC_COLOR, ls="--",
               label="worst-case guarantee of the run (safe to publish)")
    release = public.get("data_dependent_release")
    if release:
        ax.axhline(release["epsilon"], color="tab:blue", ls="-.", lw=1,
                   label="data-dependent, smooth-sensitivity release (papers' convention)")
    ax.set_xlabel("queries asked")
    ax.set_ylabel(f"epsilon (delta = {public['delta']:g})")
    ax.set_ylim(bottom=0)
    ax.set_title("Privacy against queries (solid/dotted: PRIVATE, derived from the votes)")
    ax.legend(loc="upper left", fontsize=8)
    save(fig, plt, path, made_for)


def vote_gap_png(gaps: np.ndarray, answered: np.ndarray, num_teachers: int, path: Path) -> None:
    """Stacked histogram of the top-two vote gap, answered and unanswered queries (PRIVATE)."""
    plt = pyplot()
    gaps, answered = np.asarray(gaps, dtype=int), np.asarray(answered, dtype=bool)
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    top = max(int(gaps.max(initial=0)), 1)
    bins = np.arange(0, top + 2) - 0.5 if top <= 60 else np.linspace(-0.5, top + 0.5, 41)
    ax.hist([gaps[answered], gaps[~answered]], bins=bins, stacked=True,
            color=["tab:green", "tab:gray"],
            label=[f"answered ({int(answered.sum())})", f"not answered ({int((~answered).sum())})"])
    ax.set_xlabel(f"top-two vote gap (of {num_teachers} teachers)")
    ax.set_ylabel("queries")
    _integer_ticks(ax)
    ax.set_title("Vote gaps (PRIVATE)")
    ax.legend(fontsize=8)
    save(fig, plt, path)


def teacher_accuracy_png(accuracies: Sequence[float], path: Path, *, ensemble_accuracy: float | None = None) -> None:
    """Histogram of per-teacher accuracy on the held-out public test split."""
    plt = pyplot()
    acc = 100 * np.asarray(accuracies, dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    lo, hi = float(acc.min()), float(acc.max())
    ax.hist(acc, bins=min(30, max(5, len(acc) // 3)), range=(lo - 1, hi + 1), color="tab:blue", alpha=0.8,
            label=f"{len(acc)} teachers")
    ax.axvline(acc.mean(), color="black", ls="--", label=f"mean {acc.mean():.1f}%")
    if ensemble_accuracy is not None:
        ax.axvline(100 * ensemble_accuracy, color="tab:orange", ls="-",
                   label=f"plurality vote {100 * ensemble_accuracy:.1f}%")
    ax.set_xlabel("teacher accuracy on held-out public test split (%)")
    ax.set_ylabel("teachers")
    _integer_ticks(ax)
    ax.set_title("Per-teacher accuracy")
    ax.legend(fontsize=8)
    save(fig, plt, path)


def label_accuracy_consensus_png(bins: list[dict], path: Path) -> None:
    """Accuracy against the true public labels by bin of top-vote fraction (PRIVATE: uses votes).

    Each bin: ``lo``, ``hi``, ``released_n``, ``released_correct`` (answered queries, released
    label), ``plurality_n``, ``plurality_correct`` (all queries, the teachers' plurality label).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    x = np.arange(len(bins))
    width = 0.4

    def rate(correct, n):
        return np.array([100 * c / k if k else np.nan for c, k in zip(correct, n)])

    rel_n = [b["released_n"] for b in bins]
    plu_n = [b["plurality_n"] for b in bins]
    rel = rate([b["released_correct"] for b in bins], rel_n)
    plu = rate([b["plurality_correct"] for b in bins], plu_n)
    ax.bar(x - width / 2, np.nan_to_num(rel), width, color="tab:green", label="released labels (answered)")
    ax.bar(x + width / 2, np.nan_to_num(plu), width, color="tab:gray", label="plurality (all queries)")
    for offset, values, counts in ((-width / 2, rel, rel_n), (width / 2, plu, plu_n)):
        for xi, value, n in zip(x + offset, values, counts):
            ax.text(xi, (0 if np.isnan(value) else value) + 1, f"n={n}", ha="center", va="bottom",
                    fontsize=7 if len(bins) <= 5 else 5.5)
    ax.set_xticks(x, [f"{b['lo']:.1f}-{b['hi']:.1f}" for b in bins])
    ax.set_ylim(0, 135)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel("top-vote fraction (consensus)")
    ax.set_ylabel("accuracy vs true public label (%)")
    ax.set_title("Label accuracy against vote consensus (PRIVATE)")
    ax.legend(fontsize=8, loc="upper center", ncol=2)
    save(fig, plt, path)


def learning_curve_png(history: dict, path: Path, *, student_accuracy: float | None = None) -> None:
    """Student training: losses (top) and accuracy on labelled batches / pseudo-label mask rate (bottom)."""
    plt = pyplot()
    steps = history.get("step") or list(range(1, len(history.get("loss", [])) + 1))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6, 5.6), dpi=110, sharex=True)

    def series(key):
        values = history.get(key)
        if not values or len(values) != len(steps):
            return None
        values = np.array([np.nan if v is None else v for v in values], dtype=float)
        return None if np.all(np.isnan(values)) else values

    total = series("loss")
    for key, style in (("loss", "-"), ("loss_labeled", "--"), ("loss_unlabeled", ":")):
        values = series(key)
        if values is None or (key != "loss" and total is not None and np.allclose(values, total, equal_nan=True)):
            continue  # a supervised student's labelled loss is its loss
        if key == "loss" or np.nanmax(np.abs(values)) > 0:
            top.plot(steps, values, ls=style, label=key.replace("_", " "))
    top.set_ylabel("loss")
    top.set_title("Student loss")
    top.legend(fontsize=8)
    acc = series("labeled_accuracy")
    if acc is not None:
        bottom.plot(steps, 100 * acc, color="tab:green", label="accuracy on labelled batches")
    mask = series("mask_rate")
    if mask is not None and np.nanmax(mask) > 0:
        bottom.plot(steps, 100 * mask, color="tab:orange", ls="--", label="pseudo-label mask rate")
    if student_accuracy is not None:
        bottom.axhline(100 * student_accuracy, color="black", ls=":",
                      label=f"held-out test accuracy {100 * student_accuracy:.1f}%")
    bottom.set_ylim(0, 105)
    bottom.set_xlabel("step")
    bottom.set_ylabel("%")
    bottom.set_title("Student accuracy")
    bottom.legend(fontsize=8, loc="lower right")
    save(fig, plt, path)
