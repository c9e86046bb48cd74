"""`pate report`: every figure of a tiny run as a valid PNG, one self-contained HTML page that
references them, privacy wording, skipped sections, clear errors, and the page in headless Chromium."""
from __future__ import annotations

import base64
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pate import config as config_mod
from pate.cli import main
from pate.run.directory import RunDir
from pate.stages import aggregate as aggregate_stage
from pate.stages import existing_run, open_run
from pate.aggregation.settings import orders
from pate.run.artifacts import Context, mechanism
from pate.views import audit
from pate.views import report as report_mod

from ..conftest import finish_votes_stage

from ..conftest import TINY_PIPELINE

REPO = Path(__file__).resolve().parents[2]
FIGURES = ("cumulative_epsilon.png", "vote_gaps.png", "label_accuracy_consensus.png", "teacher_accuracy.png",
           "student_learning_curve.png")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, fake_data_root) -> Path:
    """One tiny run through every stage, shared by this module's tests."""
    root = tmp_path_factory.mktemp("report-run")
    pipeline = root / "tiny.toml"
    pipeline.write_text(textwrap.dedent(TINY_PIPELINE))
    result = CliRunner().invoke(main, ["run", str(pipeline), "--run-dir", str(root / "run"),
                                       "--data-root", str(fake_data_root), "-q"])
    assert result.exit_code == 0, result.output
    return root / "run"


@pytest.fixture(scope="module")
def report_out(run_dir, fake_data_root) -> tuple[Path, str]:
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(main, ["report", str(run_dir), "--data-root", str(fake_data_root)])
    assert result.exit_code == 0, result.output
    return run_dir / "report", result.output


def copy_run(run_dir: Path, dest: Path) -> RunDir:
    """A copy of the run without the bulky checkpoints the report never reads."""
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("teachers", "report", "*.pt"))
    return existing_run(dest)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_report_writes_every_figure_and_a_self_contained_page(report_out):
    import matplotlib.image

    out, output = report_out
    assert f"wrote {out / 'report.html'} and {len(FIGURES)} figures" in output and "skipped" not in output
    page = (out / "report.html").read_text()
    for name in FIGURES:
        width, height = png_size(out / name)
        assert width >= 400 and height >= 300
        pixels = matplotlib.image.imread(out / name)
        assert pixels.std() > 0.05, f"{name} looks blank"
        # Referenced by name (link and data-file) and embedded: the page works alone.
        assert f'href="{name}"' in page and f'data-file="{name}"' in page
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"[^>]*data-file="([^"]+)"', page)
    assert sorted(n for _, n in embedded) == sorted(FIGURES)
    for data, name in embedded:
        assert base64.b64decode(data) == (out / name).read_bytes()
    assert not re.search(r'(src|href)="(https?:)?//', page)  # nothing fetched from elsewhere
    assert "Skipped" not in page


def test_page_says_which_epsilon_to_publish_and_what_is_private(report_out, run_dir):
    import json

    out, _ = report_out
    page = (out / "report.html").read_text()
    privacy = json.loads((run_dir / "privacy.json").read_text())
    g = privacy["public"]["guarantee"]
    assert f'<p class="eps">ε = {g["epsilon"]:.3f} · δ = {g["delta"]:g}</p>' in page
    assert "The guarantee (safe to publish)" in page and "PRIVATE page: do not publish it as a whole" in page
    # the composed spend of the data's records is PRIVATE: in the summary table, marked so, not in the box
    assert "Privacy spent on this private data by every run so far" not in page
    assert "What earlier releases spent on the same records is not published" in page
    assert re.search(r"<th>ε spent on this private data \(worst record, all runs composed\)</th><td>[^<]*release\(s\)"
                     r'</td><td><span class="badge private">PRIVATE</span>', page)
    assert "ledger.jsonl" in page and "SEEDED" in page
    for section in ("cumulative_epsilon", "vote_gaps", "label_accuracy_consensus"):
        figure = re.search(rf'<figure id="{section}".*?</figure>', page, re.S).group(0)
        assert '<span class="badge private">PRIVATE</span>' in figure
    student = re.search(r'<figure id="student_learning_curve".*?</figure>', page, re.S).group(0)
    assert "safe to publish" in student
    # The summary table: the guarantee first, the papers' data-dependent figures marked private.
    assert re.search(r"ε guarantee \(worst case, settings alone\)</th><td>[^<]*</td><td><span class=\"badge public\"",
                     page)
    assert re.search(r"ε data-dependent realized \(papers&#x27; convention\)</th><td>[^<]*</td><td>"
                     r"<span class=\"badge private\"", page)
    for key in ("student accuracy", "label accuracy", "teacher accuracy mean", "queries asked / answered"):
        assert f"<th>{key}" in page


def test_expected_curve_ends_at_the_run_total(run_dir):
    run = existing_run(run_dir)
    rows, privacy = audit.query_table(run)
    votes = run.load_npz("votes.npz")["votes"]
    answered = np.array([r["answered"] for r in rows])
    x, expected = report_mod.epsilon_curves(run.config, votes, answered)["expected"]
    assert x[-1] == len(rows) and expected[-1] == pytest.approx(privacy["private"]["epsilon_expected"], rel=1e-6)
    assert np.all(np.diff(expected) >= -1e-9)
    realized = np.array([r["cumulative_epsilon"] for r in rows])
    assert np.all(realized <= privacy["public"]["guarantee"]["epsilon"] + 1e-9)  # never above the worst case
    mech, order_list = mechanism(run.config), orders(run.config)
    pr, thr, gnmax = mech.query_rdp(votes, order_list)  # the expected curve is the per-query sum
    np.testing.assert_allclose(mech.expected_rdp(votes, order_list), (thr + pr[:, None] * gnmax).sum(0), rtol=1e-9)
    points = report_mod._prefix_points(1000, 150)
    assert len(points) <= 150 and points[0] == 1 and points[-1] == 1000


def test_consensus_bins():
    rows = [{"top_count": c, "answered": a, "label": l, "top_label": t}
            for c, a, l, t in [(10, True, 1, 1), (10, True, 2, 2), (9, False, -1, 3), (5, True, 4, 4), (6, False, -1, 0)]]
    truth = np.array([1, 0, 3, 5, 0])
    bins = report_mod.consensus_bins(rows, 10, truth)
    assert [(round(b["lo"], 6), b["released_n"], b["released_correct"], b["plurality_n"], b["plurality_correct"])
            for b in bins] == [(0.5, 1, 0, 1, 0), (0.6, 0, 0, 1, 1), (0.9, 2, 1, 3, 2)]


def test_missing_stages_and_data_are_skipped_with_a_note(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    run = copy_run(run_dir, tmp_path / "run")
    run.reset("evaluate")
    run.reset("train-student")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["report", str(run.path), "--out", str(out),
                                       "--data-root", str(tmp_path / "no-data")])
    assert result.exit_code == 0, result.output
    assert "and 3 figures" in result.output
    assert "skipped student learning curve: the student has not been trained yet" in result.output
    assert "skipped label accuracy against vote consensus: the mnist data is not available" in result.output
    page = (out / "report.html").read_text()
    assert page.count("Skipped:") == 2 and "<th>student accuracy" not in page
    assert not (out / "student_learning_curve.png").exists() and not (run.path / "report").exists()


def test_nothing_aggregated_is_a_one_line_error(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    run.reset("aggregate")
    result = CliRunner().invoke(main, ["report", str(run.path)])
    assert result.exit_code == 2 and "aggregation has not finished" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    elsewhere = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert elsewhere.exit_code == 2 and "not a pate run directory" in elsewhere.output


def test_without_matplotlib_names_the_extra(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = CliRunner().invoke(main, ["report", str(run_dir), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "pip install 'pate[plot]'" in result.output
    assert not (tmp_path / "out" / "report.html").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium (Debian's `chromium`) not installed")
def test_page_renders_in_headless_chromium(report_out, tmp_path):
    import matplotlib.image

    out, _ = report_out
    shot = REPO / "test-artifacts" / "report-screenshot.png"
    shot.parent.mkdir(exist_ok=True)
    shot.unlink(missing_ok=True)
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,3000",
               (out / "report.html").resolve().as_uri()]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert shot.exists(), proc.stderr[-2000:]
    assert png_size(shot) == (1200, 3000)
    pixels = matplotlib.image.imread(shot)[..., :3]
    # The page rendered: not blank, and the figures' colours are there (matplotlib's tab:purple line).
    assert pixels.std() > 0.05
    purple = np.array([148, 103, 189]) / 255
    assert (np.abs(pixels - purple).max(axis=-1) < 0.03).sum() > 200


def aggregated_only_run(tmp_path, mechanism: str, queries: int = 50) -> RunDir:
    """A run whose votes are synthetic and only aggregation has run (no teachers_eval.json, no student)."""
    teachers, classes = 20, 10
    cfg = config_mod.from_dict({
        "name": "agg-only", "data": {"private_size": 2000, "student_pool": queries, "test_size": 50},
        "teachers": {"count": teachers}, "privacy": {"delta": 1e-5},
        "aggregator": {"mechanism": mechanism, "max_queries": queries, "threshold": 12.0, "sigma1": 5.0,
                       "sigma2": 3.0, "gamma": 0.1, "seed": 3}})
    run = open_run(tmp_path / mechanism, cfg)
    rng = np.random.default_rng(1)
    votes = np.zeros((queries, classes), np.int64)
    for i, top in enumerate(rng.integers(4, teachers + 1, queries)):
        votes[i, i % classes] = top
        votes[i] += np.bincount(rng.integers(0, classes, teachers - top), minlength=classes)
    finish_votes_stage(run, votes)
    aggregate_stage.run(Context(run=run, quiet=True))
    return run


@pytest.mark.parametrize("mechanism", ["gnmax", "lnmax"])
def test_other_mechanisms_and_a_run_with_only_aggregation(tmp_path, fake_data_root, mechanism):
    pytest.importorskip("matplotlib")
    run = aggregated_only_run(tmp_path, mechanism)
    result = CliRunner().invoke(main, ["report", str(run.path), "--data-root", str(fake_data_root)])
    assert result.exit_code == 0, result.output
    assert "and 3 figures" in result.output and "skipped per-teacher accuracy" in result.output
    page = (run.path / "report" / "report.html").read_text()
    assert f"With {mechanism} the expected cost equals the realized one" in page
    for name in ("cumulative_epsilon.png", "vote_gaps.png", "label_accuracy_consensus.png"):
        png_size(run.path / "report" / name)
        assert f'data-file="{name}"' in page
