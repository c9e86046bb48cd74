"""Shared fixtures: tiny pipelines and a fake dataset cache so tests never need the real data."""
from __future__ import annotations

import os
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")
# Spend logs of test runs go to a folder of this test session, never to the user's own (set before
# any stage process starts, so the fault tests' forked processes inherit it).
os.environ["PATE_SPEND_DIR"] = tempfile.mkdtemp(prefix="pate-test-spend-")

TINY_PIPELINE = """
name = "tiny"

[data]
dataset = "mnist"
private_size = 600
student_pool = 300
test_size = 100
split_seed = 0

[teachers]
count = 6
arch = "cnn-small"
epochs = 1
batch_size = 16

[aggregator]
mechanism = "confident-gnmax"
max_queries = 40
threshold = 4
sigma1 = 1.0
sigma2 = 1.0
seed = 7

[privacy]
delta = 1e-4

[student]
method = "supervised"
steps = 20
batch_size = 16
"""


def benchmark_script(name: str):
    """``benchmarks/<name>.py`` loaded as a fresh module: the benchmarks are scripts run as files, not
    part of the package, and their tests call their ``main`` or pieces."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", Path(__file__).resolve().parents[1]
                                                  / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def edit_pipeline(text: str, *replacements: tuple[str, str]) -> str:
    """``text`` with each (old, new) line replaced; an ``old`` that is not there is an error, so a
    derived pipeline cannot silently drift from the one it is derived from."""
    for old, new in replacements:
        assert old in text, f"{old!r} is not in the pipeline"
        text = text.replace(old, new)
    return text



def write_idx_mnist(root: Path, num_train: int = 60000, num_test: int = 10000, seed: int = 0) -> Path:
    """A fake MNIST cache in torchvision's layout: class-dependent blobs so models can learn."""
    from pate.data.builtin import _idx_bytes

    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        rows, cols = (labels // 5) * 12 + 4, (labels % 5) * 5 + 2  # one bright square per class
        for dr in range(4):
            for dc in range(4):
                images[np.arange(n), rows + dr, cols + dc] = 255
        images = np.clip(images.astype(np.int16) + rng.integers(0, 40, images.shape), 0, 255).astype(np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(_idx_bytes(images))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels))
    return root


@pytest.fixture(scope="session")
def fake_data_root(tmp_path_factory) -> Path:
    return write_idx_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture
def tiny_pipeline(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(textwrap.dedent(TINY_PIPELINE))
    return path


def run_tiny_pipeline(root: Path, data_root: Path):
    """``pate run`` of TINY_PIPELINE written in ``root`` (run directory ``root/run``, release beside
    it), asserted to succeed; returns the CLI result."""
    from click.testing import CliRunner

    from pate.cli import main

    pipeline = root / "tiny.toml"
    pipeline.write_text(textwrap.dedent(TINY_PIPELINE))
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(root / "run"), "--data-root",
                                       str(data_root), "-q"])
    assert result.exit_code == 0, result.output
    return result


def finish_votes_stage(run, votes: np.ndarray, private_data: str | None = None) -> None:
    """Give ``run`` a real partition and the given vote matrix, as if train-teachers and vote had run.

    ``private_data`` names the (fake) private records: runs given the same name share their
    records, hence their spend in the spend log (default: records of their own). The partition
    carries the key id of the current spend directory (``PATE_SPEND_DIR``), as the partition stage
    writes it: later stages refuse a run partitioned under another spend directory's key."""
    import hashlib
    import uuid

    from pate.data import records
    from pate.run import spend_log
    from pate.io import atomic_save_npz
    from pate.data.partition import make_partition
    from pate.run.artifacts import partition_sizes

    sizes = partition_sizes(run.config, run.config.data.spec)
    secret = hashlib.sha256((private_data or uuid.uuid4().hex).encode()).digest()
    names = [b"%d" % i for i in range(sizes["num_train"])]
    key_id = spend_log.key_id()
    parts = make_partition(digests=records.shard_digests(secret, names, 0),
                           fingerprints=records.fingerprints(secret, names), key_id=key_id, seed=0, **sizes)
    if run.config.privacy.total_budget:  # the partition stage's individual filter, against the log as it is now
        from pate.run import spend_log
        from pate.aggregation.settings import spend_curve
        from pate.data.partition import leave_out

        priv = run.config.privacy
        parts = leave_out(parts, spend_log.past_budget(
            parts["record_fingerprint"], spend_curve(run.config, run.config.data.spec.num_classes),
            priv.total_budget, priv.delta, priv.conversion))
    atomic_save_npz(run.file("partition.npz"), **parts)
    run.finish("partition", ["partition.npz"], key_id=key_id)
    run.update("train-teachers", status="done", outputs={})
    atomic_save_npz(run.file("votes.npz"), private=True, votes=votes, query_index=parts["query_index"])
    run.finish("vote", ["votes.npz"])
