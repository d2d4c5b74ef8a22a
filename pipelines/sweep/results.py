"""A sweep's trials as Ray Tune recorded them, and the files made of them: ``trials.csv``,
``best.yaml`` (the winner as dotted keys) and ``sweep.json`` (settings and experiments)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pnoc.errors import ConfigError
from pnoc.tune import Sweep
from pnoc_pipelines.sweep.paths import SweepPaths

STATUSES = ("finished", "stopped", "failed", "unfinished")


@dataclass
class TrialRecord:
    """One trial of a sweep as Ray recorded it."""

    number: int
    trial_id: str
    segment: str  # the Ray Tune experiment it ran in (ray/<segment>)
    status: str  # one of STATUSES; "stopped" by ASHA
    epochs: int
    config: dict[str, Any]
    final: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def value(self, metric: str) -> float | None:
        v = self.final.get(metric)
        if isinstance(v, int | float) and math.isfinite(v) and self.status != "failed":
            return float(v)
        return None


def trial_error_text(trial: Any) -> str:
    """The error trace Ray saved for a failed trial (or a short note when there is none)."""
    text = None
    try:
        text = trial.get_error()
    except Exception:  # storage not reachable: fall back to the local file
        text = None
    if not text and getattr(trial, "error_file", None) and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text(errors="replace")
    return str(text or "trial failed; Ray recorded no error text")


def _history(trial_dir: Path) -> list[dict[str, Any]]:
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by a killed driver
            continue
    return rows


def _creation_order(trial: Any) -> tuple[int, str]:
    """Ray's trial ids are random; the experiment tag starts with the trial's counter."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, trial.trial_id)


def read_trials(paths: SweepPaths, epochs: int) -> list[TrialRecord]:
    """Every trial of the sweep's Ray experiments, numbered in the order they were created."""
    from ray.tune import ExperimentAnalysis

    records: list[TrialRecord] = []
    for segment in paths.experiments():
        analysis = ExperimentAnalysis(str(paths.ray / segment))
        for trial in sorted(analysis.trials, key=_creation_order):
            history = _history(Path(trial.path)) if trial.path else []
            final = dict(history[-1]) if history else dict(trial.last_result or {})
            done = int(final.get("training_iteration", 0) or 0)
            error = None
            if trial.status == "ERROR":
                status, error = "failed", trial_error_text(trial)
            elif trial.status == "TERMINATED":
                status = "finished" if done >= epochs else "stopped"
            else:
                status = "unfinished"
            records.append(
                TrialRecord(
                    number=len(records) + 1,
                    trial_id=trial.trial_id,
                    segment=segment,
                    status=status,
                    epochs=done,
                    config=dict(trial.config),
                    final=final,
                    history=history,
                    error=error,
                )
            )
    return records


def best_trial(records: Sequence[TrialRecord], metric: str, mode: str) -> TrialRecord | None:
    """The trial with the best final ``metric`` (ties: the earliest).

    Trials that ran every epoch compete first: one ASHA stopped was judged weaker at its rung,
    and its early value does not compare with others' last-epoch values. Only when no trial
    ran to the end are the stopped ones ranked.
    """
    scored = [r for r in records if r.value(metric) is not None]
    if not scored:
        return None
    if any(r.status == "finished" for r in scored):
        scored = [r for r in scored if r.status == "finished"]
    sign = 1.0 if mode == "max" else -1.0
    return max(scored, key=lambda r: (sign * r.value(metric), -r.number))  # type: ignore[operator]


def clean(value: Any) -> Any:
    """Trial values for YAML/CSV: floats to 6 significant digits, numpy scalars to Python."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value


def trials_csv(records: Sequence[TrialRecord], sweep: Sweep) -> str:
    keys = [p.param for p in sweep.space]
    others = [m for m in sweep.metrics if m != sweep.metric]
    fields = ["trial", "trial_id", "segment", "status", "epochs", sweep.metric, *keys, *others]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*fields, "error"], lineterminator="\n")
    writer.writeheader()
    for r in records:
        row: dict[str, Any] = {
            "trial": r.number,
            "trial_id": r.trial_id,
            "segment": r.segment,
            "status": r.status,
            "epochs": r.epochs,
        }
        row.update({k: clean(r.config.get(k)) for k in keys})
        row.update({m: clean(r.final.get(m)) for m in (sweep.metric, *others)})
        if r.error:
            lines = [ln for ln in r.error.strip().splitlines() if ln.strip()]
            row["error"] = lines[-1][:300] if lines else "failed"
        writer.writerow(row)
    return buf.getvalue()


def best_yaml(best: TrialRecord, sweep: Sweep, name: str) -> str:
    values = {p.param: clean(best.config.get(p.param)) for p in sweep.space}
    head = (
        f"# Best trial of sweep '{name}' ({sweep.kind}, objective {sweep.objective}): trial "
        f"{best.number} ({best.trial_id}), {sweep.metric} = {best.value(sweep.metric):.6g} "
        f"({sweep.settings.mode}) after {best.epochs} epoch(s).\n"
        f"# Apply with `pnoc sweep {sweep.kind} --name {name} --apply` or "
        + " ".join(f"-S {k}={v}" for k, v in values.items())
        + " on `dvc exp run`.\n"
    )
    return head + yaml.safe_dump(values, sort_keys=False)


def read_best(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text()) if path.exists() else None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: no winning params (has a trial of this sweep finished?)")
    return data


def summary_json(records: Sequence[TrialRecord], sweep: Sweep, name: str) -> str:
    """The sweep's settings and its Ray experiments with the trials each ran, for readers."""
    segments: dict[str, int] = {}
    for r in records:
        segments[r.segment] = segments.get(r.segment, 0) + 1
    summary = {
        "name": name,
        "fingerprint": sweep.fingerprint(),
        "identity": sweep.identity(),
        "segments": [{"name": s, "num_samples": n} for s, n in segments.items()],
        "trials": {s: sum(r.status == s for r in records) for s in STATUSES},
    }
    return json.dumps(summary, indent=2, default=str) + "\n"
