"""tools/gpu_check.sh, the prepared GPU check, runs its every step at toy sizes on CPU (`--cpu`), and its checks
fail when what they check is wrong."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tools.gpu_check import check_runs

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_runs_every_step_on_cpu(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--cpu"], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OUT=str(out)), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for number in range(1, 7):
        assert f"== {number}/6 " in proc.stdout
    runs = json.loads((out / "runs.json").read_text())
    assert runs["resumed_steps"] == [4, 5, 6] and runs["max_relative_difference"] == 0.0
    assert sorted(runs["losses"]) == ["1", "2", "3", "4", "5", "6"]
    memory = json.loads((out / "memory.json").read_text())
    assert memory["tokens"] == 256 and memory["measured_peak_gib"] > 0
    report = (out / "report.md").read_text()
    assert "| save + resume |" in report and "| throughput local-sdpa 512 tokens" in report


def _metrics(folder: Path, losses: dict[int, float]) -> Path:
    folder.mkdir()
    (folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in losses.items()))
    return folder


def test_a_resume_that_does_not_repeat_the_run_fails_the_check(tmp_path):
    whole = _metrics(tmp_path / "whole", {1: 1.5, 2: 1.4, 3: 1.3, 4: 1.2})
    same = _metrics(tmp_path / "same", {1: 1.5, 2: 1.4, 3: 1.3, 4: 1.2})
    assert check_runs(whole, same, 2, exact=True)["resumed_steps"] == [3, 4]
    drifted = _metrics(tmp_path / "drifted", {1: 1.5, 2: 1.4, 3: 1.3, 4: 1.2000001})
    with pytest.raises(AssertionError, match="step 4"):
        check_runs(whole, drifted, 2, exact=True)
    assert check_runs(whole, drifted, 2, exact=False)["max_relative_difference"] < 1e-6  # GPU: later steps close
    first_off = _metrics(tmp_path / "first_off", {1: 1.5, 2: 1.4, 3: 1.3000001, 4: 1.2})
    with pytest.raises(AssertionError, match="step 3"):  # the first resumed step is exact even on GPU
        check_runs(whole, first_off, 2, exact=False)
    diverged = _metrics(tmp_path / "nan", {1: 1.5, 2: float("nan")})
    with pytest.raises(AssertionError, match="not all finite"):
        check_runs(diverged, same, 1, exact=True)
