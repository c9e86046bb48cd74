"""Answer queries with the noisy aggregator, writing the ledger before each label; account privacy.

Before the first query the run's worst-case guarantee is appended to the spend log of its private
data (refused if it would pass ``[privacy] total_budget``). Queries are decided in fixed chunks. A chunk's decisions go to the ledger in one fsynced write
before anything else happens; ``labels.npz`` (the release) is written from the ledger only at
the end. A crash therefore loses at most undecided work; a rerun reads the ledger and continues
after its last line, never re-deciding a recorded query. Seeded noise is drawn per chunk from
stream ``chunk`` so a resumed seeded run reproduces an uninterrupted one exactly. With an
``epsilon_budget`` a Rényi filter admits queries while their worst-case cost fits the budget.
The smooth-sensitivity release, when configured, is logged in the spend log, then drawn once.
"""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from .. import spend_log
from ..io import ShortWrite, append_durable, atomic_save_npz, atomic_write_json, create_exclusive
from ..privacy import accounting, ledger, spend
from ..privacy.mechanisms import Mechanism
from ..privacy.noise import noise_source
from ..progress import Progress
from ..run import RunError, now
from . import finish
from .context import (LABELS, LEDGER, PRIVACY, VOTES, WARN_EPSILON, Context, decided, expected_ledger_header, ledger_key,
                      load_ledger, load_partition, privacy_settings, private_fingerprint)

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


def _open_ledger(ctx: Context, votes: np.ndarray, query_index: np.ndarray) -> ledger.Ledger:
    """The run's ledger, created (with its key) when no query has been decided yet."""
    path = ctx.run.file(LEDGER)
    if not path.exists() and decided(ctx.run) == 0:
        header = expected_ledger_header(ctx.run, votes)
        text, mac = ledger.encode_header(header, ledger_key(ctx.run, create=True))
        create_exclusive(path, text)  # 0600: private
        return ledger.Ledger(header, [], mac)
    return load_ledger(ctx.run, votes, query_index)  # refuses a deleted, cut or edited ledger


def _spend_entry(ctx: Context, kind: str, draw: int, curve, eps: float) -> spend.Entry:
    config = ctx.config
    return spend.Entry(kind=kind, run_id=ctx.run.run_id, draw=draw, run_dir=str(ctx.run.path.resolve()),
                       pipeline=config.name, time=now(), mechanism=config.aggregator.mechanism, epsilon=eps,
                       delta=config.privacy.delta, rdp=spend.curve_field(curve), seeded=config.seeded)


def _log_aggregation(ctx: Context, fingerprint: str, settings: accounting.Settings) -> spend.Total:
    """Append the run's worst-case cost to the spend log before any query is decided (once per run)."""
    config = ctx.config
    on_log_orders = privacy_settings(config, ctx.spec.num_classes, spend.ORDERS)
    queries_only = accounting.worst_case_curve(replace(on_log_orders, release=None), accounting.max_queries(settings))
    eps = accounting.guarantee(replace(settings, release=None)).epsilon
    extra = on_log_orders.release_rdp() if settings.release is not None else None
    entry = _spend_entry(ctx, "aggregation", 0, queries_only, eps)
    if extra is not None and config.privacy.total_budget:  # the release about to be drawn counts too
        total = spend_log.total(fingerprint, config.privacy.delta, config.privacy.conversion,
                                extra=entry.curve() + extra)
        if total.epsilon > config.privacy.total_budget:
            raise spend_log.SpendError(
                f"this run and its data-dependent release would bring the privacy spent on this private data to "
                f"epsilon {total.epsilon:.3f}, past [privacy] total_budget = {config.privacy.total_budget:g}; "
                "nothing was released")
    return spend_log.record(fingerprint, entry, total_budget=config.privacy.total_budget,
                            conversion=config.privacy.conversion)


def _log_release(ctx: Context, fingerprint: str) -> None:
    """Append one smooth-sensitivity draw to the spend log, before it is drawn."""
    config = ctx.config
    curve = privacy_settings(config, ctx.spec.num_classes, spend.ORDERS).release_rdp()
    eps = accounting.epsilon(curve, spend.ORDERS, config.privacy.delta, config.privacy.conversion)[0]
    draw = spend_log.draws(fingerprint, ctx.run.run_id, "smooth-sensitivity") + 1
    spend_log.record(fingerprint, _spend_entry(ctx, "smooth-sensitivity", draw, curve, eps),
                     total_budget=config.privacy.total_budget, conversion=config.privacy.conversion)


def _check_votes(ctx: Context, votes: np.ndarray, query_index: np.ndarray) -> None:
    """One vote per teacher per query, for exactly the partition's queries."""
    config = ctx.config
    num_classes = ctx.spec.num_classes
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
    public = report.get("public") if isinstance(report, dict) else None
    if not isinstance(public, dict) or public.get("queries_asked") != asked:
        covered = public.get("queries_asked") if isinstance(public, dict) else None
        raise RunError(f"{path} covers {covered} queries but the ledger {asked}; the run directory is inconsistent")
    return report


def _decide_all(ctx: Context, settings: accounting.Settings, votes: np.ndarray, query_index: np.ndarray,
                book: ledger.Ledger) -> bool:
    """Decide every query after the ledger's last, chunk by chunk, ledger first; returns whether
    the Rényi filter stopped it."""
    mech, seed = settings.mechanism, ctx.config.aggregator.seed
    records, mac, key = book.records, book.last_mac, ledger_key(ctx.run)
    plan = accounting.plan_filter(settings)
    filt = None if plan is None else accounting.RenyiFilter(plan.budget_rdp, spent=len(records) * plan.charge)
    done = len(records)
    answered = sum(r.answered for r in records)
    progress = Progress(len(votes), NAME, ctx.quiet, start=done)
    stopped_by_budget = False
    while done < len(votes):
        chunk = done // CHUNK
        end = min((chunk + 1) * CHUNK, len(votes))
        allowed = end - done if filt is None else filt.admit(np.full(end - done, plan.charge))
        if allowed == 0:
            stopped_by_budget = True
            break
        labels = mech.decide(votes[chunk * CHUNK:end], noise_source(seed, stream=chunk))[done - chunk * CHUNK:]
        labels = labels[:allowed]
        new = _records(mech, votes[done:done + allowed], done, labels, query_index)
        payload, next_mac = ledger.encode(new, key, mac)
        try:
            append_durable(ctx.run.file(LEDGER), payload)  # on disk before anything is released
        except ShortWrite as exc:
            raise RunError(str(exc)) from None
        mac = next_mac
        if filt is not None:
            filt.charge(allowed * plan.charge)
        done += allowed
        answered += int((labels >= 0).sum())
        ctx.run.update(NAME, decided=done, progress=f"{done}/{len(votes)} queries decided, {answered} answered")
        progress.update(allowed, status=f"answered {answered}")
    progress.close()
    return stopped_by_budget


def run(ctx: Context) -> None:
    run_dir, config = ctx.run, ctx.config
    data = run_dir.load_npz(VOTES)
    votes, query_index = data["votes"], data["query_index"]
    _check_votes(ctx, votes, query_index)  # before any privacy is spent on them
    settings = privacy_settings(config, ctx.spec.num_classes)
    guarantee = accounting.guarantee(settings)
    if config.privacy.data_dependent_release and settings.release is None:
        raise RunError("[privacy] data_dependent_release: no order satisfies the smooth-sensitivity conditions "
                       f"C5/C6 at sigma2 = {config.aggregator.sigma2:g}; set it to false")
    fingerprint = private_fingerprint(ctx)
    total = _log_aggregation(ctx, fingerprint, settings)  # refused here, nothing about the run has changed
    run_dir.begin(NAME)
    book = _open_ledger(ctx, votes, query_index)
    if config.seeded:
        ctx.say("aggregate: noise is SEEDED (reproducible): not a production privacy guarantee")
    stopped_by_budget = _decide_all(ctx, settings, votes, query_index, book)
    records = load_ledger(run_dir, votes, query_index).records
    positions, public_index, labels = ledger.released_labels(records)
    atomic_save_npz(run_dir.file(LABELS), query_index=public_index, query=positions, label=labels)
    report = _existing_report(ctx, len(records))
    if report is None:  # the smooth-sensitivity noise is drawn once; a rerun keeps the released figure
        if settings.release is not None:
            _log_release(ctx, fingerprint)
        answered = np.array([r.answered for r in records], dtype=bool)
        report = accounting.privacy_report(settings, votes[:len(records)], answered, seeded=config.seeded,
                                           stopped_by_budget=stopped_by_budget,
                                           noise=noise_source(config.aggregator.seed, stream=len(votes) // CHUNK + 1))
        atomic_write_json(run_dir.file(PRIVACY), report, private=True)
    finish(ctx, NAME)
    for warning in report["private"].get("warnings", []):
        ctx.say(f"aggregate: warning (data-dependent figure): {warning}")
    if guarantee.epsilon > WARN_EPSILON:
        ctx.say(f"aggregate: warning: the guarantee, epsilon {guarantee.epsilon:.3g}, is above {WARN_EPSILON:g}: "
                "it promises little (see `pate plan` for settings that cost less)")
    public = report["public"]
    release = public["data_dependent_release"]
    ctx.say(f"aggregate: {len(records)} queries asked, {len(labels)} answered; guarantee epsilon "
            f"{guarantee.epsilon:.3f}, delta {guarantee.delta:g} ({guarantee.accountant}, from the settings alone)"
            + (f"; data-dependent cost released with smooth-sensitivity noise {release['epsilon']:.3f} (the papers' "
               "convention, not a guarantee)" if release else "")
            + f"; this private data has now spent epsilon {total.epsilon:.3f} over {total.releases} release(s)")
