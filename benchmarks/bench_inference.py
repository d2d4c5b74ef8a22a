"""Wall time of the four inference steps (``cams``, ``saliency``, ``pseudo_masks``,
``evaluate``): serial per-image inference, batches with DataLoader workers, and two gloo worker
processes, side by side.

    python benchmarks/bench_inference.py [--work DIR] [--batch-size 8] [--loader-workers 2]
        [--train 480] [--val 120] [--repeats 1] [--json FILE]

Data: the embedded dataset of params.yaml (``data.synthetic``: 480 train and 120 val images of
96 px, 6 classes; ``--train``/``--val`` change the counts), written by the project's own
:func:`pnoc.data.synthetic.generate_synthetic` into ``--work`` (reused when already there).
Networks: params.yaml's architectures (``cam``, ``saliency``, ``affinity``, ``segmentation``
backbones and output strides), randomly initialised: the time does not depend on training.
Affinity labels: the ground-truth masks, so every image of ``pseudo_masks.split`` is walked (no
fallback). Settings: params.yaml's (``cams.scales`` and ``flip`` on ``cams.splits``, the saliency
of the same splits, ``pseudo_masks``, ``segmentation.tta_scales``/``tta_flip`` on ``val``).

Modes, each in fresh processes, one after the other:

* ``serial``: batches of 1, images decoded in the process, one process with torch's default
  threads: the per-image loop of before.
* ``batched``: batches of ``--batch-size``, ``--loader-workers`` DataLoader workers decoding,
  one process with torch's default threads.
* ``2 workers``: two processes in a gloo group, one torch thread each, batches of
  ``--batch-size``, images decoded in each process.

Each step is timed from a barrier to a barrier (rank 0's clock); the processes' start (Python,
torch, networks) is reported apart. With ``--repeats N`` the modes run in turn N times and each
figure is the median. The CPU seconds other processes of the machine used meanwhile are printed
per mode (from ``/proc/stat`` less the mode's own processes): on a 2-core machine any of it
slows a 2-thread process far more than its share (an OpenMP thread waits for its descheduled
sibling at every op), so a mode with a large figure there was measured on a busy machine. The
files every mode writes are compared byte for byte with the serial mode's, and the metrics with
its metrics (the 2-worker mode runs 1 thread per process where the others run torch's default:
the float16 CAMs may then differ by one rounding step in a few values).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
STEPS = ("cams", "saliency", "pseudo_masks", "evaluate")
FOLDERS = ("cams", "saliency", "pseudo_masks")


def _params() -> Any:
    from pnoc.config import parse_params

    return parse_params(yaml.safe_load((REPO / "params.yaml").read_text()))


def _models(p: Any, num_classes: int) -> dict[str, torch.nn.Module]:
    from pnoc.models.affinity import AffinityNet
    from pnoc.models.cam import CAMNet
    from pnoc.models.ccam import CCAMNet
    from pnoc.models.deeplab import DeepLabV3Plus

    torch.manual_seed(0)
    return {
        "cam": CAMNet(p.cam.backbone, num_classes, output_stride=p.cam.output_stride),
        "ccam": CCAMNet(
            p.saliency.backbone,
            output_stride=p.saliency.output_stride,
            features=p.saliency.features,
        ),
        "affinity": AffinityNet(p.affinity.backbone, output_stride=p.affinity.output_stride),
        "deeplab": DeepLabV3Plus(
            p.segmentation.backbone, num_classes + 1, output_stride=p.segmentation.output_stride
        ),
    }


def prepare(work: Path, train: int, val: int) -> None:
    """The dataset, the networks' weights and the affinity labels under ``work``."""
    from pnoc.data.files import write_mask_png
    from pnoc.data.synthetic import generate_synthetic
    from pnoc.data.voc import VOCDataset

    p = _params()
    syn = p.data.synthetic
    data = work / "data"
    stamp = work / "prepared.json"
    key = {"train": train, "val": val, "synthetic": syn.model_dump(), "size": p.data.image_size}
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return
    generate_synthetic(
        data,
        num_train=train,
        num_val=val,
        num_classes=syn.classes,
        image_size=p.data.image_size,
        seed=syn.seed,
        cooccurrence=syn.cooccurrence,
        body_size=tuple(syn.body_size),
        mark_area=tuple(syn.mark_area),
    )
    models = _models(p, syn.classes)
    torch.save({k: m.state_dict() for k, m in models.items()}, work / "models.pt")
    split = VOCDataset(data, p.pseudo_masks.split)
    labels = work / "labels"
    labels.mkdir(parents=True, exist_ok=True)
    for image_id in split.ids:
        mask = split.load_mask(image_id)
        assert mask is not None
        write_mask_png(labels / f"{image_id}.png", mask)
    stamp.write_text(json.dumps(key))


def worker(args: argparse.Namespace) -> None:
    """One process of a mode: the four steps, each timed between barriers (rank 0 writes)."""
    t_start = float(os.environ["BENCH_T0"])
    if args.threads:
        torch.set_num_threads(args.threads)
    from pnoc.data.voc import VOCDataset
    from pnoc.engine import Runtime
    from pnoc.engine.distributed import barrier, init_from_env, shared_atomic_dir, world
    from pnoc.steps import cams, evaluate, pseudo_masks, saliency

    init_from_env(torch.device("cpu"), timeout_s=600)
    p = _params()
    work, out = Path(args.work), Path(args.out)
    num_classes = p.data.synthetic.classes
    models = _models(p, num_classes)
    states = torch.load(work / "models.pt", weights_only=True)
    for name, model in models.items():
        model.load_state_dict(states[name])
        model.eval()
    data = {s: VOCDataset(work / "data", s) for s in {*p.cams.splits, p.data.val_split}}
    runtime = Runtime(num_workers=args.loader_workers, progress=False)
    batch = args.batch_size
    seconds: dict[str, float] = {}
    metrics: dict[str, Any] = {}
    barrier()
    seconds["start"] = time.time() - t_start

    t0 = time.perf_counter()
    with shared_atomic_dir(out / "cams") as tmp:
        sweeps = cams.run(
            models["cam"],
            {s: data[s] for s in p.cams.splits},
            tmp,
            runtime,
            scales=p.cams.scales,
            flip=p.cams.flip,
            thresholds=p.cams.thresholds.values(),
            batch_size=batch,
        )
    barrier()
    seconds["cams"] = time.perf_counter() - t0
    metrics["cams"] = {s: w.miou.tolist() for s, w in sweeps.items()}

    t0 = time.perf_counter()
    with shared_atomic_dir(out / "saliency") as tmp:
        sal = saliency.run(
            models["ccam"],
            {s: data[s] for s in p.cams.splits},
            tmp,
            runtime,
            threshold=p.saliency.threshold,
            flip=p.saliency.flip,
            eval_split=p.cams.eval_split,
            batch_size=batch,
        )
    barrier()
    seconds["saliency"] = time.perf_counter() - t0
    metrics["saliency"] = sal.report

    t0 = time.perf_counter()
    with shared_atomic_dir(out / "pseudo_masks") as tmp:
        walked = pseudo_masks.run(
            models["affinity"],
            data[p.pseudo_masks.split],
            tmp,
            runtime,
            cfg=p.pseudo_masks,
            cam_dir=out / "cams",
            label_dir=work / "labels",
            saliency_dir=out / "saliency",
            saliency_threshold=p.saliency.threshold,
            batch_size=batch,
        )
    barrier()
    seconds["pseudo_masks"] = time.perf_counter() - t0
    metrics["pseudo_masks"] = walked.report

    t0 = time.perf_counter()
    scored = evaluate.run(
        models["deeplab"],
        data[p.data.val_split],
        runtime,
        scales=p.segmentation.tta_scales,
        flip=p.segmentation.tta_flip,
        crf=p.segmentation.crf,
        batch_size=batch,
    )
    barrier()
    seconds["evaluate"] = time.perf_counter() - t0
    metrics["evaluate"] = scored.confusion.matrix.tolist()
    if world().is_main:
        (out / "timing.json").write_text(json.dumps({"seconds": seconds, "metrics": metrics}))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_mode(
    args: argparse.Namespace, name: str, *, batch: int, loaders: int, procs: int, threads: int
) -> dict[str, Any]:
    """Run one mode in ``procs`` fresh processes; its seconds per step and metrics."""
    out = Path(args.work) / "out" / name.replace(" ", "_")
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["BENCH_T0"] = repr(time.time())
    if procs > 1:
        env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        env["WORLD_SIZE"] = str(procs)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role=worker",
        f"--work={args.work}",
        f"--out={out}",
        f"--batch-size={batch}",
        f"--loader-workers={loaders}",
        f"--threads={threads}",
    ]
    t0 = time.perf_counter()
    busy0 = _busy_seconds()
    running = [
        subprocess.Popen(
            cmd, env=env | ({"RANK": str(r), "LOCAL_RANK": str(r)} if procs > 1 else {})
        )
        for r in range(procs)
    ]
    codes, own = [], 0.0
    for proc in running:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        codes.append(proc.returncode)
        own += usage.ru_utime + usage.ru_stime
    wall = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"mode {name}: a worker failed (exit codes {codes})")
    result = json.loads((out / "timing.json").read_text())
    result["wall"] = wall
    result["others_cpu"] = max(0.0, _busy_seconds() - busy0 - own)
    result["out"] = str(out)
    return result


def _busy_seconds() -> float:
    """CPU seconds the machine spent busy since boot, all processes (0 without /proc/stat)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields)
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _seconds(run: dict[str, Any], row: str) -> float:
    if row == "steps":
        return sum(run["seconds"][k] for k in STEPS)
    if row == "with start":
        return run["wall"]
    return run["seconds"][row]


def _differing(a: Path, b: Path) -> int:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return -1
    return sum((a / n).read_bytes() != (b / n).read_bytes() for n in names)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", default=str(REPO / ".pnoc" / "bench_inference"))
    p.add_argument("--train", type=int, default=None, help="train images (default: params')")
    p.add_argument("--val", type=int, default=None, help="val images (default: params')")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1, help="runs of every mode, in turn")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    p.add_argument("--role", default="main", choices=["main", "worker"], help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "worker":
        worker(args)
        return {}

    syn = _params().data.synthetic
    train = syn.train if args.train is None else args.train
    val = syn.val if args.val is None else args.val
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, train, val)
    cores = os.cpu_count()
    print(
        f"{train} train + {val} val images, {cores} CPU cores, torch {torch.__version__}, "
        f"default threads {torch.get_num_threads()}; batch {args.batch_size}"
    )
    modes = {
        "serial": {"batch": 1, "loaders": 0, "procs": 1, "threads": 0},
        "batched": {
            "batch": args.batch_size,
            "loaders": args.loader_workers,
            "procs": 1,
            "threads": 0,
        },
        "2 workers": {"batch": args.batch_size, "loaders": 0, "procs": 2, "threads": 1},
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in modes}
    for _ in range(args.repeats):
        for name, mode in modes.items():
            runs[name].append(run_mode(args, name, **mode))

    rows = [*STEPS, "steps", "with start"]
    table = {
        row: {name: statistics.median(_seconds(r, row) for r in rs) for name, rs in runs.items()}
        for row in rows
    }
    others = {name: max(r["others_cpu"] for r in rs) for name, rs in runs.items()}
    what = f"median of {args.repeats}, " if args.repeats > 1 else ""
    print(f"\nwall seconds ({what}ratio to serial)")
    print(f"{'step':14s}" + "".join(f" {name:>10s} {'ratio':>6s}" for name in modes))
    for row in rows:
        base = table[row]["serial"]
        print(
            f"{row:14s}"
            + "".join(f" {table[row][name]:9.2f}s {table[row][name] / base:6.2f}" for name in modes)
        )
    print(f"{'others CPU s':14s}" + "".join(f" {others[name]:9.1f}s {'':6s}" for name in modes))
    print(
        "\n'with start': the mode's wall time, process start (Python, torch, networks) included;"
        "\n'others CPU s': the most CPU time other processes of the machine took during one run"
    )
    checks: dict[str, dict[str, Any]] = {}
    serial = runs["serial"][-1]
    for name in modes:
        if name == "serial":
            continue
        last = runs[name][-1]
        diffs = {f: _differing(Path(serial["out"]) / f, Path(last["out"]) / f) for f in FOLDERS}
        same = last["metrics"] == serial["metrics"]
        print(f"{name}: files differing from serial's {diffs}; metrics equal: {same}")
        checks[name] = {"files_differing": diffs, "metrics_equal": same}
    figures = {
        "images": {"train": train, "val": val},
        "batch_size": args.batch_size,
        "loader_workers": args.loader_workers,
        "repeats": args.repeats,
        "seconds": table,
        "others_cpu_seconds": others,
        "checks": checks,
    }
    if args.json:
        from pnoc.io import write_json

        write_json(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
