"""Behaviour does not move when code does (issue 32): seeded aggregations of fixed votes give the
outputs recorded in ``tests/golden/aggregate.json`` before the layout refactor.

Each case is a run partitioned from fixed record names and given a fixed vote matrix, then
aggregated with seeded noise (PCG64's raw words: the same on every machine): the partition, the
ledger's decisions, the released labels (and soft vectors) and privacy.json's figures must equal
the recording. Teachers are not trained here (their float arithmetic may differ between machines);
what is compared is everything from the partition to the release. ``PATE_RECORD_GOLDEN=1`` records
anew: only when a change of behaviour is meant, saying why in its commit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from pate import config as config_mod
from pate.aggregation.ledger_files import ledger_key
from pate.aggregation.settings import check_accountable
from pate.privacy import ledger
from pate.stages import aggregate as stage
from pate.stages import open_run
from pate.run.artifacts import Context

from .conftest import finish_votes_stage

GOLDEN = Path(__file__).parent / "golden" / "aggregate.json"
K, M, Q = 30, 10, 120
COMMON = {"max_queries": Q, "seed": 11}
CASES = {
    "gnmax": {"mechanism": "gnmax", "sigma2": 4.0},
    "lnmax": {"mechanism": "lnmax", "sigma2": 4.0},
    "confident-gnmax": {"mechanism": "confident-gnmax", "threshold": 20.0, "sigma1": 6.0, "sigma2": 4.0},
    "confident-gnmax-soft": {"mechanism": "confident-gnmax", "threshold": 20.0, "sigma1": 6.0, "sigma2": 4.0,
                             "soft_labels": True},
    "confident-gnmax-released": {"mechanism": "confident-gnmax", "threshold": 20.0, "sigma1": 6.0, "sigma2": 10.0,
                                 "privacy": {"data_dependent_release": True}},
}


def votes_matrix() -> np.ndarray:
    rng = np.random.default_rng(0)
    top, consensus = rng.integers(0, M, Q), rng.integers(5, K + 1, Q)
    votes = np.zeros((Q, M), np.int64)
    for i in range(Q):  # confident and split rows, each summing to K
        votes[i, top[i]] = consensus[i]
        votes[i] += np.bincount(rng.integers(0, M, K - consensus[i]), minlength=M)
    return votes


def outputs_of(tmp_path, case: str) -> dict:
    settings = dict(CASES[case])
    privacy = {"delta": 1e-5, **settings.pop("privacy", {})}
    cfg = config_mod.from_dict({"name": "golden", "data": {"private_size": 3000, "student_pool": Q, "test_size": 100},
                                "teachers": {"count": K}, "aggregator": {**COMMON, **settings}, "privacy": privacy})
    check_accountable(cfg, M)  # as every stage command does first
    run = open_run(tmp_path / case, cfg)
    finish_votes_stage(run, votes_matrix(), private_data="golden records")
    stage.run(Context(run=run, quiet=True))
    with np.load(run.file("partition.npz")) as parts:
        partition = hashlib.sha256(parts["teacher_of"].tobytes() + parts["query_index"].tobytes()).hexdigest()
    records = ledger.parse(run.file("ledger.jsonl").read_text(), ledger_key(run)).records
    with np.load(run.file("labels.npz")) as labels:
        released = {k: labels[k].tolist() for k in labels.files}
    report = json.loads(run.file("privacy.json").read_text())
    return {"partition": partition, "ledger": [{ledger.KEY_IN_FILE.get(k, k): v for k, v in dataclasses.asdict(r).items()} for r in records], "labels": released,
            "privacy": {"public": report["public"], "private": _figures(report["private"])}}


def _figures(private: dict) -> dict:
    """The private section's numbers and names (paths and hashes of this machine's files left out)."""
    return {k: v for k, v in private.items() if isinstance(v, (int, float, str, type(None))) and k != "sha256"}


def close(a, b, where: str = "") -> None:
    """Equal, floats to 1e-9 relative (libm may differ in the last bits between machines)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))}"
        for k in a:
            close(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: length"
        for i, (x, y) in enumerate(zip(a, b)):
            close(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) or (math.isnan(a) and math.isnan(b)), \
            f"{where}: {a} != {b}"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_seeded_aggregations_equal_their_recording(tmp_path):
    got = {case: json.loads(json.dumps(outputs_of(tmp_path, case))) for case in CASES}
    if os.environ.get("PATE_RECORD_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"recorded {GOLDEN}")
    close(got, json.loads(GOLDEN.read_text()), "golden")
