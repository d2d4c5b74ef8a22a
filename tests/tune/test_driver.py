"""Driver pieces that need no trial: --apply, Ray addresses, the study's settings check, the
experiments' folders, MLflow runs and retries, plots, CLI errors."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pnoc.errors import ConfigError
from pnoc.tune import Sweep, apply_overrides, load_sweep
from pnoc_pipelines.params_file import set_params
from pnoc_pipelines.sweep.cluster import resolve_address
from pnoc_pipelines.sweep.paths import sweep_paths
from pnoc_pipelines.sweep.plots import write_plots
from pnoc_pipelines.sweep.results import TrialRecord
from pnoc_pipelines.sweep.retries import is_lock_error, with_retries
from pnoc_pipelines.sweep.runs import SweepRuns
from pnoc_pipelines.sweep.study import open_study
from tests.conftest import REPO


def test_apply_changes_exactly_the_searched_keys(tmp_path: Path):
    path = tmp_path / "params.yaml"
    original = (REPO / "params.yaml").read_text()
    path.write_text(original)
    values = {
        "saliency.delta_fg": 0.312345,
        "saliency.lambda_h": 2.5,
        "cam.pnoc.ow.end": 1.7,  # inside a flow mapping
        # its current value: the line stays as it was
        "saliency.weights": yaml.safe_load(original)["saliency"]["weights"],
    }
    changes = set_params(path, values, origin="the sweep's winners")
    assert len(changes) == 3
    new = path.read_text()
    old_lines, new_lines = original.splitlines(), new.splitlines()
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    old = yaml.safe_load(original)
    ow = old["cam"]["pnoc"]["ow"]
    assert [b.split("#")[0].strip() for _, b in changed] == [
        f"ow: {{start: {ow['start']}, end: 1.7, until: {ow['until']}}}",
        "delta_fg: 0.312345",
        "lambda_h: 2.5",
    ]
    assert all(b.split("#")[1:] == a.split("#")[1:] for a, b in changed)  # comments kept
    got = yaml.safe_load(new)
    assert got["saliency"]["delta_fg"] == 0.312345 and got["cam"]["pnoc"]["ow"]["end"] == 1.7
    got["saliency"].update(
        delta_fg=old["saliency"]["delta_fg"], lambda_h=old["saliency"]["lambda_h"]
    )
    got["cam"]["pnoc"]["ow"]["end"] = ow["end"]
    assert got == old  # every other key and value identical


def test_apply_refuses_an_invalid_result_and_leaves_the_file(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text())
    with pytest.raises(ConfigError, match="delta_fg"):
        set_params(path, {"saliency.delta_fg": 1.5}, origin="the sweep's winners")
    assert path.read_text() == (REPO / "params.yaml").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cluster_that_does_not_answer_is_an_error_at_once(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) is None
    dead = f"127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match="does not answer"):
        resolve_address(dead)
    monkeypatch.setenv("RAY_ADDRESS", dead)  # honoured when --address is not given
    with pytest.raises(ConfigError, match="does not answer"):
        resolve_address(None)
    assert time.monotonic() - t0 < 10
    with pytest.raises(ConfigError, match="host:port"):
        resolve_address("nowhere")


def test_a_listening_address_is_accepted(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert resolve_address(address) == address


def test_lock_errors_are_retried_and_others_are_not():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert with_retries(flaky, first_delay=0.001) == "ok" and len(calls) == 3
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = sqlite3.OperationalError("database is locked")
    assert is_lock_error(wrapped)

    def broken() -> None:
        calls.append(1)
        raise MlflowException("RESOURCE_ALREADY_EXISTS")

    calls.clear()
    with pytest.raises(MlflowException):
        with_retries(broken, first_delay=0.001)
    assert len(calls) == 1

    def locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    with pytest.raises(sqlite3.OperationalError):
        with_retries(locked, attempts=3, first_delay=0.001)


def test_cli_refuses_a_metric_no_trial_reports(tmp_path: Path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    config = yaml.safe_load((REPO / "pipelines" / "sweep.yaml").read_text())
    config["saliency"]["metric"] = "pseudo_mask_miou"
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "pnoc_pipelines.cli", "sweep", "saliency", "--config", "sweep.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)},
    )
    assert proc.returncode == 1
    assert "'pseudo_mask_miou' is never reported by objective 'proxy'" in proc.stderr
    assert not (tmp_path / "sweeps").exists()


def _sweep(params: dict, **changes) -> Sweep:
    config = yaml.safe_load((REPO / "pipelines" / "sweep.yaml").read_text())
    config["saliency"].update(changes)
    return load_sweep(config, "saliency", params)


def test_a_sweep_resumes_only_with_its_recorded_settings(tmp_path: Path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    paths = sweep_paths("s", tmp_path)
    study = open_study(paths, _sweep(params))
    assert study.direction.name == "MAXIMIZE" and paths.optuna.is_file()
    open_study(paths, _sweep(params))  # the same settings: resumed
    applied = apply_overrides(params, {"saliency.delta_fg": 0.33})  # after --apply
    open_study(paths, _sweep(applied))
    space = yaml.safe_load((REPO / "pipelines" / "sweep.yaml").read_text())["saliency"]["space"]
    space[0]["high"] = 0.6
    changed = apply_overrides(params, {"saliency.alpha": 0.5})
    with pytest.raises(ConfigError, match=r"changed: params \(saliency.alpha\), space\."):
        open_study(paths, _sweep(changed, space=space))
    with pytest.raises(ConfigError, match=r"changed: mode, seed\."):
        open_study(paths, _sweep(params, seed=9, mode="min"))


def test_experiments_are_the_ray_folders_with_saved_state(tmp_path: Path):
    paths = sweep_paths("s", tmp_path)
    assert paths.experiments() == [] and paths.new_experiment() == "seg-000"
    (paths.ray / "seg-000").mkdir(parents=True)
    (paths.ray / "seg-000" / "experiment_state-2026.json").write_text("{}")
    (paths.ray / "seg-001").mkdir()  # a driver killed before Ray saved anything
    (paths.ray / "seg-001" / "tuner.pkl").write_bytes(b"")
    assert paths.experiments() == ["seg-000"]
    assert paths.new_experiment() == "seg-001" and not (paths.ray / "seg-001").exists()


def _record(number: int, trial_id: str, status: str) -> TrialRecord:
    return TrialRecord(number, trial_id, "seg-000", status, 1, {"x": 0.1}, {"m": 0.5})


def test_trial_runs_one_per_trial_agree_with_ray_at_the_end(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = SweepRuns("s", tmp_path)
    first = runs.start_trial("a", {"x": 0.1, "w": None})
    runs.log_result(first, {"training_iteration": 1, "m": 0.2, "train/loss": 3.0, "pid": 7}, ["m"])
    again = runs.start_trial("a", {"x": 0.1, "w": None})  # restored: trial a runs again
    runs.log_result(again, {"training_iteration": 1, "m": 0.5}, ["m"])
    runs.end_trial(again, status="finished", value=0.5)
    failed = runs.start_trial("b", {"x": 0.2, "w": "no.pth"})
    runs.end_trial(failed, status="failed", error="Traceback …\nFileNotFoundError: no.pth")
    runs.start_trial("c", {"x": 0.3, "w": None})  # cut by an interruption
    runs.start_trial("d", {"x": 0.4, "w": None})  # started, never saved by Ray
    records = [
        _record(1, "a", "finished"),
        _record(2, "b", "failed"),
        _record(3, "c", "unfinished"),
    ]
    runs.finish(records, records[0], metrics={"trials.failed": 1}, artifacts=[], status="KILLED")

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    found = client.search_runs([runs.experiment_id], "tags.`pnoc.sweep` = 's'")
    parent = next(r for r in found if r.data.tags["pnoc.kind"] == "sweep")
    assert parent.info.status == "KILLED" and parent.data.metrics == {"trials.failed": 1.0}
    trials = {r.data.tags["pnoc.trial_id"]: r for r in found if r != parent}
    assert sorted(trials) == ["a", "b", "c"]
    assert {t: r.info.status for t, r in trials.items()} == {
        "a": "FINISHED",
        "b": "FAILED",
        "c": "KILLED",
    }
    a = trials["a"]
    assert a.info.run_id == again and a.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert a.data.params == {"x": "0.1", "w": "null"}
    assert [(m.step, m.value) for m in client.get_metric_history(again, "m")] == [(1, 0.5)]
    assert a.data.metrics == {"m": 0.5, "objective": 0.5}
    assert [r for r, run in trials.items() if run.data.tags.get("pnoc.best")] == ["a"]
    assert trials["b"].data.tags["pnoc.error"].endswith("FileNotFoundError: no.pth")
    assert [f.path for f in client.list_artifacts(failed)] == ["error.txt"]


def test_plots_of_the_study(tmp_path: Path):
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    study = optuna.create_study(direction="maximize")
    space = {
        "s.x": FloatDistribution(0.3, 0.7),
        "s.l": FloatDistribution(0.1, 10.0, log=True),
        "s.w": CategoricalDistribution([None, "no.pth"]),
    }
    assert write_plots(study, "m", tmp_path / "plots") == []
    t = study.ask(space)
    study.tell(t, 0.4)
    names = ["history.png", "objective.png", "parallel_coordinate.png"]
    assert [p.name for p in write_plots(study, "m", tmp_path / "plots")] == names
    for value in (0.5, None, 0.7):
        t = study.ask(space)
        study.tell(t, value, state=None if value is not None else optuna.trial.TrialState.FAIL)
    written = write_plots(study, "m", tmp_path / "plots")
    assert [p.name for p in written] == [*names, "importances.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)
