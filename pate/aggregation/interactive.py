"""Interactive-GNMax (Papernot et al. 2018, Algorithm 2): the queries in fixed rounds; before each,
a student trained on what was released so far answers where the teachers agree with it; each
chunk's decisions in the ledger before the next. The round students see released labels and
public images only, so choosing whom to ask from them keeps the per-query worst case."""
from __future__ import annotations

import numpy as np
import torch

from ..privacy import accounting, ledger
from ..privacy.noise import noise_source
from ..progress import Progress
from ..stages.context import Context, load_dataset, load_partition, public_images, resolve_device
from ..student import probabilities, train_student
from ..io import atomic_save_npz
from . import batch, protocol

INTERACTIVE_DIR = "interactive"  # the round students' probabilities

load = batch.load  # the teachers' vote histograms, checked the same way


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
    bar = Progress(config.aggregator.interactive_steps, f"{protocol.STAGE}[student {round_number}]", ctx.quiet)
    model, _ = train_student(
        public_images(dataset, public_index), torch.from_numpy(labels),
        public_images(dataset, unlabeled) if cfg.method != "supervised" else None,
        arch=cfg.arch, num_classes=m, method=cfg.method, steps=config.aggregator.interactive_steps,
        batch_size=cfg.batch_size, unlabeled_ratio=cfg.unlabeled_ratio, lr=cfg.lr, weight_decay=cfg.weight_decay,
        threshold=cfg.threshold, seed=cfg.seed + round_number, device=resolve_device(ctx.device),
        progress=lambda step, steps, loss, info: bar.update_to(step))
    bar.close()
    probs = probabilities(model, public_images(dataset, parts["query_index"][queries]),
                          device=resolve_device(ctx.device)).numpy().astype(np.float64)
    atomic_save_npz(path, private=True, queries=queries, probabilities=probs)
    return probs


def decide(run: protocol.Aggregation, inputs: batch.Votes) -> None:
    ctx, config = run.ctx, run.ctx.config
    votes, query_index = inputs.ledger_votes, inputs.query_index
    mech, seed, chunk_size = run.settings.mechanism, config.aggregator.seed, protocol.CHUNK
    records, mac = list(run.book.records), run.book.last_mac
    progress = Progress(len(votes), protocol.STAGE, ctx.quiet, start=len(records))
    for number, queries in enumerate(np.array_split(np.arange(len(votes)), config.aggregator.interactive_rounds)):
        if len(queries) == 0 or len(records) > queries[-1]:
            continue
        probs = np.zeros(votes.shape)
        probs[queries] = _round_probabilities(ctx, number, queries, records)
        while len(records) <= queries[-1]:
            done = len(records)
            chunk = done // chunk_size
            first, end = chunk * chunk_size, min((chunk + 1) * chunk_size, queries[-1] + 1)
            labels, asked, noisy = mech.decide_with_student_noisy(
                votes[first:first + chunk_size], probs[first:first + chunk_size], noise_source(seed, stream=chunk))
            labels, asked, noisy = (a[done - first:end - first] for a in (labels, asked, noisy))
            sources = ["teachers" if a else ("student" if y >= 0 else None) for a, y in zip(asked, labels)]
            new = protocol.records_of(mech, votes[done:end], done, labels, query_index, sources,
                                      noisy=noisy if run.soft_labels else None)
            mac = run.write(new, mac)
            records += new
            by_teachers = sum(r.source == "teachers" for r in records)
            protocol.progress_note(ctx, len(records), len(votes), f"round {number + 1}")
            progress.update(len(new), status=f"teachers answered {by_teachers}")
    progress.close()


def conclude(run: protocol.Aggregation, inputs: batch.Votes, records: list, state, report: dict | None):
    ctx, settings, config = run.ctx, run.settings, run.ctx.config
    from_teachers = np.array([r.source == "teachers" for r in records if r.answered], dtype=bool)
    released = protocol.save_labels(ctx, records, from_teachers=from_teachers)
    fresh = report is None
    if fresh:
        asked = np.array([r.source == "teachers" for r in records], dtype=bool)  # GNMax was drawn for these
        report = accounting.privacy_report(settings, inputs.ledger_votes[:len(records)], asked,
                                           seeded=config.seeded, stopped_by_budget=False,
                                           noise=noise_source(config.aggregator.seed, stream=0),
                                           soft_labels=config.aggregator.soft_labels)
        report["public"]["queries_answered"] = released
        report["public"]["answered_by_teachers"] = int(from_teachers.sum())
        report["public"]["answered_by_student"] = int((~from_teachers).sum())
    guarantee = accounting.guarantee(settings)
    summary = (f"aggregate: {len(records)} queries asked in {config.aggregator.interactive_rounds} rounds, "
               f"{released} labelled ({int(from_teachers.sum())} by the teachers, {int((~from_teachers).sum())} by "
               f"the student); guarantee epsilon {guarantee.epsilon:.3f}, delta {guarantee.delta:g} "
               f"({guarantee.accountant}, from the settings alone)")
    return protocol.Outcome(report if fresh else None, summary)
