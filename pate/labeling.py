"""The aggregate stage: answer queries with the noisy aggregator, ledger first, then release.

Queries are decided in fixed chunks. A chunk's decisions go to the ledger in one fsynced write
before anything else happens; ``labels.npz`` (the release) is written from the ledger only at
the end. A crash therefore loses at most undecided work; a rerun reads the ledger and continues
after its last line, never re-deciding a recorded query. Seeded noise is drawn per chunk from
stream ``chunk`` so a resumed seeded run reproduces an uninterrupted one exactly.
"""
from __future__ import annotations

import json

import numpy as np

from . import accounting
from . import aggregate as mechanisms
from .privacy import ledger
from .privacy import rdp
from .progress import Progress
from .run import RunError, atomic_save_npz, sha256_file
from .config import DATASETS
from .stages import Context, load_partition

CHUNK = 256


def _decide(votes: np.ndarray, chunk: int, config) -> np.ndarray:
    """Labels for one chunk of vote rows (-1 = not answered), from that chunk's noise."""
    agg = config.aggregator
    noise = mechanisms.noise_source(agg.seed, stream=chunk)
    if agg.mechanism == "confident-gnmax":
        return mechanisms.confident_gnmax(votes, agg.threshold, agg.sigma1, agg.sigma2, noise)
    if agg.mechanism == "gnmax":
        return mechanisms.gnmax(votes, agg.sigma2, noise)
    return mechanisms.lnmax(votes, agg.gamma, noise)


def _records(votes: np.ndarray, start: int, labels: np.ndarray, query_index: np.ndarray,
             config) -> list[ledger.QueryRecord]:
    agg = config.aggregator
    top_label, top, gap = ledger.vote_facts(votes)
    sigma = agg.sigma2
    logq = rdp.logq_gnmax(votes, sigma) if agg.mechanism != "lnmax" else np.full(len(votes), np.nan)
    logpr = (rdp.logpr_answered(votes, agg.threshold, agg.sigma1) if agg.mechanism == "confident-gnmax"
             else np.full(len(votes), np.nan))
    return [ledger.QueryRecord(
        query=start + i, public_index=int(query_index[start + i]), answered=bool(labels[i] >= 0),
        label=int(labels[i]), top_label=int(top_label[i]), top_count=int(top[i]), gap=int(gap[i]),
        logq=None if np.isnan(logq[i]) else float(logq[i]),
        logpr_answered=None if np.isnan(logpr[i]) else float(logpr[i]))
        for i in range(len(votes))]


def _open_ledger(ctx: Context, votes: np.ndarray, query_index: np.ndarray) -> list[ledger.QueryRecord]:
    path = ctx.run.file("ledger.jsonl")
    expected = ledger.LedgerHeader(
        config_sha256=ctx.config.fingerprint(), votes_sha256=sha256_file(ctx.run.verified("vote", "votes.npz")),
        mechanism=ctx.config.aggregator.mechanism, seeded=ctx.config.seeded, num_queries=len(votes))
    if not path.exists():
        ledger.create(path, expected)
        return []
    header, records = ledger.read(path)
    ledger.check_against_votes(header, records, config_sha256=expected.config_sha256,
                               votes_sha256=expected.votes_sha256, votes=votes, query_index=query_index)
    return records


def _budget_allows(ctx: Context, asked: int, answered: int, more: int) -> int:
    """How many of the next ``more`` queries fit the epsilon budget, all answered (worst case)."""
    budget = ctx.config.aggregator.epsilon_budget
    if budget <= 0:
        return more
    fits = lambda k: accounting.data_independent_epsilon(ctx.config, asked + k, answered + k) <= budget
    lo, hi = 0, more  # largest k in [0, more] that fits; cost grows with k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _check_votes(ctx: Context, votes: np.ndarray, query_index: np.ndarray) -> None:
    """Invariant 2: one vote per teacher per query, for exactly the partition's queries."""
    config = ctx.config
    num_classes = DATASETS[config.data.dataset][2]
    expected_index = load_partition(ctx)["query_index"]
    problem = None
    if votes.ndim != 2 or votes.shape != (len(expected_index), num_classes) or votes.dtype.kind not in "iu":
        problem = f"must be an integer array of shape ({len(expected_index)}, {num_classes})"
    elif (votes < 0).any() or (votes.sum(axis=1) != config.teachers.count).any():
        problem = f"rows must be non-negative and sum to K = {config.teachers.count}"
    elif not np.array_equal(query_index, expected_index):
        problem = "query_index differs from the partition's queries"
    if problem:
        raise RunError(f"{ctx.run.file('votes.npz')} is invalid: {problem}; refusing to spend privacy on it")


def _existing_report(ctx: Context, asked: int) -> dict | None:
    path = ctx.run.file("privacy.json")
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


def run_aggregate(ctx: Context) -> None:
    run, config = ctx.run, ctx.config
    data = run.load_npz("vote", "votes.npz")
    votes, query_index = data["votes"], data["query_index"]
    _check_votes(ctx, votes, query_index)  # before any privacy is spent on them
    run.begin("aggregate")
    try:
        records = _open_ledger(ctx, votes, query_index)
    except ledger.LedgerError as exc:
        raise RunError(f"{run.file('ledger.jsonl')}: {exc}") from None
    if config.seeded:
        ctx.say("aggregate: noise is SEEDED (reproducible): not a production privacy guarantee")
    done = len(records)
    answered = sum(r.answered for r in records)
    stopped_by_budget = False
    progress = Progress(len(votes), "aggregate", ctx.quiet, start=done)
    while done < len(votes):
        chunk = done // CHUNK
        end = min((chunk + 1) * CHUNK, len(votes))
        allowed = _budget_allows(ctx, done, answered, end - done)
        if allowed == 0:
            stopped_by_budget = True
            break
        labels = _decide(votes[chunk * CHUNK:end], chunk, config)[done - chunk * CHUNK:]
        labels = labels[:allowed]
        new = _records(votes[done:done + allowed], done, labels, query_index, config)
        try:
            ledger.append(run.file("ledger.jsonl"), new)  # on disk before anything is released
        except ledger.LedgerError as exc:
            raise RunError(str(exc)) from None
        done += allowed
        answered += int((labels >= 0).sum())
        run.progress("aggregate", f"{done}/{len(votes)} queries decided, {answered} answered")
        progress.update(allowed, status=f"answered {answered}")
    progress.close()
    _, records = ledger.read(run.file("ledger.jsonl"))
    positions, public_index, labels = ledger.released_labels(records)
    atomic_save_npz(run.file("labels.npz"), query_index=public_index, query=positions, label=labels)
    report = _existing_report(ctx, len(records))
    if report is None:  # the smooth-sensitivity noise is drawn once; a rerun keeps the released figure
        report = accounting.privacy_report(ctx.config, votes[:len(records)], records,
                                           noise_stream=len(votes) // CHUNK + 1)
        report["stopped_by_budget"] = stopped_by_budget
        accounting.write_report(run.file("privacy.json"), report)
    run.finish("aggregate", ["labels.npz", "privacy.json", "ledger.jsonl"])
    for warning in report.get("warnings", []):
        ctx.say(f"aggregate: warning: {warning}")
    ctx.say(f"aggregate: {len(records)} queries asked, {len(labels)} answered; "
            f"epsilon {report['smooth_sensitivity']['released_epsilon']:.3f} (smooth-sensitivity release, "
            f"safe to publish), data-independent {report['epsilon_data_independent']:.3f}, delta {report['delta']:g}")
