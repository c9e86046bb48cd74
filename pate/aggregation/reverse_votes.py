"""Reverse-kNN: every anchor's count vector (each private record voted for its k nearest anchors,
``pate.stages.vote``) gets discrete Gaussian noise, decided in chunks like the teachers' votes. The
whole release is one mechanism (``pate.privacy.mechanisms.ReverseKNN``): its cost is charged once,
before the first chunk, whatever the number of anchors; labels and noisy vectors for all of them."""
from __future__ import annotations

import numpy as np

from ..features import knn
from ..privacy import accounting, ledger
from ..run.directory import RunError
from ..run.artifacts import DPSGD_POOL, RECORD_BUDGETS, VOTES, Context, load_partition
from . import budgets, protocol, teacher_votes
from .settings import budget_levels


def load(ctx: Context, settings: accounting.Settings) -> teacher_votes.Votes:
    """votes.npz, checked: non-negative integer counts, one row per anchor (the partition's queries),
    at most ``knn_k`` votes per private record of the run."""
    data = ctx.run.load_npz(VOTES)
    votes, query_index = data["votes"], data["query_index"]
    parts = load_partition(ctx)
    expected_index, records = parts["query_index"], int((parts["teacher_of"] >= 0).sum())
    problem = None
    if votes.ndim != 2 or votes.shape != (len(expected_index), ctx.spec.num_classes) or votes.dtype.kind not in "iu":
        problem = f"must be an integer array of shape ({len(expected_index)}, {ctx.spec.num_classes})"
    elif (votes < 0).any() or votes.sum() > records * ctx.config.aggregator.knn_k:
        problem = f"counts must be non-negative, at most knn_k = {ctx.config.aggregator.knn_k} per private record"
    elif not np.array_equal(query_index, expected_index):
        problem = "query_index differs from the partition's queries"
    if problem:
        raise RunError(f"{ctx.run.file(VOTES)} is invalid: {problem}; refusing to spend privacy on it")
    path = ctx.config.privacy.record_budgets
    if path:  # the records voted for their budget level's anchors: the levels must be the file's still
        kept = ctx.run.load_npz(RECORD_BUDGETS)
        try:
            now = budgets.read(path).sha256
        except budgets.BudgetError as exc:
            raise RunError(str(exc)) from None
        if str(kept["source_sha256"]) != now:
            raise RunError(f"[privacy] record_budgets changed since the records voted ({path}); start a new run "
                           "directory to vote with the new budgets")
    return teacher_votes.Votes(votes, query_index)


def decide(run: protocol.Aggregation, inputs: teacher_votes.Votes) -> bool:
    """Chunk by chunk, ledger first: the teachers' driver (no filter: one release); with no votes
    (``knn_k = 0``) each anchor's label is the DP-SGD teacher's most probable class, no noise drawn."""
    if run.settings.mechanism.casts_votes:
        return teacher_votes.decide(run, inputs)
    labels = np.argmax(snapped_prior(run.ctx, inputs.query_index), axis=1)
    return teacher_votes.decide(run, inputs, labels_of=lambda first, end, chunk: (labels[first:end], None))


def conclude(run: protocol.Aggregation, inputs: teacher_votes.Votes, records: list, stopped_by_budget: bool,
             report: dict | None) -> protocol.Outcome:
    ctx, settings, config = run.ctx, run.settings, run.ctx.config
    released = protocol.save_labels(ctx, records, **_dpsgd_prior(ctx, records))
    if report is None:
        public = accounting.public_statement(settings, asked=len(records), answered=released, release=None,
                                             seeded=config.seeded, stopped_by_budget=False)
        if config.aggregator.soft_labels:
            public["soft_labels"] = accounting.SOFT_LABELS_NOTE
        if config.privacy.record_budgets:
            kept = ctx.run.load_npz(RECORD_BUDGETS)  # the levels the records voted with (checked at load)
            public["per_budget_level"] = budget_levels(config, ctx.spec.num_classes, ctx.spec.num_private,
                                                       kept["levels"])
        votes = inputs.ledger_votes[:len(records)]
        per_anchor = votes.sum(axis=1)
        report = {"public": public, "private": {
            "note": accounting.PRIVATE_NOTE, "votes_per_anchor_median": float(np.median(per_anchor)),
            "anchors_without_votes": int((per_anchor == 0).sum()),
            "explanation": "none: one release over every anchor, accounted from its settings alone"}}
    guarantee = accounting.guarantee(settings)
    beside = " and the DP-SGD teacher's probabilities" if settings.dpsgd is not None else ""
    how = (f"each private record voted for {'at most ' if config.privacy.record_budgets else ''}"
           f"{config.aggregator.knn_k} anchors" if settings.mechanism.casts_votes else
           "no votes: the DP-SGD teacher's cost alone")
    summary = (f"aggregate: {len(records)} anchors labelled in one release{beside}; guarantee epsilon "
               f"{guarantee.epsilon:.3f}, delta {guarantee.delta:g} ({guarantee.accountant}, from the settings alone: "
               f"{how})")
    return protocol.Outcome(report, summary)


PRIOR_GRID = 2 ** -16  # the DP-SGD teacher's released probabilities are multiples of this (a public grid)
WEIGHT_GRID = 2 ** -16  # and so are its released weights


def _dpsgd_prior(ctx: Context, records: list) -> dict:
    """{"prior": (n, m)} the DP-SGD teacher's probabilities on the released anchors, in labels.npz's
    order, and the teacher itself (its linear layer, "dpsgd_weight" and "dpsgd_bias", on the public
    grid ``WEIGHT_GRID``; runs trained before it was kept have none); {} without a DP-SGD teacher.
    Released only here, after the spend log was charged the composed cost of the votes and the
    teacher: the model is the DP-SGD mechanism's output, its probabilities post-processing of it, so
    releasing both costs that mechanism once."""
    if not ctx.config.teachers.dpsgd_noise:
        return {}
    _, public_index, _ = ledger.released_labels(records)
    kept = ctx.run.load_npz(DPSGD_POOL)
    model = {f"dpsgd_{key}": snapped(kept[key], WEIGHT_GRID).astype(np.float32) for key in ("weight", "bias")
             if key in kept}  # float32 holds every multiple of 2^-16 below 256 exactly
    return {"prior": snapped_prior(ctx, public_index), **model}


def snapped(values: np.ndarray, grid: float) -> np.ndarray:
    """``values`` rounded to the nearest multiple of ``grid``, in float64: what leaves the run of a
    float computed from private data."""
    return np.round(np.asarray(values, dtype=np.float64) / grid) * grid


def snapped_prior(ctx: Context, public_index: np.ndarray) -> np.ndarray:
    """(n, m) the DP-SGD teacher's probabilities on these pool images, on the public grid ``PRIOR_GRID``."""
    kept = ctx.run.load_npz(DPSGD_POOL)
    rows = knn.rows_of(kept["pool_index"], public_index)
    return snapped(kept["probabilities"][rows], PRIOR_GRID)
