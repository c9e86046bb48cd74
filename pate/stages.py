"""Stage functions: each reads earlier artifacts from the run directory and writes its own.

A stage is a plain function of a ``Context``; the CLI only parses arguments and calls these.
Each stage marks itself partial when it starts and done (with output hashes) when it ends, so
``pate run`` can skip finished stages and resume a partial one.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import data as data_mod
from .config import DATASETS, PipelineConfig
from .partition import PartitionError, make_partition, verify_partition
from .progress import Progress, say
from .run import RunDir, RunError, atomic_save_npz


@dataclass
class Context:
    run: RunDir
    data_root: Path = data_mod.DEFAULT_ROOT
    device: str = "auto"
    quiet: bool = False

    @property
    def config(self) -> PipelineConfig:
        return self.run.config

    def say(self, message: str) -> None:
        say(message, self.quiet)


def partition_sizes(config: PipelineConfig) -> dict[str, int]:
    num_train, num_public = DATASETS[config.data.dataset][:2]
    return dict(num_train=num_train, num_private=config.data.num_private, num_public=num_public,
                num_teachers=config.teachers.count, student_pool=config.data.student_pool,
                test_size=config.data.test_size, num_queries=config.aggregator.max_queries)


def load_partition(ctx: Context) -> dict[str, np.ndarray]:
    arrays = ctx.run.load_npz("partition", "partition.npz")
    try:
        verify_partition(arrays, **partition_sizes(ctx.config))
    except PartitionError as exc:
        raise RunError(f"{ctx.run.file('partition.npz')} is invalid: {exc}") from None
    return arrays


def load_dataset(ctx: Context) -> data_mod.Dataset:
    return data_mod.load(ctx.config.data.dataset, ctx.data_root)


def run_partition(ctx: Context) -> None:
    config = ctx.config
    # Check the data is there (and prepare it offline if possible) before anything is written.
    dataset = load_dataset(ctx)
    sizes = partition_sizes(config)
    if len(dataset.train_y) != sizes["num_train"] or len(dataset.test_y) != sizes["num_public"]:
        raise RunError(f"{config.data.dataset} under {ctx.data_root} has {len(dataset.train_y)}/"
                       f"{len(dataset.test_y)} images, expected {sizes['num_train']}/{sizes['num_public']}")
    ctx.run.begin("partition")
    arrays = make_partition(seed=config.data.split_seed, **sizes)
    verify_partition(arrays, **sizes)
    atomic_save_npz(ctx.run.file("partition.npz"), **arrays)
    ctx.run.finish("partition", ["partition.npz"])
    shard = np.bincount(arrays["teacher_of"][arrays["teacher_of"] >= 0])
    ctx.say(f"partition: {sizes['num_private']} private records -> {config.teachers.count} shards of "
            f"{shard.min()}-{shard.max()}; {sizes['num_queries']} queries, pool {sizes['student_pool']}, "
            f"held-out test {sizes['test_size']}")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for, but no CUDA device is available")
    return name


def save_state_dict(path: Path, state: dict) -> None:
    from . import checkpoint

    checkpoint.save(path, state)


def public_images(ctx: Context, dataset: data_mod.Dataset, index: np.ndarray):
    return data_mod.to_float(dataset.test_x[index], dataset.name)


def run_train_student(ctx: Context) -> None:
    from . import student
    from .run import atomic_write_json

    run, cfg = ctx.run, ctx.config.student
    parts = load_partition(ctx)
    released = run.load_npz("aggregate", "labels.npz")
    dataset = load_dataset(ctx)
    labeled_index = released["query_index"]
    if not np.isin(labeled_index, parts["student_pool_index"]).all():
        raise RunError("labels.npz names images outside the student pool; refusing to train")
    # The unlabelled rest of the public pool: never the held-out test split.
    unlabeled_index = np.setdiff1d(parts["student_pool_index"], labeled_index)
    if len(labeled_index) == 0:
        raise RunError("no query was answered, so the student has no labels; revisit the aggregator settings")
    run.begin("train-student")
    progress = Progress(cfg.steps, "train-student", ctx.quiet)

    def report(step, steps, loss, info):
        progress.update_to(step, status=f"loss {loss:.3f}")
        if step % 50 == 0 or step == steps:
            run.progress("train-student", f"step {step}/{steps}")

    (run.path / "student").mkdir(exist_ok=True)
    model, history = student.train_student(
        public_images(ctx, dataset, labeled_index), torch_long(released["label"]),
        public_images(ctx, dataset, unlabeled_index) if cfg.method != "supervised" else None,
        arch=cfg.arch, num_classes=dataset.num_classes, method=cfg.method, steps=cfg.steps,
        batch_size=cfg.batch_size, unlabeled_ratio=cfg.unlabeled_ratio, lr=cfg.lr,
        weight_decay=cfg.weight_decay, threshold=cfg.threshold, seed=cfg.seed,
        device=resolve_device(ctx.device), checkpoint_path=run.path / "student" / "checkpoint.pt",
        checkpoint_every=max(1, min(200, cfg.steps // 5)), fingerprint=ctx.config.fingerprint(),
        progress=report)
    progress.close()
    save_state_dict(run.file("student/model.pt"), {k: v.cpu() for k, v in model.state_dict().items()})
    atomic_write_json(run.file("student/history.json"), history)
    run.finish("train-student", ["student/model.pt", "student/history.json"],
               labeled=int(len(labeled_index)), unlabeled=int(len(unlabeled_index)))
    ctx.say(f"train-student: {len(labeled_index)} labelled + {len(unlabeled_index)} unlabelled public images, "
            f"{cfg.method}, {cfg.steps} steps")


def torch_long(array: np.ndarray):
    import torch

    return torch.from_numpy(np.asarray(array, dtype=np.int64))


def run_evaluate(ctx: Context) -> None:
    import json

    import torch

    from . import student
    from .models import build_model
    from .run import atomic_write_json

    run, config = ctx.run, ctx.config
    parts = load_partition(ctx)
    dataset = load_dataset(ctx)
    _, _, num_classes, channels, size = DATASETS[config.data.dataset]
    model = build_model(config.student.arch, channels, num_classes, size)
    state = torch.load(run.verified("train-student", "student/model.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    run.begin("evaluate")
    test_index = parts["test_index"]
    device = resolve_device(ctx.device)
    student_accuracy = student.accuracy(model.to(device), public_images(ctx, dataset, test_index),
                                        torch_long(dataset.test_y[test_index]), device=device)
    released = run.load_npz("aggregate", "labels.npz")
    # Evaluation only: compares released labels with the true public labels, which PATE never uses.
    label_accuracy = (float((released["label"] == dataset.test_y[released["query_index"]]).mean())
                      if len(released["label"]) else None)
    teacher_stats = json.loads(run.verified("vote", "teachers_eval.json").read_text())
    metrics = {"student_accuracy": student_accuracy, "label_accuracy": label_accuracy,
               "label_accuracy_note": "evaluation only: uses the true public labels, never used in training",
               "teacher_accuracy_mean": teacher_stats["teacher_accuracy_mean"],
               "ensemble_accuracy": teacher_stats["ensemble_accuracy"], "test_size": int(len(test_index))}
    atomic_write_json(run.file("metrics.json"), metrics)
    run.finish("evaluate", ["metrics.json"])
    ctx.say(f"evaluate: student accuracy {100 * student_accuracy:.2f}% on {len(test_index)} held-out images")
