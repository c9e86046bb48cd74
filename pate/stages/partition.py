"""Split the private set into K disjoint teacher shards and the public set into queries, student pool and held-out test.

A record's shard is a keyed hash of the record itself (``pate.data.records``); the public split is
seeded (``[data] split_seed``). Both are written once and verified whenever a later stage loads
them, so every private record belongs to exactly one teacher for the life of the run.
"""
from __future__ import annotations

import numpy as np

from ..data import records, source_of
from ..aggregation import selection
from ..run import spend_log
from ..io import atomic_save_npz, atomic_write_json
from ..aggregation.settings import check_total_budget, spend_curve
from ..data.partition import leave_out, make_partition, verify_partition
from ..run.directory import RunError
from . import finish
from ..run.artifacts import DATA, PARTITION, Context, data_json, load_dataset, partition_sizes

NAME = "partition"


def record_names(config, dataset) -> list[bytes]:
    """What each private record is (``pate.data.records.identities``), as its source says: the user's
    ids, the image files' hashes, or the images themselves, each with its label."""
    try:
        return source_of(config.data).identities(config.data, dataset)
    except records.RecordError as exc:
        raise RunError(str(exc)) from None


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
    names = record_names(config, dataset)
    secret = spend_log.record_key()
    # A seeded run's shards come from the seed (the same on every machine and spend directory); its
    # fingerprints, like every run's, from the spend directory's key (``pate.data.records``).
    shard_key = records.seeded_shard_key(config.aggregator.seed) if config.seeded else secret
    key_id = records.key_id(secret)
    arrays = make_partition(digests=records.shard_digests(shard_key, names, config.data.split_seed),
                            fingerprints=records.fingerprints(secret, names), key_id=key_id,
                            seed=config.data.split_seed, **sizes)
    pool = selection.order_pool(arrays["student_pool_index"], dataset.public_x[arrays["student_pool_index"]],
                                sizes["num_queries"], config.aggregator.query_selection)  # public images only
    arrays.update(student_pool_index=pool, query_index=pool[:sizes["num_queries"]].copy())
    kept = int((arrays["teacher_of"] >= 0).sum())
    if kept < config.teachers.count:
        raise RunError(f"the [data] private_size draw kept {kept} records, fewer than the {config.teachers.count} "
                       "teachers; raise private_size or lower [teachers] count")
    if config.privacy.total_budget:  # an individual filter: a record this run would take past it is left out
        check_total_budget(config, dataset.spec.num_classes)  # the run alone above it: refused, whatever the data
        arrays = leave_out(arrays, spend_log.past_budget(
            arrays["record_fingerprint"], spend_curve(config, dataset.spec.num_classes), config.privacy.total_budget,
            config.privacy.delta, config.privacy.conversion))  # how many: PRIVATE (`pate status`), never published
    verify_partition(arrays, **sizes)
    ctx.run.begin(NAME)
    atomic_save_npz(ctx.run.file(PARTITION), private=True, **arrays)
    atomic_write_json(ctx.run.file(DATA), data_json(dataset, config.data.source), private=True)
    finish(ctx, NAME, scheme=records.SCHEME, key_id=key_id)
    shard = np.bincount(arrays["teacher_of"][arrays["teacher_of"] >= 0], minlength=config.teachers.count)
    later = config.aggregator.query_selection in selection.CHOSEN_BETWEEN_ROUNDS  # uncertainty: chosen in rounds
    ctx.say(f"partition: {kept} private records -> {config.teachers.count} shards of "
            f"{shard.min()}-{shard.max()} (each record's teacher a keyed hash of the record); "
            f"{'at most ' if later else ''}{sizes['num_queries']} queries"
            f"{' (chosen between rounds; every pool image a candidate)' if later else ''}, "
            f"pool {sizes['student_pool']}, held-out test {sizes['test_size']}")
