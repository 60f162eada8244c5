"""One rank of a 2-rank torchrun job killed with SIGKILL, mid-step or mid-save: the job ends (no rank hangs on the
dead one) and `latest` still names a complete step that a new run resumes from."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from megatron_moviegen.checkpoints.distributed import check_complete
from megatron_moviegen.checkpoints.protocol import DIT_STEPS
from tests.harness import run_distributed
from tests.training.test_pretrain import TP2_SP, _overrides, _train


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _launch(shards, ckpt):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "megatron_moviegen.train", "--config", "tiny",
           *_overrides(shards, ckpt, 10_000, TP2_SP + ["train.save_every=2", "train.log_every=1"])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1", PYTHONWARNINGS="ignore"),
                            start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def _wait_for(condition, timeout=120.0):
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the run never got there")
        time.sleep(0.005)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the ranks through /proc (Linux)")
@pytest.mark.parametrize("when", ["mid-step", "mid-save"])
def test_a_rank_killed_mid_step_or_mid_save_leaves_a_loadable_latest(tiny_shards, tmp_path, when):
    ckpt = tmp_path / "ckpt"
    proc, lines = _launch(tiny_shards, ckpt)
    try:
        if when == "mid-step":
            _wait_for(lambda: any(line.startswith("step 5/") for line in lines))
        else:  # the moment step 6's save has begun
            _wait_for(lambda: (ckpt / "iter_0000006.tmp").exists())
        ranks = sorted(_children(proc.pid))
        assert len(ranks) == 2, ranks
        os.kill(ranks[-1], signal.SIGKILL)
        assert proc.wait(timeout=120) != 0  # the job ends: the surviving rank does not wait on the dead one
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    latest = ckpt / (ckpt / "latest").read_text().strip()
    check_complete(latest)  # raises naming the problem if it were not
    complete = [folder for folder in DIT_STEPS.folders(ckpt)]
    assert latest in complete and all(not f.name.endswith(".tmp") for f in complete)
    step = int(latest.name.split("_")[1])
    assert step >= 4 if when == "mid-step" else step in (4, 6)
    resumed = run_distributed(_train, 2, args=(_overrides(tiny_shards, ckpt, step + 1, TP2_SP),))[0]
    assert [row["step"] for row in resumed["history"]] == [step + 1]
