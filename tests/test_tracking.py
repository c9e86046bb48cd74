"""``[tracking]``: one MLflow run per run directory, continued on resume, holding the public fields
only; the section is outside the fingerprint, and enabled tracking without MLflow is refused in
one line before anything is written."""
from __future__ import annotations

import json
import os
import re
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pate import config as config_mod
from pate.run import spend_log
from pate import tracking
from pate.cli import main

from .conftest import TINY_PIPELINE, edit_pipeline
from .data.conftest import FOLDERS_PIPELINE, write_folders

PRIVATE_SIZE = 613  # the private images written: a number no public field holds
TRACKING = '\n[tracking]\nenabled = true\ntracking_uri = "{uri}"\nexperiment = "pate-test"\n'


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _hex_strings(obj) -> set[str]:
    """Every sha256 / MAC (64 hex digits) anywhere in a JSON document."""
    return set(re.findall(r"\b[0-9a-f]{64}\b", json.dumps(obj)))


def _private_tokens(run_dir: Path, images: Path) -> tuple[set[str], set[str]]:
    """(long tokens searched in every byte of every file, short numbers searched as whole numbers in
    the text files) that only the private run directory holds."""
    long_tokens = {str(images), str(run_dir) + "/", "teacher_accuracy", "ensemble_accuracy",
                   "query_plurality_accuracy", "num_private", "votes_sha256", "logpr_answered"}
    data = json.loads((run_dir / "data.json").read_text())
    paths = [entry[0] for entry in data["files"]["private"]]
    long_tokens |= _hex_strings(data) | set(paths) | {json.dumps(p)[1:-1] for p in paths}  # as JSON writes them too
    manifest = json.loads((run_dir / "manifest.json").read_text())
    long_tokens |= _hex_strings(manifest) | {manifest["run_id"]}
    for line in (run_dir / "ledger.jsonl").read_text().splitlines():
        long_tokens |= _hex_strings(json.loads(line))
    long_tokens.add((run_dir / "ledger.key").read_bytes().hex())
    private = json.loads((run_dir / "privacy.json").read_text())["private"]
    teachers = json.loads((run_dir / "teachers_eval.json").read_text())
    figures = [private[k] for k in ("epsilon", "epsilon_expected", "epsilon_classic")] \
        + [teachers["teacher_accuracy_mean"]]
    long_tokens |= {repr(v) for v in figures}
    with np.load(run_dir / "partition.npz") as parts:
        assert len(parts["teacher_of"]) == PRIVATE_SIZE
        prints = parts["record_fingerprint"]
    # what the data's records spent over the spend log, composed: it depends on which records are in
    # the data (issue 30 row 2), so it is as private as the rest (the test gives them an earlier release)
    public = json.loads((run_dir / "privacy.json").read_text())["public"]
    total = spend_log.total(prints, public["delta"])
    assert total.releases == 2 and f"{total.epsilon:.3f}" != f"{public['guarantee']['epsilon']:.3f}"
    long_tokens |= {"spent_on_this_private_data", "release(s)", repr(total.epsilon)}
    figures.append(total.epsilon)
    short_numbers = {f"{v:.3f}" for v in figures} | {f"{v:.2f}" for v in figures[:3]} | {str(PRIVATE_SIZE)}
    assert len(data["files"]["private"]) == PRIVATE_SIZE and len(long_tokens) > 2 * PRIVATE_SIZE
    return long_tokens, short_numbers


def _leaks(store: Path, long_tokens: set[str], short_numbers: set[str]) -> list[str]:
    found = []
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files
    for path in files:
        raw = path.read_bytes()
        found += [f"{path}: {t}" for t in long_tokens if t.encode() in raw]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue  # model weights: searched for the long tokens only
        found += [f"{path}: {n}" for n in short_numbers if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", text)]
    return found


def _an_earlier_release_on(run_dir: Path) -> None:
    """Charge the run's records an earlier release (another run's, at another cost) in the spend
    log, so that their composed total differs from this run's guarantee."""
    from pate.privacy import spend

    with np.load(run_dir / "partition.npz") as parts:
        prints = parts["record_fingerprint"][parts["teacher_of"] >= 0]
    curve = 0.37 * np.asarray(spend.ORDERS, dtype=float) ** 0  # a flat RDP curve: any earlier release
    spend_log.begin(spend.Entry(kind="aggregation", nonce="e" * 32, draw=0, run_dir="elsewhere", pipeline="other",
                                time="earlier", mechanism="gnmax", epsilon=2.5, delta=1e-4,
                                rdp=spend.curve_field(curve), seeded=False, records=0, records_sha256=""), prints)


@pytest.mark.slow
def test_a_tracked_run_holds_the_public_fields_and_nothing_private(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pate.run.directory import RunError
    from pate.stages import vote

    images, run_dir, store = tmp_path / "images", tmp_path / "run", tmp_path / "mlruns"
    monkeypatch.setenv("PATE_SPEND_DIR", str(tmp_path / "spend"))
    write_folders(images, private=PRIVATE_SIZE)
    pipeline = tmp_path / "tiny.toml"
    pipeline.write_text(FOLDERS_PIPELINE + TRACKING.format(uri=store))
    args = ["--run-dir", run_dir, "--data-root", tmp_path / "data-root"]

    # a command that fails: what finished is logged, the MLflow run is marked FAILED
    def fail(ctx):
        raise RunError("the disk is on fire")

    with monkeypatch.context() as patch:
        patch.setattr(vote, "run", fail)
        failed = invoke("run", pipeline, *args)
    assert failed.exit_code == 2 and "the disk is on fire" in failed.output
    assert "tracking: started MLflow run" in failed.output
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("pate-test")
    (first,) = client.search_runs([experiment.experiment_id])
    assert first.info.status == "FAILED" and first.data.tags["pate.stages_done"] == "2/6"
    assert {"seconds/partition", "seconds/train-teachers"} == set(first.data.metrics)
    _an_earlier_release_on(run_dir)

    # the rerun resumes the pate run and continues the same MLflow run
    result = invoke("run", pipeline, *args)
    assert result.exit_code == 0, result.output
    assert f"tracking: continuing MLflow run {first.info.run_id}" in result.output
    (found,) = client.search_runs([experiment.experiment_id])
    state = json.loads((run_dir / tracking.STATE).read_text())
    assert found.info.run_id == state["run_id"] == first.info.run_id and found.info.status == "FINISHED"
    assert found.data.tags["pate.stages_done"] == "6/6"
    params, metrics, tags = found.data.params, found.data.metrics, found.data.tags
    public = json.loads((run_dir / "privacy.json").read_text())["public"]
    results = json.loads((run_dir / "metrics.json").read_text())
    # the settings, with the data's public name instead of its paths
    assert params["data.public_name"] == "folders" and params["aggregator.sigma1"] == "1.0"
    assert params["teachers.count"] == "6" and params["aggregator.seed"] == "7" and params["name"] == "folders"
    assert not any(key.startswith("tracking.") or key.endswith(("_dir", "_file")) for key in params)
    # the public statement, the student's held-out accuracy, the stage timings
    assert metrics["privacy.guarantee.epsilon"] == pytest.approx(public["guarantee"]["epsilon"])
    assert metrics["privacy.guarantee.delta"] == pytest.approx(1e-4)
    assert metrics["privacy.queries_asked"] == public["queries_asked"] == 40
    assert metrics["privacy.queries_answered"] == public["queries_answered"]
    assert metrics["privacy.settings.sigma2"] == 1.0 and metrics["privacy.settings.threshold"] == 4.0
    assert tags["privacy.guarantee.accountant"] == public["guarantee"]["accountant"]
    assert tags["privacy.mechanism"] == "confident-gnmax" and tags["privacy.seeded"] == "true"
    assert metrics["student_accuracy"] == pytest.approx(results["student_accuracy"]) and metrics["test_size"] == 100
    assert {f"seconds/{s}" for s in ("partition", "train-teachers", "vote", "aggregate", "train-student",
                                     "evaluate")} <= set(metrics)
    assert not [k for k in (*metrics, *params, *tags) if "accuracy" in k and k != "student_accuracy"]
    released = {a.path for a in client.list_artifacts(found.info.run_id, "release")}
    assert released == {f"release/{p.name}" for p in (tmp_path / "run-release").iterdir()} \
        and "release/statement.json" in released and "release/model-card.md" in released

    # nothing private in any file MLflow wrote
    long_tokens, short_numbers = _private_tokens(run_dir, images)
    assert _leaks(store, long_tokens, short_numbers) == []
    seen = _leaks(run_dir, long_tokens, short_numbers)  # the search finds them where they are
    assert len(seen) > 2 * PRIVATE_SIZE and any(hit.endswith(f": {PRIVATE_SIZE}") for hit in seen)
    assert any(hit.endswith(repr(json.loads((run_dir / "privacy.json").read_text())["private"]["epsilon"]))
               for hit in seen)

    # a resumed run with a new student continues the same MLflow run: a second accuracy step, the
    # changed setting as a tag (params are immutable), the new release
    pipeline.write_text(edit_pipeline(pipeline.read_text(), ("steps = 20", "steps = 30")))
    again = invoke("run", pipeline, *args)
    assert again.exit_code == 0, again.output
    assert f"tracking: continuing MLflow run {found.info.run_id}" in again.output
    assert len(client.search_runs([experiment.experiment_id])) == 1
    resumed = client.get_run(found.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags["config.student.steps"] == "30"
    history = client.get_metric_history(found.info.run_id, "student_accuracy")
    assert [m.step for m in history] == [0, 1]
    assert [m.step for m in client.get_metric_history(found.info.run_id, "seconds/partition")] == [0]
    assert len(client.get_metric_history(found.info.run_id, "privacy.guarantee.epsilon")) == 1
    assert _leaks(store, *_private_tokens(run_dir, images)) == []

    # the tracking settings may change on an existing run: they are no part of its fingerprint
    pipeline.write_text(edit_pipeline(pipeline.read_text(), ("enabled = true", "enabled = false")))
    off = invoke("run", pipeline, *args)
    assert off.exit_code == 0, off.output
    assert "evaluate: already done" in off.output and "tracking:" not in off.output


def test_enabled_tracking_without_mlflow_is_one_line_before_anything_is_written(tmp_path, monkeypatch,
                                                                                 fake_data_root):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    pipeline = tmp_path / "tiny.toml"
    pipeline.write_text(textwrap.dedent(TINY_PIPELINE) + TRACKING.format(uri=tmp_path / "mlruns"))
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "--data-root", fake_data_root, "-q")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and "pip install 'pate[tracking]'" in result.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "mlruns").exists()


def test_the_tracking_section_is_outside_the_fingerprint():
    plain = config_mod.from_dict(tomllib.loads(textwrap.dedent(TINY_PIPELINE)), "tiny")
    tracked = config_mod.from_dict(tomllib.loads(
        textwrap.dedent(TINY_PIPELINE) + TRACKING.format(uri="/somewhere/mlruns")), "tiny")
    assert tracked.tracking.enabled and tracked != plain
    assert tracked.fingerprint() == plain.fingerprint()
    assert tracked.upstream_fingerprint() == plain.upstream_fingerprint()
    assert "tracking" not in tracked.canonical_dict()
    again = config_mod.from_dict(tomllib.loads(config_mod.to_toml(tracked)), "tiny")
    assert again == tracked  # config.toml keeps the section
    with pytest.raises(config_mod.ConfigError, match=r"\[tracking\] unknown key 'uri'"):
        config_mod.from_dict({"tracking": {"uri": "x"}})
    with pytest.raises(config_mod.ConfigError, match=r"\[tracking\] experiment"):
        config_mod.from_dict({"tracking": {"experiment": "a\nb"}})


def test_params_leave_out_the_data_paths(tmp_path):
    raw = {"name": "own", "data": {"source": "folders", "private_dir": str(tmp_path / "secret-ward"),
                                   "public_dir": str(tmp_path / "pub"), "name": "ward-xrays"}}
    params = tracking.public_params(config_mod.from_dict(raw))
    assert params["data.public_name"] == "ward-xrays" and params["data.source"] == "folders"
    assert not [v for v in params.values() if str(tmp_path) in v or "secret-ward" in v]
    assert "data.private_dir" not in params and "privacy.record_budgets" not in params


def test_the_store_defaults_to_mlruns_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri("") == (tmp_path / "mlruns").resolve().as_uri()
    assert tracking.tracking_uri("store") == (tmp_path / "store").resolve().as_uri()
    assert tracking.tracking_uri("http://mlflow.example:5000") == "http://mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    assert tracking.tracking_uri("") == "sqlite:///mlflow.db"


def test_the_release_folder_is_where_pate_run_writes_it(tmp_path):
    from pate.run.directory import RunDir
    from pate.export import release as release_view

    run = RunDir(tmp_path / "runs" / "tiny", config_mod.from_dict({"name": "tiny"}))
    assert tracking.release_folder(run.path) == release_view.default_out(run)
    assert tracking.STATEMENT == release_view.STATEMENT_JSON


# ----------------------------------------------------------------------------- issue 31: nothing hangs


def unused_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_tracking_server_is_one_line_in_seconds_before_anything_is_written(tmp_path, fake_data_root):
    pytest.importorskip("mlflow")
    import time

    pipeline = tmp_path / "tiny.toml"
    uri = f"http://127.0.0.1:{unused_port()}"
    pipeline.write_text(textwrap.dedent(TINY_PIPELINE) + TRACKING.format(uri=uri))
    start = time.perf_counter()
    result = invoke("run", pipeline, "--run-dir", tmp_path / "run", "--data-root", fake_data_root, "-q")
    assert time.perf_counter() - start < 10  # MLflow's own retries took 248 s
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and f"MLflow at {uri} cannot be reached" in result.output
    assert not (tmp_path / "run").exists()


def test_mlflow_requests_are_bounded_unless_the_environment_says_otherwise(monkeypatch):
    for name in tracking.HTTP_LIMITS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")  # the user's own choice stands
    tracking._environment("http://127.0.0.1:5000")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == tracking.HTTP_LIMITS["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"


def test_a_hostile_tracking_state_is_a_new_mlflow_run(tmp_path):
    from types import SimpleNamespace

    run = SimpleNamespace(file=lambda name: tmp_path / name)
    (tmp_path / tracking.STATE).write_text("[" * 100_000)  # nested past the parser's recursion
    assert tracking._read_state(run) == {}
    (tmp_path / tracking.STATE).unlink()
    os.mkfifo(tmp_path / tracking.STATE)  # would block a plain read forever
    import signal

    def expired(*_):
        raise TimeoutError("reading a FIFO as tracking.json blocked")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    try:
        assert tracking._read_state(run) == {}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
