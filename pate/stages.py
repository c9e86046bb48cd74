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
from .progress import say
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
    ctx.run.begin("partition")
    # Check the data is there (and prepare it offline if possible) before anything is written.
    dataset = load_dataset(ctx)
    sizes = partition_sizes(config)
    if len(dataset.train_y) != sizes["num_train"] or len(dataset.test_y) != sizes["num_public"]:
        raise RunError(f"{config.data.dataset} under {ctx.data_root} has {len(dataset.train_y)}/"
                       f"{len(dataset.test_y)} images, expected {sizes['num_train']}/{sizes['num_public']}")
    arrays = make_partition(seed=config.data.split_seed, **sizes)
    verify_partition(arrays, **sizes)
    atomic_save_npz(ctx.run.file("partition.npz"), **arrays)
    ctx.run.finish("partition", ["partition.npz"])
    shard = np.bincount(arrays["teacher_of"][arrays["teacher_of"] >= 0])
    ctx.say(f"partition: {sizes['num_private']} private records -> {config.teachers.count} shards of "
            f"{shard.min()}-{shard.max()}; {sizes['num_queries']} queries, pool {sizes['student_pool']}, "
            f"held-out test {sizes['test_size']}")
