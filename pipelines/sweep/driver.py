"""Running a sweep: validate it, run or resume its Ray Tune experiments, write the results.

The sweep's trials live in Ray Tune experiments under ``sweeps/<name>/ray/`` (``seg-000``,
``seg-001``, …), all sampling from one Optuna study (``optuna.db``). A run of the command:

1. refuses settings that differ from the study's recorded ones (:func:`open_study`);
2. restores the last experiment with ``Tuner.restore(..., resume_errored=True)`` when a trial of
   it had not ended (Ctrl-C, a killed driver, a lost node): ended trials are kept, the others run
   again, and its searcher continues from the state Ray saved;
3. when fewer trials than ``num_samples`` have ended, runs the missing ones in a new experiment
   whose TPE (seeded ``seed + 1000·k`` for the k-th experiment) sees every earlier trial through
   the study; so ``--num-samples 8`` after a finished ``--num-samples 4`` runs 4 more;
4. writes ``trials.csv``, ``best.yaml``, ``sweep.json`` and ``plots/`` and ends the MLflow runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pnoc.config import parse_params
from pnoc.errors import PnocError
from pnoc.io import write_text
from pnoc.tune import Sweep, load_sweep, to_ray
from pnoc_pipelines.params_file import set_params
from pnoc_pipelines.paths import PARAMS_FILE as PARAMS
from pnoc_pipelines.paths import SWEEP_CONFIG
from pnoc_pipelines.sweep import trial
from pnoc_pipelines.sweep.cluster import ray_session, resolve_address
from pnoc_pipelines.sweep.paths import Lock, SweepPaths, sweep_paths
from pnoc_pipelines.sweep.plots import write_plots
from pnoc_pipelines.sweep.results import (
    TrialRecord,
    best_trial,
    best_yaml,
    read_best,
    read_trials,
    summary_json,
    trials_csv,
)
from pnoc_pipelines.sweep.runs import SweepRuns, TrialLogger
from pnoc_pipelines.sweep.study import close_orphans, load_study, open_study, searcher


@dataclass
class SweepOutcome:
    name: str
    metric: str
    mode: str
    paths: SweepPaths
    records: list[TrialRecord]
    best: TrialRecord | None
    interrupted: bool
    applied: list[str]


def _unfinished(records: list[TrialRecord]) -> bool:
    return any(r.status == "unfinished" for r in records)


def _new_tuner(sweep: Sweep, paths: SweepPaths, root: Path, segment: str, num_samples: int) -> Any:
    """A Tuner for experiment ``segment`` of ``num_samples`` trials, on the sweep's study."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    s = sweep.settings
    index = len(paths.experiments())  # earlier experiments: the new one has saved nothing yet
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=s.epochs,
        grace_period=s.asha.grace_period,
        reduction_factor=s.asha.reduction_factor,
    )
    logger = TrialLogger(paths.name, str(root), sweep.metric, sweep.metrics, s.epochs)
    return tune.Tuner(
        trial.trainable(sweep, root),
        param_space=to_ray(sweep.space),
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=s.mode,
            search_alg=searcher(paths, s.seed + 1000 * index),
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=min(s.max_concurrent, num_samples),
        ),
        run_config=tune.RunConfig(
            name=segment,
            storage_path=str(paths.ray),
            callbacks=[logger],
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )


def _run_experiments(
    sweep: Sweep, paths: SweepPaths, root: Path, address: str | None
) -> list[TrialRecord]:
    """Steps 2 and 3 of the module docstring; returns every trial of the sweep."""
    from ray import tune

    s = sweep.settings
    records = read_trials(paths, s.epochs)
    if not _unfinished(records) and len(records) >= s.num_samples:
        print(f"sweep {paths.name}: {len(records)} trial(s) done, none missing")
        return records
    with ray_session(sweep, address):
        if _unfinished(records):
            last = paths.ray / paths.experiments()[-1]
            print(f"resuming {last} with Tuner.restore (unfinished and failed trials run again)")
            tuner = tune.Tuner.restore(
                str(last),
                trial.trainable(sweep, root),
                resume_errored=True,
                param_space=to_ray(sweep.space),
            )
            tuner.fit()
            records = read_trials(paths, s.epochs)
        missing = s.num_samples - len(records)
        if not _unfinished(records) and missing > 0:
            segment = paths.new_experiment()
            print(
                f"sweep {paths.name}: {len(records)} trial(s) done, running {missing} more "
                f"({paths.ray / segment})"
            )
            _new_tuner(sweep, paths, root, segment, missing).fit()
            records = read_trials(paths, s.epochs)
    return records


def _write_results(
    sweep: Sweep, paths: SweepPaths, records: list[TrialRecord], interrupted: bool
) -> tuple[TrialRecord | None, list[Path]]:
    """trials.csv, sweep.json, best.yaml and the plots; returns the best trial and the files."""
    study = load_study(paths)
    if not interrupted:
        close_orphans(study)
    best = best_trial(records, sweep.metric, sweep.settings.mode)
    write_text(paths.trials, trials_csv(records, sweep))
    write_text(paths.summary, summary_json(records, sweep, paths.name))
    files = [paths.trials, paths.summary]
    if best is not None:
        write_text(paths.best, best_yaml(best, sweep, paths.name))
        files.append(paths.best)
    return best, files + write_plots(study, sweep.metric, paths.plots)


def run_sweep(
    kind: str,
    *,
    config: Path = SWEEP_CONFIG,
    params_file: Path = PARAMS,
    name: str | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    address: str | None = None,
    apply: bool = False,
) -> SweepOutcome:
    """Validate, run (or resume) the sweep, write its results; see the module docstring."""
    from pnoc_pipelines.common import read_yaml

    root = Path.cwd().resolve()
    raw_params = read_yaml(params_file)
    parse_params(raw_params, source=str(params_file))
    sweep = load_sweep(
        read_yaml(config),
        kind,
        raw_params,
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        source=str(config),
    )
    paths = sweep_paths(name or kind, root)
    trial.check_inputs(sweep, root)
    remote = resolve_address(address)
    s = sweep.settings
    with Lock(paths.lock):
        open_study(paths, sweep)
        runs = SweepRuns(paths.name, root)
        runs.start(sweep.identity(), s.num_samples)
        try:
            records = _run_experiments(sweep, paths, root, remote)
        except BaseException as exc:  # the parent run must not stay RUNNING
            runs.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            raise
        interrupted = _unfinished(records) or len(records) < s.num_samples
        best, files = _write_results(sweep, paths, records, interrupted)
        summary = {
            "trials.finished": sum(r.status in ("finished", "stopped") for r in records),
            "trials.failed": sum(r.status == "failed" for r in records),
        }
        if best is not None:
            summary[f"best.{sweep.metric}"] = best.value(sweep.metric) or 0.0
        status = "KILLED" if interrupted else "FINISHED"
        runs.finish(records, best, metrics=summary, artifacts=files, status=status)
    applied: list[str] = []
    if apply:
        if interrupted:
            raise PnocError("the sweep was interrupted: rerun it to finish before --apply")
        if best is None:
            raise PnocError(f"sweep {paths.name}: no trial finished; nothing to apply")
        applied = set_params(params_file, read_best(paths.best), origin="the sweep's winners")
    return SweepOutcome(
        paths.name, sweep.metric, s.mode, paths, records, best, interrupted, applied
    )
