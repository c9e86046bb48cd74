"""Train the student on the released labels and the unlabelled public pool.

The student sees only public images: those whose labels the aggregator released (``labels.npz``)
and the unlabelled rest of the student pool, never the held-out test split. It is
post-processing of the release, so it costs no further privacy. With ``[student] propagation``
the released labels are first spread over a kNN graph of the pool's public features
(``pate.student.propagation``): the unlabelled images it labels confidently enough join the labelled ones
with their propagated distributions as soft targets, and the semi-supervised loss still runs on
every unlabelled image. Post-processing as well: public images and released labels only. With
``[student] members`` several students learn the same targets from different seeds, each from its
own checkpoint, and the student saved is the average of their logits (``pate.nets.models.averaged``),
with ``[student] teacher_weight`` plus that weight times the logits of the DP-SGD teacher the
aggregation released (its weights, on a public grid): post-processing of the same release.
"""
from __future__ import annotations

import numpy as np
import torch

from ..features import knn
from ..student import propagation
from ..nets.models import averaged, dpsgd_teacher, layer_plan
from ..io import CheckpointError, atomic_write_json, load_checkpoint, private_mkdir, save_checkpoint
from ..progress import Progress, say
from ..run.directory import RunError
from ..student import members
from ..student.training import native_bf16, soft_targets, train_student
from ..features import extractors as features
from . import finish
from ..run.artifacts import (EXTRACTOR, KNN_PUBLIC, LABELS, PUBLIC_FEATURES_PREFIX, STUDENT_HISTORY, STUDENT_MODEL,
                             Context, load_dataset, load_partition, public_images, mechanism, resolve_device)

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
    teacher = released_teacher(released, dataset.spec) if cfg.teacher_weight else None  # before any step
    try:  # the architecture against the data's shape, before any step
        layer_plan(cfg.arch, dataset.spec.channels, dataset.num_classes, dataset.spec.image_size)
    except ValueError as err:
        raise RunError(f"[student] arch: {err}; choose another student or [data] image_size") from None
    run_dir.begin(NAME)
    total = cfg.steps * cfg.members
    progress = Progress(total, NAME, ctx.quiet)

    def report(step, steps, loss, info):
        progress.update_to(step, status=f"loss {loss:.3f}")
        if step % 50 == 0 or step == steps:
            run_dir.progress(NAME, f"step {step}/{steps}")

    private_mkdir(run_dir.file(STUDENT_MODEL).parent)
    targets, margins = released_targets(released, cfg, mechanism(ctx.config))
    if cfg.keep_widest < 1 and margins is not None:  # post-processing: the surest labels, the rest unlabelled
        kept = widest(margins, cfg.keep_widest)
        labeled_index, targets = labeled_index[kept], targets[torch.from_numpy(kept)]
        unlabeled_index = np.setdiff1d(parts["student_pool_index"], labeled_index)
        ctx.say(f"{NAME}: kept the {len(kept)} released labels with the widest margins "
                f"({cfg.keep_widest:.0%}); the others join the unlabelled pool")
    trained_index = labeled_index
    if cfg.propagation != "none":  # post-processing over the public pool: free
        run_dir.progress(NAME, "label spreading over the public pool")
        spread_index, spread = propagated(ctx, dataset, parts["student_pool_index"], labeled_index, targets)
        trained_index = np.concatenate([labeled_index, spread_index])
        targets = torch.cat([_rows(targets, dataset.num_classes), spread])
        ctx.say(f"{NAME}: label spreading labelled {len(spread_index)} of {len(unlabeled_index)} unlabelled pool images")
    labeled_x = public_images(dataset, trained_index)
    unlabeled_x = (public_images(dataset, unlabeled_index if len(unlabeled_index) else trained_index)
                   if cfg.method != "supervised" else None)  # every pool image labelled: its consistency term on them
    data, device = (labeled_x, targets, unlabeled_x), resolve_device(ctx.device)
    settings = [dict(arch=cfg.arch, num_classes=dataset.num_classes, method=cfg.method, steps=cfg.steps,
                     batch_size=cfg.batch_size, unlabeled_ratio=cfg.unlabeled_ratio, lr=cfg.lr,
                     weight_decay=cfg.weight_decay, threshold=cfg.threshold, hflip=cfg.hflip, erase=cfg.erase,
                     mixup=cfg.mixup, precision=cfg.precision, seed=cfg.seed + member, device=device,
                     checkpoint_path=run_dir.file(member_checkpoint(member)),
                     checkpoint_every=max(1, min(200, cfg.steps // 5)), fingerprint=ctx.config.fingerprint())
                for member in range(cfg.members)]
    if cfg.precision == "bf16" and not native_bf16(device):
        kind = "GPU" if device.startswith("cuda") else "CPU"
        say(f'{NAME}: warning: this {kind} has no native bfloat16 arithmetic, so [student] precision = "bf16" '
            'trains slower here than "fp32"')
    plan = members.side_by_side(cfg.members, torch.device(device))
    if plan is not None:  # on a CPU: one process per member, each to its checkpoint
        done = [0] * cfg.members

        def member_step(member, step, loss):
            done[member] = step
            report(sum(done), total, loss, None)
        members.train_side_by_side(data, settings, *plan, progress=member_step)
    networks, histories = [], []
    for member in range(cfg.members):  # each resumable from its own checkpoint; a finished one reloads at once
        network, history = train_student(
            *data, **settings[member],
            progress=lambda step, steps, loss, info, done=member * cfg.steps: report(done + step, total, loss, info))
        networks.append(network.cpu())
        histories.append(history)
    progress.close()
    model = averaged(networks, cfg.flip_average, teacher, cfg.teacher_weight)  # the student evaluated and exported
    save_checkpoint(run_dir.file(STUDENT_MODEL), {k: v.cpu() for k, v in model.state_dict().items()})
    history = histories[0] if len(histories) == 1 else {**histories[0], "later_members": histories[1:]}
    atomic_write_json(run_dir.file(STUDENT_HISTORY), history)
    finish(ctx, NAME, labeled=int(len(labeled_index)), unlabeled=int(len(unlabeled_index)),
           **({"propagated": int(len(trained_index) - len(labeled_index))} if cfg.propagation != "none" else {}))
    ctx.say(f"{NAME}: {len(labeled_index)} labelled + {len(unlabeled_index)} unlabelled public images, "
            f"{cfg.method}, {cfg.steps} steps" + (f", {cfg.members} students averaged" if cfg.members > 1 else "")
            + (", each on the image and its mirror" if cfg.flip_average else "")
            + (f", plus {cfg.teacher_weight:g} x the DP-SGD teacher's logits" if cfg.teacher_weight else ""))


def released_teacher(released: dict, spec):
    """The DP-SGD teacher the aggregation released beside its probabilities (``[student]
    teacher_weight``), as a module on the students' normalised inputs; a RunError for a release
    without one (aggregated before the teacher was kept)."""
    if "dpsgd_weight" not in released:
        raise RunError("[student] teacher_weight needs the DP-SGD teacher itself, which this run's release does not "
                       "hold (it was aggregated before pate kept it): run the pipeline again in a new run directory, "
                       "or set teacher_weight = 0")
    return dpsgd_teacher(spec.channels, spec.num_classes, spec.image_size, spec.mean, spec.std,
                         released["dpsgd_weight"], released["dpsgd_bias"])


def member_checkpoint(member: int) -> str:
    """The training checkpoint of the ``member``-th student (the first keeps the name it always had)."""
    return "student/checkpoint.pt" if member == 0 else f"student/checkpoint-{member}.pt"


def released_targets(released: dict, cfg, mech) -> tuple[torch.Tensor, np.ndarray | None]:
    """(targets, margins) of labels.npz's rows as the student learns them: the labels, or the noisy
    vectors as soft targets (``[student] soft_temperature``, else the mechanism's noise scale), times a
    DP-SGD teacher's released probabilities where there are some (those alone where no votes were
    cast); ``margins`` are the rows whose top-two gap ``keep_widest`` ranks (None: hard labels alone,
    nothing to rank)."""
    label = released["label"]
    prior = tempered(released["prior"], cfg.prior_temperature) if "prior" in released else None
    if not mech.casts_votes:  # the labels are the prior's argmax: learn the whole distribution
        targets = torch.from_numpy(prior).float()
        return targets, targets.numpy()
    targets = torch.from_numpy(np.asarray(label, dtype=np.int64))
    if "soft" in released:  # the noisy vectors released with the labels (post-processing: free)
        targets = soft_targets(released["soft"], label, cfg.soft_temperature or mech.answer_noise_std)
    margins = released["soft"] if "soft" in released else None
    if prior is not None:  # a DP-SGD teacher's probabilities, released beside the votes: their product
        targets = with_prior(targets, prior)
        margins = targets.numpy()
    return targets, margins


def tempered(prior: np.ndarray, temperature: float) -> np.ndarray:
    """(n, m) float64 rows p^(1/temperature), renormalised (floored at 1e-6 first, so no class is
    ruled out): a DP-SGD model trained to its clipping's limits is often surer than it is right."""
    logp = np.log(np.clip(np.asarray(prior, dtype=np.float64), 1e-6, None)) / temperature
    rows = np.exp(logp - logp.max(axis=1, keepdims=True))
    return rows / rows.sum(axis=1, keepdims=True)


def with_prior(targets: torch.Tensor, prior: np.ndarray) -> torch.Tensor:
    """(n, m) the product of the votes' targets (class indices or rows) and a prior (n, m), renormalised:
    two independent views of each label (the votes of the records near it and a model of all of
    them). The prior is floored at 1e-6, so no row's product vanishes."""
    rows = _rows(targets, prior.shape[1]).double()
    product = rows * torch.from_numpy(np.clip(np.asarray(prior, dtype=np.float64), 1e-6, None))
    return (product / product.sum(1, keepdim=True)).float()


def widest(soft: np.ndarray, fraction: float) -> np.ndarray:
    """Positions (ascending) of the ``fraction`` of released rows whose noisy top-two margin is widest;
    rows without a vector (NaN: a student's answer) count as widest. Ties go to the earlier row."""
    noisy = np.asarray(soft, dtype=np.float64)
    missing = ~np.isfinite(noisy).all(axis=1)
    top2 = np.sort(np.where(missing[:, None], 0.0, noisy), axis=1)[:, -2:]
    margin = np.where(missing, np.inf, top2[:, 1] - top2[:, 0])
    count = max(1, int(round(fraction * len(noisy))))
    return np.sort(np.argsort(-margin, kind="stable")[:count])


def check(config) -> None:
    """Before anything is written: label spreading needs scikit-learn."""
    if config.student.propagation != "none":
        propagation.check_available()


def propagated(ctx: Context, dataset, pool_index: np.ndarray, labeled_index: np.ndarray,
               targets: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """The unlabelled pool images that label spreading from the released ``targets`` (labels or
    soft rows of ``labeled_index``) gives a class with probability at least ``[student]
    propagation_confidence``, and their (n, m) float32 propagated distributions. Reads public
    images, public features and the released targets only."""
    cfg = ctx.config.student
    space = pool_features(ctx, dataset, pool_index)
    try:
        spread = propagation.label_spreading(space, knn.rows_of(pool_index, labeled_index), targets.numpy(),
                                             num_classes=dataset.num_classes, k=cfg.propagation_k,
                                             alpha=cfg.propagation_alpha)
    except ValueError as exc:
        raise RunError(f"label spreading over the {len(pool_index)} pool images failed: {exc}") from None
    unlabeled = np.setdiff1d(np.arange(len(pool_index)), knn.rows_of(pool_index, labeled_index))
    confidence = spread[unlabeled].max(axis=1)
    # Uniform rows were reached by no released label: they say nothing.
    keep = unlabeled[(confidence >= cfg.propagation_confidence) & (confidence > 1.0 / dataset.num_classes)]
    return pool_index[keep], torch.from_numpy(spread[keep]).float()


def pool_features(ctx: Context, dataset, pool_index: np.ndarray) -> np.ndarray:
    """The public feature space label spreading runs in: private-knn's projected pool features;
    the run's ``[teachers] features`` extractor (fitted on public images only) on the pool; or,
    with no extractor, the pool's pixels; these two on their top principal axes (of the pool)."""
    config = ctx.config
    try:
        if mechanism(config).reads_records:  # the pool in the projected space train-teachers made
            public = load_checkpoint(ctx.run.verified(KNN_PUBLIC))
            return public["features"][torch.from_numpy(knn.rows_of(public["pool_index"].numpy(), pool_index))].numpy()
        if config.teachers.features == "none":
            return propagation.principal_features(public_images(dataset, pool_index))
        extractor = load_checkpoint(ctx.run.verified(EXTRACTOR))["extractor"]
        if extractor.get("kind") == "pretrained":  # the backbone's features, cached by train-teachers
            index, rows = [], []
            for name in sorted(n for n in ctx.run.recorded() if n.startswith(PUBLIC_FEATURES_PREFIX)):
                part = load_checkpoint(ctx.run.verified(name), features.CACHE_FORMAT)
                index.append(part["index"].numpy())
                rows.append(part["features"])
            table = torch.cat(rows)[torch.from_numpy(knn.rows_of(np.concatenate(index), pool_index))]
            pool = (table - extractor["mean"]) / extractor["std"]
        else:
            pool = features.embed(extractor, public_images(dataset, pool_index), device=resolve_device(ctx.device))
    except (CheckpointError, ValueError) as exc:
        raise RunError(f"the public features of the pool cannot be read ({exc}); rerun `pate train-teachers`") from None
    return propagation.principal_features(pool)


def _rows(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as one-hot float rows; soft rows as they are."""
    return targets.float() if targets.ndim == 2 else torch.nn.functional.one_hot(targets, num_classes).float()
