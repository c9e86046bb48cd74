"""What every mechanism family's aggregation does, in this order (``run``):

1. the family loads and checks what it decides from, before any privacy is spent;
2. the run's worst-case cost is charged to each of its records in the spend log, under a fresh
   nonce (the partition left out every record it would take past ``[privacy] total_budget``; a
   release logged on the others since is refused here, before anything about the run has changed);
3. the ledger is created, or resumed after checking it, and this process claims it in the spend
   log (a stale copy of the run directory is refused);
4. the family decides the queries after the ledger's last, a chunk at a time; each chunk goes to the
   ledger in one fsynced write, claimed in the spend log in the same locked step, before anything
   is released. Seeded noise is drawn per chunk from stream ``chunk``, so a resumed seeded run
   reproduces an uninterrupted one exactly;
5. ``labels.npz`` (the release) is written from the ledger only, and ``privacy.json`` once.

A crash therefore loses at most undecided work; a rerun continues after the ledger's last line,
never re-deciding a recorded query.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from ..run import spend_log
from ..io import ShortWrite, append_durable, atomic_save_npz, atomic_write_json, create_exclusive
from ..privacy import accounting, ledger, spend
from ..privacy.mechanisms import Mechanism
from ..run.directory import RunError, now
from ..run.artifacts import LABELS, LEDGER, PRIVACY, Context, load_partition
from .ledger_files import decided, expected_ledger_header, ledger_key, load_ledger
from .settings import privacy_settings, spend_curves

STAGE = "aggregate"
CHUNK = 256  # queries decided, and written to the ledger, at a time


@dataclass
class Aggregation:
    """One aggregation in progress: what a family's ``decide`` extends."""
    ctx: Context
    settings: accounting.Settings
    book: ledger.Ledger
    holder: spend_log.Holder
    key: bytes  # the ledger's HMAC key, read once

    @property
    def soft_labels(self) -> bool:
        return self.ctx.config.aggregator.soft_labels

    def write(self, records: list[ledger.QueryRecord], mac: str) -> str:
        """One chunk's decisions onto the ledger (fsynced, before anything is released), claimed in
        the spend log in the same locked step; returns the chain's new end."""
        payload, next_mac = ledger.encode(records, self.key, mac)

        def append() -> None:
            try:
                append_durable(self.ctx.run.file(LEDGER), payload)
            except ShortWrite as exc:
                raise RunError(str(exc)) from None

        self.holder.extend(append, records[-1].query + 1, next_mac)
        return next_mac


@dataclass(frozen=True)
class Outcome:
    """What a family's ``finish`` returns: the report to write (None to keep the one written) and
    the line to say."""
    report: dict | None
    summary: str


def run(ctx: Context, *, load: Callable, decide: Callable, conclude: Callable) -> str:
    """The protocol, for a family given as ``load(ctx, settings) -> inputs``,
    ``decide(aggregation, inputs) -> state`` and ``conclude(aggregation, inputs, records, state,
    report) -> Outcome`` (``report``: privacy.json if already written)."""
    settings = privacy_settings(ctx.config, ctx.spec.num_classes, num_private=ctx.spec.num_private)
    inputs = load(ctx, settings)  # checked before any privacy is spent on them
    total = log_aggregation(ctx, settings)  # refused here, nothing about the run has changed
    ctx.run.begin(STAGE)
    book, holder = open_ledger(ctx, inputs.ledger_votes, inputs.query_index)
    if ctx.config.seeded:
        ctx.say("aggregate: noise is SEEDED (reproducible): not a production privacy guarantee")
    aggregation = Aggregation(ctx, settings, book, holder, ledger_key(ctx.run))
    state = decide(aggregation, inputs)
    records = load_ledger(ctx.run, inputs.ledger_votes, inputs.query_index).records
    outcome = conclude(aggregation, inputs, records, state, existing_report(ctx, len(records)))
    if outcome.report is not None:
        atomic_write_json(ctx.run.file(PRIVACY), outcome.report, private=True)
    return (f"{outcome.summary}; a record of this private data has now spent at most epsilon {total.epsilon:.3f} "
            f"over {total.releases} release(s) (PRIVATE: it depends on which records are in the data)")


def records_of(mech: Mechanism, votes: np.ndarray, start: int, labels: np.ndarray, query_index: np.ndarray,
               sources: list | None = None, noisy: np.ndarray | None = None) -> list[ledger.QueryRecord]:
    """The ledger records of one chunk; ``noisy`` (soft labels): each row's released noisy vector,
    NaN where none is released."""
    top_label, top, gap = ledger.vote_facts(votes)
    logq, logpr = mech.query_facts(votes)
    soft = [None] * len(votes) if noisy is None else [
        tuple(float(x) for x in row) if labels[i] >= 0 and np.isfinite(row).all() else None
        for i, row in enumerate(noisy)]
    return [ledger.QueryRecord(
        query=start + i, public_index=int(query_index[start + i]), answered=bool(labels[i] >= 0),
        label=int(labels[i]), top_label=int(top_label[i]), top_count=int(top[i]), gap=int(gap[i]),
        logq=None if np.isnan(logq[i]) else float(logq[i]),
        logpr_answered=None if np.isnan(logpr[i]) else float(logpr[i]),
        answered_by=None if sources is None else sources[i], noisy=soft[i])
        for i in range(len(votes))]


def save_labels(ctx: Context, records: list, **extra: np.ndarray) -> int:
    """labels.npz from the ledger: the answered queries' labels (and with soft labels their noisy
    vectors, ``soft``); returns how many were released."""
    positions, public_index, labels = ledger.released_labels(records)
    soft = ledger.released_soft(records, ctx.spec.num_classes)
    atomic_save_npz(ctx.run.file(LABELS), query_index=public_index, query=positions, label=labels,
                    **({} if soft is None else {"soft": soft}), **extra)
    return len(labels)


def progress_note(ctx: Context, done: int, total: int, detail: str) -> None:
    """The manifest's count of decided queries (the ledger may hold more, never fewer)."""
    ctx.run.update(STAGE, decided=done, progress=f"{done}/{total} queries decided, {detail}")


def open_ledger(ctx: Context, votes, query_index: np.ndarray) -> tuple[ledger.Ledger, spend_log.Holder]:
    """The run's ledger, created (with its key) when no query has been decided yet, and this
    process's hold on its aggregation in the spend log (refused for a stale copy of the run)."""
    path = ctx.run.file(LEDGER)
    if not path.exists() and decided(ctx.run) == 0:
        header = expected_ledger_header(ctx.run, len(query_index))
        text, mac = ledger.encode_header(header, ledger_key(ctx.run, create=True))
        create_exclusive(path, text)  # 0600: private
        book = ledger.Ledger(header, [], mac, (mac,))
    else:
        book = load_ledger(ctx.run, votes, query_index)  # refuses a deleted, cut or edited ledger
    return book, spend_log.Holder(nonce(ctx), book.macs)


def nonce(ctx: Context) -> str:
    """This run's aggregation id: fresh when its aggregation first begins, kept in the manifest
    (before the spend log hears of it) so a resumed run continues under the same entry."""
    value = ctx.run.record(STAGE).get("nonce")
    if not isinstance(value, str) or len(value) != 32:
        if ctx.run.file(LEDGER).exists():
            raise RunError(f"{ctx.run.file(LEDGER)} exists but the manifest names no aggregation for it; the run "
                           "directory is inconsistent (start a new one)")
        value = secrets.token_hex(16)
        ctx.run.update(STAGE, nonce=value)
    return value


def _charged_records(ctx: Context) -> np.ndarray:
    """Keyed fingerprints of the records this run's teachers (or voters) learn from (PRIVATE): every
    record with a teacher, none that the ``private_size`` draw or the ``total_budget`` filter left
    out (``teacher_of`` -1), so a left-out record is neither charged nor named in the log."""
    parts = load_partition(ctx)
    return parts["record_fingerprint"][parts["teacher_of"] >= 0]


def _spend_entry(ctx: Context, kind: str, draw: int, curve, eps: float) -> spend.Entry:
    config = ctx.config
    return spend.Entry(kind=kind, nonce=nonce(ctx), draw=draw, run_dir=str(ctx.run.path.resolve()),
                       pipeline=config.name, time=now(), mechanism=config.aggregator.mechanism, epsilon=eps,
                       delta=config.privacy.delta, rdp=spend.curve_field(curve), seeded=config.seeded,
                       records=0, records_sha256="")


def log_aggregation(ctx: Context, settings: accounting.Settings) -> spend.Total:
    """Charge the run's worst-case cost to each of its records in the spend log before any query is
    decided (once per aggregation; the planned smooth-sensitivity release counts against the budget).
    The curves are those the partition's individual filter checked each kept record against
    (``spend_curves``), so past ``total_budget`` this refuses only after a race."""
    config = ctx.config
    queries_only, planned = spend_curves(config, ctx.spec.num_classes, ctx.spec.num_private)
    eps = accounting.guarantee(replace(settings, release=None)).epsilon
    entry = _spend_entry(ctx, "aggregation", 0, queries_only, eps)
    return spend_log.begin(entry, _charged_records(ctx), total_budget=config.privacy.total_budget,
                           conversion=config.privacy.conversion, planned=planned)


def log_release(ctx: Context) -> None:
    """Append one smooth-sensitivity draw to the spend log, before it is drawn."""
    config = ctx.config
    curve = privacy_settings(config, ctx.spec.num_classes, spend.ORDERS, num_private=ctx.spec.num_private).release_rdp()
    eps = accounting.epsilon(curve, spend.ORDERS, config.privacy.delta, config.privacy.conversion)[0]
    draw = spend_log.draws(nonce(ctx)) + 1
    spend_log.begin(_spend_entry(ctx, "smooth-sensitivity", draw, curve, eps), _charged_records(ctx),
                    total_budget=config.privacy.total_budget, conversion=config.privacy.conversion)


def existing_report(ctx: Context, asked: int) -> dict | None:
    """privacy.json if an earlier attempt wrote it (its smooth-sensitivity noise is never redrawn)."""
    path = ctx.run.file(PRIVACY)
    if not path.exists():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise RunError(f"{path} is unreadable ({type(exc).__name__}); its smooth-sensitivity noise was already drawn, so "
                       "it is not recomputed: restore it from a backup or start a new run") from None
    public = report.get("public") if isinstance(report, dict) else None
    if not isinstance(public, dict) or public.get("queries_asked") != asked:
        covered = public.get("queries_asked") if isinstance(public, dict) else None
        raise RunError(f"{path} covers {covered} queries but the ledger {asked}; the run directory is inconsistent")
    return report
