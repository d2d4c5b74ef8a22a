"""Driver pieces that need no trial: --apply, Ray addresses, MLflow retries, CLI errors."""

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

from pnoc.errors import ConfigError
from pnoc_pipelines.sweep import apply_best, resolve_address
from pnoc_pipelines.sweep_mlflow import is_lock_error, with_retries
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
    changes = apply_best(path, values)
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
        apply_best(path, {"saliency.delta_fg": 1.5})
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
