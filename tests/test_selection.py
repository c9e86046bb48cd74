"""Queries chosen on public information: greedy k-center checked against its definition by brute
force, coverage of small clusters, and a query set that no private record can move."""
import numpy as np
import pytest
from click.testing import CliRunner

from pate.aggregation import selection
from pate.cli import main

from .data.test_arrays import write


def test_each_pick_is_the_point_farthest_from_those_before_it():
    points = np.random.default_rng(0).normal(size=(60, 3))
    picks = selection.k_center(points, 12, first=5)
    assert picks[0] == 5 and len(set(picks.tolist())) == 12
    for i in range(1, 12):  # brute force: distance of every point to its nearest earlier pick
        d = np.min(np.linalg.norm(points[:, None] - points[picks[:i]][None], axis=2), axis=1)
        assert np.isclose(d[picks[i]], d.max())


def test_k_center_covers_small_clusters_that_a_random_draw_misses():
    rng = np.random.default_rng(1)
    centers = np.array([[0, 0], [50, 0], [0, 50], [50, 50], [100, 100]], float)
    sizes = [2000, 5, 5, 5, 5]
    points = np.concatenate([c + rng.normal(size=(n, 2)) for c, n in zip(centers, sizes)])
    cluster = np.repeat(np.arange(5), sizes)
    assert set(cluster[selection.k_center(points, 5)]) == set(range(5))
    random_hits = [len(set(cluster[rng.choice(len(points), 5, replace=False)])) for _ in range(20)]
    assert max(random_hits) < 5


def test_order_pool_puts_the_picks_first_and_keeps_a_permutation():
    images = np.random.default_rng(2).integers(0, 256, (200, 1, 8, 8), dtype=np.uint8)
    pool = np.random.default_rng(3).permutation(1000)[:200]
    ordered = selection.order_pool(pool, images, 30, "k-center")
    assert sorted(ordered.tolist()) == sorted(pool.tolist())
    assert not np.array_equal(ordered[:30], pool[:30])
    assert np.array_equal(selection.order_pool(pool, images, 30, "random"), pool)
    with pytest.raises(ValueError, match="query selection"):
        selection.order_pool(pool, images, 30, "uncertain")


def partition_queries(folder, private_seed):
    folder.mkdir()
    pipeline = write(folder, extra="")
    text = pipeline.read_text().replace('mechanism = "confident-gnmax"',
                                        'mechanism = "confident-gnmax"\nquery_selection = "k-center"')
    pipeline.write_text(text)
    with np.load(folder / "private.npz") as data:  # other private images, the same public ones
        rng = np.random.default_rng(private_seed)
        np.savez(folder / "private.npz", images=rng.permutation(data["images"]), labels=data["labels"])
    result = CliRunner().invoke(main, ["partition", str(pipeline), "--run-dir", str(folder / "run"), "-q"])
    assert result.exit_code == 0, result.output
    with np.load(folder / "run" / "partition.npz") as parts:
        assert np.array_equal(parts["query_index"], parts["student_pool_index"][:len(parts["query_index"])])
        return parts["query_index"].copy(), parts["teacher_of"].copy()


def test_the_queries_depend_on_public_images_only(tmp_path, monkeypatch):
    monkeypatch.setenv("PATE_SPEND_DIR", str(tmp_path / "spend"))
    a, teachers_a = partition_queries(tmp_path / "a", 1)
    b, teachers_b = partition_queries(tmp_path / "b", 2)
    assert np.array_equal(a, b)  # the private images changed, the queries did not
    assert not np.array_equal(teachers_a, teachers_b)  # (while the shards did)
