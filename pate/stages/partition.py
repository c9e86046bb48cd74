"""Split the private set into K disjoint teacher shards and the public set into queries, student pool and held-out test.

The split is seeded (``[data] split_seed``), written once, and verified whenever a later stage
loads it, so every private record belongs to exactly one teacher for the life of the run.
"""
from __future__ import annotations

import numpy as np

from ..io import atomic_save_npz, atomic_write_json
from ..partition import make_partition, verify_partition
from ..run import RunError
from . import finish
from .context import DATA, PARTITION, Context, data_json, load_dataset, partition_sizes

NAME = "partition"


def run(ctx: Context) -> None:
    config = ctx.config
    # Check the data is there (and prepare it offline if possible) before anything is written.
    dataset = load_dataset(ctx)
    expected = config.data.spec
    if expected is not None and (dataset.spec.num_private, dataset.spec.num_public) != (expected.num_private,
                                                                                       expected.num_public):
        raise RunError(f"{config.data.dataset} under {ctx.data_root} has {dataset.spec.num_private}/"
                       f"{dataset.spec.num_public} images, expected {expected.num_private}/{expected.num_public}; "
                       f"delete it and run `pate data prepare {config.data.dataset} --root {ctx.data_root}`")
    config.check_data(dataset.spec)
    sizes = partition_sizes(config, dataset.spec)
    ctx.run.begin(NAME)
    arrays = make_partition(seed=config.data.split_seed, **sizes)
    verify_partition(arrays, **sizes)
    atomic_save_npz(ctx.run.file(PARTITION), **arrays)
    atomic_write_json(ctx.run.file(DATA), data_json(dataset, config.data.source), private=True)
    finish(ctx, NAME, private_data=dataset.private_fingerprint())
    shard = np.bincount(arrays["teacher_of"][arrays["teacher_of"] >= 0])
    ctx.say(f"partition: {sizes['num_private']} private records -> {config.teachers.count} shards of "
            f"{shard.min()}-{shard.max()}; {sizes['num_queries']} queries, pool {sizes['student_pool']}, "
            f"held-out test {sizes['test_size']}")
