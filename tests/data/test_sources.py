"""Extension points (issue 32): a data source defined here, in the tests, runs through the partition
and aggregate stages by registering it (``pate.data.register_source``): nothing in pate names it."""
from __future__ import annotations

import numpy as np
import pytest

from pate import config as config_mod
from pate import data
from pate.config import SourceKeys
from pate.data import builtin, records, sources
from pate.io import atomic_save_npz
from pate.run.artifacts import PARTITION, Context
from pate.stages import aggregate, open_run, partition
from pate.views import audit

NAME = "test-memory"
PRIVATE, POOL, TEST = 600, 300, 100


def memory_source(root, calls: list[str]) -> data.Source:
    """A source of arrays held in memory: the first records of the fake MNIST cache, each private
    record named by an id of its own."""
    def load(config, data_root, quiet, auto_prepare):
        calls.append("load")
        mnist = builtin.load("mnist", root)
        public_y = np.concatenate([np.full(POOL, -1, np.int64), mnist.public_y[POOL:POOL + TEST]])
        return data.Dataset(name=config.public_name, private_x=mnist.private_x[:PRIVATE],
                            private_y=mnist.private_y[:PRIVATE], public_x=mnist.public_x[:POOL + TEST],
                            public_y=public_y, classes=mnist.classes, mean=mnist.mean, std=mnist.std,
                            num_pool=POOL, shared_split=False, files={"private": [["memory:private", "0"]]})

    def identities(config, dataset):
        calls.append("identities")
        return records.identities(dataset.private_x, dataset.private_y, ids=[f"m{i}" for i in range(PRIVATE)])

    def record_names(config, files):
        calls.append("record_names")
        return [f"m{i}" for i in range(PRIVATE)]

    return data.Source(name=NAME, keys=SourceKeys(), load=load, description=lambda config: "arrays held in memory",
                       identities=identities, record_names=record_names)


@pytest.fixture
def registered(fake_data_root):
    calls: list[str] = []
    data.register_source(memory_source(fake_data_root, calls))
    try:
        yield calls
    finally:
        sources.unregister_source(NAME)
    assert NAME not in data.SOURCES and NAME not in config_mod.SOURCES


def memory_config(**aggregator) -> config_mod.PipelineConfig:
    return config_mod.from_dict({"name": "mem", "data": {"source": NAME, "classes": [str(d) for d in range(10)]},
                                 "teachers": {"count": 10},
                                 "aggregator": {"mechanism": "gnmax", "max_queries": 50, "sigma2": 3.0, "seed": 1,
                                                **aggregator},
                                 "privacy": {"delta": 1e-5}})


def test_a_source_defined_outside_pate_runs_through_partition_and_aggregate(tmp_path, registered):
    cfg = memory_config()
    assert cfg.data.public_name == NAME and cfg.data.spec is None  # known from its images only
    run = open_run(tmp_path / "run", cfg)
    partition.run(Context(run=run, quiet=True))
    assert registered == ["load", "identities"]
    with np.load(run.file(PARTITION)) as parts:
        teacher_of, query_index = parts["teacher_of"], parts["query_index"]
    assert (teacher_of >= 0).sum() == PRIVATE and len(query_index) == 50
    assert query_index.max() < POOL  # queries from the pool, never the labelled test images
    run.update("train-teachers", status="done", outputs={})
    votes = np.zeros((len(query_index), 10), np.int64)
    votes[:, 3] = 10
    atomic_save_npz(run.file("votes.npz"), private=True, votes=votes, query_index=query_index)
    run.finish("vote", ["votes.npz"])
    aggregate.run(Context(run=run, quiet=True))
    with np.load(run.file("labels.npz")) as labels:
        assert (labels["label"] == 3).mean() > 0.9  # GNMax at sigma 3 on unanimous votes
    assert data.source_of(cfg.data).description(cfg.data) == "arrays held in memory"  # the model card's line


def test_the_audit_names_records_as_the_source_does(tmp_path, registered):
    run = open_run(tmp_path / "run", memory_config())
    assert audit._record_names(run, np.array([5, 0])) == ["m5", "m0"]
    assert registered == ["record_names"]


def test_a_source_is_registered_once_with_its_config_keys(registered):
    with pytest.raises(ValueError, match="taken"):
        data.register_source(data.Source(name="folders", load=None, description=str))
    with pytest.raises(ValueError, match="needs its config keys"):
        data.register_source(data.Source(name="test-keyless", load=None, description=str))
    with pytest.raises(ValueError, match="differ"):
        sources.SOURCES.pop("arrays")
        try:
            data.register_source(data.Source(name="arrays", load=None, description=str, keys=SourceKeys()))
        finally:
            sources.SOURCES["arrays"] = data.arrays.SOURCE
    with pytest.raises(config_mod.ConfigError, match=r"\[data\] source must be one of"):
        config_mod.from_dict({"name": "x", "data": {"source": "test-unregistered"}})


def test_every_config_source_has_a_module_and_the_reverse(monkeypatch):
    sources.check_registry()
    assert set(data.SOURCES) == set(config_mod.SOURCES) == {"builtin", "folders", "arrays"}
    monkeypatch.setitem(config_mod.SOURCES, "test-orphan", SourceKeys())
    with pytest.raises(RuntimeError, match="without a module: \\['test-orphan'\\]"):
        sources.check_registry()
