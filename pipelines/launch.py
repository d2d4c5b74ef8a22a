"""Several workers for one stage: ``base.workers`` > 1 re-launches the stage through ``torchrun``
or Ray Train, so ``dvc repro`` uses every GPU (or several CPU processes) with no change to
dvc.yaml.

A stage's ``python -m pnoc_pipelines.<stage>`` process reads ``base`` and, when more than one
worker is asked for and it is not itself a worker, becomes the launcher:

* ``base.launcher: torchrun`` (default): ``python -m torch.distributed.run`` with
  ``--nproc-per-node base.workers`` on this machine (``--standalone``), or with
  ``--nnodes base.nodes`` and a c10d rendezvous at ``base.rdzv_endpoint`` across machines (each
  machine runs the same command; ``PNOC_RDZV_ID`` names the job, default ``pnoc-<stage>``).
* ``base.launcher: ray``: a Ray Train ``TorchTrainer`` with ``ScalingConfig(num_workers=
  base.workers, use_gpu=<device is CUDA>)`` on the cluster at ``RAY_ADDRESS`` (a local Ray
  when unset). Each Ray worker runs the same stage function in the project folder.

Each worker joins the process group (:func:`pnoc.engine.distributed.init_from_env`; Ray Train
creates it itself), trains data-parallel or takes its share of the images; rank 0 alone writes
outputs and the stage's MLflow run. A failed worker fails the stage with its rank; the launcher
exits with status 1 and nothing is published (outputs are written atomically by rank 0 at the
end), so a rerun resumes from the last checkpoint.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pnoc.errors import ConfigError

if TYPE_CHECKING:
    from pnoc.config import BaseParams

log = logging.getLogger("pnoc")

#: How long a worker waits for the others (rendezvous, every collective) before failing.
TIMEOUT_S = float(os.environ.get("PNOC_DIST_TIMEOUT_S", "300"))
#: Set in Ray workers so the stage function knows it is a worker, not a launcher.
RAY_WORKER_ENV = "PNOC_RAY_WORKER"


def is_worker() -> bool:
    """Whether this process was started by a launcher as one worker of several."""
    from pnoc.engine.distributed import launched

    return launched() or os.environ.get(RAY_WORKER_ENV) == "1"


def wants_launch(base: BaseParams) -> bool:
    """``base`` asks for more than one worker and this process is not already one of them."""
    return (base.workers > 1 or base.nodes > 1) and not is_worker()


def check_workers(base: BaseParams) -> None:
    """``base.workers`` against the GPUs present: on CUDA, one worker per visible GPU at most."""
    from pnoc.engine import resolve_device

    device = resolve_device(base.device)
    if device.type == "cuda":
        import torch

        gpus = torch.cuda.device_count()
        if base.workers > gpus:
            raise ConfigError(
                f"base.workers: {base.workers} workers on base.device '{base.device}', but only "
                f"{gpus} CUDA device(s) are visible; use at most {gpus} (one per GPU) or "
                "base.device: cpu"
            )


def stage_module(fn: Callable[..., Any]) -> str:
    """The ``python -m`` name of the module that defines the stage function ``fn``."""
    module = fn.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        if spec is None or not spec.name:
            raise ConfigError("a multi-worker stage must be started as python -m <module>")
        module = spec.name
    return module


def launch(fn: Callable[[], None], base: BaseParams) -> int:
    """Run the stage function ``fn`` on ``base.workers`` workers; return the exit status."""
    check_workers(base)
    if base.launcher == "ray":
        return _launch_ray(fn, base)
    return _launch_torchrun(stage_module(fn), base)


# -- torchrun -----------------------------------------------------------------------------------


def torchrun_command(module: str, base: BaseParams) -> list[str]:
    """The ``torch.distributed.run`` command line that starts ``module`` on every worker."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={base.workers}"]
    if base.nodes == 1:
        cmd.append("--standalone")
    else:
        if not base.rdzv_endpoint:
            raise ConfigError(
                f"base.rdzv_endpoint: base.nodes is {base.nodes}, so the machines need a "
                "rendezvous host:port that all of them reach (e.g. the first machine's)"
            )
        rdzv_id = os.environ.get("PNOC_RDZV_ID") or f"pnoc-{module.rsplit('.', 1)[-1]}"
        cmd += [
            f"--nnodes={base.nodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={base.rdzv_endpoint}",
            f"--rdzv-id={rdzv_id}",
            f"--rdzv-conf=join_timeout={TIMEOUT_S:.0f},read_timeout={TIMEOUT_S:.0f}",
        ]
    return [*cmd, "--max-restarts=0", "-m", module]


def _threads_per_worker(base: BaseParams) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return str(max(1, (cores or 1) // base.workers))


def _launch_torchrun(module: str, base: BaseParams) -> int:
    if base.nodes > 1:
        _check_rendezvous(base.rdzv_endpoint or "")
    cmd = torchrun_command(module, base)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", _threads_per_worker(base))
    log.info("starting %d workers: %s", base.workers * base.nodes, " ".join(cmd[1:]))
    proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode:
        print(
            f"error: a worker of {module} failed (torchrun exit status {proc.returncode}); its "
            "rank and error are above. Nothing was published; a rerun resumes from the last "
            "checkpoint.",
            file=sys.stderr,
        )
        return 1
    return 0


def _check_rendezvous(address: str) -> None:
    """Fail fast, naming ``address``, when no machine accepts a TCP connection there (this
    machine's own address is fine: torchrun starts the rendezvous there)."""
    what = "base.rdzv_endpoint"
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{what}: expected host:port, got {address!r}")
    if host in ("localhost", "127.0.0.1", socket.gethostname()):
        return
    timeout = min(TIMEOUT_S, 10.0)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except OSError as exc:
        raise ConfigError(
            f"{what}: nothing answers at {address} ({exc or 'timed out'} after "
            f"{timeout:.0f} s); is the head machine up and the port open?"
        ) from None


# -- Ray Train ----------------------------------------------------------------------------------


def _launch_ray(fn: Callable[[], None], base: BaseParams) -> int:
    """One Ray Train ``TorchTrainer`` run of the stage function on ``base.workers`` workers."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pnoc.engine import resolve_device
    from pnoc_pipelines.sweep.cluster import resolve_address, start_ray

    use_gpu = resolve_device(base.device).type == "cuda"
    start_ray(resolve_address(None))  # RAY_ADDRESS, checked to answer; else a local Ray
    module = stage_module(fn)
    root = Path.cwd().resolve()
    trainer = TorchTrainer(
        ray_worker,
        train_loop_config={"module": module, "cwd": str(root), "env": _forwarded_env()},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=int(TIMEOUT_S)),
        scaling_config=ScalingConfig(num_workers=base.workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=module.rsplit(".", 1)[-1], storage_path=str(root / ".pnoc" / "ray")
        ),
    )
    log.info("starting %d Ray Train workers for %s", base.workers, module)
    try:
        trainer.fit()
    except Exception as exc:  # noqa: BLE001 (Ray wraps the worker's error; report it whole)
        print(f"error: a Ray Train worker of {module} failed: {exc}", file=sys.stderr)
        return 1
    return 0


def _forwarded_env() -> dict[str, str]:
    """What a Ray worker on another process (or machine) needs of this one's environment."""
    keep = ("MLFLOW_TRACKING_URI", "PNOC_PIPELINE_ID", "OMP_NUM_THREADS", "PYTHONHASHSEED")
    return {k: os.environ[k] for k in keep if k in os.environ}


def ray_worker(config: dict[str, Any]) -> None:
    """Body of each Ray Train worker: the stage function, in the project folder."""
    import importlib

    import ray.train.torch

    os.environ.update(config["env"], **{RAY_WORKER_ENV: "1"})
    device = ray.train.torch.get_device()
    if device.type == "cuda":  # the GPU Ray gave this worker, as pnoc's cuda:LOCAL_RANK
        os.environ["LOCAL_RANK"] = str(device.index or 0)
    os.chdir(config["cwd"])
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    from pnoc_pipelines.common import run_as_worker

    run_as_worker(importlib.import_module(config["module"]).run)
