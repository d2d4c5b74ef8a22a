"""Real sweeps on real tiny CAMs: Ray Tune + OptunaSearch + ASHA, MLflow, resume after Ctrl-C
and after a killed driver, growth, --apply, a Ray cluster. Each sweep runs the `pnoc sweep`
command in the throw-away project."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.conftest import Project

pytestmark = pytest.mark.slow


def _sweep(kind: str, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pnoc_pipelines.cli",
        "sweep",
        kind,
        "--config",
        "sweep.yaml",
        *args,
    ]


def _run(
    project: Project, cmd: list[str], *, stop: int | None = None, env: dict | None = None
) -> tuple[int, str]:
    """Run a sweep; with ``stop`` send that signal (SIGINT: Ctrl-C; SIGKILL: a killed driver)
    to the driver as soon as its first trial has ended."""
    proc = subprocess.Popen(
        cmd,
        cwd=project.root,
        env=env or project.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(420, proc.kill)
    watchdog.start()
    lines, sent = [], False
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            ended = " completed after " in line or " errored after " in line
            if stop is not None and ended and not sent:
                proc.send_signal(stop)
                sent = True
        rc = proc.wait()
    finally:
        watchdog.cancel()
    return rc, "".join(lines)


def _trials(project: Project, name: str) -> list[dict[str, str]]:
    with open(project.root / "sweeps" / name / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _runs(project: Project, name: str) -> tuple[Any, list[Any]]:
    client = MlflowClient(tracking_uri=project.env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("pnoc")
    runs = client.search_runs([exp.experiment_id], f"tags.`pnoc.sweep` = '{name}'")
    parents = [r for r in runs if r.data.tags["pnoc.kind"] == "sweep"]
    assert len(parents) == 1
    return parents[0], [r for r in runs if r.data.tags["pnoc.kind"] == "sweep-trial"]


def test_saliency_sweep_is_interrupted_resumed_grown_and_applied(cams_project: Project):
    project = cams_project
    params_before = (project.root / "params.yaml").read_text()

    # 3 trials, 2 at a time, 2 epochs each; Ctrl-C once the first trial has ended.
    rc, out = _run(project, _sweep("saliency"), stop=signal.SIGINT)
    assert rc == 130, out[-3000:]
    assert "interrupted: run the same command again to resume" in out
    first = _trials(project, "saliency")
    assert any(t["status"] == "unfinished" for t in first), first

    # Same command asking for 4: the interrupted segment is restored (Tuner.restore) and
    # finished, then one more trial runs in a new segment; then --apply.
    rc, out = _run(project, _sweep("saliency", "--num-samples", "4", "--apply"))
    assert rc == 0, out[-3000:]
    assert "resuming" in out and "3 trial(s) done, running 1 more" in out
    assert "with Tuner.restore" in out
    trials = _trials(project, "saliency")
    assert [t["segment"] for t in trials] == ["seg-000"] * 3 + ["seg-001"]
    kept = {t["trial_id"] for t in first if t["status"] != "unfinished"}
    assert kept <= {t["trial_id"] for t in trials}  # ended trials were not run again as new ones
    # The cut trials ran on under their own ids in their experiment: Tuner.restore resumed it.
    cut = {t["trial_id"] for t in first if t["status"] == "unfinished"}
    assert cut <= {t["trial_id"] for t in trials[:3] if t["status"] != "unfinished"}
    statuses = [t["status"] for t in trials]
    assert "unfinished" not in statuses
    assert "failed" in statuses, trials  # the missing weight file crashed a trial …
    assert {"finished", "stopped"} & set(statuses)  # … and the sweep went on
    for t in trials:
        if t["status"] == "failed":
            assert t["saliency.weights"] == "/nonexistent/ccam.pth"
            assert "backbone weight file not found" in t["error"]
        else:
            assert 0.0 <= float(t["cam_saliency_miou"]) <= 1.0
            assert int(t["epochs"]) == (2 if t["status"] == "finished" else 1)

    sweep_dir = project.root / "sweeps" / "saliency"
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    searched = ["saliency.delta_fg", "saliency.lambda_h", "saliency.weights"]
    assert list(best) == searched
    state = json.loads((sweep_dir / "sweep.json").read_text())
    assert [s["num_samples"] for s in state["segments"]] == [3, 1]
    assert (sweep_dir / "optuna.db").is_file()
    assert (sweep_dir / "plots" / "objective.png").is_file()
    assert (sweep_dir / "plots" / "history.png").is_file()

    # --apply: exactly the searched keys changed in params.yaml.
    old, new = (
        yaml.safe_load(params_before),
        yaml.safe_load((project.root / "params.yaml").read_text()),
    )
    for key, value in best.items():
        section, leaf = key.split(".")
        assert new[section][leaf] == value
        new[section][leaf] = old[section][leaf]
    assert new == old

    # MLflow: one parent, a nested run per trial (concurrent trials: every epoch logged).
    parent, runs = _runs(project, "saliency")
    assert parent.info.status == "FINISHED"
    assert {
        a.path
        for a in MlflowClient(project.env["MLFLOW_TRACKING_URI"]).list_artifacts(parent.info.run_id)
    } >= {"best.yaml", "trials.csv", "plots"}
    by_trial = {r.data.tags["pnoc.trial_id"]: r for r in runs}
    assert set(by_trial) == {t["trial_id"] for t in trials}
    client = MlflowClient(project.env["MLFLOW_TRACKING_URI"])
    for t in trials:
        run = by_trial[t["trial_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.params["saliency.delta_fg"].startswith(t["saliency.delta_fg"][:5])
        if t["status"] == "failed":
            assert run.info.status == "FAILED"
            assert "backbone weight file not found" in run.data.tags["pnoc.error"]
            assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["error.txt"]
        else:
            assert run.info.status == "FINISHED"
            history = client.get_metric_history(run.info.run_id, "cam_saliency_miou")
            assert sorted(m.step for m in history) == list(range(1, int(t["epochs"]) + 1))
            assert run.data.metrics["objective"] == pytest.approx(
                float(t["cam_saliency_miou"]), rel=1e-4
            )
    tagged = [r for r in runs if r.data.tags.get("pnoc.best") == "true"]
    assert len(tagged) == 1
    best_row = next(t for t in trials if t["trial_id"] == tagged[0].data.tags["pnoc.trial_id"])
    assert float(best_row["saliency.delta_fg"]) == best["saliency.delta_fg"]


def _ray_trials(experiment: Path) -> dict[str, str]:
    """Trial id -> status, as Ray saved them in an experiment folder."""
    from ray.tune import ExperimentAnalysis

    return {t.trial_id: t.status for t in ExperimentAnalysis(str(experiment)).trials}


def test_a_killed_driver_is_resumed_with_tuner_restore(cams_project: Project):
    """SIGKILL of the driver once a trial has ended: the driver writes nothing more, Ray's last
    saved state stands; the next run restores that experiment and runs its trials on."""
    import optuna

    project = cams_project
    cmd = _sweep("saliency", "--name", "killed")
    sweep_dir = (project.root / "sweeps" / "killed").resolve()
    rc, out = _run(project, cmd, stop=signal.SIGKILL)
    assert rc == -signal.SIGKILL, out[-3000:]
    assert not (sweep_dir / "trials.csv").exists()
    saved = _ray_trials(sweep_dir / "ray" / "seg-000")
    assert set(saved.values()) - {"TERMINATED", "ERROR"}, saved  # Ray saved a cut experiment

    rc, out = _run(project, cmd)
    assert rc == 0, out[-3000:]
    assert f"resuming {sweep_dir / 'ray' / 'seg-000'} with Tuner.restore" in out
    assert [p.name for p in (sweep_dir / "ray").iterdir()] == ["seg-000"]  # no new experiment
    trials = _trials(project, "killed")
    assert len(trials) == 3 and {t["segment"] for t in trials} == {"seg-000"}
    assert set(saved) <= {t["trial_id"] for t in trials}  # the saved trials ran on
    assert "unfinished" not in {t["status"] for t in trials}

    # One MLflow run per trial: those the killed driver left were replaced or removed.
    _, runs = _runs(project, "killed")
    expected = {t["trial_id"]: "FAILED" if t["status"] == "failed" else "FINISHED" for t in trials}
    assert {r.data.tags["pnoc.trial_id"]: r.info.status for r in runs} == expected
    assert len(runs) == len(trials)
    study = optuna.load_study(study_name="killed", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_adversarial_sweep_runs_on_a_ray_cluster(cams_project: Project):
    project = cams_project
    port = _free_port()
    env = project.env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex * 2}
    ray = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--port",
            str(port),
            "--num-cpus",
            "2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--block",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None and time.monotonic() < deadline, "head did not start"
                time.sleep(0.5)
        cmd = _sweep("adversarial", "--num-samples", "2", "--address", f"127.0.0.1:{port}")
        rc, out = _run(project, cmd, env=env)
        assert rc == 0, out[-3000:]
        assert "Connected to Ray cluster" in out
    finally:
        head.send_signal(signal.SIGTERM)  # --block: the head stops the processes it started
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        # `ray start` records its address for later `ray.init()`s on this machine: forget ours.
        current = Path("/tmp/ray/ray_current_cluster")
        if current.is_file() and current.read_text().strip().endswith(f":{port}"):
            current.unlink()
    trials = _trials(project, "adversarial")
    assert [t["status"] for t in trials] == ["finished", "finished"]
    best = yaml.safe_load((project.root / "sweeps" / "adversarial" / "best.yaml").read_text())
    assert list(best) == ["cam.pnoc.ow.end", "cam.pnoc.mask_threshold"]
    _, runs = _runs(project, "adversarial")
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]
    assert all(0.0 <= r.data.metrics["cam_miou"] <= 1.0 for r in runs)


def test_full_objective_reports_pseudo_mask_miou(cams_project: Project, monkeypatch):
    """objective: pseudo_masks trains AffinityNet and walks the CAMs after every epoch."""
    from pnoc.config import parse_params
    from pnoc.tune import PROXY_METRICS, apply_overrides
    from pnoc.tune.objectives import saliency_objective

    monkeypatch.chdir(cams_project.root)
    raw = yaml.safe_load((cams_project.root / "params.yaml").read_text())
    params = parse_params(apply_overrides(raw, {"saliency.epochs": 1}))
    reports: list[dict[str, float]] = []
    last = saliency_objective(
        params, "outputs/cams", report=reports.append, objective="pseudo_masks"
    )
    assert reports == [last] and last["epoch"] == 1
    for name in (*PROXY_METRICS, "pseudo_mask_miou"):
        assert 0.0 <= last[name] <= 1.0, name
    assert "train/loss" in last
