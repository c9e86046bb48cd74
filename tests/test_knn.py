"""Neighbourhoods of queries among private records: exact, and a function of each record and
public information only (what individual accounting needs)."""
import numpy as np
import pytest
import torch

from pate.features import knn


def _points(seed=0, n=500, q=40, pool=200, d=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(q, d, generator=g), torch.randn(pool, d, generator=g)


def test_neighbourhoods_are_exactly_the_records_within_the_radius():
    private, queries, pool = _points()
    r2 = knn.radii(queries, pool, 7)
    hoods = knn.neighbourhoods(queries, r2, private, block=64)  # several blocks
    brute = ((queries[:, None, :].double() - private[None].double()) ** 2).sum(-1)
    for t in range(len(queries)):
        expected = np.flatnonzero((brute[t] <= r2[t].double() * (1 + 1e-6)).numpy())
        borderline = np.flatnonzero((abs(brute[t] - r2[t].double()) <= 1e-4 * r2[t].double()).numpy())
        assert set(hoods.of(t)) ^ set(expected) <= set(borderline)
        assert list(hoods.of(t)) == sorted(hoods.of(t))


def test_the_radius_is_the_kth_nearest_other_pool_image():
    _, _, pool = _points(1)
    queries = pool[:10]
    r2 = knn.radii(queries, pool, 3, query_pool_position=np.arange(10))
    d = ((queries[:, None] - pool[None]) ** 2).sum(-1)
    d[torch.arange(10), torch.arange(10)] = float("inf")  # the query itself is not its own neighbour
    torch.testing.assert_close(r2, d.sort(1).values[:, 2], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError):
        knn.radii(queries, pool, len(pool), query_pool_position=np.arange(10))


def test_removing_a_record_changes_no_other_membership():
    """The property the individual filter needs: membership of record j does not depend on record i."""
    private, queries, pool = _points(2)
    r2 = knn.radii(queries, pool, 9)
    full = knn.neighbourhoods(queries, r2, private)
    removed = 123
    rest = torch.cat([private[:removed], private[removed + 1:]])
    without = knn.neighbourhoods(queries, r2, rest)
    for t in range(len(queries)):
        expected = [i if i < removed else i - 1 for i in full.of(t) if i != removed]
        assert list(without.of(t)) == expected


def test_projection_comes_from_the_pool_alone():
    _, _, pool = _points(3, d=12)
    a = knn.fit_projection(pool, 4)
    b = knn.fit_projection(pool.clone(), 4)
    torch.testing.assert_close(a["components"], b["components"])
    projected = knn.project(pool, a)
    assert projected.shape == (len(pool), 4)
    torch.testing.assert_close(projected.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(projected.T @ projected / (len(pool) - 1), torch.eye(4), atol=1e-4, rtol=0)  # white
    assert knn.fit_projection(pool, 0)["components"] is None  # no projection: centring only


def test_rows_of():
    index = np.array([7, 3, 9, 1])
    assert knn.rows_of(index, np.array([9, 7, 1])).tolist() == [2, 0, 3]
    with pytest.raises(ValueError):
        knn.rows_of(index, np.array([4]))


def _reverse_setting(seed=0, n=30, anchors=12, dim=5):
    rng = np.random.default_rng(seed)
    return (torch.from_numpy(rng.normal(size=(n, dim))).float(), torch.from_numpy(rng.normal(size=(anchors, dim))).float(),
            rng.integers(0, 3, n))


def test_removing_a_record_moves_exactly_its_k_counts_by_one():
    """Reverse-kNN's sensitivity, checked by removing each record of a tiny set in turn: the votes
    differ in exactly k cells, by one each (its label at its k nearest anchors), and no other record's
    anchors change (they depend on the record and the public anchors alone)."""
    private, anchors, labels = _reverse_setting()
    k = 4
    nearest = knn.nearest_anchors(private, anchors, k).numpy()
    votes = knn.anchor_votes(nearest, labels, len(anchors), 3)
    assert votes.sum() == k * len(private)
    assert all(len(set(row)) == k for row in nearest)  # k distinct anchors: a record votes at most k times
    for j in range(len(private)):
        keep = np.arange(len(private)) != j
        without = knn.nearest_anchors(private[torch.from_numpy(keep)], anchors, k).numpy()
        assert np.array_equal(without, nearest[keep])
        diff = votes - knn.anchor_votes(without, labels[keep], len(anchors), 3)
        assert diff.sum() == k and diff.max() == 1 and diff.min() == 0
        assert sorted(np.flatnonzero(diff[:, labels[j]])) == sorted(nearest[j])


def test_a_record_with_a_smaller_budget_moves_only_its_first_counts():
    """Per-record budgets: record i votes at its first counts[i] nearest anchors only, so removing it
    moves exactly counts[i] cells by one (0 for a record with no votes), whatever the others' counts."""
    private, anchors, labels = _reverse_setting(seed=2)
    nearest = knn.nearest_anchors(private, anchors, 4).numpy()
    counts = np.arange(len(private)) % 5  # 0 to 4 anchors each
    votes = knn.anchor_votes(nearest, labels, len(anchors), 3, counts)
    assert votes.sum() == counts.sum()
    for j in range(len(private)):
        keep = np.arange(len(private)) != j
        diff = votes - knn.anchor_votes(nearest[keep], labels[keep], len(anchors), 3, counts[keep])
        assert diff.sum() == counts[j] and diff.min() == 0 and diff.max() <= 1
        assert sorted(np.flatnonzero(diff[:, labels[j]])) == sorted(nearest[j, :counts[j]])


def test_nearest_anchors_are_exact_whatever_the_blocks():
    """The distances are exact integers on a public grid, so the block a record is searched in (and
    so which other records are present) cannot change its anchors; ties go to the lower anchor."""
    private, anchors, _ = _reverse_setting(seed=1, n=257, anchors=40, dim=300)
    first = knn.nearest_anchors(private, anchors, 7, block=1)
    for block in (3, 64, 1000):
        assert torch.equal(knn.nearest_anchors(private, anchors, 7, block=block), first)
    twins = torch.cat([anchors[:5], anchors[:5]])  # anchors 5..9 repeat 0..4
    near = knn.nearest_anchors(anchors[:5], twins, 2)
    assert near.tolist() == [[i, i + 5] for i in range(5)]
    with pytest.raises(ValueError, match="k must be"):
        knn.nearest_anchors(private, anchors, 41)
