"""Fault injection: kill -9 at random instants, bad input, disk full, Ctrl-C (run alone: pytest -m faults).

Every stage of a small pipeline (on the fake MNIST cache) is run once uninterrupted to get the
reference artifacts and the stage's duration. Then, for each stage:

* SIGKILL at seeded random instants of its life (``PATE_FAULT_INSTANTS``, default 5 per stage;
  ``PATE_FAULT_SEED`` picks them), check what the crash left (old or new artifacts, never half of
  one), rerun, and check the stage completes, every artifact validates (manifest hashes, partition
  invariants, vote row sums, ledger parses and matches the votes, no query twice, labels.npz equals
  what the ledger released) and equals the uninterrupted run's (all noise is seeded);
* bad input (damaged, truncated or foreign files, another config, missing or damaged data, disk
  full, Ctrl-C): one line ``Error: ...``, exit code 2, and no artifact changed.

Stage processes are forked from a forkserver that has imported torch already (see
``faults_helpers``), so a kill costs well under a second of start-up.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pate import config as config_mod
from pate.io import sha256_file
from pate.data.partition import verify_partition
from pate.privacy import ledger
from pate.stages import BY_NAME
from pate.stages import NAMES as STAGES

from .conftest import TINY_PIPELINE, edit_pipeline
from .faults_helpers import Stage, npz, read_json, run_stage, same_state, torch_state, tree_hashes

pytestmark = pytest.mark.faults

INSTANTS = int(os.environ.get("PATE_FAULT_INSTANTS", "5"))
SEED = int(os.environ.get("PATE_FAULT_SEED", "20240601"))

# Heavier than TINY_PIPELINE so each stage has something to interrupt: 4 teacher epochs (a
# checkpoint each), 2100 queries (3 vote chunks of 1024, 9 aggregation chunks of 256), 100 student
# steps (a checkpoint every 20).
PIPELINE = edit_pipeline(
    TINY_PIPELINE, ('name = "tiny"', 'name = "faults"'), ("student_pool = 300", "student_pool = 2200"),
    ("epochs = 1", "epochs = 4"), ("max_queries = 40", "max_queries = 2100"), ("steps = 20", "steps = 100"))
K, QUERIES, CLASSES = 6, 2100, 10
# each stage's final artifacts, as recorded in the manifest (from the stage registry)
OUTPUTS = {name: list(BY_NAME[name].outputs(config_mod.from_dict(tomllib.loads(PIPELINE)))) for name in STAGES}



# ------------------------------------------------------------------------------ reference run
@dataclass
class Reference:
    root: Path
    pipeline: Path
    data_root: Path
    seconds: dict = field(default_factory=dict)
    ledger_line: int = 0  # mean length of a ledger record, bytes

    def after(self, stage: str | None) -> Path | None:
        return None if stage is None else self.root / "after" / stage

    def args(self, stage: str, run_dir: Path, pipeline: Path | None = None, data_root: Path | None = None) -> list:
        return [stage, pipeline or self.pipeline, "--run-dir", run_dir, "--data-root", data_root or self.data_root,
                "-q"]

    def restore(self, after_stage: str | None, run_dir: Path) -> Path:
        """A copy of the reference run directory as it was once ``after_stage`` finished."""
        if after_stage is not None:
            shutil.copytree(self.after(after_stage), run_dir)
        return run_dir


def previous(stage: str) -> str | None:
    i = STAGES.index(stage)
    return STAGES[i - 1] if i else None


@pytest.fixture(scope="module")
def reference(tmp_path_factory, fake_data_root) -> Reference:
    root = tmp_path_factory.mktemp("faults")
    pipeline = root / "faults.toml"
    pipeline.write_text(textwrap.dedent(PIPELINE))
    ref = Reference(root, pipeline, fake_data_root)
    run_dir = root / "run"
    run_stage(["--version"], root / "warmup.log")  # start the forkserver outside the timings
    for stage in STAGES:
        t0 = time.monotonic()
        code, out = run_stage(ref.args(stage, run_dir), root / f"{stage}.log")
        ref.seconds[stage] = time.monotonic() - t0
        assert code == 0, out
        shutil.copytree(run_dir, ref.after(stage))
    validate(run_dir)
    lines = (run_dir / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    ref.ledger_line = sum(map(len, lines[1:])) // (len(lines) - 1)
    return ref


# ------------------------------------------------------------------------------ checks
def manifest(run_dir: Path) -> dict:
    return read_json(run_dir / "manifest.json")


def done_stages(run_dir: Path) -> list[str]:
    if not (run_dir / "manifest.json").exists():
        return []
    stages = manifest(run_dir)["stages"]
    return [s for s in STAGES if stages.get(s, {}).get("status") == "done"]


def validate(run_dir: Path) -> None:
    """Every invariant of a run directory's finished stages."""
    m = manifest(run_dir)
    config = config_mod.load(run_dir / "config.toml")
    assert m["config_sha256"] == config.fingerprint()
    done = done_stages(run_dir)
    for stage in done:
        outputs = m["stages"][stage]["outputs"]
        assert sorted(outputs) == sorted(OUTPUTS[stage]), (stage, outputs)
        for name, digest in outputs.items():
            assert sha256_file(run_dir / name) == digest, f"{name} does not match its manifest hash"
    if "partition" in done:
        parts = npz(run_dir / "partition.npz")
        verify_partition(parts, num_train=60000, keep_rate=0.01, num_public=10000, num_teachers=K,
                         student_pool=2200, test_size=100, num_queries=QUERIES)
    if "vote" in done:
        votes = npz(run_dir / "votes.npz")
        assert votes["votes"].dtype == np.int64 and votes["votes"].shape == (QUERIES, CLASSES)
        assert (votes["votes"] >= 0).all() and (votes["votes"].sum(axis=1) == K).all()
        assert np.array_equal(votes["query_index"], parts["query_index"])
    if "aggregate" in done:
        check_ledger(run_dir, complete=True)
        privacy = read_json(run_dir / "privacy.json")["public"]
        _, records = read_ledger(run_dir)
        assert privacy["queries_asked"] == len(records) == QUERIES
        assert privacy["queries_answered"] == sum(r.answered for r in records)
        assert privacy["seeded"] is True
    if "train-student" in done:
        assert torch_state(run_dir / "student" / "model.pt")
    if "evaluate" in done:
        metrics = read_json(run_dir / "metrics.json")
        assert {"teacher_accuracy_mean", "ensemble_accuracy", "label_accuracy", "student_accuracy",
                "test_size"} <= set(metrics)


def read_ledger(run_dir: Path):
    book = ledger.parse((run_dir / "ledger.jsonl").read_text(), (run_dir / "ledger.key").read_bytes(), "ledger.jsonl")
    return book.header, book.records


def check_ledger(run_dir: Path, complete: bool) -> list:
    """The ledger parses, matches the votes, holds each query once; labels.npz is what it released."""
    votes = npz(run_dir / "votes.npz")
    header, records = read_ledger(run_dir)
    ledger.check_against_votes(header, records, config_sha256=manifest(run_dir)["upstream_sha256"],
                               votes_sha256=sha256_file(run_dir / "votes.npz"), votes=votes["votes"],
                               query_index=votes["query_index"])
    raw = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()[1:]]
    assert len({r["query"] for r in raw}) == len(raw) and len({r["public_index"] for r in raw}) == len(raw), \
        "a query appears twice in the ledger"
    if complete:
        assert len(records) == len(votes["votes"])
        positions, public_index, labels = ledger.released_labels(records)
        released = npz(run_dir / "labels.npz")
        assert np.array_equal(released["query"], positions)
        assert np.array_equal(released["query_index"], public_index)
        assert np.array_equal(released["label"], labels)
    return records


def check_crash_state(run_dir: Path, before: dict[str, str], finished_before: list[str]) -> None:
    """What a crash leaves: finished stages untouched, every artifact whole (old or new, never half)."""
    if not (run_dir / "manifest.json").exists():
        return
    manifest(run_dir)  # parses
    after = tree_hashes(run_dir)
    for stage in finished_before:
        for name in OUTPUTS[stage]:
            assert after.get(name) == before[name], f"{name} of finished stage {stage} changed"
    for name in after:
        path = run_dir / name
        if Path(name).name.startswith("."):  # temporary files of atomic writes: never read
            continue
        if name.endswith(".npz"):
            npz(path)
        elif name.endswith(".pt"):
            torch_state(path)
        elif name.endswith(".json"):
            read_json(path)
    if (run_dir / "ledger.jsonl").exists() and (run_dir / "votes.npz").exists():
        check_ledger(run_dir, complete=False)


def compare_with_reference(run_dir: Path, ref_dir: Path, stage: str) -> None:
    """The resumed stage's artifacts equal those of the uninterrupted run."""
    if stage == "partition":
        a, b = npz(run_dir / "partition.npz"), npz(ref_dir / "partition.npz")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    elif stage == "train-teachers":
        assert same_state(torch_state(run_dir / "teachers/part-0-of-1.pt"),
                          torch_state(ref_dir / "teachers/part-0-of-1.pt")), "teacher weights differ"
    elif stage == "vote":
        a, b = npz(run_dir / "votes.npz"), npz(ref_dir / "votes.npz")
        assert all(np.array_equal(a[k], b[k]) for k in ("votes", "query_index"))
        assert read_json(run_dir / "teachers_eval.json") == read_json(ref_dir / "teachers_eval.json")
    elif stage == "aggregate":
        # each run draws its own ledger key, so the MACs differ; the decisions must not
        assert read_ledger(run_dir) == read_ledger(ref_dir), "ledger differs from the uninterrupted run's"
        a, b = npz(run_dir / "labels.npz"), npz(ref_dir / "labels.npz")
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        assert read_json(run_dir / "privacy.json") == read_json(ref_dir / "privacy.json")
    elif stage == "train-student":
        assert same_state(torch_state(run_dir / "student/model.pt"),
                          torch_state(ref_dir / "student/model.pt")), "student weights differ"
        assert read_json(run_dir / "student/history.json") == read_json(ref_dir / "student/history.json")
    elif stage == "evaluate":
        assert read_json(run_dir / "metrics.json") == read_json(ref_dir / "metrics.json")
    ours, theirs = manifest(run_dir)["stages"][stage], manifest(ref_dir)["stages"][stage]
    assert ours["status"] == "done" and ours["outputs"].keys() == theirs["outputs"].keys()


# ------------------------------------------------------------------------------ kill -9
@pytest.mark.parametrize("stage", STAGES)
def test_sigkill_at_random_instants_then_resume(stage, reference, tmp_path):
    """SIGKILL at seeded random instants; the rerun completes, validates and equals the reference.

    Odd-numbered instants also kill the first rerun (at another random instant) before the final one.
    """
    rng = np.random.default_rng([SEED, STAGES.index(stage)])
    duration = reference.seconds[stage]
    landed = []
    for i in range(INSTANTS):
        run_dir = tmp_path / f"kill-{i}"
        kills = 2 if i % 2 else 1
        for k in range(kills):
            fraction = float(rng.uniform(0.0, 1.0))
            for attempt in range(3 if k == 0 else 1):
                if k == 0:  # a fresh copy of the run directory as the previous stage left it
                    shutil.rmtree(run_dir, ignore_errors=True)
                    reference.restore(previous(stage), run_dir)
                    before, finished = (tree_hashes(run_dir) if run_dir.exists() else {}), done_stages(run_dir)
                args = reference.args(stage, run_dir)
                process = Stage(args, tmp_path / f"kill-{i}-{k}.log")
                if stage == "aggregate" and i % 2:
                    # Deciding the queries takes a small part of the stage (accounting dominates),
                    # so half the kills are placed by ledger size: after a random number of decisions.
                    target = (int(fraction * QUERIES) + 1) * reference.ledger_line
                    killed = process.kill_when(lambda: _size(run_dir / "ledger.jsonl") >= target)
                    at = f"ledger>={int(fraction * QUERIES) + 1}"
                else:
                    at = round(fraction * duration, 2)
                    killed = process.kill_at(at)
                if killed:
                    break
                fraction /= 2  # the stage ran faster than the reference: try earlier
            landed.append((at, killed, progress_of(run_dir, stage)))
            check_crash_state(run_dir, before, finished)
        code, out = run_stage(args, tmp_path / f"resume-{i}.log")
        assert code == 0, f"rerun after kill at {landed[-kills:]} failed:\n{out}"
        assert stage in done_stages(run_dir)
        validate(run_dir)
        compare_with_reference(run_dir, reference.after(stage), stage)
    print(f"{stage} ({duration:.2f} s): killed at (s, killed, progress) {landed}")
    assert any(killed for _, killed, _ in landed), "no instant landed while the stage was running"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def progress_of(run_dir: Path, stage: str) -> str:
    try:
        record = manifest(run_dir)["stages"][stage]
    except (OSError, ValueError, KeyError):
        return "no run directory yet"
    return record.get("progress") or record.get("status", "pending")


def test_sigkill_whole_pipeline_then_resume(reference, tmp_path):
    """`pate run` killed three times at random instants, then rerun: every stage equals the reference."""
    rng = np.random.default_rng([SEED, len(STAGES)])
    total = sum(reference.seconds.values())
    run_dir = tmp_path / "run"
    args = ["run", *reference.args(STAGES[0], run_dir)[1:]]
    for i in range(max(1, INSTANTS // 5)):
        landed = []
        for k in range(3):  # each kill lands in what is left to do
            left = sum(reference.seconds[s] for s in STAGES if s not in done_stages(run_dir)) if k else total
            at = float(rng.uniform(0.0, 1.0)) * left
            killed = Stage(args, tmp_path / f"kill-{i}-{k}.log").kill_at(at)
            landed.append((round(at, 2), killed, [s for s in STAGES if s in done_stages(run_dir)][-1:]))
        code, out = run_stage(args, tmp_path / f"resume-{i}.log")
        assert code == 0, f"rerun after kills at {landed} failed:\n{out}"
        print(f"pate run ({total:.2f} s): killed at (s, killed, last stage done) {landed}")
        validate(run_dir)
        for stage in STAGES:
            compare_with_reference(run_dir, reference.after(stage), stage)
        shutil.rmtree(run_dir)


# ------------------------------------------------------------------------------ partial states
def make_partial(reference: Reference, stage: str, run_dir: Path) -> Path:
    """The run directory as a crash in the middle of ``stage`` leaves it (progress saved, no outputs)."""
    reference.restore(stage, run_dir)
    m = manifest(run_dir)
    record = m["stages"][stage]
    for key in ("finished", "outputs", "seconds"):
        record.pop(key, None)
    record.update(status="partial", progress="test: interrupted")
    (run_dir / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    for name in OUTPUTS[stage]:
        if name != "ledger.jsonl":
            (run_dir / name).unlink()
    if stage == "vote":  # first chunk voted
        ref = npz(reference.after("vote") / "votes.npz")
        np.savez(run_dir / "votes.partial.npz", votes=ref["votes"][:1024], query_index=ref["query_index"][:1024])
    if stage == "aggregate":  # 300 of 2100 queries decided, as the manifest says
        lines = (run_dir / "ledger.jsonl").read_text().splitlines(keepends=True)
        (run_dir / "ledger.jsonl").write_text("".join(lines[:301]))
        record["decided"] = 300
        record["nonce"] = _partial_aggregation_in_spend_log(run_dir, record["nonce"])
        (run_dir / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    return run_dir


def _partial_aggregation_in_spend_log(run_dir: Path, reference_nonce: str) -> str:
    """A fresh aggregation in the spend log whose ledger got to where ``run_dir``'s stops: what a
    crash leaves. (A copy of the reference's own would be refused: the log saw that ledger finish.)"""
    import dataclasses
    import uuid

    from pate.run import spend_log
    from pate.privacy import ledger
    from pate.run.artifacts import LEDGER_KEY

    nonce = uuid.uuid4().hex
    entry = next(e for e in spend_log.entries() if e.nonce == reference_nonce and e.kind == "aggregation")
    parts = npz(run_dir / "partition.npz")
    spend_log.begin(dataclasses.replace(entry, nonce=nonce), parts["record_fingerprint"][parts["teacher_of"] >= 0])
    book = ledger.parse((run_dir / "ledger.jsonl").read_text(), (run_dir / LEDGER_KEY).read_bytes())
    spend_log.Holder(nonce, book.macs)
    return nonce


@pytest.mark.parametrize("stage", ["train-teachers", "vote", "aggregate", "train-student"])
def test_resume_from_partial_state(stage, reference, tmp_path):
    """The partial states the bad-input cases start from resume cleanly when undamaged."""
    run_dir = make_partial(reference, stage, tmp_path / "run")
    code, out = run_stage(reference.args(stage, run_dir), tmp_path / "log")
    assert code == 0, out
    validate(run_dir)
    compare_with_reference(run_dir, reference.after(stage), stage)


# ------------------------------------------------------------------------------ bad input
def expect_user_error(args: list, log: Path, run_dir: Path, stage: str | None, match: str, fault=None) -> str:
    """One line 'Error: ...' matching ``match``, exit 2, and no artifact changed.

    ``stage``: the stage the command runs; its own manifest entry may go from pending to partial
    (checked strictly in test_refused_stage_leaves_manifest_untouched), nothing else may change. A
    run directory that did not exist may be created holding only its config and manifest.
    """
    before = tree_hashes(run_dir) if run_dir.exists() else {}
    old_manifest = (run_dir / "manifest.json").read_bytes() if "manifest.json" in before else None
    code, out = run_stage(args, log, fault=fault)
    lines = out.strip().splitlines()
    assert "Traceback" not in out, out
    assert code == 2, out
    assert len(lines) == 1 and lines[0].startswith("Error: "), out
    assert re.search(match, lines[0]), lines[0]
    after = tree_hashes(run_dir) if run_dir.exists() else {}
    if not before and after:  # a fresh run directory: created, nothing finished
        assert set(after) <= {"config.toml", "manifest.json"}, sorted(after)
        assert not done_stages(run_dir)
        return lines[0]
    assert after.keys() == before.keys(), f"files added or removed: {sorted(after.keys() ^ before.keys())}"
    changed = [name for name in before if before[name] != after[name]]
    if stage is not None and changed == ["manifest.json"]:
        old, new = json.loads(old_manifest), manifest(run_dir)
        old_stage, new_stage = old["stages"].pop(stage), new["stages"].pop(stage)
        assert old == new, "the manifest changed outside the refused stage's entry"
        assert new_stage["status"] != "done" and new_stage.get("outputs") == old_stage.get("outputs")
        changed = []
    assert not changed, f"artifacts changed: {changed}"
    return lines[0]


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def rehash(run_dir: Path, stage: str, name: str) -> None:
    """Record a (tampered) file's hash in the manifest, as if the stage had written it."""
    m = manifest(run_dir)
    m["stages"][stage]["outputs"][name] = sha256_file(run_dir / name)
    (run_dir / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")


def edit_ledger(run_dir: Path, edit) -> None:
    path = run_dir / "ledger.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))


def edit_line(line: str, **fields) -> str:
    obj = json.loads(line)
    obj.update(fields)
    return json.dumps(obj, separators=(",", ":")) + "\n"


def retag_checkpoint(path: Path) -> None:
    """The same checkpoint, as if written by a run with another config (other fingerprint)."""
    import torch

    blob = torch.load(path, map_location="cpu", weights_only=True)
    blob["fingerprint"] = "0" * 64
    torch.save(blob, path)


def invalid_partition(run_dir: Path) -> None:
    """A partition whose shards overlap: record 0's teacher moved so teacher 0 gets one too many."""
    parts = npz(run_dir / "partition.npz")
    teacher_of = parts["teacher_of"].copy()
    used = np.flatnonzero(teacher_of >= 0)
    teacher_of[used[teacher_of[used] == 1][0]] = 0
    parts["teacher_of"] = teacher_of
    np.savez(run_dir / "partition.npz", **parts)
    rehash(run_dir, "partition", "partition.npz")


def votes_not_summing_to_k(run_dir: Path) -> None:
    votes = npz(run_dir / "votes.npz")
    votes["votes"] = votes["votes"].copy()
    votes["votes"][5, 0] += 1
    np.savez(run_dir / "votes.npz", **votes)
    rehash(run_dir, "vote", "votes.npz")


def write_pipeline(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(textwrap.dedent(text))
    return path


@dataclass
class Case:
    """A bad-input case: the run directory after ``base`` (or a partial ``stage``), damaged by ``damage``."""
    base: str | None  # finished stage to start from; "partial:STAGE" for a mid-stage state
    damage: object  # callable(run_dir, tmp_path) or None
    command: str  # a stage, or "status" / "audit"
    match: str
    pipeline: str | None = None  # other pipeline text
    data: str | None = None  # "empty", "damaged", "small": another data root
    fault: tuple | None = None


def _on(name, fn):
    return lambda run_dir, tmp: fn(run_dir / name)


HASH = "does not match the hash"
CASES = {
    # -- damaged or truncated artifacts of finished stages: refused by their manifest hash
    "partition-truncated": Case("partition", _on("partition.npz", truncate), "train-teachers", HASH),
    "partition-bitflip": Case("partition", _on("partition.npz", flip_byte), "train-teachers", HASH),
    "partition-missing": Case("partition", _on("partition.npz", Path.unlink), "train-teachers", "is missing"),
    "partition-overlapping-shards": Case("partition", lambda r, t: invalid_partition(r), "train-teachers",
                                         "partition.npz is invalid"),
    "teachers-part-truncated": Case("train-teachers", _on("teachers/part-0-of-1.pt", truncate), "vote",
                                    "does not match the hash"),
    "teachers-eval-truncated": Case("train-student", _on("teachers_eval.json", truncate), "evaluate", HASH),
    "votes-truncated": Case("vote", _on("votes.npz", truncate), "aggregate", "does not match the hash"),
    "votes-bitflip": Case("vote", _on("votes.npz", flip_byte), "aggregate", "does not match the hash"),
    "votes-missing": Case("vote", _on("votes.npz", Path.unlink), "aggregate", "is missing"),
    "votes-rows-not-summing-to-K": pytest.param(Case("vote", lambda r, t: votes_not_summing_to_k(r), "aggregate",
                                                     "sum")),
    "labels-truncated": Case("aggregate", _on("labels.npz", truncate), "train-student", "does not match the hash"),
    "student-model-truncated": Case("train-student", _on("student/model.pt", truncate), "evaluate",
                                    "does not match the hash"),
    "audit-ledger-truncated": Case("aggregate", _on("ledger.jsonl", lambda p: truncate(p, 0.7)), "audit",
                                   "ledger"),
    # -- damaged progress of a partial stage (checkpoints, partial votes, the ledger)
    "teachers-checkpoint-truncated": pytest.param(Case("partial:train-teachers", _on(
        "teachers/checkpoint-0-of-1.pt", truncate), "train-teachers", "checkpoint")),
    "teachers-checkpoint-garbage": pytest.param(Case("partial:train-teachers", _on(
        "teachers/checkpoint-0-of-1.pt", garbage), "train-teachers", "checkpoint")),
    "teachers-checkpoint-foreign": pytest.param(Case("partial:train-teachers", _on(
        "teachers/checkpoint-0-of-1.pt", retag_checkpoint), "train-teachers", "checkpoint")),
    "student-checkpoint-truncated": pytest.param(Case("partial:train-student", _on(
        "student/checkpoint.pt", truncate), "train-student", "checkpoint")),
    "student-checkpoint-foreign": pytest.param(Case("partial:train-student", _on(
        "student/checkpoint.pt", retag_checkpoint), "train-student", "checkpoint")),
    "votes-partial-truncated": pytest.param(Case("partial:vote", _on("votes.partial.npz", truncate), "vote",
                                                 "votes.partial.npz")),
    "ledger-truncated-mid-line": Case("partial:aggregate", _on("ledger.jsonl", lambda p: truncate(p, 0.5)),
                                      "aggregate", "middle of a line"),
    "ledger-empty": Case("partial:aggregate", _on("ledger.jsonl", lambda p: p.write_bytes(b"")), "aggregate",
                         "empty"),
    "ledger-line-dropped": Case("partial:aggregate", lambda r, t: edit_ledger(r, lambda ls: ls[:100] + ls[101:]),
                                "aggregate", "integrity check"),
    "ledger-line-repeated": Case("partial:aggregate", lambda r, t: edit_ledger(r, lambda ls: ls[:101] + ls[100:]),
                                 "aggregate", "integrity check"),
    "ledger-cut-at-a-line": Case("partial:aggregate", lambda r, t: edit_ledger(r, lambda ls: ls[:201]),
                                 "aggregate", "it was cut"),
    "ledger-deleted": Case("partial:aggregate", _on("ledger.jsonl", lambda p: p.unlink()), "aggregate",
                           "it was deleted"),
    "ledger-label-changed": Case("partial:aggregate", lambda r, t: edit_ledger(
        r, lambda ls: ls[:9] + [edit_line(ls[9], label=(json.loads(ls[9])["label"] + 1) % 10)] + ls[10:]),
        "aggregate", "integrity check"),
    "ledger-key-deleted": Case("partial:aggregate", _on("ledger.key", lambda p: p.unlink()), "aggregate",
                               "ledger.key is missing"),
    "ledger-line-garbage": Case("partial:aggregate", lambda r, t: edit_ledger(
        r, lambda ls: ls[:50] + ["{not json\n"] + ls[51:]), "aggregate", "not JSON"),
    "ledger-record-tampered": Case("partial:aggregate", lambda r, t: edit_ledger(
        r, lambda ls: ls[:7] + [edit_line(ls[7], top_count=json.loads(ls[7])["top_count"] - 1)] + ls[8:]),
        "aggregate", "integrity check"),
    "ledger-header-other-config": Case("partial:aggregate", lambda r, t: edit_ledger(
        r, lambda ls: [edit_line(ls[0], config_sha256="0" * 64)] + ls[1:]), "aggregate", "integrity check"),
    "ledger-header-other-votes": Case("partial:aggregate", lambda r, t: edit_ledger(
        r, lambda ls: [edit_line(ls[0], votes_sha256="0" * 64)] + ls[1:]), "aggregate", "integrity check"),
    "privacy-json-garbage": pytest.param(Case("aggregate", lambda r, t: _partial_aggregate_with_report(r), "aggregate",
                                              "privacy.json")),
    # -- the run directory itself
    "manifest-truncated": Case("vote", _on("manifest.json", truncate), "aggregate", "manifest.json is unreadable"),
    "manifest-binary": pytest.param(Case("vote", _on("manifest.json", garbage), "aggregate",
                                         "manifest.json is unreadable")),
    "status-config-toml-garbage": Case("vote", _on("config.toml", lambda p: p.write_text("[[[ not toml\n")), "status",
                                       "config.toml"),
    "other-config": Case("vote", None, "aggregate", r"differ from it: \[teachers\] epochs: 4 -> 5",
                         pipeline=PIPELINE.replace("epochs = 4", "epochs = 5")),
    "other-config-pate-run": Case("vote", None, "run", r"differ from it: \[aggregator\] sigma2: 1.0 -> 2.0",
                                  pipeline=PIPELINE.replace("sigma2 = 1.0", "sigma2 = 2.0")),
    "other-pipeline-same-dir": Case("vote", None, "vote", "differ from it: name: 'faults' -> 'other'",
                                    pipeline=PIPELINE.replace('name = "faults"', 'name = "other"')),
    "not-a-run-directory": Case(None, lambda r, t: (r.mkdir(), (r / "notes.txt").write_text("mine\n")), "partition",
                                "not a pate run directory"),
    "manifest-entry-wrong-type": Case("vote", lambda r, t: _edit_manifest(r, lambda m: m["stages"].update(vote=7)),
                                      "aggregate", "not a valid pate manifest"),
    "manifest-outputs-wrong-type": Case("vote", lambda r, t: _edit_manifest(
        r, lambda m: m["stages"]["vote"].update(outputs=["votes.npz"])), "aggregate", "not a valid pate manifest"),
    "config-toml-edited": Case("aggregate", _on("config.toml", lambda p: p.write_text(
        p.read_text().replace("sigma2 = 1.0", "sigma2 = 0.5"))), "audit", r"\[aggregator\] sigma2: 1.0 -> 0.5"),
    "finished-artifact-missing": Case("aggregate", _on("labels.npz", lambda p: p.unlink()), "train-student",
                                      "restore it from a backup"),
    "privacy-json-edited-summary": Case("evaluate", _on("privacy.json", lambda p: p.write_text(
        p.read_text().replace('"queries_asked": 2100', '"queries_asked": 2000'))), "run", HASH),
    "privacy-json-garbage-summary": Case("evaluate", _on("privacy.json", garbage), "run", HASH),
    "metrics-json-missing-key": Case("evaluate", _on("metrics.json", lambda p: p.write_text("{}")), "run", HASH),
    "stage-out-of-order": Case("partition", None, "vote", "'train-teachers' has not finished"),
    "pipeline-file-missing": Case("partition", None, "train-teachers", "not found", pipeline="<missing>"),
    "pipeline-file-invalid": Case(None, None, "partition", "pipeline", pipeline="name = [unclosed\n"),
    # -- the dataset
    "dataset-missing": Case(None, None, "partition", "could not download mnist", data="empty", fault=("offline", 0)),
    "dataset-missing-later": Case("partition", None, "train-teachers", "could not download mnist", data="empty",
                                  fault=("offline", 0)),
    "dataset-damaged": Case(None, None, "partition", "damaged", data="damaged"),
    "dataset-wrong-size": Case(None, None, "partition", "expected 60000/10000", data="small"),
}


def _partial_aggregate_with_report(run_dir: Path) -> None:
    """A crash after privacy.json was written but before the stage was marked done; then damage."""
    m = manifest(run_dir)
    m["stages"]["aggregate"].update(status="partial", outputs={})
    (run_dir / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    (run_dir / "privacy.json").write_text('{"queries_asked": 21')


def _data_root(kind: str | None, reference: Reference, tmp_path: Path) -> Path:
    if kind is None:
        return reference.data_root
    root = tmp_path / f"data-{kind}"
    if kind == "empty":
        root.mkdir()
    elif kind == "damaged":
        shutil.copytree(reference.data_root, root)
        truncate(root / "MNIST" / "raw" / "train-images-idx3-ubyte", 0.3)
    elif kind == "small":
        from .conftest import write_idx_mnist

        write_idx_mnist(root, num_train=1000, num_test=200)
    return root


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input(case, reference, tmp_path):
    run_dir = tmp_path / "run"
    if case.base is None:
        pass
    elif case.base.startswith("partial:"):
        make_partial(reference, case.base.split(":", 1)[1], run_dir)
    else:
        reference.restore(case.base, run_dir)
    if case.damage is not None:
        case.damage(run_dir, tmp_path)
    pipeline = reference.pipeline
    if case.pipeline == "<missing>":
        pipeline = tmp_path / "missing.toml"
    elif case.pipeline is not None:
        pipeline = write_pipeline(tmp_path, case.pipeline)
    data_root = _data_root(case.data, reference, tmp_path)
    if case.command in ("status", "audit"):
        args, stage = [case.command, run_dir], None
    else:
        args = reference.args(case.command, run_dir, pipeline=pipeline, data_root=data_root)
        stage = case.command if case.command in STAGES else None
    expect_user_error(args, tmp_path / "log", run_dir, stage, case.match, fault=case.fault)


def _edit_manifest(run_dir: Path, edit) -> None:
    m = manifest(run_dir)
    edit(m)
    (run_dir / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")


BAD_SETTINGS = {  # settings that cannot be accounted, or names and seeds no run may have
    "threshold-above-teachers": (("threshold = 4", "threshold = 25"), r"threshold must be in \[0, 6\]"),
    "threshold-far-above": (("threshold = 4", "threshold = 1000"), r"threshold must be in \[0, 6\]"),
    "orders-huge": (("delta = 1e-4", "delta = 1e-4\norders = [1e300]"), "orders must be a list"),
    "ss-beta-huge": (("delta = 1e-4", "delta = 1e-4\nss_order = 2.0\nss_beta = 1e308\nss_sigma = 1.0"),
                     "ss_beta must be in"),
    "sigma-huge": (("sigma1 = 1.0", "sigma1 = 1e300"), "sigma1 must be in"),
    "sigma-tiny": (("sigma2 = 1.0", "sigma2 = 1e-300"), "sigma2 must be in"),
    "aggregator-seed-negative": (("seed = 7", "seed = -7"), r"seed must be absent \(OS noise\) or in"),
    "teachers-seed-negative": (("epochs = 4", "epochs = 4\nseed = -1"), r"\[teachers\] seed must be in"),
    "split-seed-negative": (("split_seed = 0", "split_seed = -3"), r"\[data\] split_seed must be in"),
    "name-dot": (('name = "faults"', 'name = "."'), "safe directory name"),
    "name-nul": (('name = "faults"', 'name = "fa\\u0000ults"'), "safe directory name"),
}


@pytest.mark.parametrize("name", list(BAD_SETTINGS))
def test_settings_that_cannot_be_accounted_are_refused_before_anything(name, reference, tmp_path):
    """One line, exit 2, nothing written: the run directory is not even created."""
    (old, new), match = BAD_SETTINGS[name]
    pipeline = write_pipeline(tmp_path, PIPELINE.replace(old, new))
    run_dir = tmp_path / "run"
    for command in ("run", "aggregate"):
        expect_user_error(reference.args(command, run_dir, pipeline=pipeline), tmp_path / "log", run_dir, None, match)
        assert not run_dir.exists()


def test_pipeline_file_not_utf8(reference, tmp_path):
    pipeline = tmp_path / "latin1.toml"
    pipeline.write_bytes(PIPELINE.replace("faults", "fa\u00e7ade").encode("latin-1"))
    expect_user_error(reference.args("partition", tmp_path / "run", pipeline=pipeline), tmp_path / "log",
                      tmp_path / "run", None, "not UTF-8")


@pytest.mark.parametrize("delay", [0.0, 0.2, 0.6, 0.9])
def test_two_aggregations_of_one_run_never_spend_twice(delay, reference, tmp_path):
    """Two `pate aggregate` on one run directory, started together or a little apart: one decides,
    the other is refused with who holds the lock (or finds the stage done); every query once."""
    from pate.run import spend_log

    run_dir = reference.restore("vote", tmp_path / "run")
    _edit_manifest(run_dir, lambda m: m.update(run_id=f"race-{delay}-{tmp_path.name}"))
    first = Stage(reference.args("aggregate", run_dir), tmp_path / "first.log")
    time.sleep(delay)
    second = Stage(reference.args("aggregate", run_dir), tmp_path / "second.log")
    codes = first.wait(), second.wait()
    outputs = first.output, second.output
    assert 0 in codes, outputs
    for code, out in zip(codes, outputs):
        assert code == 0 or (code == 2 and "is in use by pid" in out and len(out.strip().splitlines()) == 1), out
    validate(run_dir)
    compare_with_reference(run_dir, reference.after("aggregate"), "aggregate")
    nonce = manifest(run_dir)["stages"]["aggregate"]["nonce"]
    entries = [e for e in spend_log.entries() if e.nonce == nonce]
    assert [e.kind for e in entries] == ["aggregation"]


def test_a_lock_held_by_a_dead_process_is_no_lock(reference, tmp_path):
    """kill -9 while holding the lock: the kernel releases it and the next command runs."""
    run_dir = reference.restore("vote", tmp_path / "run")
    stage = Stage(reference.args("aggregate", run_dir), tmp_path / "killed.log")
    assert stage.kill_when(lambda: (run_dir / ".lock").exists() and (run_dir / ".lock").stat().st_size > 0)
    code, out = run_stage(reference.args("aggregate", run_dir), tmp_path / "log")
    assert code == 0, out
    validate(run_dir)


def test_refused_stage_leaves_manifest_untouched(reference, tmp_path):
    """Strictly no artifact changed, the manifest included, when a stage refuses its inputs."""
    run_dir = reference.restore("vote", tmp_path / "run")
    truncate(run_dir / "votes.npz")
    before = tree_hashes(run_dir)
    code, out = run_stage(reference.args("aggregate", run_dir), tmp_path / "log")
    assert code == 2, out
    assert tree_hashes(run_dir) == before, "manifest.json changed: " + json.dumps(
        manifest(run_dir)["stages"]["aggregate"])


# ------------------------------------------------------------------------------ disk full
# The n-th fsync of a regular file fails with ENOSPC (a full disk); n = 1 is the stage's first write
# (nothing may change), the larger n land after some progress was saved (checkpoint, partial votes,
# a ledger chunk).
DISK_FULL = [(stage, 1) for stage in STAGES] + [
    ("partition", 4), ("train-teachers", 5), ("vote", 4), ("aggregate", 5), ("train-student", 3), ("evaluate", 2)]


@pytest.mark.parametrize("stage,nth", [pytest.param(s, n, id=f"{s}-fsync{n}")
                                       for s, n in DISK_FULL])
def test_disk_full_is_one_line_error(stage, nth, reference, tmp_path):
    run_dir = reference.restore(previous(stage), tmp_path / "run")
    before = tree_hashes(run_dir) if run_dir.exists() else {}
    code, out = run_stage(reference.args(stage, run_dir), tmp_path / "log", fault=("enospc", nth))
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "No space left on device" in lines[0], out
    if nth == 1:  # the stage's first write failed: nothing changed
        assert (tree_hashes(run_dir) if run_dir.exists() else {}) == before


@pytest.mark.parametrize("stage,nth", [pytest.param(s, n, id=f"{s}-fsync{n}") for s, n in DISK_FULL if n > 1])
def test_disk_full_then_resume(stage, nth, reference, tmp_path):
    """After a write fails for lack of space, earlier artifacts are intact and a rerun equals the reference."""
    run_dir = reference.restore(previous(stage), tmp_path / "run")
    before = tree_hashes(run_dir) if run_dir.exists() else {}
    finished = done_stages(run_dir) if run_dir.exists() else []
    code, out = run_stage(reference.args(stage, run_dir), tmp_path / "log", fault=("enospc", nth))
    assert code != 0 and "No space left on device" in out, out
    check_crash_state(run_dir, before, finished)
    leftovers = [p.name for p in run_dir.rglob(".*") if p.is_file() and p.name != ".lock"]
    assert not leftovers, f"temporary files left behind: {leftovers}"
    code, out = run_stage(reference.args(stage, run_dir), tmp_path / "resume.log")
    assert code == 0, out
    validate(run_dir)
    compare_with_reference(run_dir, reference.after(stage), stage)


@pytest.mark.parametrize("nth", [1, 2], ids=["header", "first-chunk"])
def test_short_ledger_write_is_one_line_error_and_resumable(reference, tmp_path, nth):
    """A disk that fills while the ledger is created or appended to (short write): one line, exit 2,
    nothing half-written left, and a rerun resumes."""
    run_dir = reference.restore("vote", tmp_path / "run")
    # os.write calls on regular files: the ledger header, then the first chunk's append
    code, out = run_stage(reference.args("aggregate", run_dir), tmp_path / "log", fault=("short-write", nth))
    lines = out.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), out
    code, out = run_stage(reference.args("aggregate", run_dir), tmp_path / "resume.log")
    assert code == 0, out
    validate(run_dir)
    compare_with_reference(run_dir, reference.after("aggregate"), "aggregate")


# ------------------------------------------------------------------------------ Ctrl-C
def _wait_partial(run_dir: Path, stage: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if manifest(run_dir)["stages"][stage]["status"] == "partial":
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    if process.poll() is None:
        process.kill()
    raise AssertionError(f"{stage} never started:\n{process.communicate()[0]}")


@pytest.mark.parametrize("stage", ["train-teachers", "aggregate", "train-student"])
def test_sigint_mid_stage_then_clean_resume(stage, reference, tmp_path):
    """Ctrl-C in a real `python -m pate` process: one line, exit 2, then the rerun equals the reference."""
    run_dir = reference.restore(previous(stage), tmp_path / "run")
    before, finished = tree_hashes(run_dir), done_stages(run_dir)
    args = [sys.executable, "-m", "pate", *map(str, reference.args(stage, run_dir))]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # A shell without job control starts background jobs with SIGINT ignored, and a child inherits
    # that; give the child the default disposition so Python installs its Ctrl-C handler.
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_partial(run_dir, stage, process)
        time.sleep(0.3 * reference.seconds[stage])
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    lines = out.strip().splitlines()
    assert process.returncode == 2, out
    assert lines == ["Error: interrupted; rerun the same command to resume"], out
    assert manifest(run_dir)["stages"][stage]["status"] == "partial"
    check_crash_state(run_dir, before, finished)
    code, out = run_stage(reference.args(stage, run_dir), tmp_path / "resume.log")
    assert code == 0, out
    validate(run_dir)
    compare_with_reference(run_dir, reference.after(stage), stage)
