"""A training run SIGKILLed mid-epoch and restarted ends with exactly the weights of an
uninterrupted run (CPU, same seed).

toy_train.py is run with ``sys.executable``; it imports torch once and forks the three runs
(reference, killed, resumed) as real child processes, so the test pays one interpreter start.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("toy_train.py")
SRC = Path(__file__).resolve().parents[2] / "src"

# 22 samples / batch 4 → 5 steps per epoch, 2 epochs = 10 steps; checkpoints every 2 steps.
# Killed at the end of step 6 (epoch 1): the last checkpoint holds 6 steps, i.e. epoch 1 batch 1.
KILL_AT_STEP = 6


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    env.pop("PNOC_TOY_KILL_AT_STEP", None)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "scenario", str(tmp_path), str(KILL_AT_STEP)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "scenario.json").read_text())
    assert report["killed_rc"] == -signal.SIGKILL, proc.stderr
    assert report["checkpoint_after_kill"], "no checkpoint survived the kill"
    assert not (tmp_path / "killed").exists()  # it really died before finishing
    assert report["reference_rc"] == 0 and report["resumed_rc"] == 0, proc.stderr
    assert f"resumed from step {KILL_AT_STEP}" in proc.stderr
    assert not report["checkpoint_after_resume"], "the checkpoint must go after a successful run"

    ref = torch.load(tmp_path / "reference" / "final.pt", weights_only=True)
    res = torch.load(tmp_path / "resumed" / "final.pt", weights_only=True)
    assert ref.keys() == res.keys()
    for k in ref:
        assert torch.equal(ref[k], res[k]), f"{k} differs after resume"

    ref_summary = json.loads((tmp_path / "reference" / "result.json").read_text())
    res_summary = json.loads((tmp_path / "resumed" / "result.json").read_text())
    assert ref_summary["resumed_from_step"] is None
    assert res_summary["resumed_from_step"] == KILL_AT_STEP
    assert res_summary["steps"] == ref_summary["steps"] == 10
    assert res_summary["history"] == ref_summary["history"]  # epoch means, bit for bit
