"""Interactive-GNMax (Papernot et al. 2018, Algorithm 2): the queries in fixed rounds; before each,
a student trained on what was released so far answers where the teachers agree with it; each
chunk's decisions in the ledger before the next. The round students see released labels and
public images only, so choosing whom to ask from them keeps the per-query worst case.

With ``query_selection = "uncertainty"`` the rounds also choose which pool images are asked: the
teachers have voted on every image of the student pool (the candidates), and round r asks the
not-yet-asked candidates on which the round-r student is least certain, the smallest top-1 minus
top-2 probability margin (margin sampling, Scheffer et al. 2001: one of the uncertainty-sampling
strategies of active learning surveyed by Settles 2009, "Active Learning Literature Survey").
Round 0 has no student and asks the first candidates of the shuffled pool.

Why the published guarantee is unchanged: the choice is a function of public images and of labels
already released, i.e. post-processing of earlier outputs of the mechanism; it reads no vote and
no private record. Every asked query is charged its data-independent worst case, which holds
whatever led to asking it (adaptive composition), so the guarantee, computed from the settings and
the number of queries asked (at most ``max_queries``), is that of the same settings without the
choice. Votes on candidates never asked are never used: they stay private in votes.npz.

Each round's choice is saved (``interactive/round-<r>.npz``: the candidates in asked order, the
student's probabilities on them and on every candidate) before any of that round's decisions reach
the ledger, and a resumed run reuses it: a query is never re-chosen after it may have been decided,
and seeded noise stays per ledger chunk, so a resumed run reproduces an uninterrupted one. Ledger
positions stay 0, 1, 2, ... in the order asked; each record names the public image it asked.
"""
from __future__ import annotations

import numpy as np
import torch

from . import selection
from ..io import atomic_save_npz
from ..privacy import accounting, ledger
from ..privacy.ledger import ANSWERED_BY_STUDENT, ANSWERED_BY_TEACHERS
from ..privacy.noise import noise_source
from ..progress import Progress
from ..run.artifacts import Context, load_dataset, load_partition, public_images, resolve_device
from ..student.training import probabilities, train_student
from . import protocol, teacher_votes
from .ledger_files import (Candidates, candidates_of, chosen_between_rounds, read_round, round_file,
                           round_positions)


def load(ctx: Context, settings: accounting.Settings) -> Candidates:
    """The teachers' vote histograms on the candidates, checked as for the teacher-vote
    mechanisms, in the ledger's order as far as the saved rounds say (the rest is chosen by ``decide``)."""
    votes = teacher_votes.load(ctx, settings)
    return candidates_of(ctx.run, votes.ledger_votes, votes.query_index)


def _student_probabilities(ctx: Context, round_number: int, records: list, index: np.ndarray) -> np.ndarray | None:
    """(len(index), m) the class probabilities, on the public images ``index``, of a student trained
    on the labels released before the round (and the unlabelled rest of the pool), with the final
    student's settings and augmentations ([student]) but ``interactive_steps`` steps: a function of
    released labels and public images only. None when nothing was released yet (no student)."""
    positions, public_index, labels = ledger.released_labels(records)
    if len(labels) == 0:
        return None
    parts, dataset = load_partition(ctx), load_dataset(ctx)
    cfg, config, m = ctx.config.student, ctx.config, ctx.spec.num_classes
    unlabeled = np.setdiff1d(parts["student_pool_index"], public_index)
    ctx.say(f"aggregate: round {round_number}: training a student on the {len(labels)} labels released so far")
    bar = Progress(config.aggregator.interactive_steps, f"{protocol.STAGE}[student {round_number}]", ctx.quiet)
    model, _ = train_student(
        public_images(dataset, public_index), torch.from_numpy(labels),
        public_images(dataset, unlabeled) if cfg.method != "supervised" else None,
        arch=cfg.arch, num_classes=m, method=cfg.method, steps=config.aggregator.interactive_steps,
        batch_size=cfg.batch_size, unlabeled_ratio=cfg.unlabeled_ratio, lr=cfg.lr, weight_decay=cfg.weight_decay,
        threshold=cfg.threshold, hflip=cfg.hflip, erase=cfg.erase, mixup=cfg.mixup, seed=cfg.seed + round_number,
        device=resolve_device(ctx.device),
        progress=lambda step, steps, loss, info: bar.update_to(step))
    bar.close()
    return probabilities(model, public_images(dataset, index), device=resolve_device(ctx.device)).numpy().astype(
        np.float64)


def _fixed_round(ctx: Context, round_number: int, queries: np.ndarray, records: list, inputs: Candidates) -> np.ndarray:
    """(len(queries), m) the round student's probabilities on the round's (fixed) queries; round 0
    has no student (zeros: the teachers decide). Kept in the run directory, so a resumed round uses
    the same student."""
    m = ctx.spec.num_classes
    if round_number == 0:
        return np.zeros((len(queries), m))
    path = ctx.run.file(round_file(round_number))
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            if np.array_equal(saved["queries"], queries):
                return saved["probabilities"]
    probs = _student_probabilities(ctx, round_number, records, inputs.query_index[queries])
    if probs is None:
        return np.zeros((len(queries), m))
    atomic_save_npz(path, private=True, queries=queries, probabilities=probs)
    return probs


def _chosen_round(ctx: Context, round_number: int, queries: np.ndarray, records: list,
                  inputs: Candidates) -> np.ndarray:
    """Choose the round's queries (uncertainty), or reuse the saved choice: the least certain
    candidates not asked before, saved (atomically, 0600) before any of the round's decisions,
    then written into ``inputs.asked``. Returns the student's probabilities on them."""
    saved = read_round(ctx.run, round_number, queries, len(inputs.index))
    if saved is None:
        probs = None if round_number == 0 else _student_probabilities(ctx, round_number, records, inputs.index)
        if probs is None:  # no student yet: every margin 0, so the first of the shuffled pool
            probs = np.zeros((len(inputs.index), ctx.spec.num_classes))
        available = np.ones(len(inputs.index), dtype=bool)
        available[inputs.asked[inputs.asked >= 0]] = False
        chosen = selection.least_certain(probs, available, len(queries))
        saved = {"queries": queries, "chosen": chosen, "probabilities": probs[chosen],
                 "candidate_probabilities": probs}
        atomic_save_npz(ctx.run.file(round_file(round_number)), private=True, **saved)
    inputs.asked[queries] = saved["chosen"]
    return saved["probabilities"]


def decide(run: protocol.Aggregation, inputs: Candidates) -> None:
    """Each round after the ledger's last: its student (and, with uncertainty, its queries), then
    its decisions chunk by chunk, each chunk's noise from stream ``chunk`` (a chunk's rows past the
    round, not chosen yet, are drawn for and discarded, so the stream is the same whatever they are)."""
    ctx, config = run.ctx, run.ctx.config
    mech, seed, chunk_size = run.settings.mechanism, config.aggregator.seed, protocol.CHUNK
    records, mac = list(run.book.records), run.book.last_mac
    round_of = _chosen_round if chosen_between_rounds(config) else _fixed_round
    progress = Progress(len(inputs.asked), protocol.STAGE, ctx.quiet, start=len(records))
    for number, queries in enumerate(round_positions(config)):
        if len(queries) == 0 or len(records) > queries[-1]:
            continue
        round_probs = round_of(ctx, number, queries, records, inputs)
        votes, query_index = inputs.ledger_votes, inputs.query_index  # the round's queries now chosen
        probs = np.zeros(votes.shape)
        probs[queries] = round_probs
        while len(records) <= queries[-1]:
            done = len(records)
            chunk = done // chunk_size
            first, end = chunk * chunk_size, min((chunk + 1) * chunk_size, queries[-1] + 1)
            labels, asked, noisy = mech.decide_with_student_noisy(
                votes[first:first + chunk_size], probs[first:first + chunk_size], noise_source(seed, stream=chunk))
            labels, asked, noisy = (a[done - first:end - first] for a in (labels, asked, noisy))
            sources = [ANSWERED_BY_TEACHERS if a else (ANSWERED_BY_STUDENT if y >= 0 else None) for a, y in zip(asked, labels)]
            new = protocol.records_of(mech, votes[done:end], done, labels, query_index, sources,
                                      noisy=noisy if run.soft_labels else None)
            mac = run.write(new, mac)
            records += new
            by_teachers = sum(r.by_teachers for r in records)
            protocol.progress_note(ctx, len(records), len(votes), f"round {number + 1}")
            progress.update(len(new), status=f"teachers answered {by_teachers}")
    progress.close()


def conclude(run: protocol.Aggregation, inputs: Candidates, records: list, state, report: dict | None):
    ctx, settings, config = run.ctx, run.settings, run.ctx.config
    from_teachers = np.array([r.by_teachers for r in records if r.answered], dtype=bool)
    released = protocol.save_labels(ctx, records, from_teachers=from_teachers)
    fresh = report is None
    if fresh:
        asked = np.array([r.by_teachers for r in records], dtype=bool)  # GNMax was drawn for these
        report = accounting.privacy_report(settings, inputs.ledger_votes[:len(records)], asked,
                                           seeded=config.seeded, stopped_by_budget=False,
                                           noise=noise_source(config.aggregator.seed, stream=0),
                                           soft_labels=config.aggregator.soft_labels)
        report["public"]["queries_answered"] = released
        report["public"]["answered_by_teachers"] = int(from_teachers.sum())
        report["public"]["answered_by_student"] = int((~from_teachers).sum())
    guarantee = accounting.guarantee(settings)
    chosen = (f" (the least certain of {len(inputs.index)} candidates)" if chosen_between_rounds(config) else "")
    summary = (f"aggregate: {len(records)} queries asked{chosen} in {config.aggregator.interactive_rounds} rounds, "
               f"{released} labelled ({int(from_teachers.sum())} by the teachers, {int((~from_teachers).sum())} by "
               f"the student); guarantee epsilon {guarantee.epsilon:.3f}, delta {guarantee.delta:g} "
               f"({guarantee.accountant}, from the settings alone)")
    return protocol.Outcome(report if fresh else None, summary)
