"""benchmarks/gpu.py at --smoke size on the CPU: every section runs, every figure lands in the JSON,
the summary is the last line, and the budget guard skips what does not fit. The GPU run itself is
then only a matter of sizes."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from pate import stages

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
SECTIONS = ("matmul", "teachers_small", "voting", "student", "e2e", "teachers_deep")
POSITIVE_SUFFIXES = ("_s", "_per_s", "_tflops", "ensemble_over_loop", "peak_fraction")
FRACTIONS = ("accuracy", "agreement")


def run_benchmark(tmp_path: Path, *extra: str) -> tuple[dict, list[str]]:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--threads", "1",
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout.strip().splitlines()


def numbers(node, path=""):
    """(dotted path, value) of every number in the JSON, booleans aside."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from numbers(value, f"{path}.{key}" if path else key)
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        yield path, node


def test_smoke_run_measures_every_section(tmp_path, fake_data_root):
    figures, stdout = run_benchmark(tmp_path, "--data-root", str(fake_data_root))
    assert figures["skipped"] == {}
    for section in SECTIONS:
        assert figures.get(section), f"no figures for {section}"
    found = dict(numbers({k: v for k, v in figures.items() if k != "meta"}))
    for path, value in found.items():
        assert math.isfinite(value), path
        if path.endswith(POSITIVE_SUFFIXES):
            assert value > 0, path
        if any(word in path.rsplit(".", 1)[-1] for word in FRACTIONS):
            assert 0 <= value <= 1, path
    for arch in ("small", "deep"):
        for mode in ("fp32", "fast"):
            assert f"teachers_{arch}.{mode}.ensemble_over_loop" in found
    assert set(figures["e2e"]["stages"]) == {f"{name}_s" for name in stages.NAMES}
    # The loop is the same computation as the ensemble: in fp32 its teachers match the ensemble's.
    assert figures["teachers_small"]["fp32"]["loop_relative_diff"] < 1e-4
    assert figures["teachers_small"]["fp32"]["loop_prediction_agreement"] == 1.0
    summary = stdout[-1]
    assert summary == figures["summary"]
    fields = dict(item.split("=") for item in summary.split())
    assert list(fields)[:4] == ["teachers_small_s", "ensemble/loop", "peak_fraction", "teachers_small_fp32_s"]
    assert "e2e_s" in fields and all(float(v) > 0 for v in fields.values())


def test_spent_budget_skips_every_section_and_still_summarises(tmp_path):
    figures, stdout = run_benchmark(tmp_path, "--budget-s", "0", "--skip-e2e")
    assert set(figures["skipped"]) == set(SECTIONS)
    assert figures["skipped"]["e2e"] == "--skip-e2e" and "budget" in figures["skipped"]["matmul"]
    assert not any(section in figures for section in SECTIONS)
    assert stdout[-1] == figures["summary"]
    assert {item.split("=")[1] for item in stdout[-1].split()} == {"skipped"}


def test_only_the_e2e_section_with_another_student(tmp_path, fake_data_root):
    """The GPU row of a student the CPU cannot train in time: the pipeline's [student] replaced in a
    copy, the other sections left out."""
    figures, stdout = run_benchmark(tmp_path, "--data-root", str(fake_data_root), "--only", "e2e",
                                    "--student-method", "supervised", "--student-steps", "7")
    assert set(figures["skipped"]) == set(SECTIONS) - {"e2e"}
    assert figures["e2e"]["student"] == 'method="supervised" steps=7'
    assert figures["e2e"]["stages"]["train-student_s"] > 0 and 0 <= figures["e2e"]["student_accuracy"] <= 1
    assert "e2e_s=" in stdout[-1] and "teachers_small_s=skipped" in stdout[-1]
