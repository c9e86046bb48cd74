"""Split the private set into K disjoint teacher shards and the public set into queries, student pool and held-out test.

The split is seeded (``[data] split_seed``), written once, and verified whenever a later stage
loads it, so every private record belongs to exactly one teacher for the life of the run.
"""
from __future__ import annotations

import numpy as np

from ..io import atomic_save_npz
from ..partition import make_partition, verify_partition
from ..run import RunError
from . import finish
from .context import PARTITION, Context, load_dataset, partition_sizes

NAME = "partition"


def run(ctx: Context) -> None:
    config = ctx.config
    # Check the data is there (and prepare it offline if possible) before anything is written.
    dataset = load_dataset(ctx)
    sizes = partition_sizes(config)
    if len(dataset.train_y) != sizes["num_train"] or len(dataset.test_y) != sizes["num_public"]:
        raise RunError(f"{config.data.dataset} under {ctx.data_root} has {len(dataset.train_y)}/"
                       f"{len(dataset.test_y)} images, expected {sizes['num_train']}/{sizes['num_public']}")
    ctx.run.begin(NAME)
    arrays = make_partition(seed=config.data.split_seed, **sizes)
    verify_partition(arrays, **sizes)
    atomic_save_npz(ctx.run.file(PARTITION), **arrays)
    finish(ctx, NAME, private_data=dataset.private_fingerprint())
    shard = np.bincount(arrays["teacher_of"][arrays["teacher_of"] >= 0])
    ctx.say(f"partition: {sizes['num_private']} private records -> {config.teachers.count} shards of "
            f"{shard.min()}-{shard.max()}; {sizes['num_queries']} queries, pool {sizes['student_pool']}, "
            f"held-out test {sizes['test_size']}")
