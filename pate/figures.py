"""Figures of a run (matplotlib, the `plot` extra): shared by `pate audit --plot` and reports."""
from __future__ import annotations

from pathlib import Path

from .run import RunError


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RunError("plots need matplotlib: pip install 'pate[plot]'") from None
    return plt


def cumulative_epsilon_png(rows: list[dict], report: dict, path: Path) -> None:
    """Cumulative data-dependent epsilon against queries, answered queries marked (PRIVATE)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    queries = [r["query"] + 1 for r in rows]
    ax.plot(queries, [r["cumulative_epsilon"] for r in rows], label="data-dependent (realized, PRIVATE)")
    answered = [r for r in rows if r["answered"]]
    ax.scatter([r["query"] + 1 for r in answered], [r["cumulative_epsilon"] for r in answered], s=6,
               color="tab:green", label="answered query")
    ax.axhline(report["epsilon_data_independent"], color="tab:red", ls="--", label="data-independent total")
    ax.set_xlabel("queries asked")
    ax.set_ylabel(f"epsilon (delta = {report['delta']:g})")
    ax.set_title("Privacy spent: PRIVATE view (derived from the votes)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
