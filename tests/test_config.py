import re
import tomllib

import pytest
from click.testing import CliRunner

from pate import config
from pate.cli import main



def test_tiny_pipeline_loads(tiny_pipeline):
    cfg = config.load(tiny_pipeline)
    assert cfg.name == "tiny" and cfg.teachers.count == 6 and cfg.aggregator.seed == 7
    assert cfg.seeded


def test_defaults_and_secure_noise():
    cfg = config.from_dict({"name": "x"})
    assert cfg.aggregator.seed is None and not cfg.seeded
    assert cfg.privacy.delta == 1e-5 and cfg.data.dataset == "mnist"


def test_round_trip_through_toml_keeps_fingerprint(tiny_pipeline):
    cfg = config.load(tiny_pipeline)
    again = config.from_dict(tomllib.loads(config.to_toml(cfg)))
    assert again == cfg and again.fingerprint() == cfg.fingerprint()


def test_fingerprint_changes_with_any_setting():
    a = config.from_dict({"name": "x"})
    b = config.from_dict({"name": "x", "aggregator": {"sigma2": 41}})
    assert a.fingerprint() != b.fingerprint()


BAD = [
    ("[data]\ndataset = 'imagenet'\n", "[data] dataset"),
    ("[teachers]\ncount = 0\n", "[teachers] count"),
    ("[teachers]\ncount = 'many'\n", "[teachers] count must be of type int"),
    ("[teachers]\nlr = -1.0\n", "[teachers] lr"),
    ("[teachers]\noptimizer = 'rmsprop'\n", "[teachers] optimizer"),
    ("[teachers]\nepochs = 2.5\n", "[teachers] epochs must be of type int"),
    ("[teachers]\nwidth = 3\n", "unknown key 'width'"),
    ("[aggregator]\nmechanism = 'median'\n", "[aggregator] mechanism"),
    ("[aggregator]\nsigma1 = 0\n", "[aggregator] sigma1"),
    ("[aggregator]\nsigma2 = -4\n", "[aggregator] sigma2"),
    ("[aggregator]\nmax_queries = 20000\n", "[aggregator] max_queries"),
    ("[privacy]\ndelta = 1e-4\n", "below 1/N"),  # N = 60000
    ("[privacy]\ndelta = 2.0\n", "[privacy] delta"),
    ("[privacy]\norders = [0.5, 2]\n", "[privacy] orders"),
    ("[privacy]\nconversion = 'magic'\n", "[privacy] conversion"),
    ("[student]\nmethod = 'vat'\n", "[student] method"),
    ("[data]\nstudent_pool = 9500\ntest_size = 1000\n", "student_pool + test_size"),
    ("[data]\nprivate_size = 70000\n", "[data] private_size"),
    ("colour = 'blue'\n", "unknown top-level key 'colour'"),
    ("[teachers]\naugment = 1\n", "[teachers] augment must be of type bool"),
    ("teachers = 3\n", "[teachers] must be a table"),
    ("[data\n", "not valid TOML"),
    ("[aggregator]\nseed = 1.5\n", "[aggregator] seed must be of type int"),
    ("[teachers]\nfeatures = 'byol'\n", "[teachers] features"),
    ("[teachers]\ncount = 1000000\n", "[teachers] count must be between 1 and 100000"),
    ("[privacy]\nss_order = 14.0\n", "ss_order, ss_beta, ss_sigma must be all three given"),
    ("[privacy]\nss_order = 14.0\nss_beta = 0.05\nss_sigma = 6.0\n", "[privacy] ss_beta must be in (0, 1/(2*ss_order))"),
    ("[privacy]\nss_order = 0.5\nss_beta = 0.05\nss_sigma = 6.0\n", "[privacy] ss_order must be > 1"),
    ("[privacy]\nss_order = 14.0\nss_beta = 0.03\nss_sigma = -1.0\n", "[privacy] ss_sigma must be in"),
    ("[privacy]\ndata_dependent_release = true\nss_order = 100.0\nss_beta = 0.004\nss_sigma = 6.0\n",
     "[privacy] ss_order must be an order where the smooth-sensitivity conditions C5/C6 hold"),
    ("[privacy]\ndata_dependent_release = true\n[aggregator]\nmechanism = 'lnmax'\n",
     "[privacy] data_dependent_release must be false with mechanism 'lnmax'"),
    ("[privacy]\ntotal_budget = -1.0\n", "[privacy] total_budget"),
    ("[teachers]\nfeature_epochs = 0\n", "[teachers] feature_epochs"),
    ("[teachers]\nfeature_dim = 1\n", "[teachers] feature_dim"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m for _, m in BAD])
def test_bad_config_is_one_line_error_exit_2(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.load(path)
    result = CliRunner().invoke(main, ["partition", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message.split(" must")[0] in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_missing_pipeline_file(tmp_path):
    result = CliRunner().invoke(main, ["run", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2 and "not found" in result.output


def test_delta_rule_uses_private_size():
    # 600 private records: delta must be below 1/600.
    config.from_dict({"name": "x", "data": {"private_size": 600}, "privacy": {"delta": 1e-3},
                      "teachers": {"count": 6}, "aggregator": {"threshold": 4.0}})
    with pytest.raises(config.ConfigError, match="below 1/N"):
        config.from_dict({"name": "x", "data": {"private_size": 600}, "privacy": {"delta": 2e-3},
                          "teachers": {"count": 6}, "aggregator": {"threshold": 4.0}})


def test_keys_added_later_keep_older_runs_fingerprints():
    """A run started before a key existed (its manifest lacks the key) keeps its fingerprint while the
    key holds its default; setting the key changes the fingerprint as any setting does."""
    import hashlib
    import json

    from pate import config as config_mod

    config = config_mod.from_dict({"name": "old"})
    older = config.to_dict()
    for section, keys in config_mod.ADDED_LATER.items():
        for key in keys:
            del older[section][key]
    as_before = hashlib.sha256(json.dumps(older, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config.fingerprint() == as_before
    knn = config_mod.from_dict({"name": "old", "aggregator": {"knn_k": 5}})
    assert knn.fingerprint() != as_before and knn.canonical_dict()["aggregator"]["knn_k"] == 5
