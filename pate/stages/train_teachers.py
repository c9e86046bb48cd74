"""Train the K teachers, each on its own shard only, as one batched ensemble.

With ``[teachers] features`` set, a public feature extractor (trained on the unlabelled public
pool only, or fixed) is shared by every teacher and each teacher fits a logistic head on its own
shard's features. Under ``torchrun`` each rank trains its own contiguous block of teachers and
writes its own checkpoint and part file into the shared run directory; rank 0 alone touches the
manifest, after a barrier.
"""
from __future__ import annotations

import numpy as np
import torch

from ..io import CheckpointError, save_checkpoint
from ..progress import Progress, plural
from ..run import RunError
from ..teachers import distributed, features
from ..teachers.training import train_ensemble
from . import finish
from .context import (EXTRACTOR, HEADS, TEACHERS_DIR, Context, load_dataset, load_partition, private_images,
                      public_images, resolve_device, teacher_part)

NAME = "train-teachers"


def run(ctx: Context) -> None:
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
    run_dir.file(TEACHERS_DIR).mkdir(exist_ok=True)
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
                     "state": {k: v.cpu() for k, v in model.state_dict().items()}})
    distributed.barrier_and_close(world)  # every part is on disk before rank 0 marks the stage done
    if rank == 0:
        finish(ctx, NAME, world, world_size=world)
        ctx.say(f"{NAME}: {tcfg.count} teachers ({tcfg.arch}) trained, {plural(tcfg.epochs, 'epoch')}"
                + (f" on {world} ranks" if world > 1 else ""))


def _train_feature_teachers(ctx: Context) -> None:
    """Public features: a frozen extractor from the unlabelled public pool only, then one logistic
    head per teacher on its own shard's features (``pate.teachers.features``)."""
    run_dir, tcfg = ctx.run, ctx.config.teachers
    if distributed.under_torchrun():
        raise RunError(f"[teachers] features = {tcfg.features!r} trains on one process; run it without torchrun")
    parts = load_partition(ctx)
    dataset = load_dataset(ctx)
    run_dir.begin(NAME)
    device = resolve_device(ctx.device)
    run_dir.file(TEACHERS_DIR).mkdir(exist_ok=True)
    # The extractor sees public pool images only: never a private image, never a label.
    pool = public_images(dataset, parts["student_pool_index"])
    try:
        extractor, about = _public_extractor(ctx, pool, device)
    except CheckpointError as exc:
        raise RunError(str(exc)) from None
    run_dir.progress(NAME, "embedding the private shards")
    used = np.flatnonzero(parts["teacher_of"] >= 0)
    feats = features.embed(extractor, private_images(dataset, used), device=device,
                           progress=_bar(len(used), f"{NAME}[embed shards]", ctx))
    run_dir.progress(NAME, "heads")
    heads = features.train_heads(feats, torch.from_numpy(dataset.private_y[used]).long(), parts["teacher_of"][used],
                                 range(tcfg.count), dataset.num_classes, device=device,
                                 progress=_bar(features.HEAD_STEPS, f"{NAME}[heads]", ctx))
    save_checkpoint(run_dir.file(HEADS), heads)
    finish(ctx, NAME, world_size=1, features=tcfg.features)
    ctx.say(f"{NAME}: {tcfg.count} logistic heads on {tcfg.features} public features ({about})")


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


def _bar(total: int, label: str, ctx: Context):
    """A ``progress(done, total)`` callback drawing a bar (silent with --quiet)."""
    bar = Progress(total, label, ctx.quiet)
    return lambda done, _total: bar.update_to(done)
