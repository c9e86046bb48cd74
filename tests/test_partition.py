import numpy as np
import pytest

from pate.partition import PartitionError, make_partition, verify_partition

SIZES = dict(num_train=1000, num_private=900, num_public=500, num_teachers=7, student_pool=300,
             test_size=100, num_queries=50)


def test_disjoint_covering_balanced():
    p = make_partition(seed=0, **SIZES)
    verify_partition(p, **SIZES)
    teacher_of = p["teacher_of"]
    assert (teacher_of >= 0).sum() == 900  # each chosen record in exactly one shard
    sizes = np.bincount(teacher_of[teacher_of >= 0])
    assert len(sizes) == 7 and sizes.max() - sizes.min() <= 1 and sizes.sum() == 900
    assert np.intersect1d(p["student_pool_index"], p["test_index"]).size == 0
    assert np.array_equal(p["query_index"], p["student_pool_index"][:50])


def test_deterministic_for_a_seed_and_different_for_another():
    a, b, c = (make_partition(seed=s, **SIZES) for s in (3, 3, 4))
    for key in a:
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["teacher_of"], c["teacher_of"])
    assert not np.array_equal(a["query_index"], c["query_index"])


@pytest.mark.parametrize("damage, message", [
    (lambda p: p["teacher_of"].__setitem__(np.flatnonzero(p["teacher_of"] >= 0)[0], -1), "assign"),
    (lambda p: p["teacher_of"].__setitem__(np.flatnonzero(p["teacher_of"] >= 0)[0], 99), "assign"),
    (lambda p: p["test_index"].__setitem__(0, p["student_pool_index"][5]), "overlap"),
    (lambda p: p["query_index"].__setitem__(0, p["query_index"][1]), "distinct"),
    (lambda p: p.pop("test_index"), "lacks"),
])
def test_damaged_partition_is_refused(damage, message):
    p = make_partition(seed=0, **SIZES)
    damage(p)
    with pytest.raises(PartitionError, match=message):
        verify_partition(p, **SIZES)


def test_unbalanced_shards_refused():
    p = make_partition(seed=0, **SIZES)
    used = np.flatnonzero(p["teacher_of"] >= 0)
    p["teacher_of"][used[p["teacher_of"][used] == 0][:3]] = 1
    with pytest.raises(PartitionError, match="unbalanced"):
        verify_partition(p, **SIZES)
