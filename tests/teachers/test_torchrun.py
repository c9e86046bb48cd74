"""`torchrun --nproc-per-node 2 -m pate train-teachers` (gloo, CPU) equals a single-process run."""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from pate.cli import main

from ..conftest import TINY_PIPELINE

torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))


def _ranks_and_single_process(tmp_path, pipeline, data_root) -> set[str]:
    """Train the teachers of ``pipeline`` on 2 ranks and in one process, vote with both, check the
    votes are equal; returns the files the ranks wrote under teachers/."""
    common = [str(pipeline), "--data-root", str(data_root), "-q"]
    for name in ("single", "ranks"):
        assert CliRunner().invoke(main, ["partition", *common, "--run-dir", str(tmp_path / name)]).exit_code == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "pate", "train-teachers",
                           *common, "--run-dir", str(tmp_path / "ranks")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("single", "ranks"):
        for stage in ("train-teachers", "vote"):
            result = CliRunner().invoke(main, [stage, *common, "--run-dir", str(tmp_path / name)])
            assert result.exit_code == 0, result.output
    with np.load(tmp_path / "single" / "votes.npz") as a, np.load(tmp_path / "ranks" / "votes.npz") as b:
        np.testing.assert_array_equal(a["votes"], b["votes"])
    return {p.name for p in (tmp_path / "ranks" / "teachers").iterdir()}


needs_torchrun = pytest.mark.skipif(torchrun is None, reason="torchrun not installed beside this Python")


@pytest.mark.slow
@needs_torchrun
def test_two_ranks_equal_one_process(tmp_path, tiny_pipeline, fake_data_root):
    written = _ranks_and_single_process(tmp_path, tiny_pipeline, fake_data_root)
    assert sorted(n for n in written if n.startswith("part-")) == ["part-0-of-2.pt", "part-1-of-2.pt"]


@pytest.mark.slow
@needs_torchrun
@pytest.mark.parametrize("kind", ["scattering", "pretrained"])
def test_public_features_shard_across_ranks(tmp_path, fake_data_root, kind):
    """Each rank embeds its own share (pretrained: of the public images too) and fits its own
    block of heads; the votes equal a single process's."""
    extra = f'features = "{kind}"\n'
    if kind == "pretrained":
        torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), tmp_path / "w.pt")
        extra += 'backbone = "mobilenet_v3_small"\nweights = "w.pt"\nbackbone_size = 32\n'
    pipeline = tmp_path / "features.toml"
    pipeline.write_text(textwrap.dedent(TINY_PIPELINE).replace("batch_size = 16\n\n[aggregator]",
                                                               f"batch_size = 16\n{extra}\n[aggregator]"))
    written = _ranks_and_single_process(tmp_path, pipeline, fake_data_root)
    assert {"heads-0-of-2.pt", "heads-1-of-2.pt"} <= written
    if kind == "pretrained":
        assert {"public-features-0-of-2.pt", "public-features-1-of-2.pt", "private-features-1-of-2.pt"} <= written
