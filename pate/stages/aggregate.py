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
import secrets
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from .. import records as records_mod
from .. import spend_log
from ..io import ShortWrite, append_durable, atomic_save_npz, atomic_write_json, create_exclusive, sha256_file
from .. import budgets
from ..privacy import accounting, individual, ledger, spend
from ..privacy.mechanisms import Mechanism
from ..privacy.noise import noise_source
from ..progress import Progress
from ..student import probabilities, train_student
from ..run import RunError, now
from . import finish
from .context import (DATA, LABELS, LEDGER, NEIGHBOURS, PRIVACY, RECORD_BUDGETS, VOTES, WARN_EPSILON, Context,
                      decided, expected_ledger_header, gaussian_budgets, knn_inputs, ledger_key, load_dataset,
                      load_ledger, load_partition, mechanism, privacy_settings, public_images, resolve_device)

NAME = "aggregate"
CHUNK = 256
INTERACTIVE_DIR = "interactive"  # the round students' probabilities (Interactive-GNMax)


def _records(mech: Mechanism, votes: np.ndarray, start: int, labels: np.ndarray,
             query_index: np.ndarray, sources: list | None = None,
             noisy: np.ndarray | None = None) -> list[ledger.QueryRecord]:
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
        source=None if sources is None else sources[i], noisy=soft[i])
        for i in range(len(votes))]


def _save_labels(ctx: Context, records: list, **extra: np.ndarray) -> int:
    """labels.npz from the ledger: the answered queries' labels (and with soft labels their noisy
    vectors, ``soft``); returns how many were released."""
    positions, public_index, labels = ledger.released_labels(records)
    soft = ledger.released_soft(records, ctx.spec.num_classes)
    atomic_save_npz(ctx.run.file(LABELS), query_index=public_index, query=positions, label=labels,
                    **({} if soft is None else {"soft": soft}), **extra)
    return len(labels)


def _open_ledger(ctx: Context, votes, query_index: np.ndarray) -> tuple[ledger.Ledger, spend_log.Holder]:
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
    return book, spend_log.Holder(_nonce(ctx), book.macs)


def _nonce(ctx: Context) -> str:
    """This run's aggregation id: fresh when its aggregation first begins, kept in the manifest
    (before the spend log hears of it) so a resumed run continues under the same entry."""
    nonce = ctx.run.record(NAME).get("nonce")
    if not isinstance(nonce, str) or len(nonce) != 32:
        if ctx.run.file(LEDGER).exists():
            raise RunError(f"{ctx.run.file(LEDGER)} exists but the manifest names no aggregation for it; the run "
                           "directory is inconsistent (start a new one)")
        nonce = secrets.token_hex(16)
        ctx.run.update(NAME, nonce=nonce)
    return nonce


def _charged_records(ctx: Context) -> np.ndarray:
    """Keyed fingerprints of the records this run's teachers (or voters) learn from (PRIVATE)."""
    parts = load_partition(ctx)
    return parts["record_fingerprint"][parts["teacher_of"] >= 0]


def _spend_entry(ctx: Context, kind: str, draw: int, curve, eps: float) -> spend.Entry:
    config = ctx.config
    return spend.Entry(kind=kind, nonce=_nonce(ctx), draw=draw, run_dir=str(ctx.run.path.resolve()),
                       pipeline=config.name, time=now(), mechanism=config.aggregator.mechanism, epsilon=eps,
                       delta=config.privacy.delta, rdp=spend.curve_field(curve), seeded=config.seeded,
                       records=0, records_sha256="")


def _log_aggregation(ctx: Context, settings: accounting.Settings) -> spend.Total:
    """Charge the run's worst-case cost to each of its records in the spend log before any query is
    decided (once per aggregation; the planned smooth-sensitivity release counts against the budget)."""
    config = ctx.config
    on_log_orders = privacy_settings(config, ctx.spec.num_classes, spend.ORDERS)
    queries_only = accounting.worst_case_curve(replace(on_log_orders, release=None), accounting.max_queries(settings))
    eps = accounting.guarantee(replace(settings, release=None)).epsilon
    planned = on_log_orders.release_rdp() if settings.release is not None else None
    entry = _spend_entry(ctx, "aggregation", 0, queries_only, eps)
    return spend_log.begin(entry, _charged_records(ctx), total_budget=config.privacy.total_budget,
                           conversion=config.privacy.conversion, planned=planned)


def _log_release(ctx: Context) -> None:
    """Append one smooth-sensitivity draw to the spend log, before it is drawn."""
    config = ctx.config
    curve = privacy_settings(config, ctx.spec.num_classes, spend.ORDERS).release_rdp()
    eps = accounting.epsilon(curve, spend.ORDERS, config.privacy.delta, config.privacy.conversion)[0]
    draw = spend_log.draws(_nonce(ctx)) + 1
    spend_log.begin(_spend_entry(ctx, "smooth-sensitivity", draw, curve, eps), _charged_records(ctx),
                    total_budget=config.privacy.total_budget, conversion=config.privacy.conversion)


def _write_chunk(ctx: Context, holder: spend_log.Holder, records: list, key: bytes, mac: str) -> str:
    """One chunk's decisions onto the ledger (fsynced, before anything is released), claimed in the
    spend log in the same locked step; returns the chain's new end."""
    payload, next_mac = ledger.encode(records, key, mac)

    def write() -> None:
        try:
            append_durable(ctx.run.file(LEDGER), payload)
        except ShortWrite as exc:
            raise RunError(str(exc)) from None

    holder.extend(write, records[-1].query + 1, next_mac)
    return next_mac


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
                book: ledger.Ledger, holder: spend_log.Holder) -> bool:
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
        labels, noisy = mech.decide_noisy(votes[chunk * CHUNK:end], noise_source(seed, stream=chunk))
        labels, noisy = labels[done - chunk * CHUNK:][:allowed], noisy[done - chunk * CHUNK:][:allowed]
        new = _records(mech, votes[done:done + allowed], done, labels, query_index,
                       noisy=noisy if ctx.config.aggregator.soft_labels else None)
        mac = _write_chunk(ctx, holder, new, key, mac)
        if filt is not None:
            filt.charge(allowed * plan.charge)
        done += allowed
        answered += int((labels >= 0).sum())
        ctx.run.update(NAME, decided=done, progress=f"{done}/{len(votes)} queries decided, {answered} answered")
        progress.update(allowed, status=f"answered {answered}")
    progress.close()
    return stopped_by_budget


def run(ctx: Context) -> None:
    if mechanism(ctx.config).individual:
        return _run_individual(ctx)
    if mechanism(ctx.config).interactive:
        return _run_interactive(ctx)
    run_dir, config = ctx.run, ctx.config
    data = run_dir.load_npz(VOTES)
    votes, query_index = data["votes"], data["query_index"]
    _check_votes(ctx, votes, query_index)  # before any privacy is spent on them
    settings = privacy_settings(config, ctx.spec.num_classes)
    guarantee = accounting.guarantee(settings)
    if config.privacy.data_dependent_release and settings.release is None:
        raise RunError("[privacy] data_dependent_release: no order satisfies the smooth-sensitivity conditions "
                       f"C5/C6 at sigma2 = {config.aggregator.sigma2:g}; set it to false")
    total = _log_aggregation(ctx, settings)  # refused here, nothing about the run has changed
    run_dir.begin(NAME)
    book, holder = _open_ledger(ctx, votes, query_index)
    if config.seeded:
        ctx.say("aggregate: noise is SEEDED (reproducible): not a production privacy guarantee")
    stopped_by_budget = _decide_all(ctx, settings, votes, query_index, book, holder)
    records = load_ledger(run_dir, votes, query_index).records
    released = _save_labels(ctx, records)
    report = _existing_report(ctx, len(records))
    if report is None:  # the smooth-sensitivity noise is drawn once; a rerun keeps the released figure
        if settings.release is not None:
            _log_release(ctx)
        answered = np.array([r.answered for r in records], dtype=bool)
        report = accounting.privacy_report(settings, votes[:len(records)], answered, seeded=config.seeded,
                                           stopped_by_budget=stopped_by_budget,
                                           noise=noise_source(config.aggregator.seed, stream=len(votes) // CHUNK + 1),
                                           soft_labels=config.aggregator.soft_labels)
        atomic_write_json(run_dir.file(PRIVACY), report, private=True)
    finish(ctx, NAME)
    for warning in report["private"].get("warnings", []):
        ctx.say(f"aggregate: warning (data-dependent figure): {warning}")
    if guarantee.epsilon > WARN_EPSILON:
        ctx.say(f"aggregate: warning: the guarantee, epsilon {guarantee.epsilon:.3g}, is above {WARN_EPSILON:g}: "
                "it promises little (see `pate plan` for settings that cost less)")
    public = report["public"]
    release = public["data_dependent_release"]
    ctx.say(f"aggregate: {len(records)} queries asked, {released} answered; guarantee epsilon "
            f"{guarantee.epsilon:.3f}, delta {guarantee.delta:g} ({guarantee.accountant}, from the settings alone)"
            + (f"; data-dependent cost released with smooth-sensitivity noise {release['epsilon']:.3f} (the papers' "
               "convention, not a guarantee)" if release else "")
            + f"; a record of this private data has now spent at most epsilon {total.epsilon:.3f} over {total.releases} release(s)")


# ----------------------------------------------------------------------------- private-knn


def _record_budgets(ctx: Context, records: np.ndarray) -> np.ndarray:
    """(N,) every private record's budget (ε at δ), resolved from ``[privacy] record_budgets`` once,
    when aggregation begins, and kept in the run (PRIVATE); a resumed run refuses a changed file."""
    config = ctx.config
    path = config.privacy.record_budgets
    digest = sha256_file(path) if path and Path(path).is_file() else ""
    saved = ctx.run.file(RECORD_BUDGETS)
    if saved.exists():
        with np.load(saved, allow_pickle=False) as kept:
            if str(kept["source_sha256"]) != digest:
                raise RunError(f"[privacy] record_budgets changed since aggregation began ({path or 'none'}); the "
                               "run continues only with the budgets it started with")
            return kept["epsilon"]
    names = None
    if config.data.source == "folders":  # records are named by their file under private_dir
        root = Path(config.data.private_dir)
        names = [str(Path(p).relative_to(root)) for p, _ in ctx.run.read_json(DATA)["files"]["private"]]
    try:
        if config.data.source == "arrays":  # by the private file's ids, never by position
            names = records_mod.user_ids(config.data.private_file)
        every = budgets.resolve(path, config.privacy.record_epsilon, ctx.spec.num_private, names,
                                by_index=config.data.source == "builtin")
    except (budgets.BudgetError, records_mod.RecordError) as exc:
        raise RunError(str(exc)) from None
    epsilon = every[records]
    atomic_save_npz(saved, private=True, epsilon=epsilon, source_sha256=np.array(digest))
    return epsilon


def _run_individual(ctx: Context) -> None:
    """Private-kNN: the queries in order, each record voting while it can afford a whole query, each
    chunk's decisions in the ledger before the next chunk; the spend is rebuilt from the ledger on
    resume (``pate.privacy.individual``)."""
    run_dir, config = ctx.run, ctx.config
    inputs = knn_inputs(run_dir, ctx.spec.num_classes)
    query_index = inputs.query_index
    if not np.array_equal(query_index, load_partition(ctx)["query_index"]):
        raise RunError(f"{run_dir.file(NEIGHBOURS)} is for other queries; refusing to spend privacy on it")
    settings = privacy_settings(config, ctx.spec.num_classes)
    mech, m = settings.mechanism, ctx.spec.num_classes
    total = _log_aggregation(ctx, settings)  # refused here, nothing about the run has changed
    run_dir.begin(NAME)
    eps_budget = _record_budgets(ctx, inputs.records)
    gaussian = gaussian_budgets(eps_budget, config)
    book, holder = _open_ledger(ctx, inputs.votes_of(gaussian), query_index)
    if config.seeded:
        ctx.say("aggregate: noise is SEEDED (reproducible): not a production privacy guarantee")
    answered = np.array([r.answered for r in book.records], dtype=bool)
    state, _, _ = inputs.replay(gaussian, answered)
    done, mac, key = len(book.records), book.last_mac, ledger_key(run_dir)
    progress = Progress(len(query_index), NAME, ctx.quiet, start=done)
    answered_count = int(answered.sum())
    while done < len(query_index):
        chunk = done // CHUNK
        first, end = chunk * CHUNK, min((chunk + 1) * CHUNK, len(query_index))
        z1, z2 = individual.draw_noise(noise_source(config.aggregator.seed, stream=chunk), end - first, m,
                                       mech.sigma1, mech.sigma2)
        out, votes = individual.decide(inputs.hoods, inputs.labels, state, inputs.charges, start=done,
                                       threshold=mech.threshold, z1=z1[done - first:], z2=z2[done - first:])
        noisy = votes + z2[done - first:] if config.aggregator.soft_labels else None
        mac, done = _write_chunk(ctx, holder, _records(mech, votes, done, out, query_index, noisy=noisy), key, mac), end
        answered_count += int((out >= 0).sum())
        run_dir.update(NAME, decided=done, progress=f"{done}/{len(query_index)} queries decided, "
                                                    f"{answered_count} answered")
        progress.update(len(out), status=f"answered {answered_count}")
    progress.close()
    book_records = load_ledger(run_dir, inputs.votes_of(gaussian), query_index).records
    released = _save_labels(ctx, book_records)
    report = _existing_report(ctx, len(book_records))
    if report is None:
        flags = np.array([r.answered for r in book_records], dtype=bool)
        final, votes, retired_after = inputs.replay(gaussian, flags)
        levels = budgets.levels(config.privacy.record_budgets, config.privacy.record_epsilon)  # public policy
        report = accounting.individual_report(settings, budget_levels=levels,
                                              spent=final.spent, budget=gaussian, votes=votes, answered=flags,
                                              retired=retired_after >= 0, seeded=config.seeded,
                                              soft_labels=config.aggregator.soft_labels)
        atomic_write_json(run_dir.file(PRIVACY), report, private=True)
    finish(ctx, NAME)
    guarantee = accounting.guarantee(settings)
    ctx.say(f"aggregate: {len(book_records)} queries asked, {released} answered; guarantee epsilon "
            f"{guarantee.epsilon:.3f}, delta {guarantee.delta:g} for every private record (individual Rényi "
            f"filter: each record retired at its own budget); a record of this private data has now spent at most epsilon "
            f"{total.epsilon:.3f} over {total.releases} release(s)")


# ----------------------------------------------------------------------------- interactive-gnmax


def _round_probabilities(ctx: Context, round_number: int, queries: np.ndarray, records: list) -> np.ndarray:
    """(len(queries), m) the class probabilities, on the round's query images, of a student trained
    on the labels released before the round (and the unlabelled rest of the pool): a function of
    released labels and public images only. Round 0 has no student (zeros: the teachers decide).
    Kept in the run directory, so a resumed round uses the same student."""
    m = ctx.spec.num_classes
    if round_number == 0:
        return np.zeros((len(queries), m))
    path = ctx.run.file(f"{INTERACTIVE_DIR}/round-{round_number}.npz")
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            if np.array_equal(saved["queries"], queries):
                return saved["probabilities"]
    parts, dataset = load_partition(ctx), load_dataset(ctx)
    positions, public_index, labels = ledger.released_labels(records)
    pool = parts["student_pool_index"]
    if len(labels) == 0:
        return np.zeros((len(queries), m))
    cfg, config = ctx.config.student, ctx.config
    unlabeled = np.setdiff1d(pool, public_index)
    ctx.say(f"aggregate: round {round_number}: training a student on the {len(labels)} labels released so far")
    bar = Progress(config.aggregator.interactive_steps, f"{NAME}[student {round_number}]", ctx.quiet)
    model, _ = train_student(
        public_images(dataset, public_index), torch.from_numpy(labels),
        public_images(dataset, unlabeled) if cfg.method != "supervised" else None,
        arch=cfg.arch, num_classes=m, method=cfg.method, steps=config.aggregator.interactive_steps,
        batch_size=cfg.batch_size, unlabeled_ratio=cfg.unlabeled_ratio, lr=cfg.lr, weight_decay=cfg.weight_decay,
        threshold=cfg.threshold, seed=cfg.seed + round_number, device=resolve_device(ctx.device),
        progress=lambda step, steps, loss, info: bar.update_to(step))
    bar.close()
    probs = probabilities(model, public_images(dataset, load_partition(ctx)["query_index"][queries]),
                          device=resolve_device(ctx.device)).numpy().astype(np.float64)
    atomic_save_npz(path, private=True, queries=queries, probabilities=probs)
    return probs


def _run_interactive(ctx: Context) -> None:
    """Interactive-GNMax: the queries in fixed rounds; before each, a student trained on what was
    released so far; each chunk's decisions in the ledger before the next."""
    run_dir, config = ctx.run, ctx.config
    data = run_dir.load_npz(VOTES)
    votes, query_index = data["votes"], data["query_index"]
    _check_votes(ctx, votes, query_index)
    settings = privacy_settings(config, ctx.spec.num_classes)
    mech, seed = settings.mechanism, config.aggregator.seed
    total = _log_aggregation(ctx, settings)
    run_dir.begin(NAME)
    book, holder = _open_ledger(ctx, votes, query_index)
    if config.seeded:
        ctx.say("aggregate: noise is SEEDED (reproducible): not a production privacy guarantee")
    records, mac, key = list(book.records), book.last_mac, ledger_key(run_dir)
    progress = Progress(len(votes), NAME, ctx.quiet, start=len(records))
    for number, queries in enumerate(np.array_split(np.arange(len(votes)), config.aggregator.interactive_rounds)):
        if len(queries) == 0 or len(records) > queries[-1]:
            continue
        probs = np.zeros(votes.shape)
        probs[queries] = _round_probabilities(ctx, number, queries, records)
        while len(records) <= queries[-1]:
            done = len(records)
            chunk = done // CHUNK
            first, end = chunk * CHUNK, min((chunk + 1) * CHUNK, queries[-1] + 1)
            labels, asked, noisy = mech.decide_with_student_noisy(
                votes[first:(chunk + 1) * CHUNK], probs[first:(chunk + 1) * CHUNK], noise_source(seed, stream=chunk))
            labels, asked, noisy = (a[done - first:end - first] for a in (labels, asked, noisy))
            sources = ["teachers" if a else ("student" if y >= 0 else None) for a, y in zip(asked, labels)]
            new = _records(mech, votes[done:end], done, labels, query_index, sources,
                           noisy=noisy if config.aggregator.soft_labels else None)
            mac = _write_chunk(ctx, holder, new, key, mac)
            records += new
            by_teachers = sum(r.source == "teachers" for r in records)
            run_dir.update(NAME, decided=len(records), progress=f"{len(records)}/{len(votes)} queries decided, "
                                                                 f"round {number + 1}")
            progress.update(len(new), status=f"teachers answered {by_teachers}")
    progress.close()
    records = load_ledger(run_dir, votes, query_index).records
    from_teachers = np.array([r.source == "teachers" for r in records if r.answered], dtype=bool)
    released = _save_labels(ctx, records, from_teachers=from_teachers)
    report = _existing_report(ctx, len(records))
    if report is None:
        asked = np.array([r.source == "teachers" for r in records], dtype=bool)  # GNMax was drawn for these
        report = accounting.privacy_report(settings, votes[:len(records)], asked, seeded=config.seeded,
                                           stopped_by_budget=False, noise=noise_source(seed, stream=0),
                                           soft_labels=config.aggregator.soft_labels)
        report["public"]["queries_answered"] = released
        report["public"]["answered_by_teachers"] = int(from_teachers.sum())
        report["public"]["answered_by_student"] = int((~from_teachers).sum())
        atomic_write_json(run_dir.file(PRIVACY), report, private=True)
    finish(ctx, NAME)
    guarantee = accounting.guarantee(settings)
    ctx.say(f"aggregate: {len(records)} queries asked in {config.aggregator.interactive_rounds} rounds, "
            f"{released} labelled ({int(from_teachers.sum())} by the teachers, {int((~from_teachers).sum())} by the "
            f"student); guarantee epsilon {guarantee.epsilon:.3f}, delta {guarantee.delta:g} "
            f"({guarantee.accountant}, from the settings alone); a record of this private data has now spent at most epsilon "
            f"{total.epsilon:.3f} over {total.releases} release(s)")
