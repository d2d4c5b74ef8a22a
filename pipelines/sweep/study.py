"""The sweep's Optuna study (``sweeps/<name>/optuna.db``): every trial TPE learns from, and the
settings the sweep was started with (a study user attribute).

Each Ray Tune experiment of the sweep gets a :class:`StudySearch` on this study, so TPE sees
the trials of every earlier experiment; ``Tuner.restore`` brings an experiment's searcher back
with its own saved state.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from pnoc.errors import ConfigError
from pnoc.tune import Sweep
from pnoc_pipelines.sweep.paths import SweepPaths

IDENTITY_ATTR = "pnoc.identity"


def _storage(paths: SweepPaths) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{paths.optuna}")


def _changed(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if "params" in changed:
        before, after = old.get("params", {}), new.get("params", {})
        keys = [k for k in sorted(before.keys() | after.keys()) if before.get(k) != after.get(k)]
        changed[changed.index("params")] = f"params ({', '.join(keys[:8])})"
    return changed


def open_study(paths: SweepPaths, sweep: Sweep) -> optuna.Study:
    """Create the study, or load it if its recorded settings are the sweep's.

    Finished trials of other settings would not compare: a changed space, objective, metric,
    mode, epochs, seed, ASHA or params.yaml (outside the searched keys) is a ConfigError that
    names what changed.
    """
    paths.dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=_storage(paths),
        study_name=paths.name,
        direction="maximize" if sweep.settings.mode == "max" else "minimize",
        load_if_exists=True,
    )
    identity = json.loads(json.dumps(sweep.identity(), default=str))
    recorded = study.user_attrs.get(IDENTITY_ATTR)
    if recorded is None and study.trials:
        raise ConfigError(
            f"{paths.optuna}: study '{paths.name}' holds trials but no recorded settings; "
            "pick another --name, or delete the folder to start over"
        )
    if recorded is None:
        study.set_user_attr(IDENTITY_ATTR, identity)
    elif recorded != identity:
        raise ConfigError(
            f"sweep '{paths.name}' exists ({paths.dir}) with other settings; changed: "
            f"{', '.join(_changed(recorded, identity))}. Its trials would not compare: pick "
            "another --name, or delete the folder to start over"
        )
    return study


class StudySearch(OptunaSearch):
    """OptunaSearch that leaves an Optuna trial alone once it has ended.

    A driver killed after Optuna recorded a trial's end but before Ray saved its experiment
    state leaves a trial that ``Tuner.restore`` runs again; Optuna refuses to update an ended
    trial, and its first record stands.
    """

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            super().on_trial_result(trial_id, result)


def searcher(paths: SweepPaths, seed: int) -> StudySearch:
    """TPE (seeded) on the sweep's study; metric, mode and space come from the Tuner."""
    return StudySearch(seed=seed, storage=_storage(paths), study_name=paths.name)


def load_study(paths: SweepPaths) -> optuna.Study:
    """The study as it stands now (after the Ray experiments wrote to it)."""
    return optuna.load_study(study_name=paths.name, storage=_storage(paths))


def close_orphans(study: optuna.Study) -> None:
    """Optuna trials a killed driver left RUNNING (asked, never seen by Ray) become FAIL."""
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for t in running:
        study.tell(t.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
