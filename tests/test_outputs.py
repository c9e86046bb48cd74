"""The output rule (issue 31): every path a command writes to goes through `pate.run.outputs.check_output`.

pate replaces only what it wrote for the same purpose, writes into no run directory and no release
but the command's own, never puts a private view in a release nor a public output in a run
directory, and never writes to a device, a FIFO or a link. First the rule itself over made-up run
directories, releases, data and special files; then each command the hostile trial found writing
where it must not, end to end on one finished run, each now one line and exit 2, with the file
untouched, and the same commands accepted again over their own earlier outputs.
"""
from __future__ import annotations

import json
import os
import stat

import pytest
from click.testing import CliRunner

from pate.run import outputs
from pate.cli import main
from pate.run.outputs import OutputRefused, check_output
from pate.stages import existing_run

from .conftest import run_tiny_pipeline


def fake_run(folder):
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    (folder / "config.toml").write_text("")
    return folder


def fake_release(folder, tag="0123456789abcdef"):
    folder.mkdir(parents=True)
    (folder / "student.json").write_text(json.dumps({"format": outputs.RELEASE_FORMAT, "release_of": tag}))
    (folder / "statement.json").write_text("{}")
    (folder / "statement.txt").write_text("")
    return folder


def refused(path, purpose, run=None) -> str:
    with pytest.raises(OutputRefused) as info:
        check_output(path, purpose, run)
    assert "\n" not in str(info.value)
    return str(info.value)


# ----------------------------------------------------------------------------- the rule


def test_new_paths_are_fine_and_existing_foreign_files_are_never_replaced(tmp_path):
    for purpose in (outputs.PLAN_PLOT, outputs.AUDIT_PLOT, outputs.PREDICT_CSV):
        assert check_output(tmp_path / "new" / "file", purpose) == tmp_path / "new" / "file"
    mine = tmp_path / "notes.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)  # a PNG, but not one pate wrote
    for purpose in (outputs.PLAN_PLOT, outputs.AUDIT_PLOT, outputs.PREDICT_CSV):
        assert "exists and is not a" in refused(mine, purpose)
    csv = tmp_path / "mine.csv"
    csv.write_text("path,label\n")
    assert "exists and is not a predict CSV" in refused(csv, outputs.PREDICT_CSV)
    csv.write_text(outputs.PREDICT_HEADER + "\r\na.png,1,1,0.9\n")
    check_output(csv, outputs.PREDICT_CSV)  # pate's own earlier CSV


def test_a_plot_replaces_only_a_plot_of_its_own_kind(tmp_path):
    pytest.importorskip("matplotlib")
    from pate.views import figures

    plt = figures.pyplot()
    path = tmp_path / "plan.png"
    fig, _ = plt.subplots()
    figures.save(fig, plt, path, made_for=outputs.PLAN_PLOT.name)
    check_output(path, outputs.PLAN_PLOT)
    assert "is not an audit plot pate wrote" in refused(path, outputs.AUDIT_PLOT)


def test_special_files_and_links_are_refused(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "is a FIFO" in refused(fifo, outputs.PLAN_PLOT)
    assert "is a folder" in refused(tmp_path, outputs.PREDICT_CSV)
    assert "not a folder" in refused(fifo, outputs.REPORT)
    target = tmp_path / "target.csv"
    target.write_text(outputs.PREDICT_HEADER + "\n")
    (tmp_path / "link.csv").symlink_to(target)
    assert "symbolic link" in refused(tmp_path / "link.csv", outputs.PREDICT_CSV)
    try:  # a device node made here, never the machine's own /dev (needs root)
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, OSError):
        return
    assert "is a device" in refused(tmp_path / "null", outputs.AUDIT_PLOT)
    assert "is a device" in refused(tmp_path / "null", outputs.PREDICT_CSV)


def test_nothing_goes_inside_another_run_directory(tmp_path):
    other = fake_run(tmp_path / "runs" / "other")
    for purpose in (outputs.PLAN_PLOT, outputs.AUDIT_PLOT, outputs.PREDICT_CSV, outputs.REPORT, outputs.EXPORT,
                    outputs.DATA_ROOT):
        assert "inside the pate run directory" in refused(other / "sub" / "x", purpose)
    assert "never holds another" in refused(other / "nested", outputs.RUN_DIRECTORY)
    check_output(other, outputs.RUN_DIRECTORY)  # reopening a run directory is fine
    check_output(tmp_path / "runs" / "new", outputs.RUN_DIRECTORY)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "thesis.tex").write_text("")
    assert "holds files and is not a pate run directory" in refused(tmp_path / "used", outputs.RUN_DIRECTORY)


def no_data():
    from types import SimpleNamespace

    return SimpleNamespace(data=SimpleNamespace())


def test_public_outputs_stay_out_of_the_own_run_and_private_views_out_of_releases(tmp_path):
    from pate.run.directory import RunDir

    own = RunDir(fake_run(tmp_path / "run"), no_data())
    assert "inside the private run directory" in refused(own.path / "plan.png", outputs.PLAN_PLOT, own)
    check_output(own.path / "audit.png", outputs.AUDIT_PLOT, own)  # a private view may sit in its own run
    release = fake_release(tmp_path / "someone-release")
    for purpose in (outputs.AUDIT_PLOT, outputs.REPORT, outputs.RUN_DIRECTORY, outputs.DATA_ROOT):
        assert "PRIVATE view and never goes in one" in refused(release / "x", purpose)
        if purpose.folder:
            assert "PRIVATE view" in refused(release, purpose)
    for purpose in (outputs.PLAN_PLOT, outputs.PREDICT_CSV):
        assert "a `pate export`'s" in refused(release / "labels.csv", purpose)


def test_data_a_run_reads_is_never_an_output(tmp_path):
    from types import SimpleNamespace

    from pate.run.directory import RunDir

    private = tmp_path / "hospital" / "private"
    private.mkdir(parents=True)
    data = SimpleNamespace(private_dir=str(private), public_dir="", test_dir="", private_file="", public_file="",
                           test_file="")
    run = RunDir(tmp_path / "run", SimpleNamespace(data=data))
    for where in (private, private / "x", tmp_path / "hospital"):
        assert "the run's data" in refused(where, outputs.EXPORT, run)
    check_output(tmp_path / "hospital", outputs.DATA_ROOT, run)  # a cache root may hold the data's folders
    assert "the run's data" in refused(private / "cache", outputs.DATA_ROOT, run)


# ----------------------------------------------------------------------------- the commands


@pytest.fixture(scope="module")
def finished(tmp_path_factory, fake_data_root):
    root = tmp_path_factory.mktemp("outputs")
    run_tiny_pipeline(root, fake_data_root)
    return root


def one_line_refusal(args, *, untouched=()):
    before = {p: p.read_bytes() for p in untouched}
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert all(p.read_bytes() == data for p, data in before.items())
    return result.output


def test_commands_refuse_to_write_over_what_they_did_not_write(finished, tmp_path):
    run, release, pipeline = finished / "run", finished / "run-release", finished / "tiny.toml"
    ledger = run / "ledger.jsonl"
    out = one_line_refusal(["plan", "--teachers", 6, "--queries", 10, "--plot", ledger], untouched=[ledger])
    assert "inside the pate run directory" in out and "a private folder" in out
    for target in (run / "privacy.json", pipeline):
        out = one_line_refusal(["audit", run, "--plot", target], untouched=[target])
        assert "exists and is not an audit plot" in out
    statement = release / "statement.json"
    assert "PRIVATE view" in one_line_refusal(["audit", run, "--plot", statement], untouched=[statement])
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert "is a FIFO" in one_line_refusal(["audit", run, "--plot", fifo])
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)
    model = release / "student.onnx"
    for target in (model, image, release / "labels.csv"):
        one_line_refusal(["predict", model, image, "--out", target, "-q"], untouched=[model, image, target])
    assert "PRIVATE view" in one_line_refusal(["report", run, "--out", release], untouched=[statement])
    other = fake_release(tmp_path / "A-release")
    marker = other / "student.json"
    out = one_line_refusal(["export", run, "--out", other], untouched=[marker])
    assert "another run's" in out and not (other / "labels.csv").exists()
    nested = one_line_refusal(["run", pipeline, "--run-dir", run / "inner", "-q"])
    assert "never holds another" in nested and not (run / "inner").exists()


def test_commands_replace_their_own_earlier_outputs(finished, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    run, release = finished / "run", finished / "run-release"
    Image.new("L", (28, 28)).save(tmp_path / "digit.png")
    for _ in range(2):
        plan = CliRunner().invoke(main, ["plan", str(finished / "tiny.toml"), "--plot", str(tmp_path / "plan.png")])
        assert plan.exit_code == 0, plan.output
        audit = CliRunner().invoke(main, ["audit", str(run), "--plot", str(tmp_path / "audit.png")])
        assert audit.exit_code == 0, audit.output
        export = CliRunner().invoke(main, ["export", str(run)])  # over its own release, at its default place
        assert export.exit_code == 0, export.output
        predict = CliRunner().invoke(main, ["predict", str(release), str(tmp_path / "digit.png"),
                                            "--out", str(tmp_path / "labels.csv"), "-q"])
        assert predict.exit_code == 0, predict.output
    assert "pate plan plot" in (tmp_path / "plan.png").read_bytes()[:4096].decode("latin-1")
    assert json.loads((release / "student.json").read_text())["release_of"] == outputs.release_tag(existing_run(run))
    # audit's plot is refused as a plan plot's target and the other way round
    assert "is not a plan plot" in one_line_refusal(["plan", finished / "tiny.toml", "--plot", tmp_path / "audit.png"])


def test_the_spend_directory_never_lands_in_a_run_or_a_release(finished, tmp_path, monkeypatch, fake_data_root):
    """It holds the secret record key and every run's spend: in a release it would be published, in
    a run directory deleted with it. Refused before the new run directory is made."""
    pipeline = finished / "tiny.toml"
    for inside in (finished / "run-release" / "spend", finished / "run" / "spend", pipeline):
        monkeypatch.setenv("PATE_SPEND_DIR", str(inside))
        out = one_line_refusal(["run", pipeline, "--run-dir", tmp_path / "new", "--data-root", fake_data_root, "-q"])
        assert "spend directory" in out and not (tmp_path / "new").exists() and not inside.with_name("spend").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("")
    from pate.run.spend_log import SPEND_DIR

    assert "not a pate spend directory" in refused(tmp_path / "mine", SPEND_DIR)


def test_predict_writes_undecodable_file_names_as_their_bytes(finished, tmp_path):
    from PIL import Image

    folder = os.fsencode(tmp_path / "images")
    os.mkdir(folder)
    with open(folder + b"/\xff\xfe.png", "wb") as f:
        Image.new("L", (28, 28)).save(f, format="PNG")
    out = tmp_path / "labels.csv"
    result = CliRunner().invoke(main, ["predict", str(finished / "run-release"), os.fsdecode(folder), "--out",
                                       str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().splitlines()[1].startswith(folder + b"/\xff\xfe.png,")
    printed = CliRunner().invoke(main, ["predict", str(finished / "run-release"), os.fsdecode(folder), "-q"])
    assert printed.exit_code == 0 and printed.stdout_bytes.splitlines()[1] == out.read_bytes().splitlines()[1]


def test_release_markers_are_read_whole_and_never_block(tmp_path):
    """student.json lists every class name (past the first 64 KiB with 10 000 long names): still a
    release; a FIFO named like a marker is no marker, and reading it does not block."""
    big = tmp_path / "many-classes-release"
    big.mkdir()
    (big / "student.json").write_text(json.dumps({"format": outputs.RELEASE_FORMAT, "classes": ["c" * 200] * 2000}))
    assert outputs.is_release(big) and "a `pate export`'s" in refused(big / "x.csv", outputs.PREDICT_CSV)
    odd = tmp_path / "odd"
    odd.mkdir()
    os.mkfifo(odd / "student.json")
    os.mkfifo(odd / "report.html")
    assert not outputs.is_release(odd) and not outputs._report_folder(odd, None)
