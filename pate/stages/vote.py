"""Each teacher votes once on each query -> votes.npz.

With ``[aggregator] query_selection = "uncertainty"`` the queries are chosen later, between
Interactive-GNMax's rounds, so the teachers vote on every candidate (the whole student pool); at
most ``max_queries`` of those votes are ever used, each through the mechanism's noise.

Voting runs in chunks of queries, each chunk's votes saved before the next, so an interrupted
vote resumes after its last chunk. It reads every teacher part, whatever number of torchrun ranks
trained them. Teacher and plurality accuracy on the held-out public test split are written for
evaluation only; nothing reads them to choose anything.
"""
from __future__ import annotations

import math
import zipfile

import numpy as np
import torch

from ..io import CheckpointError, atomic_save_npz, atomic_write_json, load_checkpoint
from ..progress import Progress
from ..run.directory import RunError
from ..features import knn
from ..aggregation import budgets, selection
from ..aggregation.settings import anchors_by_level
from ..teachers import ensemble
from ..features import extractors as features
from . import finish
from ..run.artifacts import (EXTRACTOR, HEADS_PREFIX, KNN_PRIVATE, KNN_PUBLIC, NEIGHBOURS, PUBLIC_FEATURES_PREFIX, RECORD_BUDGETS,
                             TEACHER_PART_PREFIX, TEACHERS_EVAL, VOTES, Context, load_dataset, load_partition,
                             mechanism, public_images, resolve_device)

NAME = "vote"
VOTE_CHUNK = 1024
PARTIAL = "votes.partial.npz"


def _feature_predictor(ctx: Context, dataset, device: str):
    """(public indices -> (K, Q) predictions) for a public-features run: every rank's heads, on
    features embedded now (simclr, scattering) or read from the cache of train-teachers (pretrained)."""
    try:
        blob = load_checkpoint(ctx.run.verified(EXTRACTOR))
        heads = [load_checkpoint(ctx.run.verified(name)) for name in ctx.run.recorded() if name.startswith(HEADS_PREFIX)]
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    if not blob.get("done") or not heads or any(h.get("format") != features.HEADS_FORMAT for h in heads):
        raise RunError("the public-features teachers are incomplete; rerun `pate train-teachers`")
    heads.sort(key=lambda h: h["teacher_ids"][0])
    if [t for h in heads for t in h["teacher_ids"]] != list(range(ctx.config.teachers.count)):
        raise RunError("the trained teacher heads do not cover teachers 0..K-1 exactly once")
    extractor = blob["extractor"]
    if extractor.get("kind") == "pretrained":
        features_of = _cached_features(ctx, extractor)
    else:
        def features_of(index):
            return features.embed(extractor, public_images(dataset, index), device=device)
    return lambda index: np.concatenate([features.predict_heads(h, features_of(index)).numpy() for h in heads])


def _cached_features(ctx: Context, extractor: dict):
    """(public indices -> standardised features) from the public feature parts train-teachers wrote."""
    index, rows = [], []
    try:
        for name in sorted(n for n in ctx.run.recorded() if n.startswith(PUBLIC_FEATURES_PREFIX)):
            part = load_checkpoint(ctx.run.verified(name), features.CACHE_FORMAT)
            index.append(part["index"].numpy())
            rows.append(part["features"])
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    index = np.concatenate(index)
    order = np.argsort(index, kind="stable")
    index, table = index[order], torch.cat(rows)[torch.from_numpy(order)]
    table.sub_(extractor["mean"]).div_(extractor["std"])

    def features_of(wanted: np.ndarray):
        at = np.searchsorted(index, wanted)
        if (at >= len(index)).any() or (index[np.minimum(at, len(index) - 1)] != wanted).any():
            raise RunError("the cached public features do not cover every query; rerun `pate train-teachers`")
        return table[torch.from_numpy(at)]
    return features_of


def _ensemble_predictor(ctx: Context, dataset, device: str):
    """(public indices -> (K, Q) predictions) from every trained part, in teacher-id order."""
    config, spec = ctx.config, ctx.spec
    modules = []
    for name in sorted(n for n in ctx.run.recorded() if n.startswith(TEACHER_PART_PREFIX)):
        try:
            blob = load_checkpoint(ctx.run.verified(name))
        except CheckpointError as exc:
            raise RunError(str(exc)) from None
        module = ensemble.TeacherEnsemble(config.teachers.arch, spec.channels, spec.num_classes, spec.image_size,
                                          blob["teacher_ids"])
        module.load_state_dict(blob["state"])
        modules.append(module.to(device))
    modules.sort(key=lambda m: m.teacher_ids[0])
    if [t for m in modules for t in m.teacher_ids] != list(range(config.teachers.count)):
        raise RunError("the trained teacher parts do not cover teachers 0..K-1 exactly once")
    return lambda index: np.concatenate([ensemble.predict(m, public_images(dataset, index), device=device).numpy()
                                         for m in modules])


def _saved_votes(ctx: Context, query_index: np.ndarray, num_classes: int) -> np.ndarray:
    """Votes of the chunks an interrupted run finished (none when there are none)."""
    partial = ctx.run.file(PARTIAL)
    votes = np.zeros((0, num_classes), np.int64)
    if partial.exists():
        try:
            with np.load(partial, allow_pickle=False) as saved:
                if np.array_equal(saved["query_index"], query_index[:len(saved["votes"])]):
                    votes = saved["votes"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise RunError(f"{partial} is damaged ({type(exc).__name__}); delete it to vote again from the "
                           "first query") from None
    return votes


def run(ctx: Context) -> None:
    mech = mechanism(ctx.config)
    if mech.reads_records:  # no teachers: private-knn's neighbourhoods, or reverse-knn's votes for anchors
        return (_knn_neighbourhoods if mech.individual else _reverse_votes)(ctx)
    run_dir, config = ctx.run, ctx.config
    parts = load_partition(ctx)
    dataset = load_dataset(ctx)
    device = resolve_device(ctx.device)
    predict = (_feature_predictor if config.teachers.features != "none" else _ensemble_predictor)(ctx, dataset, device)
    run_dir.begin(NAME)
    # the queries, or (uncertainty: chosen between Interactive-GNMax's rounds) every candidate in the pool
    num_classes, query_index = dataset.num_classes, selection.candidates(parts, config.aggregator.query_selection)
    votes = _saved_votes(ctx, query_index, num_classes)
    progress = Progress(len(query_index), NAME, ctx.quiet, start=len(votes))
    while len(votes) < len(query_index):
        chunk = query_index[len(votes):len(votes) + VOTE_CHUNK]
        preds = predict(chunk)  # (K, chunk)
        votes = np.concatenate([votes, ensemble.votes_from_predictions(preds, num_classes).numpy()])
        atomic_save_npz(run_dir.file(PARTIAL), private=True, votes=votes, query_index=query_index[:len(votes)])
        run_dir.progress(NAME, f"{len(votes)}/{len(query_index)} queries")
        progress.update(len(chunk))
    progress.close()
    if not (votes.sum(axis=1) == config.teachers.count).all():
        raise RunError("vote rows do not sum to K; the teachers are inconsistent")
    atomic_save_npz(run_dir.file(VOTES), private=True, votes=votes, query_index=query_index)  # 0600: private
    stats = _teacher_stats(predict, dataset, parts["test_index"], votes, query_index)  # evaluation only
    atomic_write_json(run_dir.file(TEACHERS_EVAL), stats)
    finish(ctx, NAME)
    run_dir.file(PARTIAL).unlink(missing_ok=True)
    if stats["teacher_accuracy_mean"] is None:
        ctx.say(f"vote: {len(query_index)} queries (no held-out test split: teacher accuracy unknown)")
        return
    ctx.say(f"vote: {len(query_index)} queries; teachers {100 * stats['teacher_accuracy_mean']:.1f}% mean "
            f"(min {100 * stats['teacher_accuracy_min']:.1f}%, max {100 * stats['teacher_accuracy_max']:.1f}%), "
            f"plurality {100 * stats['ensemble_accuracy']:.1f}% on the held-out test split")


def _feature_space(ctx: Context):
    """(partition, dataset, device, public, private): what the voting of private records reads, the
    feature space train-teachers built, checked against its recorded hashes."""
    try:
        public = load_checkpoint(ctx.run.verified(KNN_PUBLIC))
        private = load_checkpoint(ctx.run.verified(KNN_PRIVATE))
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    return load_partition(ctx), load_dataset(ctx), resolve_device(ctx.device), public, private


def _knn_neighbourhoods(ctx: Context) -> None:
    """Private-kNN: each query's neighbourhood, the private records within its public radius
    (``pate.features.knn``), exact, in blocks. No vote is decided here: which members may still vote
    depends on earlier answers, so the aggregator counts them."""
    run_dir, config = ctx.run, ctx.config
    parts, dataset, device, public, private = _feature_space(ctx)
    run_dir.begin(NAME)
    pool_index = public["pool_index"].numpy()
    pool = public["features"][:len(pool_index)]
    query_index = parts["query_index"]
    in_pool = knn.rows_of(pool_index, query_index)  # every query is a pool image
    queries = public["features"][torch.from_numpy(in_pool)]
    k = config.aggregator.knn_k
    radius2 = knn.radii(queries, pool, k, in_pool, device=device)
    hoods = knn.neighbourhoods(queries, radius2, private["features"], device=device,
                               progress=_bar(len(private["features"]), f"{NAME}[neighbours]", ctx))
    records = private["records"].numpy()
    # Members are positions in ``records`` (the private records of this run), whose labels travel
    # with them: the aggregator and the audit need nothing else of the private data.
    atomic_save_npz(run_dir.file(NEIGHBOURS), private=True, indptr=hoods.indptr, members=hoods.members,
                    records=records, labels=dataset.private_y[records], query_index=query_index,
                    radius2=radius2.numpy())
    stats = _knn_stats(dataset, parts, public, private, pool, hoods, records, k, device)  # evaluation only
    atomic_write_json(run_dir.file(TEACHERS_EVAL), stats)
    finish(ctx, NAME)
    sizes = hoods.sizes()
    accuracy = stats["ensemble_accuracy"]
    ctx.say(f"vote: {len(query_index)} neighbourhoods (radius: the {k}th nearest public image; {np.median(sizes):.0f} "
            "private records each, median)" + ("" if accuracy is None else
                                                f"; their plurality {100 * accuracy:.1f}% on the held-out test split"))


def _reverse_votes(ctx: Context) -> None:
    """Reverse-kNN: each private record votes with its label for its ``knn_k`` nearest anchors (the
    queries) in the public feature space train-teachers built -> votes.npz, one count vector per
    anchor (PRIVATE). A record's anchors depend on it and the public anchors alone
    (``pate.features.knn.nearest_anchors``), so it moves exactly ``knn_k`` counts by one."""
    run_dir, config = ctx.run, ctx.config
    parts, dataset, device, public, private = _feature_space(ctx)
    run_dir.begin(NAME)
    query_index = parts["query_index"]
    anchors = public["features"][torch.from_numpy(knn.rows_of(public["pool_index"].numpy(), query_index))]
    k = config.aggregator.knn_k
    records = private["records"].numpy()
    counts = _anchors_per_record(ctx, records)
    if k:
        nearest = knn.nearest_anchors(private["features"], anchors, k, device=device,
                                      progress=_bar(len(private["features"]), f"{NAME}[nearest anchors]", ctx)).numpy()
    else:  # knn_k = 0: no record votes; the DP-SGD teacher labels every anchor alone
        nearest = np.zeros((len(records), 0), np.int64)
    votes = knn.anchor_votes(nearest, dataset.private_y[records], len(query_index), dataset.num_classes, counts)
    atomic_save_npz(run_dir.file(VOTES), private=True, votes=votes, query_index=query_index)  # 0600: private
    truth = dataset.public_y[query_index]
    known = k and len(truth) and (truth >= 0).all()  # with no votes there is no plurality to score
    stats = {"teacher_accuracy_mean": None, "teacher_accuracy_min": None, "teacher_accuracy_max": None,
             "teacher_accuracy": [], "ensemble_accuracy": None,
             "query_plurality_accuracy": float((votes.argmax(1) == truth).mean()) if known else None,
             "anchors_without_votes": int((votes.sum(1) == 0).sum()), "votes_per_anchor_median":
             float(np.median(votes.sum(1))),
             "note": "evaluation only: the plurality of each anchor's votes (no noise) against its true label; "
                     "never used for training or queries"}
    atomic_write_json(run_dir.file(TEACHERS_EVAL), stats)
    finish(ctx, NAME)
    if not k:
        ctx.say(f"vote: no votes cast (knn_k = 0): the DP-SGD teacher labels the {len(query_index)} anchors alone")
        return
    ctx.say(f"vote: {len(records)} private records voted for their {k} nearest of {len(query_index)} anchors "
            f"({np.median(votes.sum(1)):.0f} votes per anchor, median)" + (
                "" if stats["query_plurality_accuracy"] is None else
                f"; the noiseless plurality {100 * stats['query_plurality_accuracy']:.1f}% right on the anchors"))


def _anchors_per_record(ctx: Context, records: np.ndarray) -> np.ndarray | None:
    """With ``[privacy] record_budgets``: how many of its nearest anchors each record votes for (its
    budget level's, ``anchors_by_level``), kept with the resolved budgets and the digest of the
    bytes they were read from, so aggregation refuses a file changed since (PRIVATE). None without a
    budgets file: ``knn_k`` each."""
    config = ctx.config
    saved = ctx.run.file(RECORD_BUDGETS)
    if not config.privacy.record_budgets:
        saved.unlink(missing_ok=True)  # a file an earlier vote with budgets wrote; this vote has none
        return None
    try:
        policy = budgets.read(config.privacy.record_budgets)  # read once: budgets, levels and digest agree
        levels = np.array([v for v in budgets.levels(policy, math.inf) if math.isfinite(v)])
        by_level = anchors_by_level(config, ctx.spec.num_classes, ctx.spec.num_private, levels)
    except budgets.BudgetError as exc:
        raise RunError(str(exc)) from None
    epsilon = budgets.of_records(ctx, policy, records, math.inf)
    counts = np.array([by_level[float(e)][0] for e in epsilon], dtype=np.int64)
    atomic_save_npz(saved, private=True, epsilon=epsilon, anchors=counts, levels=levels,
                    source_sha256=np.array(policy.sha256))
    return counts


def _knn_stats(dataset, parts, public, private, pool, hoods, records, k, device) -> dict:
    """Evaluation only: the plurality of whole neighbourhoods (no noise, no retirement) on the
    held-out test split and on the queries, where true labels are known."""
    labels = dataset.private_y[records]
    m = dataset.num_classes

    def plurality(h) -> np.ndarray:
        row = np.repeat(np.arange(h.num_queries), h.sizes())
        votes = np.zeros((h.num_queries, m), np.int64)
        np.add.at(votes, (row, labels[h.members]), 1)
        return votes.argmax(1)

    query_truth = dataset.public_y[parts["query_index"]]
    stats = {"teacher_accuracy_mean": None, "teacher_accuracy_min": None, "teacher_accuracy_max": None,
             "teacher_accuracy": [], "ensemble_accuracy": None,
             "query_plurality_accuracy": float((plurality(hoods) == query_truth).mean())
             if len(query_truth) and (query_truth >= 0).all() else None,
             "neighbours_median": float(np.median(hoods.sizes())), "neighbours_empty": int((hoods.sizes() == 0).sum()),
             "note": "evaluation only, on the held-out public test split: the plurality of whole neighbourhoods "
                     "(no noise, no retirement); never used for training or queries"}
    test_index = parts["test_index"]
    if len(test_index):
        tests = public["features"][len(pool):len(pool) + len(test_index)]
        test_hoods = knn.neighbourhoods(tests, knn.radii(tests, pool, k, device=device), private["features"],
                                        device=device)
        stats["ensemble_accuracy"] = float((plurality(test_hoods) == dataset.public_y[test_index]).mean())
    return stats


def _bar(total: int, label: str, ctx: Context):
    bar = Progress(total, label, ctx.quiet)
    return lambda done, _total: bar.update_to(done)


def _teacher_stats(predict, dataset, test_index: np.ndarray, votes: np.ndarray, query_index: np.ndarray) -> dict:
    """Evaluation only: teacher and plurality accuracy on the held-out public test split (None
    without one), and of the plurality on the queries where their true labels are known."""
    note = "evaluation only, on the held-out public test split; never used for training or queries"
    query_truth = dataset.public_y[query_index]
    query_plurality = (float((votes.argmax(axis=1) == query_truth).mean()) if len(query_truth)
                       and (query_truth >= 0).all() else None)
    if len(test_index) == 0:
        return {"teacher_accuracy_mean": None, "teacher_accuracy_min": None, "teacher_accuracy_max": None,
                "teacher_accuracy": [], "ensemble_accuracy": None, "query_plurality_accuracy": query_plurality,
                "note": note + " (this data has no held-out test split)"}
    test_preds = predict(test_index)
    truth = dataset.public_y[test_index]
    per_teacher = ensemble.teacher_accuracies(test_preds, truth).numpy()
    plurality = ensemble.votes_from_predictions(test_preds, dataset.num_classes).numpy().argmax(axis=1)
    return {"teacher_accuracy_mean": float(np.mean(per_teacher)), "teacher_accuracy_min": float(np.min(per_teacher)),
            "teacher_accuracy_max": float(np.max(per_teacher)), "teacher_accuracy": [float(a) for a in per_teacher],
            "ensemble_accuracy": float((plurality == truth).mean()), "query_plurality_accuracy": query_plurality,
            "note": note}
