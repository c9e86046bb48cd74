"""Train the student on the released labels and the unlabelled public pool.

The student sees only public images: those whose labels the aggregator released (``labels.npz``)
and the unlabelled rest of the student pool, never the held-out test split. It is
post-processing of the release, so it costs no further privacy.
"""
from __future__ import annotations

import numpy as np
import torch

from ..io import atomic_write_json, private_mkdir, save_checkpoint
from ..progress import Progress
from ..run import RunError
from ..student import soft_targets, train_student
from . import finish
from .context import (LABELS, STUDENT_HISTORY, STUDENT_MODEL, Context, load_dataset, load_partition, public_images,
                      mechanism, resolve_device)

NAME = "train-student"


def run(ctx: Context) -> None:
    run_dir, cfg = ctx.run, ctx.config.student
    parts = load_partition(ctx)
    released = run_dir.load_npz(LABELS)
    dataset = load_dataset(ctx)
    labeled_index = released["query_index"]
    if not np.isin(labeled_index, parts["student_pool_index"]).all():
        raise RunError("labels.npz names images outside the student pool; refusing to train")
    # The unlabelled rest of the public pool: never the held-out test split.
    unlabeled_index = np.setdiff1d(parts["student_pool_index"], labeled_index)
    if len(labeled_index) == 0:
        raise RunError("no query was answered, so the student has no labels; revisit the aggregator settings")
    run_dir.begin(NAME)
    progress = Progress(cfg.steps, NAME, ctx.quiet)

    def report(step, steps, loss, info):
        progress.update_to(step, status=f"loss {loss:.3f}")
        if step % 50 == 0 or step == steps:
            run_dir.progress(NAME, f"step {step}/{steps}")

    private_mkdir(run_dir.file(STUDENT_MODEL).parent)
    targets = torch.from_numpy(np.asarray(released["label"], dtype=np.int64))
    if "soft" in released:  # the noisy vectors released with the labels (post-processing: free)
        targets = soft_targets(released["soft"], released["label"],
                               cfg.soft_temperature or mechanism(ctx.config).answer_noise_std)
    model, history = train_student(
        public_images(dataset, labeled_index), targets,
        public_images(dataset, unlabeled_index) if cfg.method != "supervised" else None,
        arch=cfg.arch, num_classes=dataset.num_classes, method=cfg.method, steps=cfg.steps,
        batch_size=cfg.batch_size, unlabeled_ratio=cfg.unlabeled_ratio, lr=cfg.lr,
        weight_decay=cfg.weight_decay, threshold=cfg.threshold, seed=cfg.seed,
        device=resolve_device(ctx.device), checkpoint_path=run_dir.file("student/checkpoint.pt"),
        checkpoint_every=max(1, min(200, cfg.steps // 5)), fingerprint=ctx.config.fingerprint(),
        progress=report)
    progress.close()
    save_checkpoint(run_dir.file(STUDENT_MODEL), {k: v.cpu() for k, v in model.state_dict().items()})
    atomic_write_json(run_dir.file(STUDENT_HISTORY), history)
    finish(ctx, NAME, labeled=int(len(labeled_index)), unlabeled=int(len(unlabeled_index)))
    ctx.say(f"{NAME}: {len(labeled_index)} labelled + {len(unlabeled_index)} unlabelled public images, "
            f"{cfg.method}, {cfg.steps} steps")
