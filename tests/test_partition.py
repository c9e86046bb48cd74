"""Shards by a keyed hash of each record: one record added or removed changes one shard, and no
other record's teacher or draw (the add/remove neighbour relation of every guarantee)."""
import numpy as np
import pytest

from pate.data import records
from pate.data.partition import PartitionError, make_partition, split_public, verify_partition

SECRET = bytes(range(32))
PUBLIC = dict(num_public=500, student_pool=300, test_size=100, num_queries=50)
K = 7


def dataset(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8), rng.integers(0, 10, n)


def partition(x, y, keep_rate=1.0, split_seed=0, secret=SECRET, **kw):
    names = records.identities(x, y, **kw)
    return make_partition(digests=records.shard_digests(secret, names, split_seed),
                          fingerprints=records.fingerprints(secret, names), key_id=records.key_id(secret),
                          num_teachers=K, keep_rate=keep_rate,
                          seed=split_seed, **PUBLIC)


def sizes(n, keep_rate=1.0):
    return dict(num_train=n, num_teachers=K, keep_rate=keep_rate, **PUBLIC)


def test_disjoint_covering_near_balanced():
    x, y = dataset(7000)
    p = partition(x, y)
    verify_partition(p, **sizes(7000))
    shard = np.bincount(p["teacher_of"], minlength=K)
    assert shard.sum() == 7000 and (p["teacher_of"] >= 0).all()  # each record in exactly one shard
    assert np.abs(shard - 1000).max() < 5 * np.sqrt(1000)  # multinomial: within 5 sd of balanced
    assert np.intersect1d(p["student_pool_index"], p["test_index"]).size == 0
    assert np.array_equal(p["query_index"], p["student_pool_index"][:50])


@pytest.mark.parametrize("removed", [599, 0, 311])
def test_removing_a_record_changes_one_shard_and_no_other_records_teacher(removed):
    x, y = dataset(600)
    full = partition(x, y)
    keep = np.arange(600) != removed
    less = partition(x[keep], y[keep])
    assert np.array_equal(less["teacher_of"], full["teacher_of"][keep])  # everyone else stays put
    assert np.array_equal(less["record_fingerprint"], full["record_fingerprint"][keep])
    before = [set(map(tuple, full["record_fingerprint"][full["teacher_of"] == t, None])) for t in range(K)]
    after = [set(map(tuple, less["record_fingerprint"][less["teacher_of"] == t, None])) for t in range(K)]
    assert sum(a != b for a, b in zip(before, after)) == 1
    # so every vote histogram moves by at most one vote between the two datasets
    votes_full = np.bincount(full["teacher_of"], minlength=K)
    votes_less = np.bincount(less["teacher_of"], minlength=K)
    assert np.abs(votes_full - votes_less).sum() == 1


def test_adding_a_record_changes_one_shard_and_the_draw_of_no_other_record():
    x, y = dataset(2000)
    a = partition(x[:-1], y[:-1], keep_rate=0.1)
    b = partition(x, y, keep_rate=0.1)
    assert np.array_equal(a["teacher_of"], b["teacher_of"][:-1])  # kept / left out, and teacher: unchanged
    assert 140 < (b["teacher_of"] >= 0).sum() < 260  # about 10% kept, each by its own hash
    verify_partition(b, **sizes(2000, 0.1))


def test_user_ids_name_records_whatever_their_content_and_order():
    x, y = dataset(50)
    ids = [f"patient-{i}" for i in range(50)]
    a = partition(x, y, ids=ids)
    order = np.random.default_rng(1).permutation(50)
    b = partition(x[order], y[order], ids=[ids[i] for i in order])
    assert np.array_equal(b["teacher_of"], a["teacher_of"][order])
    c = partition(x[::-1].copy(), y, ids=ids)  # new content under the same ids: the same teachers
    assert np.array_equal(c["teacher_of"], a["teacher_of"])
    files = partition(x, y, file_hashes=[f"{i:064x}" for i in range(50)])
    assert not np.array_equal(files["record_fingerprint"], a["record_fingerprint"])


def test_the_key_and_the_split_seed_change_the_shards_the_fingerprints_only_with_the_key():
    x, y = dataset(500)
    a, b = partition(x, y), partition(x, y)
    for key in a:
        assert np.array_equal(a[key], b[key])
    other_seed = partition(x, y, split_seed=1)
    assert not np.array_equal(a["teacher_of"], other_seed["teacher_of"])
    assert np.array_equal(a["record_fingerprint"], other_seed["record_fingerprint"])
    other_key = partition(x, y, secret=bytes(32))
    assert not np.array_equal(a["teacher_of"], other_key["teacher_of"])
    assert not np.array_equal(a["record_fingerprint"], other_key["record_fingerprint"])


def test_identity_is_content_and_label():
    x, y = dataset(3)
    names = records.identities(x, y)
    assert len(set(names)) == 3
    y2 = y.copy()
    y2[0] = (y[0] + 1) % 10
    assert records.identities(x, y2)[0] != names[0] and records.identities(x, y2)[1:] == names[1:]


def test_assign_against_its_definition():
    digests = np.array([[0, 0], [13, 2**63], [2**64 - 1, 2**64 - 1]], dtype=np.uint64)
    assert records.assign(digests, 7, 1.0).tolist() == [0, 13 % 7, (2**64 - 1) % 7]
    assert records.assign(digests, 7, 0.5).tolist() == [0, -1, -1]


@pytest.mark.parametrize("damage, message", [
    (lambda p: p["teacher_of"].__setitem__(0, -1), "keyed hash"),
    (lambda p: p["teacher_of"].__setitem__(0, (p["teacher_of"][0] + 1) % 7), "keyed hash"),
    (lambda p: p["teacher_of"].__setitem__(0, 99), "keyed hash"),
    (lambda p: p["test_index"].__setitem__(0, p["student_pool_index"][5]), "overlap"),
    (lambda p: p["query_index"].__setitem__(0, p["query_index"][1]), "distinct"),
    (lambda p: p.pop("test_index"), "lacks"),
    (lambda p: p.pop("scheme"), "earlier version"),
    (lambda p: p.pop("key_id"), "earlier version of pate, which did not record which spend directory"),
    (lambda p: p.__setitem__("record_fingerprint", p["record_fingerprint"][:-1]), "describe"),
])
def test_damaged_partition_is_refused(damage, message):
    x, y = dataset(1000)
    p = partition(x, y)
    damage(p)
    with pytest.raises(PartitionError, match=message):
        verify_partition(p, **sizes(1000))


def test_public_split_is_seeded_and_separate_test_sets_stay_apart():
    a, b = split_public(seed=3, **PUBLIC), split_public(seed=3, **PUBLIC)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = split_public(seed=0, num_public=500, student_pool=300, test_size=100, num_queries=50, num_pool=350)
    assert c["student_pool_index"].max() < 350 and c["test_index"].min() == 350
