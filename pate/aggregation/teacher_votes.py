"""LNMax, GNMax and Confident-GNMax: the teachers' vote histograms decided in order, each chunk from
its own noise stream. With an ``epsilon_budget`` a Rényi filter (Feldman & Zrnic 2021) admits
queries while their worst-case cost fits the budget. The smooth-sensitivity release, when
configured, is logged in the spend log, then drawn once, after the last query."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import selection
from ..privacy import accounting
from ..privacy.noise import noise_source
from ..progress import Progress
from ..run.directory import RunError
from ..run.artifacts import VOTES, Context, load_partition
from . import protocol
from .settings import WARN_EPSILON


@dataclass(frozen=True)
class Votes:
    ledger_votes: np.ndarray  # (Q, m), one vote per teacher per query
    query_index: np.ndarray


def load(ctx: Context, settings: accounting.Settings) -> Votes:
    """votes.npz, checked: one vote per teacher per query, for exactly the partition's queries (with a
    choice between rounds, ``pate.aggregation.selection.candidates``: the whole student pool)."""
    config = ctx.config
    data = ctx.run.load_npz(VOTES)
    votes, query_index = data["votes"], data["query_index"]
    num_classes = ctx.spec.num_classes
    expected_index = selection.candidates(load_partition(ctx), config.aggregator.query_selection)
    problem = None
    if votes.ndim != 2 or votes.shape != (len(expected_index), num_classes) or votes.dtype.kind not in "iu":
        problem = f"must be an integer array of shape ({len(expected_index)}, {num_classes})"
    elif (votes < 0).any() or (votes.sum(axis=1) != config.teachers.count).any():
        problem = f"rows must be non-negative and sum to K = {config.teachers.count}"
    elif not np.array_equal(query_index, expected_index):
        problem = "query_index differs from the partition's queries"
    if problem:
        raise RunError(f"{ctx.run.file(VOTES)} is invalid: {problem}; refusing to spend privacy on it")
    if config.privacy.data_dependent_release and settings.release is None:
        raise RunError("[privacy] data_dependent_release: no order satisfies the smooth-sensitivity conditions "
                       f"C5/C6 at sigma2 = {config.aggregator.sigma2:g}; set it to false")
    return Votes(votes, query_index)


def decide(run: protocol.Aggregation, inputs: Votes,
           labels_of: Callable[[int, int, int], tuple[np.ndarray, np.ndarray | None]] | None = None) -> bool:
    """Decide every query after the ledger's last, chunk by chunk, ledger first; returns whether
    the Rényi filter stopped it. ``labels_of(first, end, chunk)`` gives a chunk's labels and noisy
    vectors (None: none released) where they come from elsewhere than the mechanism's noise."""
    ctx, votes, query_index = run.ctx, inputs.ledger_votes, inputs.query_index
    mech, seed = run.settings.mechanism, ctx.config.aggregator.seed
    records, mac = run.book.records, run.book.last_mac
    plan = accounting.plan_filter(run.settings)
    filt = None if plan is None else accounting.RenyiFilter(plan.budget_rdp, spent=len(records) * plan.charge)
    done = len(records)
    answered = sum(r.answered for r in records)
    progress = Progress(len(votes), protocol.STAGE, ctx.quiet, start=done)
    stopped_by_budget = False
    while done < len(votes):
        chunk = done // protocol.CHUNK
        first, end = chunk * protocol.CHUNK, min((chunk + 1) * protocol.CHUNK, len(votes))
        allowed = end - done if filt is None else filt.admit(np.full(end - done, plan.charge))
        if allowed == 0:
            stopped_by_budget = True
            break
        labels, noisy = (labels_of(first, end, chunk) if labels_of is not None else
                         mech.decide_noisy(votes[first:end], noise_source(seed, stream=chunk)))
        labels = labels[done - first:][:allowed]
        noisy = noisy[done - first:][:allowed] if noisy is not None and run.soft_labels else None
        mac = run.write(protocol.records_of(mech, votes[done:done + allowed], done, labels, query_index,
                                            noisy=noisy), mac)
        if filt is not None:
            filt.charge(allowed * plan.charge)
        done += allowed
        answered += int((labels >= 0).sum())
        protocol.progress_note(ctx, done, len(votes), f"{answered} answered")
        progress.update(allowed, status=f"answered {answered}")
    progress.close()
    return stopped_by_budget


def conclude(run: protocol.Aggregation, inputs: Votes, records: list, stopped_by_budget: bool,
             report: dict | None) -> protocol.Outcome:
    ctx, settings, config = run.ctx, run.settings, run.ctx.config
    released = protocol.save_labels(ctx, records)
    fresh = report is None
    if fresh:  # the smooth-sensitivity noise is drawn once; a rerun keeps the released figure
        if settings.release is not None:
            protocol.log_release(ctx)
        answered = np.array([r.answered for r in records], dtype=bool)
        report = accounting.privacy_report(
            settings, inputs.ledger_votes[:len(records)], answered, seeded=config.seeded,
            stopped_by_budget=stopped_by_budget, soft_labels=config.aggregator.soft_labels,
            noise=noise_source(config.aggregator.seed, stream=len(inputs.ledger_votes) // protocol.CHUNK + 1))
    for warning in report["private"].get("warnings", []):
        ctx.say(f"aggregate: warning (data-dependent figure): {warning}")
    guarantee = accounting.guarantee(settings)
    if guarantee.epsilon > WARN_EPSILON:
        ctx.say(f"aggregate: warning: the guarantee, epsilon {guarantee.epsilon:.3g}, is above {WARN_EPSILON:g}: "
                "it promises little (see `pate plan` for settings that cost less)")
    release = report["public"]["data_dependent_release"]
    summary = (f"aggregate: {len(records)} queries asked, {released} answered; guarantee epsilon "
               f"{guarantee.epsilon:.3f}, delta {guarantee.delta:g} ({guarantee.accountant}, from the settings alone)"
               + (f"; data-dependent cost released with smooth-sensitivity noise {release['epsilon']:.3f} (the "
                  "papers' convention, not a guarantee)" if release else ""))
    return protocol.Outcome(report if fresh else None, summary)
