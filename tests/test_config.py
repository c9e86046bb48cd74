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
    ("[aggregator]\nsigma1 = 2e5\n", "[aggregator] sigma1"),  # above the discrete tails' exact tables
    ("[aggregator]\nsigma2 = -4\n", "[aggregator] sigma2"),
    ("[aggregator]\nmax_queries = 20000\n", "[aggregator] max_queries"),
    ("[privacy]\ndelta = 1e-4\n", "below 1/N"),  # N = 60000
    ("[privacy]\ndelta = 2.0\n", "[privacy] delta"),
    ("[privacy]\norders = [0.5, 2]\n", "[privacy] orders"),
    ("[privacy]\nconversion = 'magic'\n", "[privacy] conversion"),
    ("[student]\nmethod = 'vat'\n", "[student] method"),
    ("[student]\nerase = 1.5\n", "[student] erase must be in [0, 1]"),
    ("[student]\nmixup = -0.2\n", "[student] mixup must be 0 (none) or in [0.01, 100]"),
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
    # a privacy bound the mechanism's driver would ignore (DESIGN invariant 11)
    ("[aggregator]\nmechanism = 'interactive-gnmax'\nepsilon_budget = 20.0\n",
     "[aggregator] epsilon_budget must be 0 with mechanism 'interactive-gnmax' (its driver runs no Renyi filter"),
    ("[privacy]\nrecord_epsilon = 2.0\n", "[privacy] record_epsilon must be 1 (its default) with mechanism "
                                         "'confident-gnmax' (per-record budgets are for private-knn, reverse-knn only"),
    ("[aggregator]\nmechanism = 'gnmax'\n[privacy]\nrecord_budgets = 'budgets.csv'\n",
     "[privacy] record_budgets must be empty with mechanism 'gnmax'"),
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
    older = {k: v for k, v in config.to_dict().items() if k not in config_mod.EXCLUDED_SECTIONS}
    for section, keys in config_mod.ADDED_LATER.items():
        for key in keys:
            del older[section][key]
    as_before = hashlib.sha256(json.dumps(older, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config.fingerprint() == as_before
    knn = config_mod.from_dict({"name": "old", "aggregator": {"knn_k": 5}})
    assert knn.fingerprint() != as_before and knn.canonical_dict()["aggregator"]["knn_k"] == 5


ALL = ("lnmax", "gnmax", "confident-gnmax", "interactive-gnmax", "private-knn", "reverse-knn")
HONOURED = {  # a setting that bounds privacy -> the mechanisms whose aggregation driver honours it
    ("aggregator", "epsilon_budget", 5.0): ("lnmax", "gnmax", "confident-gnmax"),  # the batch driver's filter
    ("aggregator", "max_queries", 100): ALL,
    ("privacy", "total_budget", 5.0): ALL,  # the spend log, before the first query of every driver
    ("privacy", "record_epsilon", 2.0): ("private-knn",),  # the individual filter
    ("privacy", "record_budgets", "budgets.csv"): ("private-knn", "reverse-knn"),  # reverse-knn: fewer anchors
    ("privacy", "data_dependent_release", True): ("gnmax", "confident-gnmax"),  # a smooth-sensitivity analysis
}


@pytest.mark.parametrize("mechanism", ALL)
@pytest.mark.parametrize("section, key, value", list(HONOURED), ids=[k for _, k, _ in HONOURED])
def test_a_privacy_bound_is_honoured_or_refused_for_each_mechanism(section, key, value, mechanism):
    """DESIGN invariant 11: every (bound, mechanism) pair either loads (the driver honours it) or is
    refused at config time with one message naming the key."""
    raw = {"name": "x", "aggregator": {"mechanism": mechanism},
           "teachers": {"features": "scattering"} if mechanism.endswith("-knn") else {}}
    raw.setdefault(section, {})[key] = value
    if mechanism in HONOURED[section, key, value]:
        assert getattr(getattr(config.from_dict(raw), section), key) == value
    else:
        with pytest.raises(config.ConfigError, match=re.escape(f"[{section}] {key} must")) as refused:
            config.from_dict(raw)
        assert repr(mechanism) in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.parametrize("mechanism", ["gnmax", "interactive-gnmax"])
def test_record_epsilon_at_its_default_is_accepted_and_keeps_the_fingerprint(mechanism):
    """Written out at its default (a frozen config.toml does), record_epsilon is not a bound that is
    ignored; and, an ADDED_LATER key at its default, it leaves the fingerprint as it was."""
    plain = config.from_dict({"name": "x", "aggregator": {"mechanism": mechanism}})
    explicit = config.from_dict({"name": "x", "aggregator": {"mechanism": mechanism, "epsilon_budget": 0.0},
                                 "privacy": {"record_epsilon": 1.0, "record_budgets": ""}})
    assert explicit == plain and explicit.fingerprint() == plain.fingerprint()


# ----------------------------------------------------------------------------- [data] classes, name; NUL bytes


@pytest.mark.parametrize("section, key", [("data", "private_dir"), ("data", "public_file"),
                                          ("privacy", "record_budgets")])
def test_a_nul_byte_in_a_path_is_refused_at_load(tmp_path, section, key):
    source = "arrays" if key.endswith("_file") else "folders"
    data = {"folders": 'source = "folders"\nprivate_dir = "p"\npublic_dir = "q"\n',
            "arrays": 'source = "arrays"\nprivate_file = "p.npz"\npublic_file = "q.npz"\n'}[source]
    text = f"[data]\n{data}" if section == "data" else f"[data]\n{data}[privacy]\n{key} = \"b.csv\"\n"
    text = text.replace(f'{key} = "', f'{key} = "x\\u0000', 1)
    path = tmp_path / "nul.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=re.escape(f"[{section}] {key} must be a path without NUL bytes")):
        config.load(path)
    result = CliRunner().invoke(main, ["partition", str(path), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and f"[{section}] {key}" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_a_nul_byte_in_a_data_path_is_refused_by_validate_too():
    with pytest.raises(config.ConfigError, match=re.escape("[data] test_dir must be a path without NUL bytes")):
        config.from_dict({"name": "x", "data": {"source": "folders", "private_dir": "/p", "public_dir": "/q",
                                                "test_dir": "/t\0"}})


def test_the_published_data_name_is_never_a_path():
    folders = {"source": "folders", "private_dir": "/secret/patients/private", "public_dir": "/q"}
    assert config.from_dict({"name": "x", "data": folders}).data.public_name == "folders"
    assert config.from_dict({"name": "x", "data": {"source": "arrays", "private_file": "/s/p.npz",
                                                   "public_file": "/q.npz"}}).data.public_name == "arrays"
    assert config.from_dict({"name": "x"}).data.public_name == "mnist"
    named = config.from_dict({"name": "x", "data": {**folders, "name": "Chest X-rays (v2)"}})
    assert named.data.public_name == "Chest X-rays (v2)" and "secret" not in named.data.public_name
    for bad in ("/secret/patients", "a\\b", "tab\there", "x" * 101):
        with pytest.raises(config.ConfigError, match=re.escape("[data] name must be a name, not a path")):
            config.from_dict({"name": "x", "data": {**folders, "name": bad}})


@pytest.mark.parametrize("classes, message", [
    (["only"], "[data] classes must be a list of 2 to"),
    (["a", "a"], "[data] classes must be distinct names"),
    (["é", "e\u0301"], "[data] classes must be distinct names"),  # the same name, NFC and NFD
    (["a", ""], "[data] classes must be names of 1 to 200 characters"),
    (["a", "b\0"], "[data] classes must be names of 1 to 200 characters"),
])
def test_bad_classes_are_refused(classes, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        config.from_dict({"name": "x", "data": {"source": "folders", "private_dir": "/p", "public_dir": "/q",
                                                "classes": classes}})


def test_classes_of_a_builtin_dataset_are_its_own():
    config.from_dict({"name": "x", "data": {"classes": [str(d) for d in range(10)]}})
    with pytest.raises(config.ConfigError, match=re.escape("[data] classes must be [] with a built-in dataset")):
        config.from_dict({"name": "x", "data": {"classes": ["cat", "dog"]}})


def test_classes_and_name_at_their_defaults_keep_the_fingerprint():
    plain = config.from_dict({"name": "x"})
    assert "classes" not in plain.canonical_dict()["data"] and "name" not in plain.canonical_dict()["data"]
    named = config.from_dict({"name": "x", "data": {"source": "folders", "private_dir": "/p", "public_dir": "/q",
                                                    "classes": ["a", "b"]}})
    assert named.canonical_dict()["data"]["classes"] == ("a", "b")
    assert config.from_dict(tomllib.loads(config.to_toml(named))) == named  # written and read back
