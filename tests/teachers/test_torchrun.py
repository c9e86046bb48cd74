"""`torchrun --nproc-per-node 2 -m pate train-teachers` (gloo, CPU) equals a single-process run."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from pate.cli import main

torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))


@pytest.mark.slow
@pytest.mark.skipif(torchrun is None, reason="torchrun not installed beside this Python")
def test_two_ranks_equal_one_process(tmp_path, tiny_pipeline, fake_data_root):
    common = [str(tiny_pipeline), "--data-root", str(fake_data_root), "-q"]
    for name in ("single", "ranks"):
        assert CliRunner().invoke(main, ["partition", *common, "--run-dir", str(tmp_path / name)]).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "pate", "train-teachers",
                           *common, "--run-dir", str(tmp_path / "ranks")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "ranks" / "teachers").glob("part-*")) == ["part-0-of-2.pt",
                                                                                       "part-1-of-2.pt"]
    for name in ("single", "ranks"):
        for stage in ("train-teachers", "vote"):
            result = CliRunner().invoke(main, [stage, *common, "--run-dir", str(tmp_path / name)])
            assert result.exit_code == 0, result.output
    with np.load(tmp_path / "single" / "votes.npz") as a, np.load(tmp_path / "ranks" / "votes.npz") as b:
        np.testing.assert_array_equal(a["votes"], b["votes"])
