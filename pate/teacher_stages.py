"""The train-teachers and vote stages: run-directory glue around ``pate.ensemble``.

Under ``torchrun`` each rank trains its own contiguous block of teachers and writes its own
checkpoint and part file into the shared run directory; rank 0 alone touches the manifest, after
a barrier. The vote stage reads every part, so it does not care how many ranks trained them.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from .config import DATASETS
from .progress import Progress
from .run import RunError, atomic_save_npz, atomic_write_json
from .stages import Context, load_dataset, load_partition, public_images, resolve_device, save_state_dict

VOTE_CHUNK = 1024


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun, with the process group initialised; (0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def part_name(rank: int, world: int) -> str:
    return f"teachers/part-{rank}-of-{world}.pt"


EXTRACTOR = "teachers/extractor.pt"
HEADS = "teachers/heads-0-of-1.pt"


def run_train_teachers(ctx: Context) -> None:
    import torch

    from . import data as data_mod
    from . import ensemble

    run, config, tcfg = ctx.run, ctx.config, ctx.config.teachers
    if tcfg.features != "none":
        return _train_feature_teachers(ctx)
    rank, world = _distributed()
    parts = load_partition(ctx)
    dataset = load_dataset(ctx)
    if rank == 0:
        run.begin("train-teachers")
    used = np.flatnonzero(parts["teacher_of"] >= 0)  # records outside every shard never reach a model
    images = data_mod.to_float(dataset.train_x[used], dataset.name)
    labels = torch.from_numpy(dataset.train_y[used])
    teacher_ids = ensemble.teachers_for_rank(tcfg.count, rank, world)
    device = resolve_device(ctx.device)
    (run.path / "teachers").mkdir(exist_ok=True)
    progress = Progress(tcfg.epochs, f"train-teachers[{rank}]" if world > 1 else "train-teachers",
                        ctx.quiet or rank > 0)

    def report(epoch, epochs, step, steps, loss, images_per_s):
        if step == steps:
            progress.update_to(epoch, status=f"loss {loss:.3f} {images_per_s:.0f} img/s")
            if rank == 0:
                run.progress("train-teachers", f"epoch {epoch}/{epochs}")

    model, info = ensemble.train_ensemble(
        images, labels, parts["teacher_of"][used], tcfg.count, arch=tcfg.arch, num_classes=dataset.num_classes,
        epochs=tcfg.epochs, batch_size=tcfg.batch_size, optimizer=tcfg.optimizer, lr=tcfg.lr, momentum=tcfg.momentum,
        weight_decay=tcfg.weight_decay, seed=tcfg.seed, device=device, augment=tcfg.augment,
        teacher_ids=teacher_ids, checkpoint_path=run.path / "teachers" / f"checkpoint-{rank}-of-{world}.pt",
        fingerprint=config.fingerprint(), progress=report, amp=device == "cuda")
    progress.close()
    save_state_dict(run.file(part_name(rank, world)),
                    {"teacher_ids": list(teacher_ids), "state": {k: v.cpu() for k, v in model.state_dict().items()}})
    _barrier(world)  # every part is on disk before rank 0 marks the stage done
    if rank == 0:
        run.finish("train-teachers", [part_name(r, world) for r in range(world)], world_size=world)
        ctx.say(f"train-teachers: {tcfg.count} teachers ({tcfg.arch}) trained, {tcfg.epochs} epochs"
                + (f" on {world} ranks" if world > 1 else ""))


def _train_feature_teachers(ctx: Context) -> None:
    """Public features: a frozen extractor trained on the unlabelled public pool only, then one
    logistic head per teacher on its own shard's features (pate.features)."""
    import torch

    from . import checkpoint as checkpoint_io
    from . import data as data_mod
    from . import features

    run, tcfg = ctx.run, ctx.config.teachers
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunError(f"[teachers] features = {tcfg.features!r} trains on one process; run it without torchrun")
    parts = load_partition(ctx)
    dataset = load_dataset(ctx)
    run.begin("train-teachers")
    device = resolve_device(ctx.device)
    (run.path / "teachers").mkdir(exist_ok=True)
    # The extractor sees public pool images only: never a private image, never a label.
    pool = public_images(ctx, dataset, parts["student_pool_index"])
    try:
        extractor, about = _public_extractor(ctx, pool, device)
    except checkpoint_io.CheckpointError as exc:
        raise RunError(str(exc)) from None
    run.progress("train-teachers", "embedding the private shards")
    used = np.flatnonzero(parts["teacher_of"] >= 0)
    feats = features.embed(extractor, data_mod.to_float(dataset.train_x[used], dataset.name), device=device,
                           progress=_bar(len(used), "train-teachers[embed shards]", ctx))
    run.progress("train-teachers", "heads")
    heads = features.train_heads(feats, torch.from_numpy(dataset.train_y[used]).long(), parts["teacher_of"][used],
                                 range(tcfg.count), dataset.num_classes, device=device,
                                 progress=_bar(features.HEAD_STEPS, "train-teachers[heads]", ctx))
    save_state_dict(run.file(HEADS), heads)
    run.finish("train-teachers", [EXTRACTOR, HEADS], world_size=1, features=tcfg.features)
    ctx.say(f"train-teachers: {tcfg.count} logistic heads on {tcfg.features} public features ({about})")


def _public_extractor(ctx: Context, pool, device: str):
    """The frozen feature map of ``[teachers] features``, from public pool images only, and a
    phrase saying what it is."""
    from . import features

    run, tcfg, fingerprint = ctx.run, ctx.config.teachers, ctx.config.fingerprint()
    if tcfg.features == "scattering":
        run.progress("train-teachers", "scattering the public pool")
        extractor = features.scattering_extractor(
            pool, device=device, checkpoint_path=run.file(EXTRACTOR), fingerprint=fingerprint,
            progress=_bar(len(pool), "train-teachers[scatter public]", ctx))
        return extractor, (f"fixed scattering transform, {extractor['dim']} coefficients standardised "
                           f"on {len(pool)} public images")
    progress = Progress(tcfg.feature_epochs, "train-teachers[features]", ctx.quiet)

    def report(epoch, epochs, loss):
        progress.update_to(epoch, status=f"contrastive loss {loss:.3f}")
        run.progress("train-teachers", f"extractor epoch {epoch}/{epochs}")

    extractor = features.train_extractor(
        pool, dim=tcfg.feature_dim, epochs=tcfg.feature_epochs, seed=tcfg.seed, device=device,
        checkpoint_path=run.file(EXTRACTOR), fingerprint=fingerprint, progress=report)
    progress.close()
    return extractor, f"extractor: {tcfg.feature_epochs} epochs on {len(pool)} unlabelled public images"


def _bar(total: int, label: str, ctx: Context):
    """A ``progress(done, total)`` callback drawing a bar (silent with --quiet)."""
    bar = Progress(total, label, ctx.quiet)
    return lambda done, _total: bar.update_to(done)


def _feature_predictor(ctx: Context, device: str):
    """(images -> (K, Q) predictions) for a public-features run."""
    from . import checkpoint as checkpoint_io
    from . import features

    try:
        blob = checkpoint_io.load(ctx.run.verified("train-teachers", EXTRACTOR))
        heads = checkpoint_io.load(ctx.run.verified("train-teachers", HEADS))
    except checkpoint_io.CheckpointError as exc:
        raise RunError(str(exc)) from None
    if not blob.get("done") or heads.get("format") != features.HEADS_FORMAT:
        raise RunError("the public-features teachers are incomplete; rerun `pate train-teachers`")
    if list(heads["teacher_ids"]) != list(range(ctx.config.teachers.count)):
        raise RunError("the trained teacher heads do not cover teachers 0..K-1 exactly once")
    extractor = blob["extractor"]
    return lambda images: features.predict_heads(heads, features.embed(extractor, images, device=device)).numpy()


def _load_parts(ctx: Context, device: str):
    """Each trained part as an ensemble module, in teacher-id order."""
    import torch

    from . import ensemble

    config = ctx.config
    _, _, num_classes, channels, size = DATASETS[config.data.dataset]
    names = sorted(ctx.run.manifest()["stages"]["train-teachers"]["outputs"])
    modules = []
    for name in names:
        blob = torch.load(ctx.run.verified("train-teachers", name), map_location="cpu", weights_only=True)
        module = ensemble.TeacherEnsemble(config.teachers.arch, channels, num_classes, size, blob["teacher_ids"])
        module.load_state_dict(blob["state"])
        modules.append(module.to(device))
    modules.sort(key=lambda m: m.teacher_ids[0])
    ids = [t for m in modules for t in m.teacher_ids]
    if ids != list(range(config.teachers.count)):
        raise RunError("the trained teacher parts do not cover teachers 0..K-1 exactly once")
    return modules


def _predictions(modules, images, device: str):
    from . import ensemble

    return np.concatenate([ensemble.predict(m, images, device=device).numpy() for m in modules], axis=0)


def run_vote(ctx: Context) -> None:
    from . import ensemble

    run, config = ctx.run, ctx.config
    parts = load_partition(ctx)
    dataset = load_dataset(ctx)
    device = resolve_device(ctx.device)
    if config.teachers.features != "none":
        predict = _feature_predictor(ctx, device)
    else:
        modules = _load_parts(ctx, device)

        def predict(images):
            return _predictions(modules, images, device)
    run.begin("vote")
    num_classes = dataset.num_classes
    query_index = parts["query_index"]
    partial = run.file("votes.partial.npz")
    votes = np.zeros((0, num_classes), np.int64)
    if partial.exists():  # resume after the last finished chunk
        try:
            with np.load(partial, allow_pickle=False) as saved:
                if np.array_equal(saved["query_index"], query_index[:len(saved["votes"])]):
                    votes = saved["votes"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise RunError(f"{partial} is damaged ({type(exc).__name__}); delete it to vote again from the "
                           "first query") from None
    progress = Progress(len(query_index), "vote", ctx.quiet, start=len(votes))
    while len(votes) < len(query_index):
        chunk = query_index[len(votes):len(votes) + VOTE_CHUNK]
        preds = predict(public_images(ctx, dataset, chunk))  # (K, chunk)
        votes = np.concatenate([votes, ensemble.votes_from_predictions(preds, num_classes).numpy()])
        atomic_save_npz(partial, votes=votes, query_index=query_index[:len(votes)])
        run.progress("vote", f"{len(votes)}/{len(query_index)} queries")
        progress.update(len(chunk))
    progress.close()
    if not (votes.sum(axis=1) == config.teachers.count).all():
        raise RunError("vote rows do not sum to K; the teachers are inconsistent")
    atomic_save_npz(run.file("votes.npz"), votes=votes, query_index=query_index)
    # Evaluation only: teacher and plurality accuracy on the held-out public test split.
    test_index = parts["test_index"]
    test_preds = predict(public_images(ctx, dataset, test_index))
    truth = dataset.test_y[test_index]
    per_teacher = ensemble.teacher_accuracies(test_preds, truth).numpy()
    plurality = ensemble.votes_from_predictions(test_preds, num_classes).numpy().argmax(axis=1)
    stats = {"teacher_accuracy_mean": float(np.mean(per_teacher)), "teacher_accuracy_min": float(np.min(per_teacher)),
             "teacher_accuracy_max": float(np.max(per_teacher)), "teacher_accuracy": [float(a) for a in per_teacher],
             "ensemble_accuracy": float((plurality == truth).mean()),
             "query_plurality_accuracy": float((votes.argmax(axis=1) == dataset.test_y[query_index]).mean()),
             "note": "evaluation only, on the held-out public test split; never used for training or queries"}
    atomic_write_json(run.file("teachers_eval.json"), stats)
    run.finish("vote", ["votes.npz", "teachers_eval.json"])
    partial.unlink(missing_ok=True)
    ctx.say(f"vote: {len(query_index)} queries; teachers {100 * stats['teacher_accuracy_mean']:.1f}% mean "
            f"(min {100 * stats['teacher_accuracy_min']:.1f}%, max {100 * stats['teacher_accuracy_max']:.1f}%), plurality {100 * stats['ensemble_accuracy']:.1f}% "
            f"on the held-out test split")
