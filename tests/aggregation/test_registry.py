"""Extension points (issue 32): a mechanism family and a mechanism defined here, in the tests, run
through the aggregate stage by registering them: nothing in pate names them."""
from __future__ import annotations

import types
from typing import ClassVar

import numpy as np
import pytest

from pate import aggregation
from pate import config as config_mod
from pate.aggregation import teacher_votes
from pate.privacy import mechanisms
from pate.stages import aggregate as stage
from pate.stages import open_run
from pate.run.artifacts import Context

from ..conftest import finish_votes_stage


class CountingGNMax(mechanisms.GNMax):
    """GNMax's decisions and accounting under a family of its own."""
    name: ClassVar[str] = "test-counting-gnmax"
    family: ClassVar[str] = "test-counting"
    plannable: ClassVar[bool] = False  # `pate plan` knows nothing of it


def counting_family(calls: list) -> types.ModuleType:
    """A family module: the teacher-vote family's steps, each call written down."""
    module = types.ModuleType("test_counting_family")
    for step in ("load", "decide", "conclude"):
        def wrapped(*args, _step=step, **kwargs):
            calls.append(_step)
            return getattr(teacher_votes, _step)(*args, **kwargs)
        setattr(module, step, wrapped)
    return module


@pytest.fixture
def registered(monkeypatch):
    calls: list[str] = []
    monkeypatch.setitem(mechanisms.MECHANISMS, CountingGNMax.name, CountingGNMax)
    monkeypatch.setitem(aggregation.FAMILIES, CountingGNMax.family, counting_family(calls))
    return calls


def test_a_mechanism_and_family_defined_outside_pate_run_through_the_stage(tmp_path, registered):
    cfg = config_mod.from_dict({"name": "ext", "data": {"private_size": 600, "student_pool": 50, "test_size": 100},
                                "teachers": {"count": 10},
                                "aggregator": {"mechanism": CountingGNMax.name, "max_queries": 50, "sigma2": 3.0,
                                               "seed": 1},
                                "privacy": {"delta": 1e-5}})
    run = open_run(tmp_path / "run", cfg)
    votes = np.zeros((50, 10), np.int64)
    votes[:, 3] = 10
    finish_votes_stage(run, votes)
    stage.run(Context(run=run, quiet=True))
    assert registered == ["load", "decide", "conclude"]
    with np.load(run.file("labels.npz")) as labels:
        assert (labels["label"] == 3).mean() > 0.9  # GNMax at sigma 3 on unanimous votes


def test_the_registry_is_where_names_come_from(registered):
    assert CountingGNMax.name in mechanisms.MECHANISMS and CountingGNMax.name not in mechanisms.plannable()
    assert set(mechanisms.plannable()) == {"gnmax", "confident-gnmax", "interactive-gnmax"}
    with pytest.raises(ValueError, match="taken"):
        mechanisms.register(type("Clash", (mechanisms.GNMax,), {"name": "gnmax"}))
    with pytest.raises(ValueError, match="no aggregation family 'nowhere'"):
        aggregation.family("nowhere")
    with pytest.raises(config_mod.ConfigError, match="mechanism"):
        config_mod.from_dict({"name": "x", "aggregator": {"mechanism": "not-registered"}})
