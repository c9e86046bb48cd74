"""Issue 31, "no traceback, nothing hangs": what a user hands pate as a pipeline file, a budgets
file or a setting ends as a config, or as one line (a ``PateError``, exit 2), never a traceback, a
read without end or an allocation beyond the machine. Each test names the class of input it covers."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
import tracemalloc
from pathlib import Path
from typing import Optional, get_type_hints

import numpy as np
import pytest
from click.testing import CliRunner

from pate.aggregation import budgets
from pate import config as config_mod
from pate.cli import main
from pate.privacy import smooth_sensitivity as ss
from pate.privacy.smooth_sensitivity import _threshold_rdp_table
from pate.run.directory import RunError
from pate.stages import open_run


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging the suite) if the block takes longer than ``seconds``."""
    def expired(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(result, match: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert match in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    return result.output


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ----------------------------------------------------------------------------- the pipeline file


def test_a_fifo_as_the_pipeline_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipeline.toml"
    os.mkfifo(fifo)  # no writer: opening it blocking, or reading it, would wait forever
    with deadline(20):
        one_line(invoke("plan", fifo), "is a FIFO, not a regular file")
        one_line(invoke("run", fifo, "--run-dir", tmp_path / "run"), "is a FIFO, not a regular file")
    assert not (tmp_path / "run").exists()


def test_an_oversize_pipeline_file_is_refused_before_it_is_parsed(tmp_path):
    # /dev/zero's class: more bytes than any pipeline file holds (a regular file here; tests never read /dev)
    path = tmp_path / "big.toml"
    path.write_bytes(b"name = 'x'\n" + b"#" * config_mod.MAX_PIPELINE_BYTES)
    with pytest.raises(config_mod.ConfigError, match="larger than 8 MiB, the most pate reads for a pipeline file"):
        config_mod.load(path)
    one_line(invoke("plan", path), "larger than 8 MiB")


def test_a_byte_order_mark_in_a_pipeline_file_is_accepted(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_text('name = "bom"\n[aggregator]\nsigma2 = 41\n', encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    config = config_mod.load(path)
    assert config.name == "bom" and config.aggregator.sigma2 == 41


@pytest.mark.parametrize("nested", ["a = " + "[" * 100_000, "a = " + "{b = " * 50_000,
                                    "[data]\nclasses = " + "[" * 100_000 + "]" * 100_000])
def test_toml_nested_thousands_deep_is_one_line(tmp_path, nested):
    path = tmp_path / "deep.toml"
    path.write_text(nested + "\n")
    with pytest.raises(config_mod.ConfigError, match="nested too deep"):
        config_mod.load(path)
    one_line(invoke("plan", path), "nested too deep")


def test_a_pipeline_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    one_line(invoke("plan", path), "is not UTF-8 text")


# ----------------------------------------------------------------------------- integer settings


def integer_settings() -> list[tuple[str, str]]:
    """Every integer setting of every section, whatever is added later."""
    out = []
    for section, cls in get_type_hints(config_mod.PipelineConfig).items():
        if not dataclasses.is_dataclass(cls):
            continue
        for key, hint in get_type_hints(cls).items():
            if hint in (int, Optional[int]):
                out.append((section, key))
    return out


def test_the_integer_settings_are_all_found():
    found = set(integer_settings())
    assert {("teachers", "batch_size"), ("student", "batch_size"), ("teachers", "epochs"), ("student", "steps"),
            ("data", "image_size"), ("aggregator", "max_queries"), ("aggregator", "seed")} <= found


@pytest.mark.parametrize("section, key", integer_settings())
def test_every_integer_setting_has_an_upper_bound_checked_at_load(section, key):
    # 2**62 for the sizes and counts; the seeds take any 63-bit value, so 2**64 for every setting
    for value in (2**62, 2**64) if "seed" not in key else (2**64,):
        with pytest.raises(config_mod.ConfigError, match=rf"^\[{section}\] {key} must be .*; found {value}$"):
            config_mod.from_dict({"name": "x", section: {key: value}})


def test_a_batch_size_of_2_to_the_62_is_one_line_naming_the_key(tmp_path):
    path = tmp_path / "big.toml"
    for section in ("teachers", "student"):
        path.write_text(f'name = "big"\n[{section}]\nbatch_size = {2**62}\n')
        one_line(invoke("plan", path), f"[{section}] batch_size must be between 1 and {config_mod.MAX_BATCH}")
        one_line(invoke("run", path, "--run-dir", tmp_path / "run"), f"[{section}] batch_size")
    assert not (tmp_path / "run").exists()


def test_the_largest_valid_pipeline_file_is_read(tmp_path):
    names = ["\U0001F600" * 195 + f"{i:05d}" for i in range(config_mod.MAX_CLASSES)]  # 200 characters of 4 bytes
    path = tmp_path / "classes.toml"
    path.write_text('name = "x"\n[data]\nsource = "arrays"\nprivate_file = "a"\npublic_file = "b"\nclasses = ['
                    + ", ".join(json.dumps(n, ensure_ascii=False) for n in names) + "]\n", encoding="utf-8")
    assert len(config_mod.load(path).data.classes) == config_mod.MAX_CLASSES


def test_the_bounds_admit_the_shipped_pipelines():
    for path in sorted((Path(__file__).resolve().parents[1] / "pipelines").glob("*.toml")):
        config_mod.load(path)


# ----------------------------------------------------------------------------- a mechanism's own settings


def test_a_mechanism_is_checked_against_its_own_settings_only(tmp_path):
    # interactive_rounds (3 by default) belongs to interactive-gnmax: it never refuses another mechanism
    for mechanism in ("confident-gnmax", "gnmax", "lnmax"):
        config = config_mod.from_dict({"name": "x", "aggregator": {"mechanism": mechanism, "max_queries": 2}})
        assert config.aggregator.max_queries == 2
    path = tmp_path / "two.toml"
    path.write_text('name = "two"\n[aggregator]\nmax_queries = 2\n')
    assert invoke("plan", path).exit_code == 0
    # where it is the mechanism's own, the relation holds
    with pytest.raises(config_mod.ConfigError, match=r"\[aggregator\] interactive_rounds must be between 1 and "
                                                     r"max_queries \(2\); found 3"):
        config_mod.from_dict({"name": "x", "aggregator": {"mechanism": "interactive-gnmax", "max_queries": 2}})


# ----------------------------------------------------------------------------- the config-diff message


def test_a_setting_left_out_of_a_changed_config_is_shown_at_its_default_not_none(tmp_path):
    open_run(tmp_path / "r", config_mod.from_dict({"name": "t", "aggregator": {"soft_labels": True}}))
    with pytest.raises(RunError) as refused:
        open_run(tmp_path / "r", config_mod.from_dict({"name": "t"}))
    message = str(refused.value)
    assert "[aggregator] soft_labels: True -> False (default)" in message and "None" not in message


def test_differences_say_added_removed_or_default():
    new = json.loads(json.dumps(config_mod.from_dict({"name": "t"}).canonical_dict()))
    old = json.loads(json.dumps(new))
    old["aggregator"]["retired_key"] = 3  # a key some other version of pate wrote
    old["data"]["classes"] = ["a", "b"]  # an ADDED_LATER key, left out of the new dict at its default
    old["extra"] = {"x": 1}
    assert config_mod.differences(old, new) == [
        "[aggregator] retired_key: removed (was 3)", "[data] classes: ['a', 'b'] -> [] (default)",
        "extra: removed (was {'x': 1})"]
    assert config_mod.differences(new, old) == [
        "[aggregator] retired_key: added (3)", "[data] classes: [] (default) -> ['a', 'b']", "extra: added ({'x': 1})"]
    # None is shown where it is the value itself (seed: OS noise)
    seeded = json.loads(json.dumps(config_mod.from_dict({"name": "t", "aggregator": {"seed": 3}}).canonical_dict()))
    assert config_mod.differences(seeded, new) == ["[aggregator] seed: 3 -> None"]


# ----------------------------------------------------------------------------- the budgets file


def write_budgets(tmp_path, text: str, encoding: str = "utf-8") -> str:
    path = tmp_path / "budgets.csv"
    path.write_text(text, encoding=encoding)
    return str(path)


def test_a_fifo_as_the_budgets_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "budgets.csv"
    os.mkfifo(fifo)
    with deadline(20), pytest.raises(budgets.BudgetError, match="is a FIFO, not a regular file"):
        budgets.levels(str(fifo), 1.0)


def test_an_oversize_budgets_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(budgets, "MAX_BUDGETS_BYTES", 1000)  # the bound itself is 256 MiB
    path = write_budgets(tmp_path, "record,epsilon\n" + "".join(f"r{i},0.5\n" for i in range(200)))
    with pytest.raises(budgets.BudgetError, match="larger than 1000 bytes") as refused:
        budgets.resolve(path, 1.0, 10, [f"r{i}" for i in range(10)])
    assert "\n" not in str(refused.value)


def test_a_byte_order_mark_in_the_budgets_file_is_accepted(tmp_path):
    path = write_budgets(tmp_path, "record,epsilon\nr1,0.5\n", encoding="utf-8-sig")
    assert budgets.levels(path, 1.0) == [0.5, 1.0]
    assert budgets.resolve(path, 1.0, 3, ["r0", "r1", "r2"]).tolist() == [1.0, 0.5, 1.0]


def test_a_field_longer_than_the_csv_limit_is_one_line_naming_the_line(tmp_path):
    path = write_budgets(tmp_path, "record,epsilon\nr1,0.5\n" + "x" * 200_000 + ",0.5\n")
    with pytest.raises(budgets.BudgetError, match=r"line 3: not a CSV row \(field larger than field limit") as refused:
        budgets.levels(path, 1.0)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 500


def test_budgets_line_numbers_count_lines(tmp_path):
    path = write_budgets(tmp_path, "record,epsilon\r\n\r\nr1,0.5\r\nr2,x\r\n")
    with pytest.raises(budgets.BudgetError, match="line 4: epsilon 'x' is not a number"):
        budgets.levels(path, 1.0)


# ----------------------------------------------------------------------------- smooth sensitivity's tables


def threshold_table_reference(votes, threshold, sigma1, order):
    """The former (n+1) x n recurrence of ``local_sensitivity_threshold``, O(n^2) memory."""
    votes = np.asarray(votes)
    n = int(votes.sum(axis=1)[0])
    r = _threshold_rdp_table(n, float(threshold), float(sigma1), float(order))
    step = np.abs(np.diff(r))
    ls_v = np.maximum(np.append(step, 0.0), np.insert(step, 0, 0.0))
    table = np.empty((n + 1, n))
    table[:, 0] = ls_v
    for d in range(1, n):
        prev = table[:, d - 1]
        table[:, d] = np.maximum(prev, np.maximum(np.append(prev[1:], 0.0), np.insert(prev[:-1], 0, 0.0)))
    table[:, -1] = ls_v.max()
    return table[votes.max(axis=1)]


@pytest.mark.parametrize("n, m", [(1, 2), (2, 2), (3, 3), (7, 4), (50, 10), (251, 3)])
def test_threshold_local_sensitivity_equals_the_quadratic_table(n, m):
    rng = np.random.default_rng(n * 31 + m)
    votes = np.stack([rng.multinomial(n, rng.dirichlet(np.full(m, 0.3))) for _ in range(40)]
                     + [np.eye(m, dtype=np.int64)[0] * n])  # a unanimous row too (top = n)
    for threshold, sigma1, order in ((0.6 * n, max(0.2 * n, 1.0), 20.0), (n + 5.0, 3.0, 2.5), (0.0, 50.0, 100.0)):
        got = ss.local_sensitivity_threshold(votes, threshold, sigma1, order)
        assert np.array_equal(got, threshold_table_reference(votes, threshold, sigma1, order))


def test_threshold_local_sensitivity_needs_no_quadratic_table():
    n = 100_000  # the table would be 75 GiB
    votes = np.array([[n - 3, 3] + [0] * 8, [n // 2, n // 2] + [0] * 8])
    tracemalloc.start()
    try:
        start = time.perf_counter()
        out = ss.local_sensitivity_threshold(votes, 0.8 * n, 0.2 * n, 20.0)
        seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (2, n) and (np.diff(out[:, :-1], axis=1) >= 0).all()
    assert peak < 512 << 20 and seconds < 10  # (the discrete noise's tail tables take about 100 MiB)


def test_the_gnmax_walk_refuses_beyond_its_bound_before_allocating():
    n, m = 100_000, 100
    assert not ss.walk_fits(n, m)
    with pytest.raises(ValueError, match="at most 8388608 are walked"):
        ss.local_sensitivity_gnmax(np.array([[n] + [0] * (m - 1)]), 40.0, 20.0)


def test_the_gnmax_walk_blocks_follow_the_bound_exactly(monkeypatch):
    rng = np.random.default_rng(3)
    votes = np.vstack([rng.multinomial(250, rng.dirichlet(np.full(10, 0.3), size=40)), [[250] + [0] * 9]])
    whole = ss.local_sensitivity_gnmax(votes, 40.0, 10.0)
    monkeypatch.setattr(ss, "MAX_WALK_CELLS", 250 * 9 * 3)  # three queries per block
    assert np.array_equal(ss.local_sensitivity_gnmax(votes, 40.0, 10.0), whole)


def test_a_data_dependent_release_beyond_the_walk_is_refused_with_the_data_sizes():
    config = config_mod.from_dict({"name": "x", "data": {"source": "arrays", "private_file": "p.npz",
                                                         "public_file": "q.npz"},
                                   "teachers": {"count": 2000}, "privacy": {"data_dependent_release": True}})
    spec = config_mod.DatasetSpec(50_000, 60_000, 5000, 1, 28, (0.5,), (0.5,), num_pool=50_000, num_test=1000,
                                  shared_split=False)
    with pytest.raises(config_mod.ConfigError, match=r"\[privacy\] data_dependent_release must be false with 2000 "
                                                     "teachers and 5000 classes"):
        config.check_data(spec)
    config.check_data(spec._replace(num_classes=10))
