"""MLflow runs of a sweep: a parent run per sweep, a nested run per trial (``mlflow.parentRunId``).

Only the driver writes: :class:`TrialLogger`, a Ray Tune callback, turns the trial events the
driver receives (start, each epoch's result, end) into MLflow calls, each through
:func:`~pnoc_pipelines.sweep.retries.with_retries`. Runs are found by tags, never remembered:
``pnoc.sweep`` on every run, ``pnoc.kind`` (``sweep`` or ``sweep-trial``), ``pnoc.trial_id``
(Ray's trial id) on a trial's run. A trial that starts again (``Tuner.restore`` reruns the trials
an interruption cut) replaces its earlier run, so every trial has one run with one history.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback

from pnoc_pipelines.sweep.results import TrialRecord, trial_error_text
from pnoc_pipelines.sweep.retries import with_retries

SWEEP_TAG = "pnoc.sweep"
TRIAL_TAG = "pnoc.trial_id"
BEST_TAG = "pnoc.best"
ERROR_TAG = "pnoc.error"
STATUS_TAG = "pnoc.trial_status"
_TAG_LIMIT = 5000  # MLflow caps tag values at 8000 characters; the full trace is an artifact
_BATCH = 900  # MLflow takes at most 1000 metrics per batch


def _param(value: Any) -> str:
    return "null" if value is None else str(value)


def logged_metrics(result: Mapping[str, Any], names: Iterable[str]) -> dict[str, float]:
    """The numbers of one trial result worth logging: the objective's metrics and ``train/*``."""
    wanted = set(names)
    return {
        k: float(v)
        for k, v in result.items()
        if (k in wanted or k.startswith("train/")) and isinstance(v, int | float)
    }


class SweepRuns:
    """The MLflow runs of sweep ``name``; finds (or creates) its parent run."""

    def __init__(self, name: str, root: Path) -> None:
        from mlflow.tracking import MlflowClient

        from pnoc_pipelines import tracking

        self.name = name
        self.experiment_id = with_retries(tracking.configure, root=root)
        self.client = MlflowClient(tracking.tracking_uri(root))
        found = self._search("tags.`pnoc.kind` = 'sweep'")
        if found:
            self.parent_id = found[0].info.run_id
        else:
            tags = {SWEEP_TAG: name, "pnoc.kind": "sweep", **tracking.lineage_tags()}
            run = self._call("create_run", self.experiment_id, run_name=f"sweep-{name}", tags=tags)
            self.parent_id = run.info.run_id

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return with_retries(getattr(self.client, method), *args, **kwargs)

    def _search(self, filter_string: str) -> list[Any]:
        where = f"tags.`{SWEEP_TAG}` = '{self.name}' and {filter_string}"
        return self._call(
            "search_runs", [self.experiment_id], filter_string=where, max_results=50_000
        )

    def start(self, identity: Mapping[str, Any], num_samples: int) -> None:
        """The parent run (again) RUNNING, with the sweep's fixed settings as params (the same
        on every resume) and the requested number of trials as a tag."""
        from mlflow.entities import Param

        fixed = ("kind", "objective", "metric", "mode", "epochs", "seed")
        params = {k: identity[k] for k in fixed}
        params["asha"] = json.dumps(identity["asha"], sort_keys=True)
        params["space"] = json.dumps(identity["space"])
        self._call("update_run", self.parent_id, status="RUNNING")
        batch = [Param(k, _param(v)) for k, v in params.items()]
        self._call("log_batch", self.parent_id, params=batch)
        self._call("set_tag", self.parent_id, "pnoc.num_samples", str(num_samples))

    def start_trial(self, trial_id: str, config: Mapping[str, Any]) -> str:
        """A fresh run for a trial that starts; an earlier run of the same trial is deleted."""
        from mlflow.entities import Param

        for run in self._search(f"tags.`{TRIAL_TAG}` = '{trial_id}'"):
            self._call("delete_run", run.info.run_id)
        tags = {
            "mlflow.parentRunId": self.parent_id,
            "pnoc.kind": "sweep-trial",
            SWEEP_TAG: self.name,
            TRIAL_TAG: trial_id,
        }
        run = self._call("create_run", self.experiment_id, run_name=f"trial-{trial_id}", tags=tags)
        batch = [Param(k, _param(v)) for k, v in sorted(config.items())]
        self._call("log_batch", run.info.run_id, params=batch)
        return run.info.run_id

    def log_result(self, run_id: str, result: Mapping[str, Any], names: Sequence[str]) -> None:
        """One epoch of a trial: its metrics at step = epoch, timestamped as Ray received them."""
        from mlflow.entities import Metric

        step = int(result.get("training_iteration", 0))
        stamp = int(float(result.get("timestamp", time.time())) * 1000)
        batch = [Metric(k, v, stamp, step) for k, v in logged_metrics(result, names).items()]
        for i in range(0, len(batch), _BATCH):
            self._call("log_batch", run_id, metrics=batch[i : i + _BATCH])

    def end_trial(
        self, run_id: str, *, status: str, value: Any = None, error: str | None = None
    ) -> None:
        """The trial's final ``objective``, status tag and run status (FAILED with its error)."""
        if isinstance(value, int | float):
            self._call("log_metric", run_id, "objective", float(value))
        self._call("set_tag", run_id, STATUS_TAG, status)
        if error is not None:
            self._call("set_tag", run_id, ERROR_TAG, error[-_TAG_LIMIT:])
            self._call("log_text", run_id, error, "error.txt")
        self._call("set_terminated", run_id, status="FAILED" if error is not None else "FINISHED")

    def finish(
        self,
        records: Sequence[TrialRecord],
        best: TrialRecord | None,
        *,
        metrics: Mapping[str, float],
        artifacts: Iterable[Path],
        status: str,
    ) -> None:
        """Trial runs agree with Ray's records, ``pnoc.best=true`` marks the winner only, and
        the parent run ends with the summary metrics and the sweep's files.

        A run of a trial Ray never saved (started just before a driver was killed) is deleted;
        a run still RUNNING (its trial was cut by an interruption) is KILLED.
        """
        ids = {r.trial_id for r in records}
        for run in self._search("tags.`pnoc.kind` = 'sweep-trial'"):
            run_id, tags = run.info.run_id, run.data.tags
            if tags.get(TRIAL_TAG) not in ids:
                self._call("delete_run", run_id)
                continue
            if run.info.status == "RUNNING":
                self._call("set_terminated", run_id, status="KILLED")
            if best is not None and tags[TRIAL_TAG] == best.trial_id:
                self._call("set_tag", run_id, BEST_TAG, "true")
            elif tags.get(BEST_TAG):
                self._call("delete_tag", run_id, BEST_TAG)
        for key, value in metrics.items():
            self._call("log_metric", self.parent_id, key, float(value))
        for path in artifacts:
            if path.is_file():
                folder = "plots" if path.suffix == ".png" else None
                self._call("log_artifact", self.parent_id, str(path), folder)
        self.end(status)

    def end(self, status: str) -> None:
        self._call("set_terminated", self.parent_id, status=status)


class TrialLogger(Callback):
    """Ray Tune callback, run by the driver: trial events -> the trials' MLflow runs.

    Pickled with the experiment (``Tuner.restore`` brings it back), so it keeps names only; the
    MLflow client is opened in :meth:`setup`, i.e. again by every run and restore.
    """

    def __init__(
        self, sweep: str, root: str, metric: str, names: Sequence[str], epochs: int
    ) -> None:
        self.sweep, self.root, self.metric, self.epochs = sweep, root, metric, epochs
        self.names = list(names)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("_runs", "_ids")}

    def setup(self, **info: Any) -> None:
        self._runs = SweepRuns(self.sweep, Path(self.root))
        self._ids: dict[str, str] = {}  # Ray's trial id -> its MLflow run id

    def _run_id(self, trial: Any) -> str:
        if trial.trial_id not in self._ids:
            self._ids[trial.trial_id] = self._runs.start_trial(trial.trial_id, trial.config)
        return self._ids[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ids[trial.trial_id] = self._runs.start_trial(trial.trial_id, trial.config)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        self._runs.log_result(self._run_id(trial), result, self.names)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        final = trial.last_result or {}
        status = "finished" if final.get("training_iteration", 0) >= self.epochs else "stopped"
        self._runs.end_trial(self._run_id(trial), status=status, value=final.get(self.metric))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._runs.end_trial(self._run_id(trial), status="failed", error=trial_error_text(trial))
