"""Answer queries with the noisy aggregator, writing the ledger before each label; account privacy.

Queries are decided in fixed chunks. A chunk's decisions go to the ledger in one fsynced write
before anything else happens; ``labels.npz`` (the release) is written from the ledger only at
the end. A crash therefore loses at most undecided work; a rerun reads the ledger and continues
after its last line, never re-deciding a recorded query. Seeded noise is drawn per chunk from
stream ``chunk`` so a resumed seeded run reproduces an uninterrupted one exactly.
"""
from __future__ import annotations

import json

import numpy as np

from ..io import ShortWrite, append_durable, atomic_save_npz, atomic_write_json, create_exclusive
from ..privacy import ledger
from ..privacy.accounting import data_independent_epsilon, privacy_report
from ..privacy.mechanisms import Mechanism
from ..privacy.noise import noise_source
from ..progress import Progress
from ..run import RunError
from . import finish
from .context import (LABELS, LEDGER, PRIVACY, VOTES, Context, expected_ledger_header, load_ledger, load_partition,
                      mechanism, orders)

NAME = "aggregate"
CHUNK = 256


def _records(mech: Mechanism, votes: np.ndarray, start: int, labels: np.ndarray,
             query_index: np.ndarray) -> list[ledger.QueryRecord]:
    top_label, top, gap = ledger.vote_facts(votes)
    logq, logpr = mech.query_facts(votes)
    return [ledger.QueryRecord(
        query=start + i, public_index=int(query_index[start + i]), answered=bool(labels[i] >= 0),
        label=int(labels[i]), top_label=int(top_label[i]), top_count=int(top[i]), gap=int(gap[i]),
        logq=None if np.isnan(logq[i]) else float(logq[i]),
        logpr_answered=None if np.isnan(logpr[i]) else float(logpr[i]))
        for i in range(len(votes))]


def _open_ledger(ctx: Context, votes: np.ndarray, query_index: np.ndarray) -> list[ledger.QueryRecord]:
    path = ctx.run.file(LEDGER)
    if not path.exists():
        create_exclusive(path, ledger.encode_header(expected_ledger_header(ctx.run, votes)), private=False)
        return []
    return load_ledger(ctx.run, votes, query_index)


def _budget_allows(ctx: Context, mech: Mechanism, asked: int, answered: int, more: int) -> int:
    """How many of the next ``more`` queries fit the epsilon budget, all answered (worst case)."""
    config = ctx.config
    budget = config.aggregator.epsilon_budget
    if budget <= 0:
        return more

    def fits(k: int) -> bool:
        return data_independent_epsilon(mech, asked + k, answered + k, orders=orders(config),
                                        delta=config.privacy.delta, conversion=config.privacy.conversion) <= budget

    lo, hi = 0, more  # largest k in [0, more] that fits; cost grows with k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _check_votes(ctx: Context, votes: np.ndarray, query_index: np.ndarray) -> None:
    """One vote per teacher per query, for exactly the partition's queries."""
    config = ctx.config
    num_classes = config.data.spec.num_classes
    expected_index = load_partition(ctx)["query_index"]
    problem = None
    if votes.ndim != 2 or votes.shape != (len(expected_index), num_classes) or votes.dtype.kind not in "iu":
        problem = f"must be an integer array of shape ({len(expected_index)}, {num_classes})"
    elif (votes < 0).any() or (votes.sum(axis=1) != config.teachers.count).any():
        problem = f"rows must be non-negative and sum to K = {config.teachers.count}"
    elif not np.array_equal(query_index, expected_index):
        problem = "query_index differs from the partition's queries"
    if problem:
        raise RunError(f"{ctx.run.file(VOTES)} is invalid: {problem}; refusing to spend privacy on it")


def _existing_report(ctx: Context, asked: int) -> dict | None:
    path = ctx.run.file(PRIVACY)
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunError(f"{path} is unreadable ({exc}); its smooth-sensitivity noise was already drawn, so "
                       "it is not recomputed: restore it from a backup or start a new run") from None
    if not isinstance(report, dict) or report.get("queries_asked") != asked:
        raise RunError(f"{path} covers {report.get('queries_asked')} queries but the ledger {asked}; "
                       "the run directory is inconsistent")
    return report


def _decide_all(ctx: Context, mech: Mechanism, votes: np.ndarray, query_index: np.ndarray,
                records: list[ledger.QueryRecord]) -> bool:
    """Decide every query after the ledger's last, chunk by chunk, ledger first; returns whether
    the epsilon budget stopped it."""
    seed = ctx.config.aggregator.seed
    done = len(records)
    answered = sum(r.answered for r in records)
    progress = Progress(len(votes), NAME, ctx.quiet, start=done)
    stopped_by_budget = False
    while done < len(votes):
        chunk = done // CHUNK
        end = min((chunk + 1) * CHUNK, len(votes))
        allowed = _budget_allows(ctx, mech, done, answered, end - done)
        if allowed == 0:
            stopped_by_budget = True
            break
        labels = mech.decide(votes[chunk * CHUNK:end], noise_source(seed, stream=chunk))[done - chunk * CHUNK:]
        labels = labels[:allowed]
        new = _records(mech, votes[done:done + allowed], done, labels, query_index)
        try:
            append_durable(ctx.run.file(LEDGER), ledger.encode(new))  # on disk before anything is released
        except ShortWrite as exc:
            raise RunError(str(exc)) from None
        done += allowed
        answered += int((labels >= 0).sum())
        ctx.run.progress(NAME, f"{done}/{len(votes)} queries decided, {answered} answered")
        progress.update(allowed, status=f"answered {answered}")
    progress.close()
    return stopped_by_budget


def run(ctx: Context) -> None:
    run_dir, config = ctx.run, ctx.config
    data = run_dir.load_npz(VOTES)
    votes, query_index = data["votes"], data["query_index"]
    _check_votes(ctx, votes, query_index)  # before any privacy is spent on them
    mech = mechanism(config)
    run_dir.begin(NAME)
    records = _open_ledger(ctx, votes, query_index)
    if config.seeded:
        ctx.say("aggregate: noise is SEEDED (reproducible): not a production privacy guarantee")
    stopped_by_budget = _decide_all(ctx, mech, votes, query_index, records)
    records = load_ledger(run_dir, votes, query_index)
    positions, public_index, labels = ledger.released_labels(records)
    atomic_save_npz(run_dir.file(LABELS), query_index=public_index, query=positions, label=labels)
    report = _existing_report(ctx, len(records))
    if report is None:  # the smooth-sensitivity noise is drawn once; a rerun keeps the released figure
        answered = np.array([r.answered for r in records], dtype=bool)
        report = privacy_report(mech, votes[:len(records)], answered, orders=orders(config),
                                delta=config.privacy.delta, conversion=config.privacy.conversion,
                                betas=config.privacy.betas, seeded=config.seeded,
                                noise=noise_source(config.aggregator.seed, stream=len(votes) // CHUNK + 1))
        report["stopped_by_budget"] = stopped_by_budget
        atomic_write_json(run_dir.file(PRIVACY), report)
    finish(ctx, NAME)
    for warning in report.get("warnings", []):
        ctx.say(f"aggregate: warning: {warning}")
    ctx.say(f"aggregate: {len(records)} queries asked, {len(labels)} answered; "
            f"epsilon {report['smooth_sensitivity']['released_epsilon']:.3f} (smooth-sensitivity release, "
            f"safe to publish), data-independent {report['epsilon_data_independent']:.3f}, delta {report['delta']:g}")
