"""Train the K teachers, each on its own shard only, as one batched ensemble.

With ``[teachers] features`` set, a public feature extractor (trained on the unlabelled public
pool only, a fixed scattering transform, or a frozen pretrained backbone) is shared by every
teacher and each teacher fits a logistic head on its own shard's features. Under ``torchrun``
each rank trains its own contiguous block of teachers (and embeds its own share of the images)
and writes its own checkpoint and part files into the shared run directory; rank 0 alone touches
the manifest, after a barrier.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from ..io import CheckpointError, atomic_save_npz, load_checkpoint, private_mkdir, save_checkpoint
from ..progress import Progress, plural
from ..run.directory import RunError
from ..features import knn
from ..aggregation.settings import dpsgd_settings
from ..teachers import distributed, dpsgd
from ..features import extractors as features, pretrained
from ..teachers.training import train_ensemble
from . import finish
from ..run.artifacts import (DPSGD_POOL, EXTRACTOR, KNN_PRIVATE, KNN_PUBLIC, TEACHERS_DIR, Context, heads_part, load_dataset,
                             load_partition, mechanism, normaliser, private_features_part, private_images,
                             public_features_part, public_images, resolve_device, teacher_part)

NAME = "train-teachers"
KNN_FORMAT = "pate.features.knn-space/1"


def check(config) -> None:
    """The pretrained backbone and its weights load (one line naming the file otherwise); a DP-SGD
    teacher's Opacus is installed."""
    tcfg = config.teachers
    if tcfg.dpsgd_noise:
        try:
            dpsgd.require_opacus()
        except ImportError as exc:
            raise RunError(str(exc)) from None
    if tcfg.features == "pretrained":
        pretrained.load(tcfg.backbone, tcfg.weights, tcfg.backbone_size)


def run(ctx: Context) -> None:
    if mechanism(ctx.config).reads_records:
        return _knn_space(ctx)
    if ctx.config.teachers.features != "none":
        return _train_feature_teachers(ctx)
    run_dir, config, tcfg = ctx.run, ctx.config, ctx.config.teachers
    rank, world = distributed.rank_and_size()
    parts = load_partition(ctx)
    dataset = load_dataset(ctx)
    if rank == 0:
        run_dir.begin(NAME)
    used = np.flatnonzero(parts["teacher_of"] >= 0)  # records outside every shard never reach a model
    images = private_images(dataset, used)
    labels = torch.from_numpy(dataset.private_y[used])
    device = resolve_device(ctx.device)
    private_mkdir(run_dir.file(TEACHERS_DIR))
    progress = Progress(tcfg.epochs, f"{NAME}[{rank}]" if world > 1 else NAME, ctx.quiet or rank > 0, unit="epochs")

    def report(epoch, epochs, step, steps, loss, images_per_s):
        progress.update_to(epoch - 1 + step / steps, status=f"loss {loss:.3f} {images_per_s:.0f} img/s")
        if step == steps and rank == 0:
            run_dir.progress(NAME, f"epoch {epoch}/{epochs}")

    model, _ = train_ensemble(
        images, labels, parts["teacher_of"][used], tcfg.count, arch=tcfg.arch, num_classes=dataset.num_classes,
        epochs=tcfg.epochs, batch_size=tcfg.batch_size, optimizer=tcfg.optimizer, lr=tcfg.lr, momentum=tcfg.momentum,
        weight_decay=tcfg.weight_decay, seed=tcfg.seed, device=device, augment=tcfg.augment,
        teacher_ids=distributed.teachers_for_rank(tcfg.count, rank, world),
        checkpoint_path=run_dir.file(f"{TEACHERS_DIR}/checkpoint-{rank}-of-{world}.pt"),
        fingerprint=config.upstream_fingerprint(), progress=report, amp=device == "cuda")
    progress.close()
    save_checkpoint(run_dir.file(teacher_part(rank, world)),
                    {"teacher_ids": list(model.teacher_ids),
                     "state": {k: v.cpu() for k, v in model.state_dict().items()}}, private=True)
    distributed.barrier_and_close(world)  # every part is on disk before rank 0 marks the stage done
    if rank == 0:
        finish(ctx, NAME, world, world_size=world)
        ctx.say(f"{NAME}: {tcfg.count} teachers ({tcfg.arch}) trained, {plural(tcfg.epochs, 'epoch')}"
                + (f" on {world} ranks" if world > 1 else ""))


def _train_feature_teachers(ctx: Context) -> None:
    """Public features, then one logistic head per teacher on its own shard's features
    (``pate.features.extractors``). Under torchrun each rank embeds and fits its own block of teachers."""
    run_dir, tcfg = ctx.run, ctx.config.teachers
    rank, world = distributed.rank_and_size()
    parts = load_partition(ctx)
    dataset = load_dataset(ctx)
    if rank == 0:
        run_dir.begin(NAME)
    device = resolve_device(ctx.device)
    private_mkdir(run_dir.file(TEACHERS_DIR))
    ids = distributed.teachers_for_rank(tcfg.count, rank, world)
    mine = np.flatnonzero(np.isin(parts["teacher_of"], ids))  # this rank's teachers' records, nobody else's
    builder = _pretrained_features if tcfg.features == "pretrained" else _extractor_features
    try:
        private_features, about, _ = builder(ctx, dataset, parts, mine, rank, world, device)
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    if rank == 0:
        run_dir.progress(NAME, "heads")
    heads = features.train_heads(private_features, torch.from_numpy(dataset.private_y[mine]).long(),
                                 parts["teacher_of"][mine], ids, dataset.num_classes, device=device,
                                 progress=_bar(features.HEAD_STEPS, _label("heads", rank, world), ctx, rank))
    save_checkpoint(run_dir.file(heads_part(rank, world)), heads, private=True)
    distributed.barrier_and_close(world)  # every rank's heads are on disk before rank 0 marks the stage done
    if rank == 0:
        finish(ctx, NAME, world, world_size=world, features=tcfg.features)
        ctx.say(f"{NAME}: {tcfg.count} logistic heads on {tcfg.features} public features ({about})"
                + (f" on {world} ranks" if world > 1 else ""))


def _knn_space(ctx: Context) -> None:
    """Private-kNN and reverse-kNN train no teachers: their voters are the private records themselves,
    in a public feature space. This builds that space: the ``[teachers] features`` extractor (from public images
    only), every private record's features (none with ``knn_k = 0``, where no record votes: the
    DP-SGD teacher alone reads them), the public pool's and test split's, all projected on the
    pool's principal axes (``pate.features.knn``; the projection is public information)."""
    run_dir, config = ctx.run, ctx.config
    if distributed.under_torchrun():
        raise RunError(f"{ctx.config.aggregator.mechanism} trains nothing and embeds on one process; run it without "
                       "torchrun")
    parts = load_partition(ctx)
    dataset = load_dataset(ctx)
    run_dir.begin(NAME)
    device = resolve_device(ctx.device)
    private_mkdir(run_dir.file(TEACHERS_DIR))
    used = np.flatnonzero(parts["teacher_of"] >= 0)  # the private records of this run ([data] private_size)
    voting = config.aggregator.knn_k > 0  # knn_k = 0: the DP-SGD teacher alone reads the records, none is embedded
    builder = _pretrained_features if config.teachers.features == "pretrained" else _extractor_features
    try:
        private, about, public_of = builder(ctx, dataset, parts, used if voting else used[:0], 0, 1, device)
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    pool_index, test_index = parts["student_pool_index"], parts["test_index"]
    public = public_of(np.concatenate([pool_index, test_index]))
    projection = knn.fit_projection(public[:len(pool_index)], config.aggregator.knn_dim)
    save_checkpoint(run_dir.file(KNN_PRIVATE), {"format": KNN_FORMAT, "records": torch.from_numpy(used),
                                                "features": knn.project(private, projection) if voting else torch.zeros(len(used), 0)},
                    private=True)
    save_checkpoint(run_dir.file(KNN_PUBLIC), {
        "format": KNN_FORMAT, "pool_index": torch.from_numpy(pool_index), "test_index": torch.from_numpy(test_index),
        "features": knn.project(public, projection), "projection": projection})
    if config.teachers.dpsgd_noise:
        _dpsgd_teacher(ctx, dataset, used, pool_index, test_index)
    finish(ctx, NAME, world_size=1, features=config.teachers.features)
    dim = public.shape[1] if projection["components"] is None else projection["components"].shape[0]
    ctx.say(f"{NAME}: {config.aggregator.mechanism} space: " + (f"{len(used)} private records and " if voting else "")
            + f"{len(pool_index) + len(test_index)} public images in {dim} dimensions ({about})"
            + ("" if voting else "; no private record embedded (knn_k = 0: none votes)"))


def _dpsgd_teacher(ctx: Context, dataset, used: np.ndarray, pool_index: np.ndarray, test_index: np.ndarray) -> None:
    """The DP-SGD teacher beside reverse-knn's votes (``pate.teachers.dpsgd``), trained on every private
    record of the run at exactly the accounted sampling rate and steps; its probabilities on the pool
    stay in the run (PRIVATE) until the aggregation, which charges its cost, releases them."""
    config, tcfg = ctx.config, ctx.config.teachers
    accounted = dpsgd_settings(config, ctx.spec.num_private)
    if dpsgd.schedule(len(used), tcfg.dpsgd_batch, tcfg.dpsgd_epochs) != (accounted.sample_rate, accounted.steps):
        raise RunError("the DP-SGD teacher would sample otherwise than accounted (the run's records are not the "
                       "private set's size); refusing to train it")
    ctx.run.progress(NAME, "DP-SGD teacher: scattering features of the private records")
    private = dpsgd.scattering_features(dataset.private_x[used])
    bar = Progress(tcfg.dpsgd_epochs, f"{NAME}[dp-sgd]", ctx.quiet, unit="epochs")

    def report(epoch, epochs, step, steps, loss, images_per_s):
        bar.update_to(epoch - 1 + step / steps, status=f"{images_per_s:.0f} img/s")
        if step == steps:
            ctx.run.progress(NAME, f"DP-SGD teacher: epoch {epoch}/{epochs}")
    pool = dpsgd.scattering_features(dataset.public_x[pool_index])  # public: the projection's axes if dpsgd_dim
    model = dpsgd.train(private, dataset.private_y[used], dataset.num_classes, noise_multiplier=tcfg.dpsgd_noise,
                        batch_size=tcfg.dpsgd_batch, epochs=tcfg.dpsgd_epochs, lr=tcfg.dpsgd_lr,
                        seed=config.aggregator.seed, public=pool, dim=tcfg.dpsgd_dim, progress=report)
    bar.close()
    probs = dpsgd.predict_proba(model, pool)
    test_truth = dataset.public_y[test_index]
    test_accuracy = (float((dpsgd.predict_proba(model, dpsgd.scattering_features(dataset.public_x[test_index]))
                            .argmax(1) == test_truth).mean()) if len(test_index) and (test_truth >= 0).all() else np.nan)
    linear = model[-1]  # the model itself (ScatterNet + linear: only this layer has weights), for a student's third voice
    atomic_save_npz(ctx.run.file(DPSGD_POOL), private=True, pool_index=pool_index, probabilities=probs,
                    weight=linear.weight.detach().numpy(), bias=linear.bias.detach().numpy(),
                    test_accuracy=np.array(test_accuracy), seeded=np.array(config.aggregator.seed is not None))
    ctx.say(f"{NAME}: DP-SGD teacher (noise multiplier {tcfg.dpsgd_noise:g}, {accounted.steps} steps at rate "
            f"{accounted.sample_rate:.4g})" + ("" if np.isnan(test_accuracy) else
                                               f": {100 * test_accuracy:.1f}% on the held-out test split"))


def _extractor_features(ctx: Context, dataset, parts, mine: np.ndarray, rank: int, world: int, device: str):
    """A frozen extractor from the unlabelled public pool only (never a private image, never a
    label), built by rank 0 while the others wait, then the features of this rank's private records."""
    if rank == 0:
        extractor, about = _public_extractor(ctx, public_images(dataset, parts["student_pool_index"]), device)
    distributed.barrier(world)
    if rank > 0:  # rank 0's finished extractor, read back
        saved = load_checkpoint(ctx.run.file(EXTRACTOR), features.EXTRACTOR_FORMAT)
        if not saved.get("done") or saved.get("fingerprint") != ctx.config.upstream_fingerprint():
            raise RunError(f"rank {rank}: {ctx.run.file(EXTRACTOR)} is not this run's finished extractor")
        extractor, about = saved["extractor"], "built by rank 0"
    else:
        ctx.run.progress(NAME, "embedding the private shards")
    private = features.embed(extractor, dataset.private_x[mine], device=device,
                             prepare=normaliser(dataset),
                             progress=_bar(len(mine), _label("embed shards", rank, world), ctx, rank))

    def public_of(index: np.ndarray) -> torch.Tensor:
        return features.embed(extractor, public_images(dataset, index), device=device,
                              progress=_bar(len(index), _label("embed public", rank, world), ctx, rank))
    return private, about, public_of


def _pretrained_features(ctx: Context, dataset, parts, mine: np.ndarray, rank: int, world: int, device: str):
    """A frozen pretrained backbone: this rank's slice of the public pool and test split and its
    teachers' private records are embedded once (cached in the run directory, resumable); the
    features are standardised with statistics of the whole public pool (every rank's slice)."""
    run_dir, tcfg = ctx.run, ctx.config.teachers
    backbone = pretrained.load(tcfg.backbone, tcfg.weights, tcfg.backbone_size, device)
    settings = {"backbone": tcfg.backbone, "weights": backbone.weights_id, "size": backbone.size}
    fingerprint = ctx.config.upstream_fingerprint()
    pool_rows = np.array_split(parts["student_pool_index"], world)[rank]
    public_rows = np.concatenate([pool_rows, np.array_split(parts["test_index"], world)[rank]]).astype(np.int64)

    def cached(name: str, images: np.ndarray, rows: np.ndarray, private: bool, what: str) -> torch.Tensor:
        if rank == 0:
            run_dir.progress(NAME, f"embedding {what}")
        return features.embed_cached(
            run_dir.file(name), lambda a, b: pretrained.embed(backbone, images[rows[a:b]], device=device),
            len(rows), fingerprint=fingerprint, private=private,
            settings={**settings, "rows": int(len(rows)), "index": _digest(rows)},
            meta={"index": torch.from_numpy(rows), "pool_rows": int(len(pool_rows))} if not private else None,
            progress=_bar(len(rows), _label(f"embed {what}", rank, world), ctx, rank))

    public = cached(public_features_part(rank, world), dataset.public_x, public_rows, False, "public images")
    private = cached(private_features_part(rank, world), dataset.private_x, mine.astype(np.int64), True,
                     "private shards")
    distributed.barrier(world)  # every rank's public features are on disk
    mean, std = _pool_statistics(ctx, world)
    if rank == 0:
        save_checkpoint(run_dir.file(EXTRACTOR), {
            "format": features.EXTRACTOR_FORMAT, "fingerprint": fingerprint, "settings": settings, "done": True,
            "extractor": {"kind": "pretrained", **settings, "dim": backbone.dim, "mean": mean, "std": std}})
    about = (f"{tcfg.backbone} ({backbone.weights_id[:19]}) frozen at {backbone.size}x{backbone.size}, "
             f"{backbone.dim} features standardised on {len(parts['student_pool_index'])} public images")
    def public_of(index: np.ndarray) -> torch.Tensor:  # this rank's slice only (private-knn runs on one)
        return (public[torch.from_numpy(knn.rows_of(public_rows, index))] - mean) / std
    return private.sub_(mean).div_(std), about, public_of


def _pool_statistics(ctx: Context, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the pretrained features over the public pool (never the test split), from
    every rank's part in rank order (so every rank computes the same numbers)."""
    total = total_sq = None
    count = 0
    for r in range(world):
        part = load_checkpoint(ctx.run.file(public_features_part(r, world)), features.CACHE_FORMAT)
        pool = part["features"][:int(part["pool_rows"])].double()
        total = pool.sum(0) if total is None else total + pool.sum(0)
        total_sq = pool.pow(2).sum(0) if total_sq is None else total_sq + pool.pow(2).sum(0)
        count += len(pool)
    mean = total / max(count, 1)
    var = (total_sq - count * mean.pow(2)) / max(count - 1, 1)
    return mean.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-6)


def _digest(rows: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def _public_extractor(ctx: Context, pool, device: str):
    """The frozen feature map of ``[teachers] features``, from public pool images only, and a
    phrase saying what it is."""
    run_dir, tcfg, fingerprint = ctx.run, ctx.config.teachers, ctx.config.upstream_fingerprint()
    if tcfg.features == "scattering":
        run_dir.progress(NAME, "scattering the public pool")
        extractor = features.scattering_extractor(
            pool, device=device, checkpoint_path=run_dir.file(EXTRACTOR), fingerprint=fingerprint,
            progress=_bar(len(pool), f"{NAME}[scatter public]", ctx))
        return extractor, (f"fixed scattering transform, {extractor['dim']} coefficients standardised "
                           f"on {len(pool)} public images")
    progress = Progress(tcfg.feature_epochs, f"{NAME}[features]", ctx.quiet)

    def report(epoch, epochs, loss):
        progress.update_to(epoch, status=f"contrastive loss {loss:.3f}")
        run_dir.progress(NAME, f"extractor epoch {epoch}/{epochs}")

    extractor = features.train_extractor(
        pool, dim=tcfg.feature_dim, epochs=tcfg.feature_epochs, seed=tcfg.seed, device=device,
        checkpoint_path=run_dir.file(EXTRACTOR), fingerprint=fingerprint, progress=report)
    progress.close()
    return extractor, f"extractor: {tcfg.feature_epochs} epochs on {len(pool)} unlabelled public images"


def _label(what: str, rank: int, world: int) -> str:
    return f"{NAME}[{what}]" if world == 1 else f"{NAME}[{rank}][{what}]"


def _bar(total: int, label: str, ctx: Context, rank: int = 0):
    """A ``progress(done, total)`` callback drawing a bar (silent with --quiet, and on ranks > 0)."""
    bar = Progress(total, label, ctx.quiet or rank > 0)
    return lambda done, _total: bar.update_to(done)
