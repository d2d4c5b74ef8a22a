"""``pnoc sweep saliency|adversarial``: hyperparameter sweeps with Ray Tune + Optuna (TPE) + ASHA.

Settings come from ``pipelines/sweep.yaml`` (search space, objective, metric, epochs per trial,
samples, concurrency, per-trial resources, ASHA, TPE seed) and are validated with params.yaml
before Ray starts (:func:`pnoc.tune.load_sweep`). A trial applies its values to params.yaml
(plus the sweep's overrides and shortened epochs), trains (C²AM-H on ``outputs/cams``, or the CAM
generator from ``models/oc.pt``) and reports its metrics after every epoch; ASHA stops weak
trials at its rungs.

Everything of sweep ``<name>`` lives in ``sweeps/<name>/``:

* ``ray/seg-000``, ``ray/seg-001``, …: the Ray Tune experiments ("segments") run for it;
* ``optuna.db``: the Optuna study (SQLite) TPE samples from: every finished trial of every
  segment;
* ``sweep.json``: the sweep's identity (fingerprint of the settings and of params.yaml without
  the searched keys) and its segments;
* ``trials.csv``, ``best.yaml`` (the winner as dotted keys), ``plots/``.

Resuming: running the same command again (same ``--name``) first restores the last segment with
``Tuner.restore(..., resume_errored=True)`` if it did not finish (Ctrl-C, a killed driver, a
lost node): its finished trials are kept, unfinished and errored ones run again, the searcher
continues from its saved state. Then, if fewer trials than ``--num-samples`` exist over all
segments, a new segment runs the missing ones, with a TPE seeded ``seed + 1000·segment`` that
sees every earlier trial through ``optuna.db``. So ``--num-samples 8`` after a finished
``--num-samples 4`` runs 4 more. A changed search space, objective, metric, epochs, seed or
params.yaml (outside the searched keys) refuses to resume: finished trials would not be
comparable; use another ``--name``.

Tracking: one MLflow parent run per sweep, a nested run per trial; see
:mod:`pnoc_pipelines.sweep_mlflow` (only the driver writes, with retries on SQLite locks).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from pnoc.config import parse_params
from pnoc.errors import ConfigError, PnocError
from pnoc.io import write_text
from pnoc.tune import Sweep, apply_overrides, load_sweep, to_ray

SWEEP_CONFIG = Path("pipelines/sweep.yaml")
PARAMS = Path("params.yaml")
SWEEPS = Path("sweeps")
CAMS = Path("outputs/cams")
OC = Path("models/oc.pt")
ADDRESS_TIMEOUT_S = 3.0
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


# --------------------------------------------------------------------------------------------
# The trial (runs in a Ray worker)


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a sweep shares; travels to the workers through Ray's object store."""

    kind: str
    objective: str
    base_params: dict[str, Any]
    root: str  # the project root: the trial's working directory
    cpus: float
    gpus: float


def run_trial(config: dict[str, Any], spec: TrialSpec) -> None:
    """A Ray Tune function trainable: params = base + ``config`` (dotted keys), then train.

    Paths in params.yaml are relative to the project root, so the trial works from there (the
    project must sit at the same absolute path on every node of a cluster). A trial with GPUs
    trains on CUDA, one without on the CPU with as many threads as CPUs.
    """
    import torch
    from ray import tune

    from pnoc.cam.training import load_cam_model
    from pnoc.config import seed_everything
    from pnoc.tune.objectives import adversarial_objective, saliency_objective

    os.chdir(spec.root)
    params = parse_params(apply_overrides(spec.base_params, config), source="sweep trial")
    torch.set_num_threads(max(1, int(spec.cpus)))
    device = "cuda" if spec.gpus > 0 else "cpu"
    seed_everything(params.base.seed)
    if spec.kind == "saliency":
        saliency_objective(
            params,
            Path(spec.root) / CAMS,
            report=tune.report,
            objective=spec.objective,
            device=device,
        )
    else:
        oc = load_cam_model(Path(spec.root) / OC, device)
        adversarial_objective(params, oc, report=tune.report, device=device)


# --------------------------------------------------------------------------------------------
# Paths, state, lock


@dataclass(frozen=True)
class SweepPaths:
    dir: Path

    @property
    def ray(self) -> Path:
        return self.dir / "ray"

    @property
    def optuna(self) -> Path:
        return self.dir / "optuna.db"

    @property
    def state(self) -> Path:
        return self.dir / "sweep.json"

    @property
    def best(self) -> Path:
        return self.dir / "best.yaml"

    @property
    def trials(self) -> Path:
        return self.dir / "trials.csv"

    @property
    def plots(self) -> Path:
        return self.dir / "plots"

    @property
    def lock(self) -> Path:
        return self.dir / ".lock"


def sweep_paths(name: str, root: Path | None = None) -> SweepPaths:
    if not _NAME.match(name):
        raise ConfigError(f"--name '{name}': use letters, digits, '.', '_' and '-' only")
    return SweepPaths(((root or Path.cwd()) / SWEEPS / name).resolve())


def _load_state(paths: SweepPaths, sweep: Sweep) -> dict[str, Any]:
    if not paths.state.exists():
        return {"fingerprint": sweep.fingerprint(), "identity": sweep.identity(), "segments": []}
    state = json.loads(paths.state.read_text())
    if state.get("fingerprint") != sweep.fingerprint():
        old, new = state.get("identity", {}), sweep.identity()
        changed = sorted(k for k in new if old.get(k) != new.get(k))
        if "params" in changed:
            keys = set(old.get("params", {})) | set(new["params"])
            diff = [k for k in sorted(keys) if old["params"].get(k) != new["params"].get(k)]
            changed[changed.index("params")] = f"params ({', '.join(diff[:8])})"
        raise ConfigError(
            f"sweep '{paths.dir.name}' exists ({paths.dir}) with other settings; changed: "
            f"{', '.join(changed)}. Its trials would not compare: pick another --name, or "
            "delete the folder to start over"
        )
    return state


def _save_state(paths: SweepPaths, state: dict[str, Any]) -> None:
    write_text(paths.state, json.dumps(state, indent=2, default=str) + "\n")


def _alive_since(pid: int, mtime: float) -> bool:
    """A process ``pid`` runs that started before the lock was written (not a reused pid)."""
    import psutil

    try:
        return psutil.Process(pid).create_time() <= mtime + 1.0
    except psutil.Error:
        return False


class _Lock:
    """One driver per sweep: ``sweeps/<name>/.lock`` holds the driver's pid."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            try:
                pid = int(self.path.read_text().strip() or 0)
            except ValueError:
                pid = 0
            if pid and pid != os.getpid() and _alive_since(pid, self.path.stat().st_mtime):
                raise ConfigError(
                    f"sweep {self.path.parent.name} is already running (pid {pid}); "
                    f"wait for it or remove {self.path} if that process is not a sweep"
                )
        self.path.write_text(str(os.getpid()))
        return self

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Ray


def resolve_address(address: str | None) -> str | None:
    """``--address``, else ``RAY_ADDRESS``; None for a local Ray. A ``host:port`` that does not
    accept a connection within a few seconds is a ConfigError (before any trial)."""
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if address in ("", "local"):
        return None
    if address == "auto":
        return address
    hostport = re.sub(r"^[a-z]+://", "", address)
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"Ray address '{address}': expected host:port (or 'auto')")
    try:
        with socket.create_connection((host, int(port)), timeout=ADDRESS_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            f"Ray cluster at {address} does not answer ({exc}); start it with "
            "`ray start --head --port <port>` or drop --address / RAY_ADDRESS to run locally"
        ) from None
    return address


def _start_ray(address: str | None) -> bool:
    """Connect to (or start) Ray; True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    try:
        if address is None:  # "local": a fresh Ray, not whatever `ray start` left running
            ray.init(
                address="local",
                num_cpus=os.cpu_count() or 1,
                include_dashboard=False,
                log_to_driver=True,
            )
        else:
            ray.init(address=address, log_to_driver=True)
    except ConnectionError as exc:
        raise ConfigError(
            f"cannot connect to Ray at {address}: {exc}. A cluster with token authentication "
            "(Ray's default) needs RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or "
            "~/.ray/auth_token"
        ) from None
    return True


def _check_resources(sweep: Sweep, remote: bool) -> None:
    import ray

    have = ray.cluster_resources()
    need = sweep.settings.resources
    short = [
        f"{k} {n:g} > {have.get(k.upper(), 0):g}"
        for k, n in (("cpu", need.cpu), ("gpu", need.gpu))
        if n > have.get(k.upper(), 0)
    ]
    if short and not remote:
        raise ConfigError(
            f"resources per trial exceed this machine ({', '.join(short)}): lower "
            f"{sweep.kind}.resources in the sweep config"
        )
    if short:
        print(f"warning: the cluster has fewer resources than one trial needs: {short}")


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class TrialRecord:
    """One trial of a sweep as Ray recorded it."""

    number: int
    trial_id: str
    segment: str
    status: str  # finished | stopped (by ASHA) | failed | unfinished
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


def _saved(segment_dir: Path) -> bool:
    return segment_dir.is_dir() and any(segment_dir.glob("experiment_state-*.json"))


def _creation_order(trial: Any) -> tuple[int, str]:
    """Ray's trial ids are random; the experiment tag starts with the trial's counter."""
    head = str(getattr(trial, "experiment_tag", "") or "").split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, trial.trial_id)


def read_trials(paths: SweepPaths, segments: Sequence[str], epochs: int) -> list[TrialRecord]:
    """Every trial of the sweep's segments, numbered in the order they were created."""
    from ray.tune import ExperimentAnalysis

    from pnoc_pipelines.sweep_mlflow import trial_error_text

    records: list[TrialRecord] = []
    for segment in segments:
        path = paths.ray / segment
        if not _saved(path):
            continue  # killed before Ray saved anything: its trials never existed
        analysis = ExperimentAnalysis(str(path))
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
                    config={k: v for k, v in trial.config.items()},
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


def _clean(value: Any) -> Any:
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
        row.update({k: _clean(r.config.get(k)) for k in keys})
        row.update({m: _clean(r.final.get(m)) for m in (sweep.metric, *others)})
        if r.error:
            lines = [ln for ln in r.error.strip().splitlines() if ln.strip()]
            row["error"] = lines[-1][:300] if lines else "failed"
        writer.writerow(row)
    return buf.getvalue()


def best_yaml(best: TrialRecord, sweep: Sweep, name: str) -> str:
    values = {p.param: _clean(best.config.get(p.param)) for p in sweep.space}
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


# --------------------------------------------------------------------------------------------
# Plots


def _numeric(sweep: Sweep) -> list[Any]:
    return [p for p in sweep.space if p.is_range]


def write_plots(records: Sequence[TrialRecord], sweep: Sweep, folder: Path) -> list[Path]:
    """Objective over the first two numeric searched params (δfg × λh for the saliency sweep),
    and the optimisation history (each trial's objective, running best)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, mode = sweep.metric, sweep.settings.mode
    scored = [r for r in records if r.value(metric) is not None]
    folder.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    best = best_trial(records, metric, mode)

    numeric = _numeric(sweep)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    values = [r.value(metric) for r in scored]
    if len(numeric) >= 2:
        px, py = numeric[0], numeric[1]
        xs = [float(r.config[px.param]) for r in scored]
        ys = [float(r.config[py.param]) for r in scored]
        sc = ax.scatter(xs, ys, c=values, cmap="viridis", s=60, edgecolors="k")
        fig.colorbar(sc, ax=ax, label=metric)
        ax.set_xlabel(px.param)
        ax.set_ylabel(py.param)
        ax.set_xscale("log" if px.log else "linear")
        ax.set_yscale("log" if py.log else "linear")
        ax.set_xlim(px.low, px.high)  # the searched box: shows what the sweep covered
        ax.set_ylim(py.low, py.high)
        if best is not None:
            ax.scatter(
                [float(best.config[px.param])],
                [float(best.config[py.param])],
                marker="*",
                s=300,
                c="red",
                label="best",
            )
            ax.legend(loc="best")
    else:
        p = numeric[0] if numeric else sweep.space[0]
        xs = [r.config[p.param] if numeric else str(r.config[p.param]) for r in scored]
        ax.scatter(xs, values, s=50, edgecolors="k")
        ax.set_xlabel(p.param)
        ax.set_ylabel(metric)
        if numeric and p.log:
            ax.set_xscale("log")
    ax.set_title(f"{sweep.kind} sweep: {metric} per trial")
    fig.tight_layout()
    path = folder / "objective.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    out.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    nums = [r.number for r in scored]
    ax.scatter(nums, values, s=40, label="trial", edgecolors="k")
    running, best_so_far = [], None
    for v in values:
        better = best_so_far is None or (v > best_so_far if mode == "max" else v < best_so_far)
        best_so_far = v if better else best_so_far
        running.append(best_so_far)
    if nums:
        ax.step(nums, running, where="post", color="red", label="best so far")
    failed = [r.number for r in records if r.status == "failed"]
    if failed and values:
        ax.scatter(failed, [min(values)] * len(failed), marker="x", c="gray", label="failed")
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("optimisation history")
    ax.legend(loc="best")
    fig.tight_layout()
    path = folder / "history.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    out.append(path)
    return out


# --------------------------------------------------------------------------------------------
# --apply


def apply_best(params_path: Path, values: Mapping[str, Any]) -> list[str]:
    """Write ``values`` (dotted keys) into params.yaml, changing nothing else.

    A ruamel.yaml round trip (installed with DVC) keeps comments, order, flow style and the
    formatting of untouched values; a key params.yaml omits (a defaulted one) is added to its
    section. The result is validated before the file is replaced. Returns ``key: old -> new``.
    """
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.preserve_quotes = True
    rt.width = 4096
    rt.representer.add_representer(
        type(None), lambda r, d: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    text = params_path.read_text()
    doc = rt.load(text)
    changes = []
    for key, value in values.items():
        parts = key.split(".")
        node = doc
        for part in parts[:-1]:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
        old = node.get(parts[-1], "<default>")
        if parts[-1] in node and old == value and type(old) is type(value):
            continue  # untouched: keep its exact spelling
        node[parts[-1]] = value
        changes.append(f"{key}: {old} -> {value}")
    buf = io.StringIO()
    rt.dump(doc, buf)
    new_text = buf.getvalue()
    parse_params(yaml.safe_load(new_text), source=f"{params_path} (with the sweep's winners)")
    write_text(params_path, new_text)
    return changes


# --------------------------------------------------------------------------------------------
# The driver


def _check_inputs(sweep: Sweep, root: Path) -> None:
    """The data a trial needs exists: CAMs of the splits used, or the ordinary classifier."""
    params = parse_params(sweep.base_params)
    if sweep.kind == "adversarial":
        if not (root / OC).is_file():
            raise ConfigError(f"{OC}: not found; run `dvc repro train_oc` first")
        return
    from pnoc.data.factory import open_dataset
    from pnoc.tune.objectives import check_cams

    if not (root / CAMS).is_dir():
        raise ConfigError(f"{CAMS}: not found; run `dvc repro cams` first")
    for split in {params.data.train_split, params.pseudo_masks.split}:
        check_cams(open_dataset(params.data, split), root / CAMS)


def _run_segment(
    sweep: Sweep,
    paths: SweepPaths,
    segment: str,
    index: int,
    num_samples: int,
    trainable: Any,
    callback: Any,
    *,
    restore: bool,
) -> None:
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    space = to_ray(sweep.space)
    if restore:
        print(f"resuming {paths.ray / segment}")
        tuner = tune.Tuner.restore(
            str(paths.ray / segment), trainable, resume_errored=True, param_space=space
        )
    else:
        s = sweep.settings
        storage = optuna.storages.RDBStorage(f"sqlite:///{paths.optuna}")
        searcher = OptunaSearch(
            seed=s.seed + 1000 * index, storage=storage, study_name=paths.dir.name
        )
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            max_t=s.epochs,
            grace_period=s.asha.grace_period,
            reduction_factor=s.asha.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=s.mode,
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=num_samples,
                max_concurrent_trials=min(s.max_concurrent, num_samples),
            ),
            run_config=tune.RunConfig(
                name=segment,
                storage_path=str(paths.ray),
                callbacks=[callback],
                failure_config=tune.FailureConfig(max_failures=0),
                verbose=1,
            ),
        )
    tuner.fit()


def _close_orphans(paths: SweepPaths) -> None:
    """Optuna trials left RUNNING by a killed driver are marked FAIL (TPE ignores them)."""
    import optuna

    if not paths.optuna.exists():
        return
    storage = optuna.storages.RDBStorage(f"sqlite:///{paths.optuna}")
    try:
        study = optuna.load_study(study_name=paths.dir.name, storage=storage)
    except KeyError:
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL)


def _needs_restore(paths: SweepPaths, segment: Mapping[str, Any], epochs: int) -> bool:
    """The segment stopped before all its trials ended, and Ray saved enough to resume it."""
    from ray import tune

    path = paths.ray / segment["name"]
    if not tune.Tuner.can_restore(str(path)):
        return False
    records = read_trials(paths, [segment["name"]], epochs)
    return sum(r.status != "unfinished" for r in records) < segment["num_samples"]


class _SegmentRunner:
    """Runs segments; starts (or joins) Ray for the first, shuts down only a Ray it started."""

    def __init__(self, sweep: Sweep, paths: SweepPaths, root: Path, address: str | None) -> None:
        self.sweep, self.paths, self.root, self.address = sweep, paths, root, address
        self.started = False
        self.ready = False

    def run(self, segment: str, index: int, num_samples: int, *, restore: bool) -> None:
        from ray import tune

        from pnoc_pipelines.sweep_mlflow import MlflowTrialLogger

        self.prepare()
        sweep, s = self.sweep, self.sweep.settings
        spec = TrialSpec(
            sweep.kind,
            sweep.objective,
            sweep.base_params,
            str(self.root),
            s.resources.cpu,
            s.resources.gpu,
        )
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, spec=spec),
            {"cpu": s.resources.cpu, "gpu": s.resources.gpu},
        )
        callback = MlflowTrialLogger(
            self.paths.dir.name, sweep.metric, sweep.metrics, str(self.root), s.epochs
        )
        _run_segment(
            sweep, self.paths, segment, index, num_samples, trainable, callback, restore=restore
        )

    def prepare(self) -> None:
        """Start or join Ray and check that one trial fits; once."""
        if not self.ready:
            self.started = _start_ray(self.address)
            self.ready = True
            _check_resources(self.sweep, self.address is not None)

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def _run_segments(
    sweep: Sweep,
    paths: SweepPaths,
    state: dict[str, Any],
    runner: _SegmentRunner,
    name: str,
) -> tuple[list[TrialRecord], bool]:
    """Restore the last segment if it stopped early, then run the missing trials (see the
    module docstring). Returns every trial and whether the sweep was interrupted."""
    s = sweep.settings
    segments: list[dict[str, Any]] = state["segments"]
    last = segments[-1] if segments else None
    if last is not None and _needs_restore(paths, last, s.epochs):
        runner.run(last["name"], len(segments) - 1, last["num_samples"], restore=True)
    records = read_trials(paths, [g["name"] for g in segments], s.epochs)
    finished = sum(r.status != "unfinished" for r in records)
    interrupted = finished < len(records)
    missing = s.num_samples - finished
    if interrupted:
        return records, True
    if missing <= 0:
        print(f"sweep {name}: {finished} trial(s) done, none missing")
        return records, False
    runner.prepare()
    segment = {"name": f"seg-{len(segments):03d}", "num_samples": missing}
    segments.append(segment)
    _save_state(paths, state)
    print(
        f"sweep {name}: {finished} trial(s) done, running {missing} more "
        f"({paths.ray / segment['name']})"
    )
    runner.run(segment["name"], len(segments) - 1, missing, restore=False)
    records = read_trials(paths, [g["name"] for g in segments], s.epochs)
    return records, any(r.status == "unfinished" for r in records)


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
    from pnoc_pipelines.sweep_mlflow import SweepTracker

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
    name = name or kind
    paths = sweep_paths(name, root)
    _check_inputs(sweep, root)
    remote = resolve_address(address)

    s = sweep.settings
    with _Lock(paths.lock):
        state = _load_state(paths, sweep)
        _save_state(paths, state)
        # A segment killed before Ray saved anything never ran a trial: forget it.
        state["segments"] = [g for g in state["segments"] if _saved(paths.ray / g["name"])]
        tracker = SweepTracker(name, root)
        tracker.log_sweep(sweep.identity(), s.num_samples)
        runner = _SegmentRunner(sweep, paths, root, remote)
        try:
            records, interrupted = _run_segments(sweep, paths, state, runner, name)
        except BaseException as exc:  # the parent run must not stay RUNNING
            status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
            tracker.finish_sweep(metrics={}, artifacts=[], status=status)
            raise
        finally:
            runner.close()
        if not interrupted:
            _close_orphans(paths)
        all_records = records
        best = best_trial(all_records, sweep.metric, s.mode)
        write_text(paths.trials, trials_csv(all_records, sweep))
        artifacts = [paths.trials, paths.state]
        if best is not None:
            write_text(paths.best, best_yaml(best, sweep, name))
            artifacts.append(paths.best)
        if any(r.value(sweep.metric) is not None for r in all_records):
            artifacts += write_plots(all_records, sweep, paths.plots)
        tracker.sync(all_records, sweep.metric, sweep.metrics)
        tracker.tag_best(all_records, best)
        summary = {
            "trials.finished": sum(r.status in ("finished", "stopped") for r in all_records),
            "trials.failed": sum(r.status == "failed" for r in all_records),
        }
        if best is not None:
            summary[f"best.{sweep.metric}"] = best.value(sweep.metric) or 0.0
        tracker.finish_sweep(
            metrics=summary, artifacts=artifacts, status="KILLED" if interrupted else "FINISHED"
        )
    applied: list[str] = []
    if apply:
        if interrupted:
            raise PnocError("the sweep was interrupted: rerun it to finish before --apply")
        if best is None:
            raise PnocError(f"sweep {name}: no trial finished; nothing to apply")
        applied = apply_best(params_file, read_best(paths.best))
    return SweepOutcome(name, sweep.metric, s.mode, paths, all_records, best, interrupted, applied)


def format_outcome(outcome: SweepOutcome, top: int = 5) -> str:
    """A short report: trial counts, the best trials, where the results are."""
    recs, metric = outcome.records, outcome.metric
    lines = [
        f"sweep {outcome.name}: {len(recs)} trial(s): "
        + ", ".join(
            f"{sum(r.status == s for r in recs)} {s}"
            for s in ("finished", "stopped", "failed", "unfinished")
            if any(r.status == s for r in recs)
        )
    ]
    scored = sorted(
        (r for r in recs if r.value(metric) is not None),
        key=lambda r: r.value(metric) or 0.0,
        reverse=outcome.mode == "max",
    )
    for r in scored[:top]:
        params = ", ".join(f"{k}={_clean(v)}" for k, v in r.config.items())
        lines.append(f"  trial {r.number:3d} {metric}={r.value(metric):.4f}  {params}")
    if outcome.best is not None:
        lines.append(f"best: {outcome.paths.best}")
    lines.append(f"trials: {outcome.paths.trials}")
    if outcome.interrupted:
        lines.append("interrupted: run the same command again to resume")
    for change in outcome.applied:
        lines.append(f"applied to params.yaml: {change}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Hyperparameter sweeps (Ray Tune + Optuna TPE + ASHA); see pipelines/sweep.yaml.",
)

NumSamples = Annotated[
    int | None, typer.Option("--num-samples", "-n", help="trials in all (default: config)")
]
MaxConcurrent = Annotated[
    int | None, typer.Option("--max-concurrent", "-c", help="trials at once (default: config)")
]
Address = Annotated[
    str | None,
    typer.Option("--address", help="Ray cluster host:port (default: RAY_ADDRESS, else local)"),
]
ConfigOpt = Annotated[Path, typer.Option("--config", help="sweep settings")]
Apply = Annotated[bool, typer.Option("--apply", help="write the winners into params.yaml")]
Name = Annotated[
    str | None, typer.Option("--name", help="sweep name: sweeps/<name>/ (default: the kind)")
]
ParamsOpt = Annotated[Path, typer.Option("--params", help="params file")]


def _cli(kind: str, **kw: Any) -> None:
    outcome = run_sweep(kind, **kw)
    typer.echo(format_outcome(outcome))
    if outcome.interrupted:
        raise typer.Exit(130)


def _command(kind: str, doc: str) -> Any:
    def command(
        num_samples: NumSamples = None,
        max_concurrent: MaxConcurrent = None,
        address: Address = None,
        config: ConfigOpt = SWEEP_CONFIG,
        apply: Apply = False,
        name: Name = None,
        params: ParamsOpt = PARAMS,
    ) -> None:
        _cli(
            kind,
            config=config,
            params_file=params,
            name=name,
            num_samples=num_samples,
            max_concurrent=max_concurrent,
            address=address,
            apply=apply,
        )

    command.__doc__ = doc
    return command


app.command("saliency")(
    _command("saliency", "Search C²AM-H's δfg, λh (and more) for the best pseudo-mask proxy.")
)
app.command("adversarial")(
    _command(
        "adversarial",
        "Search the CAM generator's P-NOC knobs (ow, mask threshold, …) for the best CAM mIoU.",
    )
)
